"""Where a `Trainer` writes its per-epoch JSON lines when its config names no `log_path`.

`recstack run` points it at `<run directory>/logs/<label>.jsonl` around each model's fit, so a long
run can be followed while it trains (`tail -f runs/.<run>/logs/<label>.jsonl`: the run directory
keeps a leading dot until the run finishes). A model that trains in stages (a pre-trained backbone,
then the model) appends each stage's epochs in turn. numpy-only: the experiment runner sets it
without importing torch.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_EPOCH_LOG: ContextVar[Path | None] = ContextVar("epoch_log", default=None)
_PROGRESS: ContextVar[bool] = ContextVar("epoch_progress", default=True)


@contextmanager
def epoch_log(path: str | Path | None, *, progress: bool = True):
    """Inside this block, trainers without a `log_path` of their own append to `path`; with
    `progress=False` they also print nothing on the console (`recstack run --quiet`)."""
    token = _EPOCH_LOG.set(None if path is None else Path(path))
    quiet = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(quiet)
        _EPOCH_LOG.reset(token)


def current_epoch_log() -> Path | None:
    """The log file set by the innermost `epoch_log` block, or None."""
    return _EPOCH_LOG.get()


def epoch_progress_enabled() -> bool:
    """False inside an `epoch_log(..., progress=False)` block: trainers keep the console quiet."""
    return _PROGRESS.get()
