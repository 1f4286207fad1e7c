"""`Rankings`: the top-k lists of a set of users and which entries hit the held-out items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rankings:
    """Top-K lists for B users.

    users: (B,) user indices; items: (B, K) item indices best first (-1 pads lists shorter
    than K, which happens when fewer than K items can be scored); hits: (B, K) relevance of
    each ranked item (1/0 for binary, the graded gain otherwise); n_relevant: (B,) number of
    held-out items of each user; ideal_gains: optional (B, K) held-out gains sorted
    descending, for graded NDCG.
    """

    users: np.ndarray
    items: np.ndarray
    hits: np.ndarray
    n_relevant: np.ndarray
    ideal_gains: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.items.shape != self.hits.shape or self.items.shape[0] != len(self.users):
            raise ValueError("Rankings: users (B,), items (B, K) and hits (B, K) must agree")
        if len(self.n_relevant) != len(self.users):
            raise ValueError("Rankings: n_relevant must have one entry per user")

    @property
    def depth(self) -> int:
        return self.items.shape[1]

    def __len__(self) -> int:
        return len(self.users)

    @staticmethod
    def concat(parts: list["Rankings"]) -> "Rankings":
        if not parts:
            return Rankings(np.empty(0, np.int32), np.empty((0, 0), np.int32), np.empty((0, 0), np.float32),
                            np.empty(0, np.int64))
        ideal = None if parts[0].ideal_gains is None else np.concatenate([p.ideal_gains for p in parts])
        return Rankings(
            np.concatenate([p.users for p in parts]),
            np.concatenate([p.items for p in parts]),
            np.concatenate([p.hits for p in parts]),
            np.concatenate([p.n_relevant for p in parts]),
            ideal,
        )
