"""Scores of dot-product models from their fitted numpy factors (MF, graph and content models)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recstack.models.protocol import check_fitted


def dot_scores(users: np.ndarray, items: np.ndarray | None, user_factors: np.ndarray, item_factors: np.ndarray,
               item_bias: np.ndarray | None = None) -> np.ndarray:
    """<p_u, q_i> (+ b_i) for the given users and all items (items=None), candidate items (C,) or
    per-user candidates (B, C), as float32. Users beyond the trained vocabulary have zero factors."""
    p = user_vectors(users, user_factors)
    if items is None:
        scores, bias = p @ item_factors.T, item_bias
    else:
        items = np.asarray(items, dtype=np.int64)
        scores = p @ item_factors[items].T if items.ndim == 1 else np.einsum("bd,bcd->bc", p, item_factors[items])
        bias = None if item_bias is None else item_bias[items]
    if bias is not None:
        scores = scores + bias
    return scores.astype(np.float32, copy=False)


def user_vectors(users: np.ndarray, user_factors: np.ndarray) -> np.ndarray:
    """The fitted factors of `users` as float32 (B, d); users beyond the trained vocabulary get zeros."""
    users = np.asarray(users, dtype=np.int64)
    known = users < len(user_factors)
    p = np.zeros((len(users), user_factors.shape[1]), dtype=np.float32)
    p[known] = user_factors[users[known]]
    return p


class DotProductScores:
    """The `DotProductScorer` ability of a model whose `score` is `dot_scores` over its fitted
    `user_factors_` and `item_factors_` (+ the bias `scoring_bias` names): the evaluator multiplies
    the factors itself (`recstack.evaluate.fused`) instead of asking for a score matrix."""

    def scoring_bias(self) -> np.ndarray | None:
        """The item bias `score` adds (None: none)."""
        return None

    def user_queries(self, users: np.ndarray, history: Any) -> np.ndarray:
        check_fitted(self, "user_factors_")
        return user_vectors(users, self.user_factors_)

    def item_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        check_fitted(self, "item_factors_")
        bias = self.scoring_bias()
        return (np.asarray(self.item_factors_, dtype=np.float32),
                None if bias is None else np.asarray(bias, dtype=np.float32))
