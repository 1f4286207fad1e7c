"""Pop: most-popular baseline; every user gets the same ranking.

score(u, i) = number of training interactions with item i (the whole training log, not a
batch). `history` only decides which items the evaluator masks, so new users work as is.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.protocol import ModelConfig, SaveLoad, ScoresEveryUser, check_fitted
from recstack.train.options import FitOptions


class PopConfig(ModelConfig):
    """No hyper-parameters beyond `seed` (unused: Pop is deterministic)."""


class Pop(ScoresEveryUser, SaveLoad):
    """Scores every item by its training interaction count."""

    Config = PopConfig

    def __init__(self, config: PopConfig | None = None) -> None:
        self.config = config or PopConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        self.item_counts_ = train.item_counts().astype(np.float32)
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "item_counts_")
        if history.n_items != len(self.item_counts_):
            raise RecstackError(f"Pop was fitted on {len(self.item_counts_)} items but history has "
                                f"{history.n_items}; score with the vocabularies of the split it was fitted on")
        n_users = len(np.asarray(users))
        if items is None:
            return np.tile(self.item_counts_, (n_users, 1))
        items = np.asarray(items)
        if items.ndim == 1:
            return np.tile(self.item_counts_[items], (n_users, 1))
        return self.item_counts_[items]  # (B, C) candidates: fancy indexing already copies
