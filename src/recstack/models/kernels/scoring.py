"""Scores of dot-product models from their fitted numpy factors (MF, graph and content models)."""

from __future__ import annotations

import numpy as np


def dot_scores(users: np.ndarray, items: np.ndarray | None, user_factors: np.ndarray, item_factors: np.ndarray,
               item_bias: np.ndarray | None = None) -> np.ndarray:
    """<p_u, q_i> (+ b_i) for the given users and all items (items=None), candidate items (C,) or
    per-user candidates (B, C), as float32. Users beyond the trained vocabulary have zero factors."""
    users = np.asarray(users, dtype=np.int64)
    known = users < len(user_factors)
    p = np.zeros((len(users), item_factors.shape[1]), dtype=np.float32)
    p[known] = user_factors[users[known]]
    if items is None:
        scores, bias = p @ item_factors.T, item_bias
    else:
        items = np.asarray(items, dtype=np.int64)
        scores = p @ item_factors[items].T if items.ndim == 1 else np.einsum("bd,bcd->bc", p, item_factors[items])
        bias = None if item_bias is None else item_bias[items]
    if bias is not None:
        scores = scores + bias
    return scores.astype(np.float32, copy=False)
