"""Errors that reach users: one clear line naming the problem (the CLI exits 2 without a traceback)."""


class GaincellError(Exception):
    """A user-facing error: bad input, missing file, unknown name.  The message names what is wrong."""
