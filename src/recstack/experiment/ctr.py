"""CTR experiments: `task: ctr` configs, run top to bottom into a run directory with a leaderboard.

A CTR config names its data as a ranking config does, a `ctr` section (label threshold, split
ratios, the feature fields) and CTR models from `recstack.models.ctr.CTR_MODELS`:

```yaml
task: ctr
data: ml-100k
ctr:
  threshold: 4          # rating >= 4 -> label 1 (RecBole's context-aware protocol)
  ratios: [0.8, 0.1, 0.1]
  valid_metric: AUC     # early stopping (or LogLoss); a model's own params.valid_metric wins
  features:
    - {name: user_id}
    - {name: age, kind: numeric, transform: bucketise, n_buckets: 8}
    - {name: genres, kind: multi, sep: "|"}
models:
  - {name: deepfm, params: {epochs: 20}}
```

The run loads the data (no preprocessing: every rating is a row), labels and splits the rows,
fits the features on the training rows, fits each model with early stopping on the validation
rows and writes `config.yaml`, `manifest.json` (split summary with OOV counts, timings),
`metrics.json` (valid and test AUC, LogLoss, gAUC, Calibration, fit and predict seconds),
`models/<label>/`, `predictions.parquet` (each model's test-row probabilities, which `recstack compare`
pairs across runs of one row split) and `report.md` (the leaderboard). With a `rerank` section, each retriever (a
ranking model fitted on every training row) is evaluated alone and with each CTR model reordering
its top `n`, by full ranking against the test rows labelled 1 (`rerank.json`, and a table in the
report). With `seeds: [...]` every model is trained once per seed (on one split, or one per seed with
`split_per_seed`) and metrics.json and the leaderboard hold the spread over seeds.

Semantic-ID features (issue 16, Singh et al., RecSys 2024): a field `{name: ..., kind: semantic_id,
tokens: prefix}` is computed here (`recstack.experiment.semantic_ids`: the items' content through an
RQ-VAE, cached) and handed to the data layer as codes; `hash_buckets: N` hashes a categorical field;
a model entry's `features: [...]` picks the fields it uses; `ctr.cold_items` holds a share of the
items out of training; `ctr.rare_item_rows` adds test metrics on rare- and unseen-item rows. See
docs/ctr.md.

Sequence fields (behaviour models, DiffuMIN): `{name: history, kind: sequence, max_len: 50,
positive_only: false}` is the user's latest training items before each row (`recstack.data.ctr`); it
needs timestamps and an item_id field, and only a model that reads sequences may be given it (the
others' entries leave it out with `features: [...]`); every such mistake is named before any fit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from recstack.errors import RecstackError
from recstack.experiment.config import (ExperimentConfigError, ModelEntry, TaskConfig, _Strict, check_seed_list,
                                        distinct_labels)

LEADERBOARD = ("AUC", "LogLoss", "gAUC", "Calibration")
RERANK = "rerank.json"  # retrieve-then-rank: each retriever alone and chained with each ranker


_SEMANTIC_OPTIONS = ("source", "text_encoder", "quantiser", "levels", "codebook_size", "quantiser_params", "tokens",
                     "spm_vocab", "pooling")


class FeatureEntry(_Strict):
    """One feature field (see `recstack.data.ctr.FieldSpec`).

    `hash_buckets: N` (categorical): the value is hashed into N buckets (the random-hashing baseline).
    `kind: semantic_id`: the item's semantic ID as tokens (Singh et al., RecSys 2024): codes of
    `levels` x `codebook_size` from `quantiser` over the items' `source` content
    (`recstack.experiment.semantic_ids`), or, with `source: column`, read from the item-table
    column `column` (default: the field's name); `tokens` unigram | bigram | prefix | spm."""

    name: str
    kind: Literal["categorical", "numeric", "multi", "semantic_id", "sequence"] = "categorical"
    table: Literal["user", "item"] | None = None
    column: str | None = None
    transform: Literal["normalise", "bucketise"] = "normalise"
    n_buckets: PositiveInt = 10
    sep: str = "|"
    hash_buckets: int | None = None
    # semantic_id only (plain str / int, checked below, so that a bad value's message names the field)
    source: str = "text"
    text_encoder: str = "minilm"
    quantiser: str = "rqvae"
    levels: int = 3
    codebook_size: int = 64
    quantiser_params: dict[str, Any] = Field(default_factory=dict)
    tokens: str = "prefix"
    spm_vocab: int = 1000
    pooling: str = "sum"
    # sequence only: the latest max_len training items before the row, only the positives if positive_only
    max_len: int = 50
    positive_only: bool = False

    @model_validator(mode="after")
    def _options_of_its_kind(self) -> "FeatureEntry":
        from recstack.data.ctr import MAX_SEQUENCE_LEN
        from recstack.data.semantic_tokens import TOKEN_SCHEMES

        given = self.model_fields_set
        where = f"feature {self.name!r}"
        if self.kind != "sequence" and {"max_len", "positive_only"} & given:
            raise ValueError(f"{where}: max_len/positive_only apply to kind: sequence only")
        if self.kind == "sequence":
            if not 1 <= self.max_len <= MAX_SEQUENCE_LEN:
                raise ValueError(f"{where}: max_len {self.max_len} is outside 1..{MAX_SEQUENCE_LEN} (the limit on a "
                                 f"sequence field); give max_len: {MAX_SEQUENCE_LEN} or less")
            extra = [key for key in ("table", "column", "hash_buckets", *_SEMANTIC_OPTIONS) if key in given]
            if extra:
                raise ValueError(f"{where}: {', '.join(extra)} do not apply to kind: sequence (the user's training "
                                 "items)")
            return self
        if self.kind != "numeric" and {"transform", "n_buckets"} & given:
            raise ValueError(f"{where}: transform/n_buckets apply to kind: numeric only")
        if self.kind != "multi" and "sep" in given:
            raise ValueError(f"{where}: sep applies to kind: multi only")
        if self.kind != "categorical" and "hash_buckets" in given:
            raise ValueError(f"{where}: hash_buckets applies to kind: categorical only")
        for key in ("hash_buckets", "levels", "codebook_size", "spm_vocab"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{where}: {key} must be a positive integer, got {value}")
        if self.kind != "semantic_id":
            extra = [key for key in _SEMANTIC_OPTIONS if key in given]
            if extra:
                raise ValueError(f"{where}: {', '.join(extra)} apply to kind: semantic_id only")
            return self
        if self.table == "user":
            raise ValueError(f"{where}: a semantic_id describes items; table: user is not possible")
        if self.tokens not in TOKEN_SCHEMES:
            raise ValueError(f"{where}: tokens must be one of {', '.join(TOKEN_SCHEMES)}, got {self.tokens!r}")
        if self.tokens != "spm" and "spm_vocab" in given:
            raise ValueError(f"{where}: spm_vocab applies to tokens: spm only")
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"{where}: pooling must be sum or mean, got {self.pooling!r}")
        if self.source == "column":
            computed = [key for key in ("text_encoder", "quantiser", "levels", "codebook_size", "quantiser_params")
                        if key in given]
            if computed:
                raise ValueError(f"{where}: source: column reads precomputed codes; {', '.join(computed)} apply to "
                                 "codes computed from content (source: text or structure)")
            return self
        if "column" in given:
            raise ValueError(f"{where}: column applies to source: column (codes in the item table) only")
        if self.source != "text" and "text_encoder" in given:
            raise ValueError(f"{where}: text_encoder applies to source: text only")
        from recstack.experiment.semantic_ids import check_settings

        try:
            check_settings(self.semantic_settings())
        except (RecstackError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        return self

    def semantic_settings(self):
        """How the codes are computed (None: read from the item table, or not a semantic_id field)."""
        if self.kind != "semantic_id" or self.source == "column":
            return None
        from recstack.experiment.semantic_ids import SemanticIDSettings

        return SemanticIDSettings(self.source, self.text_encoder, self.quantiser, self.levels, self.codebook_size,
                                  dict(self.quantiser_params))

    def spec(self):
        from recstack.data.ctr import FieldSpec

        return FieldSpec(self.name, self.kind, self.table, self.transform, self.n_buckets, self.sep,
                         column=self.column, hash_buckets=self.hash_buckets, tokens=self.tokens,
                         spm_vocab=self.spm_vocab, pooling=self.pooling, max_len=self.max_len,
                         positive_only=self.positive_only)


class CTRModelEntry(ModelEntry):
    """A CTR model entry; `features` names the `ctr.features` fields it uses (default: all of them),
    so that one config compares feature sets (e.g. item_id against its semantic ID) on one split."""

    features: list[str] | None = Field(default=None, min_length=1)


class CTRSection(_Strict):
    threshold: float = 4.0
    ratios: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1], min_length=3, max_length=3)
    valid_metric: Literal["AUC", "LogLoss"] = "AUC"
    features: list[FeatureEntry] = Field(min_length=1)
    # a share of the items held out of training entirely, their rows in validation and test
    # (recstack.data.ctr.item_cold_split): the new-item setting; 0 = the plain random row split
    cold_items: float = Field(default=0.0, ge=0.0, lt=1.0)
    # report test AUC/LogLoss on the rows whose item has fewer training rows than this (and on the
    # rows whose item has none) beside the overall figures; None: not reported
    rare_item_rows: PositiveInt | None = None

    @field_validator("ratios")
    @classmethod
    def _positive_train(cls, ratios: list[float]) -> list[float]:
        if any(r < 0 for r in ratios) or ratios[0] <= 0:
            raise ValueError(f"ratios must be non-negative with a positive training share, got {ratios}")
        return ratios

    @model_validator(mode="after")
    def _cold_items_need_a_place(self) -> "CTRSection":
        if self.cold_items > 0 and self.ratios[1] + self.ratios[2] <= 0:
            raise ValueError("cold_items puts the held-out items' rows in validation and test; give ratios with a "
                             "validation or test share")
        return self

    @field_validator("features")
    @classmethod
    def _distinct(cls, features: list[FeatureEntry]) -> list[FeatureEntry]:
        names = [f.name for f in features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"feature {repeated[0]!r} is listed twice")
        return features


class RerankSection(_Strict):
    """Retrieve then rank: each retriever alone, then with each ranker reordering its top `n`."""

    n: PositiveInt = 100
    retrievers: list[ModelEntry] = Field(min_length=1)  # ranking models (recstack.models.MODELS)
    rankers: list[str] | None = None  # labels of CTR model entries; None: every one
    # rated: the CTR models as fitted above (P(rating >= threshold | rated)); observed: each ranker refitted
    # on every training row as label 1 plus n_negatives unrated items per row as label 0 (P(rated))
    ranker_rows: Literal["rated", "observed"] = "rated"
    n_negatives: PositiveInt = 4
    metrics: list[str] = Field(default_factory=lambda: ["NDCG", "Recall", "Hit"], min_length=1)
    ks: list[PositiveInt] = Field(default_factory=lambda: [10, 20], min_length=1)

    def labels(self) -> list[str]:
        from recstack.evaluate.evaluator import parse_metric_labels

        return [f"{name}@{k}" for name, k in parse_metric_labels(self.metrics, self.ks)]


class CTRExperimentConfig(TaskConfig):
    """A `task: ctr` experiment; see the module docstring."""

    task: Literal["ctr"]
    ctr: CTRSection
    models: list[CTRModelEntry] = Field(min_length=1)
    rerank: RerankSection | None = None
    # multi-seed: every model trained once per seed on the same split, unless `split_per_seed` draws the
    # row split with each seed too; the leaderboard shows mean ± sd over seeds (docs/ctr.md)
    seeds: list[int] | None = None
    split_per_seed: bool = False

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return check_seed_list(seeds)

    @model_validator(mode="after")
    def _check(self) -> "CTRExperimentConfig":
        if self.data.files is not None:
            raise ValueError("a CTR experiment splits its rows itself (random 8:1:1 by 'ctr.ratios'); give the data "
                             "as 'dataset' or 'path', not pre-split 'files'")
        if self.seeds is None and self.split_per_seed:
            raise ValueError("split_per_seed re-draws the split with each of 'seeds'; give seeds: [...] too")
        if self.seeds is not None:
            for position, entry in enumerate(self.models):
                if "seed" in entry.params:
                    raise ValueError(f"models[{position}] ({entry.display}): params.seed is fixed, but 'seeds' gives "
                                     "every model each of its seeds in turn; remove params.seed (or 'seeds')")
        seen = distinct_labels(self.models)
        fields = [f.name for f in self.ctr.features]
        for position, entry in enumerate(self.models):
            try:
                self.model_config_for(entry)
            except RecstackError as exc:
                raise ValueError(f"models[{position}] ({entry.display}): {exc}") from None
            unknown = [name for name in entry.features or [] if name not in fields]
            if unknown:
                raise ValueError(f"models[{position}] ({entry.display}): feature {unknown[0]!r} is not a field of "
                                 f"ctr.features ({', '.join(fields)})")
            repeated = sorted({name for name in entry.features or [] if entry.features.count(name) > 1})
            if repeated:
                raise ValueError(f"models[{position}] ({entry.display}): feature {repeated[0]!r} is listed twice")
            self._check_sequences(position, entry)
        if self.rerank is not None:
            self._check_rerank(seen)
        return self

    def _check_sequences(self, position: int, entry: CTRModelEntry) -> None:
        """Sequence fields only for the models that read them, and with an item_id field to share ids with."""
        from recstack.data.ctr import FeatureError, check_sequence_specs
        from recstack.models.ctr import CTR_MODELS

        where = f"models[{position}] ({entry.display})"
        names = set(self.features_of(entry))
        chosen = [f for f in self.ctr.features if f.name in names]
        sequences = [f.name for f in chosen if f.kind == "sequence"]
        reads = getattr(CTR_MODELS.resolve(entry.name), "reads_sequences", False)
        if sequences and not reads:
            raise ValueError(f"{where}: feature {sequences[0]!r} is a sequence field, which {entry.name} does not "
                             "read; give this entry features: [...] without it (or use a behaviour model: diffumin)")
        if reads and len(sequences) != 1:
            raise ValueError(f"{where}: {entry.name} reads exactly one sequence field, got "
                             f"{', '.join(sequences) or 'none'}; add e.g. {{name: history, kind: sequence, max_len: 50}}"
                             " to ctr.features (or pick one with this entry's features)")
        try:
            check_sequence_specs([f.spec() for f in chosen])
        except FeatureError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def _check_rerank(self, labels: set[str]) -> None:
        from recstack.models import build

        rerank = self.rerank
        try:
            rerank.labels()
        except RecstackError as exc:
            raise ValueError(f"rerank.metrics: {exc}") from None
        for position, entry in enumerate(rerank.retrievers):
            try:
                build(entry.name, entry.params)
            except RecstackError as exc:
                raise ValueError(f"rerank.retrievers[{position}] ({entry.display}): {exc}") from None
        for ranker in rerank.rankers or []:
            if ranker not in labels:
                raise ValueError(f"rerank.rankers: {ranker!r} is not the label of a CTR model entry "
                                 f"(labels: {', '.join(sorted(labels))})")

    def features_of(self, entry: CTRModelEntry | None = None) -> tuple[str, ...]:
        """The field names `entry` uses, in `ctr.features` order (None or no `features`: every field)."""
        chosen = None if entry is None or entry.features is None else set(entry.features)
        return tuple(f.name for f in self.ctr.features if chosen is None or f.name in chosen)

    def model_config_for(self, entry: ModelEntry, seed: int | None = None):
        """The validated model config of `entry`; `seed` (default: the experiment's) is the model seed."""
        from recstack.models.ctr import CTR_MODELS
        from recstack.models.protocol import make_config

        cls = CTR_MODELS.resolve(entry.name)
        return make_config(cls.Config, {"valid_metric": self.ctr.valid_metric, "seed": self.seed if seed is None else seed,
                                        **entry.params})

    @property
    def run_seeds(self) -> list[int]:
        """The model seeds of the run: `seeds`, else [`seed`]."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def split_seed(self, seed: int) -> int:
        """The seed the row split of repetition `seed` is drawn with."""
        return seed if self.split_per_seed else self.seed

    def check_devices(self, source: str | None = None) -> None:
        from recstack.train.trainer import resolve_device

        for position, entry in enumerate(self.models):
            device = self.model_config_for(entry).device
            if device not in ("auto", "cpu"):
                try:
                    resolve_device(device)
                except RecstackError as exc:
                    where = f"{source}: " if source else ""
                    raise ExperimentConfigError(f"{where}models[{position}] ({entry.display}): {exc}") from None

    def resolved(self) -> "CTRExperimentConfig":
        return self

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        # a feature keeps only the options it was given (the others do not apply to its kind)
        out["ctr"]["features"] = [{"name": f.name, **f.model_dump(mode="json", exclude_unset=True)}
                                  for f in self.ctr.features]
        out["models"] = [{**e.model_dump(mode="json", exclude_none=True),
                          "params": self.model_config_for(e).model_dump(mode="json")} for e in self.models]
        return out


def is_ctr(raw: Any) -> bool:
    """A mapping or config that describes a CTR experiment (`task: ctr`)."""
    return isinstance(raw, CTRExperimentConfig) or (isinstance(raw, dict) and raw.get("task") == "ctr")


def parse_ctr_config(raw: dict[str, Any] | CTRExperimentConfig, source: str = "config") -> CTRExperimentConfig:
    return CTRExperimentConfig.parse(raw, source)


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class CTRRunResult:
    run_dir: Path
    metrics: dict[str, dict[str, Any]]
    split: Any  # recstack.data.ctr.CTRSplit
    dataset: Any
    models: dict[str, Any]
    config: CTRExperimentConfig
    rerank: dict[str, dict[str, Any]] = field(default_factory=dict)  # retrieve-then-rank, as rerank.json


def _fmt(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _metric_cell(record: dict[str, Any], metric: str) -> str:
    """A test figure as the leaderboard shows it: mean ± sd over seeds in a multi-seed run."""
    from recstack.experiment.seeds import spread_of

    cell = spread_of(record, "test", metric)
    return _fmt(record["test"].get(metric)) if cell is None or cell.sd is None else cell.shown()


def seeds_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    """A multi-seed run's test AUC per seed and the test over seeds against the best model."""
    from recstack.experiment import seeds

    first = next(iter(metrics.values()))
    run_seeds = [int(seed) for seed in first.get("per_seed", {})]
    lines = ["| model | " + " | ".join(f"seed {seed}" for seed in run_seeds) + " | vs best over seeds |",
             "|---|" + "---|" * (len(run_seeds) + 1)]
    for label, record in metrics.items():
        values = dict(seeds.per_seed_values(record, "test", "AUC"))
        test = record.get("test_AUC_vs_best_across_seeds")
        versus = "best" if test is None else (
            f"p {'-' if test['p'] is None else format(test['p'], '.2g')} (better on {test['better_on']}, worse on "
            f"{test['worse_on']} of {test['n_seeds']} seeds)")
        lines.append(f"| {label} | " + " | ".join(_fmt(values.get(seed)) for seed in run_seeds) + f" | {versus} |")
    note = seeds.power_note(len(run_seeds))
    return "\n".join(lines + ([f"\n{note}."] if note else []))


def ranked(metrics: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, bool] | None]:
    """Labels by test AUC, best first (a multi-seed run: by the mean over seeds), and for a multi-seed
    run whether each row's interval over seeds overlaps the next row's (None for one seed)."""
    from recstack.experiment import seeds

    def auc_of(label: str) -> float:
        value = metrics[label]["test"].get("AUC")
        return value if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")

    order = sorted(metrics, key=lambda label: -auc_of(label))  # stable: ties keep the config's order
    if not any("across_seeds" in record for record in metrics.values()):
        return order, None
    spreads = [seeds.spread_of(metrics[label], "test", "AUC") for label in order]
    marks = seeds.overlaps_next([(c.low, c.high) if c else (None, None) for c in spreads])
    return order, dict(zip(order, marks))


def leaderboard_title(metrics: dict[str, dict[str, Any]]) -> str:
    _, marks = ranked(metrics)
    if marks is None:
        return "sorted by test AUC"
    n = len(next(iter(metrics.values())).get("seeds", []))
    return f"sorted by the mean test AUC over {n} seeds; ≈: its interval over seeds overlaps the next row's"


def item_slice_masks(split: Any, rare_below: int) -> dict[str, np.ndarray]:
    """Test-row masks: the item has fewer than `rare_below` training rows ("rare"), or none ("unseen")."""
    counts = np.bincount(split.train.item, minlength=split.features.item_index.shape[0])[split.test.item]
    return {"rare": counts < rare_below, "unseen": counts == 0}


def item_slices(split: Any, p: np.ndarray, rare_below: int) -> dict[str, Any]:
    """Test metrics on the rows whose item is rare in training (< `rare_below` training rows) and on
    the rows whose item has no training row at all: where an item-id embedding has learnt little or
    nothing and only shared features (a semantic ID's coarse tokens) can carry over (Singh et al.)."""
    from recstack.evaluate.ctr import auc, auc_interval, log_loss

    test = split.test
    out: dict[str, Any] = {"rare_below": int(rare_below)}
    for name, mask in item_slice_masks(split, rare_below).items():
        label = test.label[mask]
        entry: dict[str, Any] = {"rows": int(mask.sum()), "items": int(len(np.unique(test.item[mask]))),
                                 "positive_rate": round(float(label.mean()), 6) if len(label) else None}
        if 0 < label.sum() < len(label):  # both classes: AUC is defined
            entry.update(AUC=auc(label, p[mask]), LogLoss=log_loss(label, p[mask]),
                         AUC_ci=list(auc_interval(label, p[mask])))
        out[name] = entry
    return out


def _slice_tests(metrics: dict[str, dict[str, Any]], predictions: dict[str, np.ndarray], split: Any,
                 rare_below: int) -> None:
    """On each item slice, each model against the model with the best AUC there: DeLong's paired test
    on the slice's rows (the same rows for every model: the rows depend on the seed, not the fields)."""
    from recstack.evaluate.ctr import delong_test

    for name, mask in item_slice_masks(split, rare_below).items():
        truth = split.test.label[mask]
        if len(predictions) < 2 or not 0 < truth.sum() < len(truth) - 1:
            continue
        best = max(predictions, key=lambda model: metrics[model]["test_items"][name].get("AUC", float("-inf")))
        for model, p in predictions.items():
            if model != best:
                metrics[model]["test_items"][name]["AUC_vs_best"] = {
                    "best": best, "test": "DeLong's paired test on AUC",
                    "p": delong_test(truth, p[mask], predictions[best][mask])}


def items_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    """Overall test AUC beside the rare-item and unseen-item slices', one row per model."""
    first = next((r["test_items"] for r in metrics.values() if "test_items" in r), None)
    if first is None:
        return "(no slice: rare_item_rows is not set)"

    def cell(entry: dict[str, Any], metric: str) -> str:
        value = entry.get(metric)
        if value is None:
            return "-"
        ci = entry.get("AUC_ci") if metric == "AUC" else None
        return f"{value:.4f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    def versus(entry: dict[str, Any]) -> str:
        test = entry.get("AUC_vs_best")
        if test is None:
            return "best" if "AUC" in entry else "-"
        return "-" if test.get("p") is None else f"{test['p']:.2g}"

    rare, unseen = first["rare"], first["unseen"]
    lines = [f"| model | AUC | LogLoss | rare AUC ({rare['rows']:,} rows, {rare['items']:,} items) | rare LogLoss "
             f"| rare AUC p vs best | unseen AUC ({unseen['rows']:,} rows, {unseen['items']:,} items) "
             "| unseen LogLoss | unseen AUC p vs best |", "|---|---|---|---|---|---|---|---|---|"]
    for label, record in metrics.items():
        items = record.get("test_items", {})
        rare, unseen = items.get("rare", {}), items.get("unseen", {})
        lines.append(f"| {label} | {_metric_cell(record, 'AUC')} | {_metric_cell(record, 'LogLoss')} | "
                     f"{cell(rare, 'AUC')} | {cell(rare, 'LogLoss')} | {versus(rare)} | "
                     f"{cell(unseen, 'AUC')} | {cell(unseen, 'LogLoss')} | {versus(unseen)} |")
    return "\n".join(lines)


def leaderboard_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    order, marks = ranked(metrics)
    overlap = [] if marks is None else ["≈"]
    lines = ["| model | " + " | ".join([*LEADERBOARD, *overlap]) + " | AUC 95% CI | AUC p vs best | gAUC 95% CI "
             "| gAUC p vs best | fit s | best epoch |", "|---|" + "---|" * (len(LEADERBOARD) + len(overlap) + 6)]

    def interval(ci: Any) -> str:
        return f"{_fmt(ci[0])}-{_fmt(ci[1])}" if ci else "-"

    def p_value(test: dict[str, Any] | None) -> str:
        p = (test or {}).get("p")
        return "-" if p is None else f"{p:.2g}"

    for label in order:
        record = metrics[label]
        mark = [] if marks is None else ["≈" if marks[label] else ""]
        lines.append(f"| {label} | " + " | ".join([*(_metric_cell(record, m) for m in LEADERBOARD), *mark])
                     + f" | {interval(record.get('test_AUC_ci'))} | {p_value(record.get('test_AUC_vs_best'))} "
                     f"| {interval(record.get('test_gAUC_ci'))} | {p_value(record.get('test_vs_best'))} "
                     f"| {record['fit_seconds']:.1f} | {record.get('best_epoch', '-')} |")
    return "\n".join(lines)


def leaderboard_table(metrics: dict[str, dict[str, Any]]):
    from rich.table import Table

    order, marks = ranked(metrics)
    table = Table(title=f"CTR leaderboard (test rows; {leaderboard_title(metrics)})")
    for column in ("model", *LEADERBOARD, *([] if marks is None else ["≈"]), "fit s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label in order:
        record = metrics[label]
        mark = [] if marks is None else ["≈" if marks[label] else ""]
        table.add_row(label, *(_metric_cell(record, m) for m in LEADERBOARD), *mark, f"{record['fit_seconds']:.1f}")
    return table


def run_ctr_experiment(config: CTRExperimentConfig | dict[str, Any], *, run_dir: str | os.PathLike | None = None,
                       progress: bool = True, console: Any = None) -> CTRRunResult:
    """Label, split, fit features, fit and evaluate every CTR model, write the run directory."""
    from recstack.data.ctr import make_ctr_split
    from recstack.evaluate.ctr import auc_interval, ctr_metrics, gauc_interval, per_user_auc
    from recstack.experiment import rundir
    from recstack.experiment.run import _check_destination, _claim_run_dir, _versions, load_data, progress_printer
    from recstack.models.ctr import CTR_MODELS
    from recstack.train.options import FitOptions

    config = parse_ctr_config(config)
    _check_destination(config, run_dir)
    console, say = progress_printer(progress, console)

    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    say(f"[bold]recstack[/bold] CTR: loading data ({config.data.label}) ...")
    dataset = load_data(config)
    run_seeds = config.run_seeds
    splits: dict[tuple[int, tuple[str, ...]], Any] = {}
    codes: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}  # semantic IDs by their settings, computed once
    semantic_info: dict[str, dict[str, Any]] = {}  # by field: the codes' provenance, for the manifest

    def codes_for(names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The semantic IDs of the semantic_id fields among `names` (recstack.experiment.semantic_ids)."""
        from recstack.experiment.semantic_ids import semantic_id_codes

        out = {}
        for entry in config.ctr.features:
            settings = entry.semantic_settings() if entry.name in names else None
            if settings is None:
                continue
            key = json.dumps(settings.key(), sort_keys=True)
            if key not in codes:
                say(f"  semantic IDs for {entry.name}: {settings.quantiser} {settings.levels} x "
                    f"{settings.codebook_size} over the items' {settings.source} ...")
                codes[key] = semantic_id_codes(dataset, settings, cache_dir=config.cache_dir)
            out[entry.name], semantic_info[entry.name] = codes[key]
        return out

    def split_for(seed: int, names: tuple[str, ...] | None = None):
        """The row split of repetition `seed` (one split for all seeds unless split_per_seed) with the
        fields `names` (default: every field). The rows depend on the seed only, so every feature set
        of one seed is scored on the same test rows."""
        names = config.features_of() if names is None else names
        key = (config.split_seed(seed), names)
        if key not in splits:
            splits[key] = make_ctr_split(dataset, [f.spec() for f in config.ctr.features if f.name in names],
                                         threshold=config.ctr.threshold, ratios=config.ctr.ratios, seed=key[0],
                                         codes=codes_for(names), cold_items=config.ctr.cold_items)
        return splits[key]

    split = split_for(run_seeds[0])  # the analysis split: its models are saved, tested and reranked
    data_seconds = time.perf_counter() - clock
    summary = split.summary()
    say(f"  {len(dataset.interactions):,} rows -> train {len(split.train):,} / valid {len(split.valid):,} / test "
        f"{len(split.test):,}; positive rate {split.train.positive_rate:.3f}; {split.features.n_fields} fields, "
        f"{split.features.n_ids:,} ids ({data_seconds:.1f} s)")
    fingerprint = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    models: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    curves: dict[str, Any] = {}
    per_user: dict[str, Any] = {}
    test_predictions: dict[str, np.ndarray] = {}
    writer = _claim_run_dir(config, dataset, started, fingerprint, run_dir)
    with writer as tmp:
        for position, entry in enumerate(config.models, start=1):
            label = entry.display
            records: dict[int, dict[str, Any]] = {}
            for seed in run_seeds:
                first = seed == run_seeds[0]
                data_split = split_for(seed, config.features_of(entry))
                of_seed = f" (seed {seed})" if config.seeds is not None else ""
                say(f"[{position}/{len(config.models)}] [bold]{label}[/bold]{of_seed} fitting ...")
                model = CTR_MODELS.resolve(entry.name)(config.model_config_for(entry, seed))
                clock = time.perf_counter()
                log = rundir.log_path(tmp, label if first else f"{label}@seed{seed}")
                model.fit(data_split.train, data_split.valid,
                          options=FitOptions(log_path=log, progress=progress, label=label))
                fit_seconds = time.perf_counter() - clock
                record: dict[str, Any] = {"model": entry.name, "fit_seconds": round(fit_seconds, 3),
                                          "best_epoch": model.best_epoch_, "epochs_run": len(model.history_)}
                for part in ("valid", "test"):
                    data = getattr(data_split, part)
                    clock = time.perf_counter()
                    p = model.predict(data)
                    record[f"{part}_predict_seconds"] = round(time.perf_counter() - clock, 3)
                    record[part] = ctr_metrics(data.label, p, data.user) if len(data) else {}
                    if part == "test" and len(data):
                        users_auc = per_user_auc(data.label, p, data.user)
                        record["test_gAUC_ci"] = list(gauc_interval(users_auc))
                        record["test_AUC_ci"] = list(auc_interval(data.label, p))
                        if config.ctr.rare_item_rows is not None:
                            record["test_items"] = item_slices(data_split, p, config.ctr.rare_item_rows)
                        if first:
                            per_user[label], test_predictions[label] = users_auc, p
                records[seed] = record
                if first:
                    curves[label] = model.history_
                    models[label] = model
                    model.save(rundir.model_dir(tmp, label))
                say(f"      fit {fit_seconds:.1f} s (best epoch {model.best_epoch_}); valid AUC "
                    f"{_fmt(record['valid'].get('AUC'))}, test AUC {_fmt(record['test'].get('AUC'))}, test LogLoss "
                    f"{_fmt(record['test'].get('LogLoss'))}")
            metrics[label] = records[run_seeds[0]] if config.seeds is None else _across_seeds(records)
        _paired_tests(metrics, per_user, split.test.label, test_predictions)
        if config.ctr.rare_item_rows is not None:
            _slice_tests(metrics, test_predictions, split, config.ctr.rare_item_rows)
        if config.seeds is not None:
            _seed_tests(metrics)
        rerank = (_run_rerank(config, dataset, split, models, say, progress,
                              lambda entry: split_for(run_seeds[0], config.features_of(entry)))
                  if config.rerank is not None else None)
        if rerank is not None:
            rundir.write_json(tmp / RERANK, rerank)
        if test_predictions:
            write_predictions(tmp / rundir.PREDICTIONS, split.test, test_predictions)
        finished = datetime.now(timezone.utc)
        manifest = {"run_name": writer.path.name, "task": "ctr", "started": started.isoformat(),
                    "finished": finished.isoformat(), "data_seconds": round(data_seconds, 3),
                    "dataset": dataset.name, "split": summary, "split_fingerprint": split.fingerprint(),
                    "rows_fingerprint": split.rows_fingerprint(),
                    **({} if config.seeds is None else {"seeds": {
                        "seeds": run_seeds, "split_per_seed": config.split_per_seed, "analysis_seed": run_seeds[0],
                        "split_fingerprints": {str(seed): split_for(seed).fingerprint() for seed in run_seeds}}}),
                    "features": {"fields": split.features.fields, "n_ids": split.features.n_ids,
                                 "info": split.features.info},
                    **({"model_features": {
                        entry.display: {"fields": list(config.features_of(entry)),
                                        "n_ids": split_for(run_seeds[0], config.features_of(entry)).features.n_ids,
                                        "split_fingerprint": split_for(run_seeds[0],
                                                                       config.features_of(entry)).fingerprint()}
                        for entry in config.models if entry.features is not None}}
                       if any(entry.features is not None for entry in config.models) else {}),
                    **({"semantic_ids": semantic_info} if semantic_info else {}),
                    **({"cold_items": config.ctr.cold_items} if config.ctr.cold_items else {}),
                    "versions": _versions()}
        rundir.write_yaml(tmp / rundir.CONFIG, config.to_dict())
        rundir.write_json(tmp / rundir.MANIFEST, manifest)
        rundir.write_json(tmp / rundir.METRICS, metrics)
        rundir.write_json(tmp / rundir.CURVES, curves)
        report = [f"# CTR run {writer.path.name}", "",
                  f"Data {dataset.name}: {summary['train']['rows']:,} / {summary['valid']['rows']:,} / "
                  f"{summary['test']['rows']:,} rows (random {config.ctr.ratios}, seed {config.split_seed(run_seeds[0])}), label "
                  f"rating >= {config.ctr.threshold:g}, test positive rate {summary['test']['positive_rate']:.4f}.",
                  f"Fields: {', '.join(split.features.fields)}. Test rows with an unseen (OOV) value: "
                  + ", ".join(f"{k} {v}" for k, v in summary["test"].get("oov_rows", {}).items()) + ".", "",
                  "Test rows; gAUC weighted by each user's rows; Calibration = mean prediction / positive rate; "
                  f"early stopping on validation {config.ctr.valid_metric}; {leaderboard_title(metrics)}.", "",
                  leaderboard_markdown(metrics), ""]
        if config.ctr.rare_item_rows is not None:
            report += [f"## Rare and unseen items (test rows whose item has fewer than {config.ctr.rare_item_rows} "
                       "training rows, and none)", "",
                       "The same models on the test rows of their items' slice; AUC with DeLong's 95% interval, "
                       "and DeLong's paired test against the model with the best AUC on that slice.",
                       "", items_markdown(metrics), ""]
        if config.seeds is not None:
            report += [f"## Over seeds ({len(run_seeds)} seeds"
                       + (", the row split drawn with each" if config.split_per_seed else ", one row split") + ")", "",
                       f"The leaderboard shows mean ± sd over seeds; its intervals and per-row tests are the first "
                       f"seed's ({run_seeds[0]}), whose models are saved. Test AUC per seed, and the paired t-test "
                       "over seeds against the model with the best mean:", "", seeds_markdown(metrics), ""]
        if rerank is not None:
            report += [f"## Retrieve then rank (top {config.rerank.n} reordered)", "",
                       "Full ranking over the catalogue; relevant: the test rows labelled 1; masked: the training "
                       "and validation rows; retrievers fitted on every training row; rankers "
                       + ("as fitted above (rated rows)." if config.rerank.ranker_rows == "rated" else
                          f"refitted on observed rows against {config.rerank.n_negatives} unrated items per row."),
                       "",
                       rerank_markdown(rerank, config.rerank.labels()), ""]
        (tmp / "report.md").write_text("\n".join(report))
    if progress:
        console.print(leaderboard_table(metrics))
        if rerank is not None:
            console.print(rerank_markdown(rerank, config.rerank.labels()), markup=False)
        say(f"run directory: [bold]{writer.path}[/bold]")
    return CTRRunResult(writer.path, metrics, split, dataset, models, config, rerank or {})


def write_predictions(path: Path, test: Any, predictions: dict[str, np.ndarray]) -> None:
    """Every model's test-row probabilities in long format (model, row, user, label, p): what `recstack
    compare` pairs across CTR runs without refitting or re-predicting anything."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(test)
    labels = list(predictions)
    table = pa.table({
        "model": pa.array(np.repeat(np.array(labels, dtype=object), n).tolist(), pa.string()).dictionary_encode(),
        "row": np.tile(np.arange(n, dtype=np.int32), len(labels)),
        "user": np.tile(np.asarray(test.user, dtype=np.int32), len(labels)),
        "label": np.tile(np.asarray(test.label, dtype=np.int8), len(labels)),
        "p": np.concatenate([np.asarray(predictions[label], dtype=np.float32) for label in labels]),
    })
    pq.write_table(table, path)


def _across_seeds(records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One model's metrics.json record over seeds (`recstack.experiment.seeds.aggregate`: the means as
    `valid`/`test`, `across_seeds` with sd and interval, `per_seed`), plus the analysis seed's intervals."""
    from recstack.experiment import seeds

    record = seeds.aggregate(records)
    first = records[next(iter(records))]
    for key in ("epochs_run", "test_gAUC_ci", "test_AUC_ci", "test_items"):
        if key in first:
            record[key] = first[key]  # of the analysis seed, the first: its model is saved and tested
    return record


def _seed_tests(metrics: dict[str, dict[str, Any]]) -> None:
    """Each model's per-seed test AUC against the model with the best mean test AUC: the paired t-test
    over seeds (`recstack.experiment.seeds.seed_test`); an order between models is claimed only from it."""
    from recstack.experiment import seeds

    best = max(metrics, key=lambda label: metrics[label]["test"].get("AUC") or float("-inf"))
    best_values = dict(seeds.per_seed_values(metrics[best], "test", "AUC"))
    for label, record in metrics.items():
        if label == best:
            continue
        values = dict(seeds.per_seed_values(record, "test", "AUC"))
        common = [s for s in values if values[s] is not None and best_values.get(s) is not None]
        test = seeds.seed_test(label, best, common, [values[s] for s in common], [best_values[s] for s in common])
        higher, lower, _ = test.signs
        record["test_AUC_vs_best_across_seeds"] = {
            "best": best, "test": "paired t-test over seeds on test AUC", "p": test.p if test.p == test.p else None,
            "n_seeds": test.n, "better_on": higher, "worse_on": lower}


def _paired_tests(metrics: dict[str, dict[str, Any]], per_user: dict[str, Any], labels: np.ndarray,
                  predictions: dict[str, np.ndarray]) -> None:
    """Each model against the best: its per-user test AUC against the best gAUC model's (paired t-test
    p, the same users), and its test AUC against the best AUC model's (DeLong's paired test, the same rows)."""
    from recstack.evaluate.ctr import delong_test
    from recstack.evaluate.stats import paired_test

    if len(per_user) >= 2:
        best = max(per_user, key=lambda label: metrics[label]["test"].get("gAUC", float("-inf")))
        for label, values in per_user.items():
            if label != best:
                metrics[label]["test_vs_best"] = {"best": best, "test": "paired t-test on per-user AUC",
                                                  "p": paired_test(values.auc, per_user[best].auc, "t")}
    if len(predictions) >= 2 and 0 < labels.sum() < len(labels) - 1:
        best = max(predictions, key=lambda label: metrics[label]["test"].get("AUC", float("-inf")))
        for label, p in predictions.items():
            if label != best:
                metrics[label]["test_AUC_vs_best"] = {"best": best, "test": "DeLong's paired test on AUC",
                                                      "p": delong_test(labels, p, predictions[best])}


# ---- retrieve then rank ---------------------------------------------------------------------------

def rerank_markdown(rerank: dict[str, dict[str, Any]], labels: list[str]) -> str:
    lines = ["| entry | " + " | ".join(labels) + " | fit s |", "|---|" + "---|" * (len(labels) + 1)]
    for name, record in rerank.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(record["test"].get(m)) for m in labels)
                     + f" | {record.get('fit_seconds', 0.0):.1f} |")
    return "\n".join(lines)


def _run_rerank(config: CTRExperimentConfig, dataset: Any, split: Any, rankers: dict[str, Any], say: Any,
                progress: bool, split_of: Any = None) -> dict[str, dict[str, Any]]:
    """Each retriever alone, then chained with each ranker, on the test rows labelled 1."""
    from recstack.data.interactions import Interactions
    from recstack.evaluate.evaluator import evaluate
    from recstack.models import build
    from recstack.models.ctr.rerank import RetrieveThenRank
    from recstack.train.options import FitOptions

    rerank = config.rerank
    vocab = dataset.interactions

    def part(data, positives: bool = False) -> Interactions:
        keep = data.label > 0 if positives else slice(None)
        return Interactions(data.user[keep], data.item[keep], vocab.users, vocab.items)

    train = part(split.train)
    history, valid, test = train.concat(part(split.valid)), part(split.valid, True), part(split.test, True)
    names = rerank.rankers or list(rankers)
    if rerank.ranker_rows == "observed":
        rankers = _observed_rankers(config, split, names, vocab.n_users, vocab.n_items, say, progress, split_of)
    out: dict[str, dict[str, Any]] = {}
    for entry in rerank.retrievers:
        label = entry.display
        say(f"[rerank] [bold]{label}[/bold] fitting ...")
        retriever = build(entry.name, {**entry.params})
        clock = time.perf_counter()
        retriever.fit(train, valid, options=FitOptions(progress=progress, label=label))
        fit_seconds = time.perf_counter() - clock
        chains = [(label, retriever)] + [(f"{label}>{r}", RetrieveThenRank(retriever, rankers[r], rerank.n))
                                         for r in names]
        for name, scorer in chains:
            clock = time.perf_counter()
            result = evaluate(scorer, history=history, test=test, metrics=rerank.metrics, ks=rerank.ks)
            out[name] = {"test": {k: result.metrics[k] for k in rerank.labels()},
                         "fit_seconds": round(fit_seconds, 3), "eval_seconds": round(time.perf_counter() - clock, 3)}
            say(f"      {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in out[name]["test"].items()))
    return out


def _observed_rankers(config: CTRExperimentConfig, split: Any, names: list[str], n_users: int, n_items: int,
                      say: Any, progress: bool, split_of: Any = None) -> dict[str, Any]:
    """Each named CTR entry refitted on observed-vs-unrated rows (training negatives avoid training pairs,
    validation negatives avoid training and validation pairs; test rows are never read)."""
    import numpy as np

    from recstack.data.ctr import CTRData, observed_rows
    from recstack.models.ctr import CTR_MODELS
    from recstack.train.options import FitOptions

    rerank = config.rerank
    rng = np.random.default_rng(config.seed)
    train_keys = split.train.user.astype(np.int64) * n_items + split.train.item
    valid_keys = split.valid.user.astype(np.int64) * n_items + split.valid.item
    train = observed_rows(split.train, n_items, rerank.n_negatives, train_keys, rng)
    valid = observed_rows(split.valid, n_items, rerank.n_negatives, np.concatenate([train_keys, valid_keys]), rng)
    entries = {entry.display: entry for entry in config.models}
    out = {}
    for name in names:
        entry = entries[name]
        say(f"[rerank] [bold]{name}[/bold] refitting on observed rows ({len(train):,}) ...")
        model = CTR_MODELS.resolve(entry.name)(config.model_config_for(entry))
        # the same rows for every ranker, encoded with the entry's own fields (its `features`)
        features = split.features if split_of is None else split_of(entry).features
        mine = [CTRData(features, data.user, data.item, data.label, data.rank) for data in (train, valid)]
        out[name] = model.fit(*mine, options=FitOptions(progress=progress, label=f"{name}-observed"))
    return out
