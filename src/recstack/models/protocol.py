"""The `Recommender` protocol, `ModelConfig`, and helpers every model shares.

A recommender is any class with a `Config`, `fit(train, valid=None, *, options=None) -> self`,
`score(users, history, items=None) -> float32 (B, n_items or C)`, `save` and `load`. Optional
abilities (own lists, side data, epoch history) are the protocols of `recstack.abilities`,
re-exported here; `FitOptions` carries per-call training options. `history` carries
everything the model may look at for those users, so leakage is impossible by
construction and users unseen at fit time are scored from their history where the model
allows it. `score` returns a fresh array the caller may write into (the evaluator masks in place). Fitted state ends in `_` (scikit-learn's convention); `save`/`load` write the
config as JSON and the fitted arrays as `.npz` (never a pickle).
"""

from __future__ import annotations

import difflib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, model_validator

from recstack.abilities import (  # noqa: F401  (re-exported)
    ListRecommender, Scorer, TrainedByEpochs, UserCoverage, UsesDataset,
)
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.fs import atomic_directory
from recstack.registry import UntrustedCodeError, check_trusted  # noqa: F401  (re-exported: callers import them here)
from recstack.train.options import FitOptions


class NotFittedError(RecstackError, AttributeError):
    """`score`/`save` called before `fit`."""


class ConfigError(RecstackError, ValueError):
    """A model configuration the user wrote that cannot be accepted."""


class ModelFileError(RecstackError, ValueError):
    """A saved model whose `model.json` or `state.npz` is missing, truncated or damaged."""


class ModelConfig(BaseModel):
    """Base of every model's configuration: frozen, unknown keys rejected with a suggestion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.5)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise ValueError(
                        f"unknown parameter {key!r} for {cls.__name__}{hint} "
                        f"(valid: {', '.join(sorted(known))})"
                    )
        return data


@runtime_checkable
class Recommender(Protocol):
    """The lifecycle every model has: what `evaluate` and `experiment` rely on. `options` changes how
    training runs (validation protocol, logs, device), never what the config describes; a model that
    does not train epoch by epoch accepts and ignores it."""

    Config: ClassVar[type[ModelConfig]]
    config: ModelConfig

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self: ...

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray: ...

    def save(self, path: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self: ...


def make_config(config_cls: type[ModelConfig], params: dict[str, Any] | ModelConfig | None) -> ModelConfig:
    """Validate user parameters into a config; errors name the model and the key."""
    if isinstance(params, config_cls):
        return params
    try:
        return config_cls(**(params or {}))
    except Exception as exc:  # pydantic's ValidationError: reword it as one user error
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = []
            for err in errors():
                where = ".".join(str(x) for x in err.get("loc", ())) or config_cls.__name__
                parts.append(f"{where}: {err.get('msg', '')}".replace("Value error, ", ""))
            raise ConfigError(f"invalid {config_cls.__name__}: " + "; ".join(parts)) from None
        raise


def check_fitted(model: Any, *attributes: str) -> None:
    """Raise `NotFittedError` unless every named fitted attribute exists."""
    if not all(getattr(model, a, None) is not None for a in attributes):
        raise NotFittedError(f"{type(model).__name__} is not fitted: call fit(train) first")


def check_trainable(name: str, train: Interactions) -> None:
    """Refuse to fit model `name` on training data without a single interaction."""
    if len(train) == 0:
        raise RecstackError(f"{name} cannot be fitted on empty training data; check the filters and split")


def gather_items(scores: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """Full (B, n_items) scores -> (B, C) candidate columns; `items` is (C,) or (B, C)."""
    if items is None:
        return scores
    items = np.asarray(items)
    if items.ndim == 1:
        return scores[:, items]
    return np.take_along_axis(scores, items, axis=1)


def history_rows(history: Interactions, users: np.ndarray) -> sp.csr_matrix:
    """Binary CSR rows of `users` in `history` (rows = users)."""
    return history.matrix()[np.asarray(users)]


# ---- which users a model can score (the `UserCoverage` ability) -------------------------------

def users_with_history(users: np.ndarray, history: Interactions) -> np.ndarray:
    """Which of `users` have at least one event in `history` (False beyond its user vocabulary)."""
    users = np.asarray(users, dtype=np.int64)
    counts = history.user_counts()
    inside = (users >= 0) & (users < len(counts))
    out = np.zeros(len(users), dtype=bool)
    out[inside] = counts[users[inside]] > 0
    return out


class ScoresFromHistory:
    """Scores a user from the history it is given (neighbourhoods, autoencoders, ALS fold-in, the
    sequential and generative models): an empty history leaves nothing to score from."""

    def can_score(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        return users_with_history(users, history)


class ScoresTrainedUsers:
    """Scores a user with an embedding learned in `fit` (MF, the graph family): only users with
    training events have one; `trained_users_` (bool per training user) is set by the fit."""

    def can_score(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if getattr(self, "trained_users_", None) is None:
            # a save from before `can_score` existed: it scored every user, and still says so
            return np.ones(len(users), dtype=bool)
        trained = np.asarray(self.trained_users_, dtype=bool)
        inside = (users >= 0) & (users < len(trained))
        out = np.zeros(len(users), dtype=bool)
        out[inside] = trained[users[inside]]
        return out


class ScoresEveryUser:
    """Gives every user the same kind of list whatever their history (Pop, Random): nothing is
    missing for a user without one."""

    def can_score(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        return np.ones(len(np.asarray(users)), dtype=bool)


# ---- persistence without pickle ---------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


class SaveLoad:
    """Generic `save`/`load` for models whose fitted state is arrays, sparse matrices and scalars.

    Every attribute whose name ends in `_` (and does not start with `_`) is saved: numpy arrays
    and scipy sparse matrices into `state.npz`, a dict of named arrays (a module's state dict, see
    `TorchRecommender`) as `name/key` entries there, JSON-able scalars and lists into `model.json`.
    Models with other state (e.g. a torch module) convert it to arrays in `fit`.
    """

    def _replace_fitted(self, values: dict[str, Any]) -> None:
        """Drop every fitted attribute of an earlier fit, then set `values` (names ending in `_`), so a
        refit never keeps state the new fit did not produce."""
        for name in [a for a in vars(self) if is_fitted_name(a)]:
            delattr(self, name)
        for name, value in values.items():
            setattr(self, name, value)

    def save(self, path: str | os.PathLike) -> None:
        check_fitted(self, *[a for a in vars(self) if is_fitted_name(a)] or ["__fitted_state__"])
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, Any] = {}
        sparse: dict[str, str] = {}
        named: list[str] = []
        for name, value in vars(self).items():
            if not is_fitted_name(name):
                continue
            if sp.issparse(value):
                value = value.tocsr()
                sparse[name] = "csr"
                arrays[f"{name}.data"] = value.data
                arrays[f"{name}.indices"] = value.indices
                arrays[f"{name}.indptr"] = value.indptr
                arrays[f"{name}.shape"] = np.asarray(value.shape)
            elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
                named.append(name)
                for key, array in value.items():
                    if array.dtype == object:
                        raise TypeError(f"{type(self).__name__}.{name}[{key!r}] is an object array; cannot save "
                                        "without pickle")
                    arrays[f"{name}/{key}"] = array
            elif isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise TypeError(f"{type(self).__name__}.{name} is an object array; cannot save without pickle")
                arrays[name] = value
            elif isinstance(value, (np.integer, np.floating)):
                scalars[name] = value.item()
            elif isinstance(value, _SCALARS) or (isinstance(value, (list, tuple, dict))):
                scalars[name] = value
            else:
                raise TypeError(f"{type(self).__name__}.{name} ({type(value).__name__}) cannot be saved as arrays")
        meta = {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "config": self.config.model_dump(mode="json"),
            "scalars": scalars,
            "sparse": sparse,
            "named_arrays": named,
        }
        with atomic_directory(path) as tmp:
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))
            np.savez(tmp / "state.npz", **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        path = Path(path)
        meta = read_model_json(path, "class", "config", "scalars", "sparse")
        expected = f"{cls.__module__}:{cls.__qualname__}"
        if meta["class"] != expected:
            raise ModelFileError(f"{path / 'model.json'} holds a {meta['class']!r}, not a {cls.__name__}; "
                                 "load it with recstack.models.load_model, which reads the class from the file")
        try:
            config = make_config(cls.Config, meta["config"])  # type: ignore[attr-defined]
        except ConfigError as exc:
            raise ModelFileError(f"{path / 'model.json'}: {exc}; re-save the model with this version of "
                                 "recstack (or re-run the experiment that wrote it)") from None
        model = cls(config)  # type: ignore[call-arg]
        arrays = read_state(path / "state.npz")
        for name in meta["sparse"]:
            parts = [f"{name}.{part}" for part in ("data", "indices", "indptr", "shape")]
            missing = [part for part in parts if part not in arrays]
            if missing:
                raise _damaged(path / "state.npz", f"no entry {missing[0]!r}")
            data, indices, indptr, shape = (arrays.pop(part) for part in parts)
            try:
                matrix = sp.csr_matrix((data, indices, indptr), shape=tuple(int(x) for x in shape))
            except (ValueError, TypeError) as exc:
                raise _damaged(path / "state.npz", f"sparse matrix {name!r}: {exc}") from None
            setattr(model, name, matrix)
        for name in meta.get("named_arrays", []):
            prefix = f"{name}/"
            setattr(model, name, {key[len(prefix):]: arrays.pop(key) for key in list(arrays) if key.startswith(prefix)})
        for name, value in arrays.items():
            setattr(model, name, value)
        for name, value in meta["scalars"].items():
            setattr(model, name, value)
        return model


def is_fitted_name(name: str) -> bool:
    """Fitted state: a name ending in `_` that does not start with one (scikit-learn's convention)."""
    return name.endswith("_") and not name.startswith("_")


# ---- reading saved models: the one place that checks files and classes -------------------------

_RESAVE = "re-save the model (or re-run the experiment that wrote it)"


def _damaged(file: Path, reason: str) -> ModelFileError:
    return ModelFileError(f"{file} is damaged or truncated ({reason}); {_RESAVE}")


def read_model_json(path: str | os.PathLike, *keys: str) -> dict[str, Any]:
    """`model.json` of the saved model at `path`, with `keys` present; `ModelFileError` names the file."""
    file = Path(path) / "model.json"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"{file} is missing, so {str(path)!r} is not a complete saved model; "
                             f"{_RESAVE}") from None
    except UnicodeDecodeError:
        raise _damaged(file, "not UTF-8 text") from None
    except OSError as exc:
        raise ModelFileError(f"{file} cannot be read ({exc.strerror or exc}); {_RESAVE}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(file, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(meta, dict):
        raise _damaged(file, f"a JSON object was expected, found {type(meta).__name__}")
    for key in keys:
        if key not in meta:
            raise _damaged(file, f"no {key!r} entry")
        expected = str if key == "class" else dict
        if not isinstance(meta[key], expected):
            raise _damaged(file, f"{key!r} is not a {'string' if expected is str else 'JSON object'}")
    return meta


def read_state(file: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a saved `state.npz`, never unpickling; `ModelFileError` names the file."""
    file = Path(file)
    try:
        loaded = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise ModelFileError(f"{file} is missing, so the saved model is incomplete; {_RESAVE}") from None
    except IsADirectoryError:
        raise _damaged(file, "a folder, not a file") from None
    except EOFError:
        raise _damaged(file, "empty") from None
    except (ValueError, OSError, zipfile.BadZipFile):
        # numpy's own messages here point at allow_pickle, which would run the file's code: never say it
        raise _damaged(file, "not an .npz archive") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _damaged(file, "a single .npy array, not an .npz archive")
    arrays: dict[str, np.ndarray] = {}
    with loaded:
        for key in loaded.files:
            try:
                arrays[key] = loaded[key]
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise ModelFileError(f"{file} is not a recstack save: entry {key!r} holds Python objects, "
                                         f"which only pickle reads and recstack never unpickles; {_RESAVE}") from None
                raise _damaged(file, f"entry {key!r} is unreadable") from None
            except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
                raise _damaged(file, f"entry {key!r} is unreadable") from None
    return arrays


def load_model(path: str | os.PathLike, *, trust: bool = False) -> Recommender:
    """Load any saved model: the class named in `model.json`, which must be registered in `MODELS`.

    A user's own class (`"package.module:Class"`) is imported only with `trust=True`: a saved model
    received from someone else must not run their code. Damaged files raise `ModelFileError`.
    """
    from recstack.models import MODELS  # the registry imports this module

    file = Path(path) / "model.json"
    target = read_model_json(path, "class")["class"]
    try:
        cls = MODELS.resolve_trusted(target, trust=trust, source=str(file))
    except ConfigError as exc:
        raise ModelFileError(f"{file}: {exc}") from None
    return cls.load(path)
