"""`FitOptions`: how one `fit` call runs, as opposed to what the model is (its config).

The caller (`recstack run`, `tune`, a notebook) decides these per call; they never change what a
model learns from a given seed except through the validation protocol, and they are never saved
with the model. numpy-free and torch-free, so every model can accept them.

>>> model.fit(train, valid, options=FitOptions(mask_history=False, log_path=Path("logs/sasrec.jsonl")))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a name only: importing the evaluator here would load numpy into every model import
    from recstack.evaluate.evaluator import ColdUsers


@dataclass(frozen=True)
class FitOptions:
    """Per-call training options, handed from `fit` to the `Trainer`.

    - `mask_history`: validation during training (early stopping) ranks with the training history
      masked, as the experiment reports; False for repeat-consumption protocols.
    - `log_path`: append one JSON line per epoch here (a trainer config's own `log_path` wins).
    - `progress`: False keeps the console quiet (`recstack run --quiet`).
    - `device`: overrides the config's `device` for this call (None keeps it).
    - `label`: the name progress lines carry (the run's model label); defaults to the log's stem.
    - `cold_users`: the cold-user policy validation applies (`recstack.evaluate.ColdUsers`: skip
      users without history, or rank them with a fitted fallback model), as the experiment's final
      evaluation does; None ranks every validation user with the model (policy include).
    """

    mask_history: bool = True
    log_path: Path | None = None
    progress: bool = True
    device: str | None = None
    label: str | None = None
    cold_users: ColdUsers | None = None

    def for_worker(self) -> "FitOptions":
        """The options of a data-parallel worker other than rank 0: no log file, no progress (rank 0
        writes both), the same validation protocol."""
        return replace(self, log_path=None, progress=False)

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        return self.log_path.stem if self.log_path is not None else "training"


DEFAULT_FIT_OPTIONS = FitOptions()
