"""The ``gaincell`` command line: the only place that parses flags, prints and chooses exit codes.

One module per command group registers its subcommands (``register(subparsers)``) and holds their handlers
(``cmd_*(args) -> int``), which call the library and format what it returns:

============================  ==============================================================================
``gaincell.cli.hardware``     ``hardware show|validate|presets|demo`` and ``demo`` (Table 1 in miniature)
``gaincell.cli.models``       ``init``, ``finetune``, ``adapt``, ``eval``, ``models``, ``package``, ``prepare``
``gaincell.cli.generation``   ``generate``, ``retention``
``gaincell.cli.cost``         ``cost``, ``bench-gpu``
``gaincell.cli.bench``        ``bench``, ``lm-eval``
``gaincell.cli.explore``      ``explore`` (design-space studies on Optuna)
============================  ==============================================================================

Errors a user can fix (bad input, unknown names, missing files) print one line and exit with status 2; ``--debug``
shows the traceback instead.  Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gaincell import __version__
from gaincell.errors import GaincellError

__all__ = ["build_parser", "main"]

#: the command-group modules, in the order their commands appear in ``gaincell --help``
COMMAND_GROUPS = (
    "gaincell.cli.hardware",
    "gaincell.cli.models",
    "gaincell.cli.generation",
    "gaincell.cli.cost",
    "gaincell.cli.bench",
    "gaincell.cli.explore",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's own usage errors: the usage line, one error line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="gaincell", description="Analog gain-cell attention: simulate, convert, adapt, evaluate, cost."
    )
    parser.add_argument("--version", action="version", version=f"gaincell {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for name in COMMAND_GROUPS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = [a for a in argv[:2] if a == "--debug"]
    if argv[len(head) : len(head) + 1] == ["lm-eval"]:  # everything after it goes to lm_eval's own parser
        argv = [*head, "lm-eval", "--", *argv[len(head) + 1 :]]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("gaincell: interrupted", file=sys.stderr)
        return 130
    except (GaincellError, OSError, ValueError) as exc:
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"gaincell: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
