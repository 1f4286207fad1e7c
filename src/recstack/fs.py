"""Atomic file-system writes: nothing half-written is ever left where a reader looks. A leaf module."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class atomic_directory:
    """Write into a temporary sibling directory, then rename it into place (no half-written dirs)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp is private; the result is ordinary output
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary sibling file, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp is private; the result is ordinary output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
