"""Atomic files and folders: nothing half-written survives an interruption.

A file is written beside its destination and renamed over it; a folder is filled under a temporary name and swapped
in with two renames (the previous folder is parked as ``.NAME.old`` in between, and :func:`recover_folder` puts it
back if a process died between the two).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def parked_name(dest: Path) -> Path:
    """Where :func:`replace_folder` parks the previous ``dest`` between its two renames."""
    return dest.with_name(f".{dest.name}.old")


def replace_folder(tmp: Path, dest: Path) -> None:
    """Move the complete folder ``tmp`` to ``dest``, replacing an existing one without a window of absence."""
    if dest.exists():
        old = parked_name(dest)
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)


def recover_folder(dest: Path, *, marker: str) -> None:
    """A process killed between the two renames of :func:`replace_folder` leaves only the previous folder, parked:
    put it back (when it holds ``marker``, the file that proves it complete)."""
    old = parked_name(dest)
    if not dest.exists() and (old / marker).is_file():
        old.rename(dest)


class atomic_dir:
    """``with atomic_dir(path) as tmp:`` fill ``tmp``; on success it replaces ``path`` whole, on error it vanishes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            replace_folder(self.tmp, self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
