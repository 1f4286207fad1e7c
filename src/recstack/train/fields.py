"""`TrainingFields`: the loop settings every trained model's config carries, under one spelling.

A model's config inherits them (`class LightGCNConfig(ModelConfig, TrainingFields)`) and restates a
field only to change its default; the `Trainer` reads them as a typed object
(`TrainerConfig.from_fields`), so a model never maps its fields onto the loop by hand. Like
LensKit's shared config mixins. torch-free: an experiment validates these before any model trains.
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel, PositiveFloat, PositiveInt, field_validator

from recstack.errors import RecstackError
from recstack.evaluate.accuracy import METRICS
from recstack.evaluate.evaluator import parse_metric_labels


class TrainingFields(BaseModel):
    """Epoch-loop settings shared by every model trained with the `Trainer`."""

    epochs: PositiveInt = 100  # a maximum when validation data drives early stopping
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 1024
    early_stopping_patience: PositiveInt | None = 10  # evaluations without improvement; None trains every epoch
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"  # cuda when available, else cpu
    n_threads: PositiveInt | None = None  # torch's CPU threads while training; None leaves torch's default
    # data-parallel training: N Ray Train workers, each on every N-th batch, gradients averaged
    # (all-reduce: gloo on CPU, NCCL on GPUs); 1 trains in this process (docs/scale.md)
    workers: PositiveInt = 1
    verbose: bool = True

    @field_validator("valid_metric")
    @classmethod
    def _one_metric_with_cutoff(cls, value: str) -> str:
        try:
            return check_valid_metric(value)
        except RecstackError as exc:  # pydantic reports ValueErrors with the field name
            raise ValueError(str(exc).removeprefix("valid_metric ")) from None


TRAINING_FIELDS = tuple(TrainingFields.model_fields)


def check_valid_metric(value: str) -> str:
    """'ndcg@10' -> 'NDCG@10'; anything else the trainer could not evaluate is a user error (checked when
    an experiment is read, so it fails before the first model trains rather than at this model's fit)."""
    name, at, k = value.partition("@")
    known = {metric.lower(): metric for metric in [*METRICS, "Coverage"]}
    canonical = known.get(name.strip().lower())
    if canonical is None:
        close = difflib.get_close_matches(name.strip().lower(), list(known), n=1, cutoff=0.6)
        example = f"{known[close[0]]}@{k.strip() or 10}" if close else "NDCG@10"
        hint = f"did you mean {example!r}?" if close else f"e.g. {example!r}"
        raise RecstackError(f"valid_metric {value!r} is unknown; {hint} (metrics: {', '.join(known.values())})")
    if not at or not (k.strip().isascii() and k.strip().isdigit()) or int(k) < 1:
        raise RecstackError(f"valid_metric {value!r} needs a cut-off k >= 1, e.g. '{canonical}@10'")
    (name, k), = parse_metric_labels([f"{canonical}@{int(k)}"], [])
    return f"{name}@{k}"
