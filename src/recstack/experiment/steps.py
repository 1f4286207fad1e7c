"""The two units of work every flow shares: fit one model entry, and the scoring of one part.

`run_experiment` (each model), `tune` (each trial) and `RunAnalysis` (its popularity reference)
fit through `fit_entry`, so wherever a model trains it is built with the experiment seed as its
default seed, given the dataset's side data (when it declares `UsesDataset`) and fitted with
one explicit `FitOptions` carrying the experiment's validation protocol. `run_experiment` and `tune` score through `scoring`, so a part is always scored with
the same history, item pool, history masking and memory budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recstack.abilities import UsesDataset
from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.experiment.config import ExperimentConfig, ModelEntry
from recstack.split.base import Split
from recstack.train.options import FitOptions


@dataclass
class Fitted:
    """A fitted model, the seconds its `fit` took, and the seconds to build it and hand it side data."""

    model: Any
    fit_seconds: float
    setup_seconds: float


@dataclass(frozen=True)
class Scoring:
    """How the experiment scores one part: `evaluate(model, history, truth, **options)`."""

    part: str
    history: Interactions  # what precedes the part: train for valid, train + valid (+ fold-in) for test
    truth: Interactions
    options: dict[str, Any]  # metrics, cut-offs, history masking, item pool, memory budget, kept rankings


def fit_entry(config: ExperimentConfig, entry: ModelEntry, dataset: Dataset, split: Split, *,
              log: Path | None = None, progress: bool = True) -> Fitted:
    """Build `entry`'s model and fit it on `split.train` (with `split.valid` for early stopping).

    Validation during training masks the history as the experiment's `mask_history` says, so a
    model is selected under the protocol it is reported under. With `log`, trainers append their
    epochs there; with `progress` False they print nothing.
    """
    from recstack.models import build  # looked up at each call: a patched registry (tests watch builds) holds

    tick = time.perf_counter()
    model = build(entry.name, config.model_config_for(entry))  # the experiment seed unless the entry sets one
    if isinstance(model, UsesDataset):  # models that read side information (item texts)
        model.use_dataset(dataset)
    setup_seconds = time.perf_counter() - tick
    options = FitOptions(mask_history=config.mask_history, log_path=log, progress=progress,
                         label=entry.display if log is not None else None)
    tick = time.perf_counter()
    model.fit(split.train, split.valid, options=options)
    return Fitted(model, time.perf_counter() - tick, setup_seconds)


def scoring(config: ExperimentConfig, split: Split, part: Literal["valid", "test"], *,
            metrics: list[str] | None = None, keep_rankings: bool = False) -> Scoring:
    """The full-ranking evaluation of `part` under the experiment's protocol, for the caller to run
    (and time) with `evaluate`.

    `metrics` defaults to the experiment's; the history, item pool, masking and memory budget are
    always the experiment's, so a tuning trial's valid figure equals the final run's.
    """
    return Scoring(part, split.history(part), getattr(split, part), {
        "metrics": config.metrics if metrics is None else metrics, "ks": config.ks,
        "mask_history": config.mask_history, "memory_budget_mb": config.memory_budget_mb,
        "keep_rankings": keep_rankings, "item_pool": split.item_pool(part)})
