"""The experiment configuration: one pydantic model, validated in full before any data is read.

A config names its data (a named dataset, three pre-split files, or one file/folder plus its
format), the preprocessing, the split, the models with their parameters, the metrics and cut-offs.
Unknown keys are rejected with the closest valid key; model names, model parameters, split
parameters, metric names and dataset names are all checked here, so a typo costs milliseconds,
not a training run. `load_config` reads YAML or TOML (by extension); relative data paths are
taken relative to the config file.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import tomllib
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator, model_validator

from recstack.errors import RecstackError
from recstack.train.fields import TrainingFields, check_valid_metric

DEFAULT_METRICS = ("Recall", "Precision", "NDCG", "MRR", "Hit", "MAP", "Coverage")
DEFAULT_KS = (10, 20)
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
COLUMN_ROLES = ("user", "item", "value", "timestamp")  # as recstack.data.load reads them
# numpy's legacy seeding and the libraries behind some models (implicit) take 32-bit seeds
SEED_MAX = 2**32 - 1


class ExperimentConfigError(RecstackError, ValueError):
    """An experiment configuration that cannot be accepted (names the file and the key)."""


def _unknown_key_message(key: str, known: set[str], where: str = "") -> str:
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{where}{hint} (valid: {', '.join(sorted(known))})"


class _Strict(BaseModel):
    """Frozen, unknown keys rejected with the closest valid key (as `ModelConfig` does)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise ValueError(_unknown_key_message(key, known))
        return data


class SplitFiles(_Strict):
    """Pre-split files: the run uses them as they are (no preprocessing, no splitting)."""

    train: str
    valid: str | None = None  # no validation part: validation metrics are not computed
    test: str
    # each user's sequence order: by timestamp (file order among ties), or as the files list it
    # (RecBole's exports, whose order may disagree with their timestamps by a second)
    order: Literal["time", "file"] = "time"


class DataConfig(_Strict):
    """Exactly one source: `dataset` (a named dataset), `files` (pre-split) or `path` (+ `format`)."""

    dataset: str | None = None
    files: SplitFiles | None = None
    path: str | None = None
    format: Literal["movielens", "atomic", "table"] | None = None
    columns: dict[str, str] | None = None
    sep: str | None = None
    name: str | None = None
    # a named dataset's knowledge graph: the source's own ("source"), the recbole wheel's files
    # whatever source the interactions came from ("recbole"), or none (recstack.data.datasets.KG_SOURCES)
    kg: Literal["source", "recbole", "none"] = "source"
    # your own knowledge graph for 'files' and 'path' sources: a triples file (head, relation, tail)
    # and a link file (item, entity), CSV or TSV with a header (recstack.data.kg.read_kg_table)
    kg_triples: str | None = None
    kg_links: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        given = [key for key in ("dataset", "files", "path") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one data source: 'dataset' (a named dataset), 'files' (train/valid/test) "
                f"or 'path' (with 'format'); got {', '.join(given) or 'none'}"
            )
        if self.kg != "source" and self.dataset is None:
            raise ValueError(f"kg: {self.kg!r} applies to a named dataset only; leave 'kg' out for 'files' and 'path'")
        if (self.kg_triples is None) != (self.kg_links is None):
            given, missing = ("kg_triples", "kg_links") if self.kg_links is None else ("kg_links", "kg_triples")
            raise ValueError(f"{given} needs {missing}: a knowledge graph is a triples file (head, relation, tail) "
                             "and a link file (item, entity); give both")
        if self.kg_triples is not None and self.dataset is not None:
            raise ValueError("kg_triples/kg_links apply to 'files' and 'path' sources; a named dataset's graph "
                             "is chosen with kg: source|recbole|none")
        if self.dataset is not None:
            from recstack.data.datasets import DATASETS

            if self.dataset not in DATASETS:
                close = difflib.get_close_matches(self.dataset, list(DATASETS), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown dataset {self.dataset!r}.{hint} Known: {', '.join(sorted(DATASETS))}")
            for key in ("columns", "sep", "format"):
                if getattr(self, key) is not None:
                    raise ValueError(f"'{key}' applies to 'files' or 'path', not to a named dataset")
        if self.format is not None and self.path is None:
            raise ValueError("'format' applies to 'path' only")
        for role in self.columns or {}:
            if role not in COLUMN_ROLES:
                raise ValueError(_unknown_key_message(role, set(COLUMN_ROLES), " in data.columns (roles map to "
                                                      "your column names, e.g. {user: userId})"))
        return self

    @property
    def label(self) -> str:
        """A short name for the data (run directory names, reports)."""
        if self.name:
            return self.name
        if self.dataset:
            return self.dataset
        source = Path(self.files.train).parent if self.files else Path(self.path or "data")
        return (source.stem if self.path else source.name) or "data"


class PreprocessingConfig(_Strict):
    """Filters applied before the split (see `recstack.data.prep.preprocess`)."""

    threshold: float | None = None
    dedup: Literal["keep", "first", "last", "max"] = "keep"  # as recstack.data.prep.preprocess takes it
    user_core: int = Field(0, ge=0)
    item_core: int = Field(0, ge=0)

    @property
    def is_default(self) -> bool:
        return self == PreprocessingConfig()


class SplitConfig(_Strict):
    """`method` plus its parameters, written either flat (`{method: random, ratios: [...]}`) or
    under `params`."""

    method: str = "random"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_params(cls, data: Any) -> Any:
        if isinstance(data, dict):
            flat = {k: v for k, v in data.items() if k not in ("method", "params")}
            if flat:
                data = {k: v for k, v in data.items() if k in ("method", "params")}
                data["params"] = {**dict(data.get("params") or {}), **flat}
        return data

    @model_validator(mode="after")
    def _known_method(self) -> "SplitConfig":
        from recstack.split import SPLITTERS

        known = _splitter_parameters(SPLITTERS.resolve(self.method))  # an unknown name: the registry's ValueError
        if known is not None:
            for key in self.params:
                if key not in known:
                    where = f" for split method {self.method!r}"
                    raise ValueError(_unknown_key_message(key, known | {"method"}, where))
        return self


def _splitter_parameters(splitter: Any) -> set[str] | None:
    """Keyword parameters a splitter accepts, or None when they cannot be read off its signature."""
    if isinstance(splitter, type) and hasattr(splitter, "model_fields"):
        return set(splitter.model_fields) - {"seed"}
    config = getattr(splitter, "Config", None)
    if config is not None and hasattr(config, "model_fields"):
        return set(config.model_fields) - {"seed"}
    if not callable(splitter):
        return None
    try:
        signature = inspect.signature(splitter)
    except (TypeError, ValueError):
        return None
    names = set()
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    data_param = positional[0].name if positional else None
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            return None
        if parameter.kind is parameter.VAR_POSITIONAL or parameter.name in (data_param, "rng", "seed"):
            continue
        names.add(parameter.name)
    return names


class ModelEntry(_Strict):
    """One model to train: a registered name (or 'package.module:Class'), its parameters, a label."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("label")
    @classmethod
    def _safe_label(cls, label: str | None) -> str | None:
        # the label names a folder in the run directory and a column in every table
        if label is not None and not _LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} must be letters, digits, '.', '_', '+' or '-' (e.g. 'ease-reg300')")
        return label

    @property
    def display(self) -> str:
        """The label, else the model name (a user class 'pkg.mod:Class' -> 'Class')."""
        return self.label or self.name.rpartition(":")[2].rpartition(".")[2]


def _numeric_kind(annotation: Any) -> str | None:
    """"int" for an int parameter (`PositiveInt`, `int | None`), "float" for a float one (`float | None`;
    an `int | float` one too), None when the annotation does not say (`Any`, a user's own type)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    args = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args]
    if not all(isinstance(a, type) and a in (int, float) for a in args):
        return None
    return "int" if set(args) == {int} else "float"


class SearchDimension(_Strict):
    """One hyper-parameter's range: `low`/`high` (`log` for scales), or `choices` (a categorical list).
    `integer` says whether the range is sampled as integers; when not given, the searched model's
    parameter type decides (an `int` field samples integers, log-scaled too; a `float` field floats),
    and where the type does not say, integral bounds without `log` do."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    integer: bool | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchDimension":
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either 'choices' or both 'low' and 'high'")
        if self.choices is None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.choices is None and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        if self.choices is not None:
            return False
        if self.integer is not None:
            return self.integer
        return float(self.low).is_integer() and float(self.high).is_integer() and not self.log


class TuneConfig(_Strict):
    """`recstack tune`: search one model's hyper-parameters on the validation part (never test)."""

    model: str
    params: dict[str, Any] = Field(default_factory=dict)  # fixed parameters
    space: dict[str, SearchDimension] = Field(min_length=1)
    n_trials: int = Field(default=20, ge=1)
    timeout_s: PositiveFloat | None = None


class SampledConfig(_Strict):
    """Sampled evaluation, only when asked: each held-out item against `n_negatives` sampled non-interacted items."""

    n_negatives: int = Field(100, ge=1)
    strategy: Literal["uniform", "popularity"] = "uniform"


class SlicesConfig(_Strict):
    """Per-slice test metrics by user or item side-table columns (user activity and item popularity always)."""

    user: list[str] = Field(default_factory=list)
    item: list[str] = Field(default_factory=list)


class ColdUsersConfig(_Strict):
    """Evaluated users whose history is (nearly) empty: counted in every evaluation and treated by one
    stated policy in every model's final evaluation and early stopping (see `ColdUsers`).

    `cold_users: skip` is short for `{policy: skip}`; `policy: fallback` names its model with
    `fallback` (default pop), fitted once on the same train data as every model.
    """

    policy: Literal["include", "skip", "fallback"] = "include"
    fallback: str | None = None  # a registered model name; only with policy fallback (default pop)
    min_history: int = Field(1, ge=1)  # fewer history events than this: cold (the policy's users)
    few_history: int = Field(5, ge=1)  # counted and reported: fewer history events than this

    @model_validator(mode="before")
    @classmethod
    def _shorthand_and_default_fallback(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"policy": data}
        if isinstance(data, dict) and data.get("policy") == "fallback" and data.get("fallback") is None:
            data = {**data, "fallback": "pop"}
        return data

    @model_validator(mode="after")
    def _fallback_with_its_policy(self) -> "ColdUsersConfig":
        if self.fallback is not None and self.policy != "fallback":
            raise ValueError(f"'fallback' is used by policy 'fallback' only, not {self.policy!r}; remove it or set "
                             "policy: fallback")
        if self.fallback is not None:
            from recstack.models import resolve

            try:
                resolve(self.fallback)  # an unknown name: the registry's did-you-mean
            except (RecstackError, ValueError) as exc:
                raise ValueError(f"fallback: {exc}") from None
        return self


class RayConfig(_Strict):
    """Where a run's evaluation and a study's trials run when not in this process (docs/scale.md):
    `address` None starts a local Ray instance with `workers` CPUs; "auto", "host:port" or
    "ray://host:port" joins a cluster. The results are the local ones (same code in each task)."""

    address: str | None = None
    workers: int = Field(2, ge=1)


def check_seed_list(seeds: list[int] | None) -> list[int] | None:
    """A multi-seed run's `seeds`: at least one, each a valid seed, none twice (None: a single-seed run)."""
    if seeds is None:
        return None
    if not seeds:
        raise ValueError("give at least one seed (e.g. seeds: [2020, 2021, 2022, 2023, 2024]), or remove 'seeds' "
                         "for a single-seed run")
    for seed in seeds:
        try:
            _check_seed(seed)
        except ValueError as exc:
            raise ValueError(f"every seed {exc}") from None
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"seed {repeated[0]} is listed more than once; each repetition needs its own seed")
    return seeds


class ExperimentConfig(_Strict):
    """Everything a run needs; see the module docstring and `default.yaml` for an example."""

    data: DataConfig
    cache_dir: str | None = None
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    models: list[ModelEntry] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1)
    ks: list[int] = Field(default_factory=lambda: list(DEFAULT_KS), min_length=1)
    valid_metric: str = "NDCG@10"
    seed: int = 2020
    output_dir: str = "runs"
    memory_budget_mb: PositiveFloat = 1024.0
    mask_history: bool = True  # False: items in the history may be recommended again (repeat consumption)
    # what the model reads to rank test users: train + valid, or train only (RecBole's and implicit's
    # protocol); the validation items stay masked either way (see docs/protocol.md)
    test_history: Literal["train_valid", "train"] = "train_valid"
    # bf16: dot-product models are ranked from bfloat16 products whose candidates are re-scored in
    # float32 (recstack.evaluate.fused); other models score in float32 either way
    score_precision: Literal["fp32", "bf16"] = "fp32"
    tune: TuneConfig | None = None
    beyond: bool = True  # beyond-accuracy and item-fairness measures of the test top-k lists
    slices: SlicesConfig = Field(default_factory=SlicesConfig)
    sampled: SampledConfig | None = None  # sampled metrics (labelled sampled_*) next to the full ranking
    cold_users: ColdUsersConfig = Field(default_factory=ColdUsersConfig)  # users without history: policy, counts
    # multi-seed runs: every model entry trained once per seed (model seed); the split keeps `seed`
    # unless `split_per_seed` re-draws it with each of these seeds (docs/experiments.md)
    seeds: list[int] | None = None
    split_per_seed: bool = False
    ray: RayConfig | None = None  # evaluation as Ray tasks and `tune --backend ray` (docs/scale.md)

    @model_validator(mode="before")
    @classmethod
    def _dataset_shorthand(cls, data: Any) -> Any:
        # `data: ml-100k` is the common case; spell it out for the validator
        if isinstance(data, dict) and isinstance(data.get("data"), str):
            data = {**data, "data": {"dataset": data["data"]}}
        # a tuning config names its model once, under `tune`
        if isinstance(data, dict) and isinstance(data.get("tune"), dict) and "models" not in data:
            tune = data["tune"]
            data = {**data, "models": [{"name": tune.get("model", ""), "params": tune.get("params", {})}]}
        return data

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, seed: int) -> int:
        return _check_seed(seed)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return check_seed_list(seeds)

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        for k in ks:
            if k < 1:
                raise ValueError(f"every cut-off k must be >= 1, got {k}")
        return sorted(set(ks))

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        from recstack.evaluate.evaluator import parse_metric_labels

        if self.data.files is not None:
            if "split" in self.model_fields_set:
                raise ValueError("'split' is not used with pre-split 'files'; remove it (the files are the split)")
            if not self.preprocessing.is_default:
                raise ValueError("'preprocessing' is not applied to pre-split 'files'; filter the files before "
                                 "splitting them, or give one file as 'path' and let recstack split it")
        try:
            labels = [f"{name}@{k}" for name, k in parse_metric_labels(self.metrics, self.ks)]
        except RecstackError as exc:
            raise ValueError(f"metrics: {exc}") from None
        if self.valid_metric not in labels:
            close = difflib.get_close_matches(self.valid_metric, labels, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"valid_metric {self.valid_metric!r} is not among the computed metrics{hint} "
                             f"(computed: {', '.join(labels)})")
        distinct_labels(self.models)
        for position, entry in enumerate(self.models):
            try:
                _check_fit_settings(self.model_config_for(entry))
            except RecstackError as exc:
                message = re.sub(r"invalid (\w+): \1: ", "", str(exc))  # make_config names the class twice
                raise ValueError(f"models[{position}] ({entry.display}): {message}") from None
        if self.tune is not None:
            self._check_search_space()
        self._check_seeds()
        return self

    def _check_seeds(self) -> None:
        if self.seeds is None:
            if self.split_per_seed:
                raise ValueError("split_per_seed re-draws the split with each of 'seeds'; give seeds: [...] too")
            return
        if self.tune is not None:
            raise ValueError("'seeds' does not combine with 'tune' (a search selects on one seed); tune first, then "
                             "run the tuned setting with seeds")
        if self.split_per_seed and self.data.files is not None:
            raise ValueError("split_per_seed cannot re-draw pre-split 'files'; give one file as 'path', or drop "
                             "split_per_seed")
        for position, entry in enumerate(self.models):
            if "seed" in entry.params:
                raise ValueError(f"models[{position}] ({entry.display}): params.seed is fixed, but 'seeds' gives "
                                 "every model each of its seeds in turn; remove params.seed (or 'seeds')")

    def _check_search_space(self) -> None:
        from recstack.models import resolve

        model_fields = resolve(self.tune.model).Config.model_fields
        fields = set(model_fields)
        for name, dimension in list(self.tune.space.items()):
            if name not in fields:
                raise ValueError("tune.space: " + _unknown_key_message(name, fields, f" for model {self.tune.model!r}"))
            if name in self.tune.params:
                raise ValueError(f"tune: {name!r} is both fixed in 'params' and searched in 'space'; keep one")
            if dimension.choices is not None:
                continue
            if dimension.integer is None:
                # the parameter's type decides: `embedding_size: {low: 16, high: 256, log: true}` must
                # sample integers, `reg: {low: 10, high: 3000, log: true}` floats (the space is a dict
                # of a frozen model: its entries are replaced, not mutated)
                kind = _numeric_kind(model_fields[name].annotation)
                dimension = dimension.model_copy(update={"integer": dimension.is_int if kind is None else kind == "int"})
                self.tune.space[name] = dimension
            if dimension.integer and not (float(dimension.low).is_integer() and float(dimension.high).is_integer()):
                raise ValueError(f"tune.space.{name}: {name!r} is sampled as integers; give integer low and high "
                                 f"(got {dimension.low:g} and {dimension.high:g})")

    def check_devices(self, source: str | None = None) -> None:
        """Every model's `device` exists on this machine. Not part of validation, so that a finished run
        stays readable on another machine; a run calls it before it reads any data."""
        for position, entry in enumerate(self.models):
            model_config = self.model_config_for(entry)
            if not isinstance(model_config, TrainingFields) or model_config.device in ("auto", "cpu"):
                continue
            device = model_config.device
            from recstack.train.trainer import resolve_device

            try:
                resolve_device(device)
            except RecstackError as exc:
                where = f"{source}: " if source else ""
                raise ExperimentConfigError(f"{where}models[{position}] ({entry.display}): {exc}") from None

    # ---- derived values ----------------------------------------------------------------
    @property
    def metric_labels(self) -> list[str]:
        from recstack.evaluate.evaluator import parse_metric_labels

        return [f"{name}@{k}" for name, k in parse_metric_labels(self.metrics, self.ks)]

    @property
    def is_multi_seed(self) -> bool:
        return self.seeds is not None

    @property
    def run_seeds(self) -> list[int]:
        """The model seeds of the run: `seeds`, else [`seed`]."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def split_seed(self, seed: int | None = None) -> int:
        """The seed the split of repetition `seed` is drawn with: `seed` under split_per_seed, else the
        experiment seed (None: the first repetition's)."""
        if self.split_per_seed:
            return self.run_seeds[0] if seed is None else seed
        return self.seed

    def for_seed(self, seed: int) -> "ExperimentConfig":
        """This experiment with `seed` as every model's default seed (one repetition of a multi-seed run)."""
        return self.model_copy(update={"seed": seed})

    def model_config_for(self, entry: ModelEntry):
        """The validated model config of `entry`; the experiment seed is the default model seed."""
        from recstack.models import make_config, resolve

        cls = resolve(entry.name)
        params = dict(entry.params)
        if "seed" in getattr(cls.Config, "model_fields", {}) and "seed" not in params:
            params["seed"] = self.seed
        return make_config(cls.Config, params)

    def resolved(self) -> "ExperimentConfig":
        """The same experiment with every label and every model parameter spelled out."""
        models = [
            ModelEntry(name=e.name, label=e.display, params=self._spelled_out(e)) for e in self.models
        ]
        data = self.data
        if data.path is not None:  # absolute paths: the run directory must reproduce its data from anywhere
            data = data.model_copy(update={"path": os.path.abspath(data.path)})
        if data.files is not None:
            data = data.model_copy(update={"files": data.files.model_copy(update={
                part: os.path.abspath(path) for part in ("train", "valid", "test")
                if (path := getattr(data.files, part)) is not None})})
        return self.model_copy(update={"models": models, "data": data})

    def _spelled_out(self, entry: ModelEntry) -> dict[str, Any]:
        params = self.model_config_for(entry).model_dump(mode="json")
        if self.seeds is not None:
            params.pop("seed", None)  # each repetition sets it; a written seed would be rejected on reading back
        return params

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict that `parse_config` reads back to an equal config."""
        dumped = self.model_dump(mode="json", exclude_none=True)
        if self.data.files is not None:
            dumped.pop("split", None)  # with files the split is the files; writing it would be rejected
        if self.seeds is None:
            dumped.pop("split_per_seed", None)  # a single-seed run's config.yaml (and folder name) as before seeds
        return dumped


def distinct_labels(models: Sequence[Any]) -> set[str]:
    """The entries' labels, refusing two entries with the same one (every file of a run is named by it)."""
    seen: set[str] = set()
    for entry in models:
        if entry.display in seen:
            raise ValueError(f"two models are labelled {entry.display!r}; give each a distinct 'label'")
        seen.add(entry.display)
    return seen


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"must be an integer from 0 to {SEED_MAX} (2**32 - 1), got {seed}")
    return seed


class TaskConfig(_Strict):
    """What the `task:` experiments (ctr, llm) share with a ranking one: the data (`data: ml-100k` is
    short for `data: {dataset: ml-100k}`), the cache, the seed and where runs go."""

    data: DataConfig
    cache_dir: str | None = None
    seed: int = 2020
    output_dir: str = "runs"

    @model_validator(mode="before")
    @classmethod
    def _dataset_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("data"), str):
            data = {**data, "data": {"dataset": data["data"]}}
        return data

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, seed: int) -> int:
        return _check_seed(seed)

    @classmethod
    def parse(cls, raw: Any, source: str = "config") -> Self:
        """Validate a mapping (or re-validate a copy made with `model_copy(update=...)`, which skips
        validation); errors name `source`."""
        if isinstance(raw, cls):
            raw = {name: getattr(raw, name) for name in raw.model_fields_set}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ExperimentConfigError(format_validation_error(exc, source)) from None


def _check_fit_settings(model_config: Any) -> None:
    """Values a model hands on to its trainer, which would otherwise fail only when `fit` reaches them."""
    seed = getattr(model_config, "seed", None)  # a user's own config may have none
    if isinstance(seed, int):
        try:
            _check_seed(seed)
        except ValueError as exc:
            raise ExperimentConfigError(f"seed {exc}") from None
    if isinstance(model_config, TrainingFields):
        check_valid_metric(model_config.valid_metric)


# ---- reading configs ----------------------------------------------------------------------

def format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        location = ""
        for step in err.get("loc", ()):
            location += f"[{step}]" if isinstance(step, int) else (f".{step}" if location else str(step))
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            message = "missing required key"
        parts.append(f"{location}: {message}" if location else message)
    return f"{source}: " + "; ".join(parts)


def parse_config(raw: dict[str, Any] | ExperimentConfig, source: str = "config") -> ExperimentConfig:
    """Validate a mapping (as read from YAML/TOML) into an `ExperimentConfig`; errors name `source`."""
    from recstack.experiment.ctr import is_ctr, parse_ctr_config

    if is_ctr(raw):  # `task: ctr`: a pointwise CTR experiment (recstack.experiment.ctr, docs/ctr.md)
        return parse_ctr_config(raw, source)  # type: ignore[return-value]
    from recstack.experiment.llm import is_llm, parse_llm_config

    if is_llm(raw):  # `task: llm`: LLM rating prediction and reranking (recstack.experiment.llm, docs/llm.md)
        return parse_llm_config(raw, source)  # type: ignore[return-value]
    if isinstance(raw, dict) and raw.get("task") == "ranking":  # the default task, spelled out
        raw = {key: value for key, value in raw.items() if key != "task"}
    if isinstance(raw, ExperimentConfig):
        # `model_copy(update=...)` (command-line overrides, a tuned setting) skips validation: check the copy
        raw = {name: getattr(raw, name) for name in raw.model_fields_set}
    if not isinstance(raw, dict):
        raise ExperimentConfigError(f"{source}: an experiment config must be a mapping of keys, "
                                    f"got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ExperimentConfigError(format_validation_error(exc, source)) from None


def _read_mapping(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ExperimentConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ExperimentConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ExperimentConfigError(f"{path}: invalid TOML: {exc}") from None
    raise ExperimentConfigError(f"config file {str(path)!r} must end in .yaml, .yml or .toml")


def _anchor_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data paths in a config file are relative to that file, not to the working directory."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw

    def anchor(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            return str((base / value).resolve())
        return os.path.expanduser(value) if isinstance(value, str) else value

    data = dict(data)
    if "path" in data:
        data["path"] = anchor(data["path"])
    if isinstance(data.get("files"), dict):
        data["files"] = {k: anchor(v) if k in ("train", "valid", "test") else v for k, v in data["files"].items()}
    return {**raw, "data": data}


def _check_model_names(raw: Any, source: str) -> None:
    """Every model name a validation would resolve (models[*].name, tune.model) is registered."""
    from recstack.models import MODELS
    from recstack.models.protocol import check_trusted

    if not isinstance(raw, dict):
        return
    registry = MODELS
    if raw.get("task") == "ctr":  # CTR model names resolve in their own table
        from recstack.models.ctr import CTR_MODELS

        registry = CTR_MODELS
    entries = raw.get("models")
    names = [e.get("name") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    if isinstance(raw.get("tune"), dict):
        names.append(raw["tune"].get("model"))
    if isinstance(raw.get("cold_users"), dict):
        names.append(raw["cold_users"].get("fallback"))
    for name in names:
        if isinstance(name, str):
            check_trusted(name, registry, trust=False, source=source)


def load_config(path: str | os.PathLike, *, trust: bool = True) -> ExperimentConfig:
    """Read and validate a YAML (.yaml/.yml) or TOML (.toml) experiment config.

    `trust=False` (a run directory someone else may have written) refuses a model named as
    `"package.module:Class"` outside the registry before validation would import it.
    """
    path = Path(path)
    raw = _read_mapping(path)
    if raw is None:
        raise ExperimentConfigError(f"{path}: the config is empty")
    if not trust:
        _check_model_names(raw, str(path))
    if isinstance(raw, dict):
        raw = _anchor_paths(raw, path.resolve().parent)
    return parse_config(raw, source=str(path))


def default_config() -> ExperimentConfig:
    """The packaged default benchmark (`default.yaml`: ml-100k, 8:1:1 random split, eight models)."""
    text = resources.files("recstack.experiment").joinpath("default.yaml").read_text()
    return parse_config(yaml.safe_load(text), source="default.yaml (packaged)")
