"""Random: uniform scores, the floor every model must clear.

score(u, i) = U[0, 1) drawn from a counter-based hash of (seed, u, i) (splitmix64), so a
user's scores are the same in every block, after save/load and for any `items=` subset,
without storing a random matrix or looping over users.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.protocol import ModelConfig, SaveLoad, ScoresEveryUser, check_fitted
from recstack.train.options import FitOptions

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class RandomConfig(ModelConfig):
    """Only the `seed`: the same seed gives the same scores for the same (user, item)."""


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele et al.'s splitmix64 finaliser on uint64 arrays (wrap-around arithmetic is intended)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


class Random(ScoresEveryUser, SaveLoad):
    """Uniform random scores, deterministic per (seed, user, item)."""

    Config = RandomConfig

    def __init__(self, config: RandomConfig | None = None) -> None:
        self.config = config or RandomConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        self.n_items_ = int(train.n_items)
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "n_items_")
        if history.n_items != self.n_items_:
            raise RecstackError(f"Random was fitted on {self.n_items_} items but history has {history.n_items}; "
                                "score with the vocabularies of the split it was fitted on")
        users = np.asarray(users, dtype=np.int64)
        if items is None:
            items = np.arange(self.n_items_, dtype=np.int64)[None, :]
        items = np.asarray(items, dtype=np.int64)
        if items.ndim == 1:
            items = items[None, :]
        with np.errstate(over="ignore"):
            user_key = _splitmix64(np.uint64(self.config.seed & 0xFFFFFFFFFFFFFFFF) + _splitmix64(users.astype(np.uint64)))
            cell = _splitmix64(user_key[:, None] ^ (items.astype(np.uint64) * _GOLDEN))
        # the top 24 bits give an exact float32 in [0, 1)
        return ((cell >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)
