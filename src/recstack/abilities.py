"""What a model can do, declared as small runtime-checkable protocols and tested with `isinstance`.

`Recommender` (in `recstack.models.protocol`) is the lifecycle every model has; these are the
optional abilities the evaluator and the experiment runner act on. They live on the ground floor
so that `evaluate/` reads them without importing any model code (scikit-learn's estimator tags and
`available_if` play this role there). An ability is a method or fitted attribute with a fixed
signature; a model that has the method has the ability, always, whatever its config says.
"""

from __future__ import annotations

from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from recstack.data.interactions import Interactions


@runtime_checkable
class Scorer(Protocol):
    """Scores every item (or the candidates `items`) for `users`: float32 (B, n_items or C)."""

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray: ...


@runtime_checkable
class ListRecommender(Protocol):
    """Produces its own ranked lists (generative decoding, retrieve-then-rerank): the evaluator ranks
    with `top_k` instead of sorting `score`. `mask_history` is required: the caller always says
    whether the user's history may be recommended again. Returns (items (B, k) with -1 padding,
    scores (B, k))."""

    def top_k(self, users: np.ndarray, history: Interactions, k: int, *,
              mask_history: bool) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class UsesDataset(Protocol):
    """Reads side information (item texts, item tables) from the dataset the split came from; the
    experiment calls `use_dataset` once, before `fit`."""

    def use_dataset(self, dataset: Any) -> Self: ...


@runtime_checkable
class TrainedByEpochs(Protocol):
    """A fitted model that trained epoch by epoch: one dict per epoch (`epoch`, `loss`, the validation
    metric, `seconds`) and the epoch whose weights it kept."""

    history_: list[dict[str, Any]]
    best_epoch_: int


@runtime_checkable
class UserCoverage(Protocol):
    """Says which users the model can score from what it learned: False where `score` would only
    return an accident (a constant row for an empty history, a user embedding that never trained,
    a user index beyond the fitted vocabulary). `users` index `history`'s user vocabulary, which may
    extend the training one (serving appends new users after the fitted ones). The cold-user policy
    (evaluation, early stopping, serving), not the model, decides what such users get. Every
    registered model has it; the contract suite checks the answer."""

    def can_score(self, users: np.ndarray, history: Interactions) -> np.ndarray: ...


@runtime_checkable
class DotProductScorer(Protocol):
    """A scorer whose `score(users, history)` is `user_queries(users, history) @ vectors.T + bias`, with
    `item_vectors()` returning (vectors (n_items, d), bias (n_items,) or None), all float32. The
    evaluator then multiplies itself, in cache-sized tiles ranked while in cache, or in bfloat16
    (`recstack.evaluate.fused`). A subclass that scores otherwise must drop the two methods; the
    contract suite checks that they agree with `score`."""

    def user_queries(self, users: np.ndarray, history: Interactions) -> np.ndarray: ...

    def item_vectors(self) -> tuple[np.ndarray, np.ndarray | None]: ...


_IMPLEMENTED: dict[tuple[type, type], bool] = {}


def implements(obj: Any, ability: type) -> bool:
    """`isinstance(obj, ability)` for the method abilities (Scorer, ListRecommender, UserCoverage, DotProductScorer),
    remembered per class: Python 3.11 checks a protocol member by member, a few microseconds each
    time, and a served request asks several times (issue 14's profile). Methods are defined by the
    class, so the answer cannot differ between two instances of one class."""
    key = (type(obj), ability)
    found = _IMPLEMENTED.get(key)
    if found is None:
        found = _IMPLEMENTED[key] = isinstance(obj, ability)
    return found
