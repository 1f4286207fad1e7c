"""The `Recommender` protocol, `ModelConfig`, and helpers every model shares.

A recommender is any class with a `Config`, `fit(train, valid=None) -> self` and
`score(users, history, items=None) -> float32 (B, n_items or C)`. `history` carries
everything the model may look at for those users, so leakage is impossible by
construction and users unseen at fit time are scored from their history where the model
allows it. `score` returns a fresh array the caller may write into (the evaluator masks in place). Fitted state ends in `_` (scikit-learn's convention); `save`/`load` write the
config as JSON and the fitted arrays as `.npz` (never a pickle).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.fs import atomic_directory


class NotFittedError(RecstackError, AttributeError):
    """`score`/`save` called before `fit`."""


class ConfigError(RecstackError, ValueError):
    """A model configuration the user wrote that cannot be accepted."""


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
    """What `evaluate`, `experiment` and `serve` rely on."""

    Config: ClassVar[type[ModelConfig]]
    config: ModelConfig

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self: ...

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


# ---- persistence without pickle ---------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


class SaveLoad:
    """Generic `save`/`load` for models whose fitted state is arrays, sparse matrices and scalars.

    Every attribute whose name ends in `_` (and does not start with `_`) is saved: numpy arrays
    and scipy sparse matrices into `state.npz`, JSON-able scalars and lists into `model.json`.
    Models with other state (e.g. a torch module) convert it to arrays in `fit`.
    """

    def _replace_fitted(self, values: dict[str, Any]) -> None:
        """Drop every fitted attribute of an earlier fit, then set `values` (names ending in `_`), so a
        refit never keeps state the new fit did not produce."""
        for name in [a for a in vars(self) if _is_fitted_name(a)]:
            delattr(self, name)
        for name, value in values.items():
            setattr(self, name, value)

    def save(self, path: str | os.PathLike) -> None:
        check_fitted(self, *[a for a in vars(self) if _is_fitted_name(a)] or ["__fitted_state__"])
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, Any] = {}
        sparse: dict[str, str] = {}
        for name, value in vars(self).items():
            if not _is_fitted_name(name):
                continue
            if sp.issparse(value):
                value = value.tocsr()
                sparse[name] = "csr"
                arrays[f"{name}.data"] = value.data
                arrays[f"{name}.indices"] = value.indices
                arrays[f"{name}.indptr"] = value.indptr
                arrays[f"{name}.shape"] = np.asarray(value.shape)
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
        }
        with atomic_directory(path) as tmp:
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))
            np.savez(tmp / "state.npz", **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        model = cls(cls.Config(**meta["config"]))  # type: ignore[call-arg, attr-defined]
        with np.load(path / "state.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for name in meta["sparse"]:
            shape = tuple(int(x) for x in arrays.pop(f"{name}.shape"))
            matrix = sp.csr_matrix(
                (arrays.pop(f"{name}.data"), arrays.pop(f"{name}.indices"), arrays.pop(f"{name}.indptr")), shape=shape
            )
            setattr(model, name, matrix)
        for name, value in arrays.items():
            setattr(model, name, value)
        for name, value in meta["scalars"].items():
            setattr(model, name, value)
        return model


def _is_fitted_name(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_")


def load_model(path: str | os.PathLike) -> Recommender:
    """Load any saved model: the class is named in `model.json` and resolved by the registry."""
    from recstack.models import resolve  # the registry imports this module

    meta = json.loads((Path(path) / "model.json").read_text())
    return resolve(meta["class"]).load(path)
