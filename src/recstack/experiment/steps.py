"""The units of work every flow shares: fit one model entry, the scoring of one part, and the
experiment's cold-user policy.

`run_experiment` (each model), `tune` (each trial) and `RunAnalysis` (its popularity reference)
fit through `fit_entry`, so wherever a model trains it is built with the experiment seed as its
default seed, given the dataset's side data (when it declares `UsesDataset`) and fitted with
one explicit `FitOptions` carrying the experiment's validation protocol (history masking and the
cold-user policy). `run_experiment` and `tune` score through `scoring`, so a part is always scored
with the same history (`history`: the config's `test_history` for test), masked items, item pool,
history masking, cold-user policy and memory budget.
`cold_users` turns the config's policy into the `ColdUsers` both take, fitting its fallback model
(once per flow, through `fit_entry`) when the policy has one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recstack.abilities import UsesDataset
from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.evaluate.evaluator import ColdUsers
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
    history: Interactions  # what the model reads: train for valid; for test train + valid or train (+ fold-in)
    truth: Interactions
    options: dict[str, Any]  # metrics, ks, masking (+ `exclude`), item pool, memory budget, kept rankings


def history(config: ExperimentConfig, split: Split, part: Literal["valid", "test"]) -> Interactions:
    """The events the model reads when ranking for `part`: train for valid; for test train + valid, or
    train only under `test_history: train` (a user-holdout split's fold-in events in both cases)."""
    return split.history(part, config.test_history)


def history_names(config: ExperimentConfig, split: Split) -> dict[str, str]:
    """How the manifest and `compare.Protocol` name the events each part's users are ranked with and
    the events whose items test lists leave out ("none" without masking)."""
    fold_in = " + test fold-in" if split.test_fold_in is not None else ""
    return {"valid_history": "train",
            "test_history": ("train + valid" if config.test_history == "train_valid" else "train") + fold_in,
            "test_masked": f"train + valid{fold_in}" if config.mask_history else "none"}


def masked_besides(config: ExperimentConfig, split: Split, part: Literal["valid", "test"]) -> Interactions | None:
    """Events whose items are masked although the model does not read them: under `test_history: train`
    the validation part when ranking for test (the user is known to have those items, as RecBole
    masks them), else None."""
    return split.valid if part == "test" and config.test_history == "train" else None


def cold_users(config: ExperimentConfig, dataset: Dataset, split: Split) -> ColdUsers:
    """The experiment's cold-user policy as the evaluator takes it; under `fallback`, with the fallback
    model built and fitted on `split.train` here (as every model is: `fit_entry`, the experiment seed)."""
    c = config.cold_users
    if c.policy != "fallback":
        return ColdUsers(c.policy, c.min_history, c.few_history)
    # the fallback's own validation (if it has any) ranks its cold users itself: policy include
    fitted = fit_entry(config, ModelEntry(name=c.fallback), dataset, split, progress=False,
                       cold_users=ColdUsers("include", c.min_history, c.few_history))
    return ColdUsers(c.policy, c.min_history, c.few_history, fallback=fitted.model, fallback_name=c.fallback)


def _policy(config: ExperimentConfig, given: ColdUsers | None) -> ColdUsers:
    """`given`, else the config's policy where it needs no fitted model."""
    if given is not None:
        return given
    c = config.cold_users
    if c.policy == "fallback":
        raise ValueError("the cold-user policy 'fallback' needs its fitted model: pass "
                         "cold_users=steps.cold_users(config, dataset, split)")
    return ColdUsers(c.policy, c.min_history, c.few_history)


def fit_entry(config: ExperimentConfig, entry: ModelEntry, dataset: Dataset, split: Split, *,
              log: Path | None = None, progress: bool = True, cold_users: ColdUsers | None = None) -> Fitted:
    """Build `entry`'s model and fit it on `split.train` (with `split.valid` for early stopping).

    Validation during training masks the history as the experiment's `mask_history` says and
    treats users without history by the experiment's cold-user policy (`cold_users`, from
    `steps.cold_users`; needed only under the policy fallback), so a model is selected under the
    protocol it is reported under. With `log`, trainers append their epochs there; with
    `progress` False they print nothing.
    """
    from recstack.models import build  # looked up at each call: a patched registry (tests watch builds) holds

    tick = time.perf_counter()
    model = build(entry.name, config.model_config_for(entry))  # the experiment seed unless the entry sets one
    if isinstance(model, UsesDataset):  # models that read side information (item texts)
        model.use_dataset(dataset)
    setup_seconds = time.perf_counter() - tick
    options = FitOptions(mask_history=config.mask_history, log_path=log, progress=progress,
                         label=entry.display if log is not None else None, cold_users=_policy(config, cold_users))
    tick = time.perf_counter()
    model.fit(split.train, split.valid, options=options)
    return Fitted(model, time.perf_counter() - tick, setup_seconds)


def ranker_for(config: ExperimentConfig) -> Any:
    """The ranking step of `evaluate` under the config: None (in this process) or Ray tasks (`ray:`)."""
    if config.ray is None:
        return None
    from recstack.cluster import RaySettings
    from recstack.cluster.evaluate import RayRanker

    return RayRanker(RaySettings(config.ray.address, config.ray.workers))


def scoring(config: ExperimentConfig, split: Split, part: Literal["valid", "test"], *,
            metrics: list[str] | None = None, keep_rankings: bool = False,
            cold_users: ColdUsers | None = None) -> Scoring:
    """The full-ranking evaluation of `part` under the experiment's protocol, for the caller to run
    (and time) with `evaluate`.

    `metrics` defaults to the experiment's; the history (`history`: `test_history` for test), the
    masked items (`masked_besides`), item pool, masking, cold-user policy (`cold_users` from
    `steps.cold_users`, needed only under the policy fallback) and memory budget are always the
    experiment's, so a tuning trial's valid figure equals the final run's.
    """
    return Scoring(part, history(config, split, part), getattr(split, part), {
        "metrics": config.metrics if metrics is None else metrics, "ks": config.ks,
        "mask_history": config.mask_history, "exclude": masked_besides(config, split, part),
        "memory_budget_mb": config.memory_budget_mb, "precision": config.score_precision,
        "keep_rankings": keep_rankings, "item_pool": split.item_pool(part),
        "cold_users": _policy(config, cold_users)})
