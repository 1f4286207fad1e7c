"""Atomic file-system writes: nothing half-written is ever left where a reader looks. A leaf module."""

from __future__ import annotations

import contextlib
import errno
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


CLAIM_FILE = ".recstack-claim"


class exclusive_directory:
    """Like `atomic_directory`, but `path` is claimed first and never replaced.

    `claim()` makes `path` (an existing empty directory is accepted) and creates the hidden file
    `CLAIM_FILE` in it with O_EXCL: of two writers of one path exactly one gets the claim, the other
    a `FileExistsError` before it writes anything. The contents are written into a hidden temporary
    sibling that replaces the claimed, otherwise empty directory in one rename at the end. On an error
    or an interrupt the temporary directory goes and `path` is left as it was found.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None
        self._made = self._claimed = False

    def claim(self) -> None:
        if self._claimed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
            self._made = True
        except FileExistsError:
            if not self.path.is_dir() or _has_entries(self.path):
                raise FileExistsError(errno.EEXIST, "already exists", str(self.path)) from None
        try:
            try:
                os.close(os.open(self.path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "is being written by another run (or a killed run left its "
                                      f"{CLAIM_FILE} file there)", str(self.path)) from None
            self._claimed = True
            if _has_entries(self.path):  # a file arrived between the emptiness check and the claim
                raise FileExistsError(errno.EEXIST, "already exists", str(self.path))
        except BaseException:
            self._release()
            raise

    def __enter__(self) -> Path:
        self.claim()
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp is private; the result is ordinary output
        except BaseException:
            self._release()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._release()
            return
        (self.path / CLAIM_FILE).unlink(missing_ok=True)
        self._claimed = False
        try:
            os.rename(self.tmp, self.path)  # POSIX: a directory replaces an empty directory atomically
        except OSError:
            if _has_entries(self.path, ignore=None):  # kept, not deleted: the contents are complete
                raise FileExistsError(errno.EEXIST, f"received other files while this run wrote; its results are "
                                      f"in {self.tmp}", str(self.path)) from None
            self.path.rmdir()  # platforms whose rename does not replace an empty directory
            os.rename(self.tmp, self.path)

    def _release(self) -> None:
        if self._claimed:
            (self.path / CLAIM_FILE).unlink(missing_ok=True)
            self._claimed = False
        if self._made:
            with contextlib.suppress(OSError):  # only while still empty: never someone else's files
                self.path.rmdir()
            self._made = False


def _has_entries(path: Path, ignore: str | None = CLAIM_FILE) -> bool:
    with os.scandir(path) as entries:
        return any(entry.name != ignore for entry in entries)


def check_writable(folder: str | os.PathLike) -> None:
    """Raise `OSError` unless directories can be made in `folder` (or where it would be made); leaves nothing."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the folder is made later, not here
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(existing))
    os.rmdir(tempfile.mkdtemp(prefix=".recstack-probe.", dir=existing))


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
