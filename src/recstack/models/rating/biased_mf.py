"""Biased matrix factorisation for explicit ratings (Koren, Bell and Volinsky, "Matrix Factorization
Techniques for Recommender Systems", IEEE Computer 2009), fitted by weighted-lambda ALS (Zhou et al.,
"Large-scale Parallel Collaborative Filtering for the Netflix Prize", 2008).

    r_hat(u, i) = mu + b_u + b_i + p_u . q_i

Each half-step is an exact ridge regression per user (per item) with the other side fixed; the biases
ride along as an extra coordinate ([p_u, b_u] against [q_i, 1]), and the penalty of a row is `reg`
times its number of ratings (ALS-WR). `factors: 0` is the bias-only baseline. Predictions are clipped
to the training ratings' range. Deterministic given the seed (no sampling), so a rating table is
reproducible bit for bit on one machine and within float tolerance across machines.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.protocol import ModelConfig


class BiasedMFConfig(ModelConfig):
    factors: int = Field(32, ge=0)
    reg: float = Field(0.05, gt=0)
    iterations: int = Field(15, ge=1)
    init_std: float = Field(0.1, gt=0)


def _solve_side(rows_indptr, rows_cols, rows_resid, other, reg) -> np.ndarray:
    """Ridge solution per row: `other` is (n_other, f) fixed factors; the row's targets are the residuals."""
    n, f = len(rows_indptr) - 1, other.shape[1]
    out = np.zeros((n, f))
    eye = np.eye(f)
    for r in range(n):
        start, end = rows_indptr[r], rows_indptr[r + 1]
        if start == end:
            continue
        x = other[rows_cols[start:end]]
        a = x.T @ x + reg * (end - start) * eye
        out[r] = np.linalg.solve(a, x.T @ rows_resid[start:end])
    return out


class BiasedMF:
    """mu + b_u + b_i + p_u . q_i, fitted on a log's ratings by ALS-WR."""

    Config = BiasedMFConfig

    def __init__(self, config: BiasedMFConfig | dict | None = None, **params) -> None:
        self.config = config if isinstance(config, BiasedMFConfig) else BiasedMFConfig(**{**(config or {}), **params})

    def fit(self, train: Interactions) -> "BiasedMF":
        if train.value is None:
            raise RecstackError("BiasedMF needs ratings: the training log has no value column; load the "
                                "ratings (e.g. MovieLens) rather than implicit events")
        if len(train) == 0:
            raise RecstackError("BiasedMF: the training log is empty")
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        users, items = train.user.astype(np.int64), train.item.astype(np.int64)
        ratings = train.value.astype(np.float64)
        n_users, n_items, k = train.n_users, train.n_items, cfg.factors
        mu = float(ratings.mean())
        by_user = np.lexsort((items, users))
        by_item = np.lexsort((users, items))
        user_ptr = np.searchsorted(users[by_user], np.arange(n_users + 1))
        item_ptr = np.searchsorted(items[by_item], np.arange(n_items + 1))
        # augmented factors: user [p_u, b_u, 1] . item [q_i, 1, b_i]
        p = np.hstack([rng.normal(0, cfg.init_std, (n_users, k)), np.zeros((n_users, 1)), np.ones((n_users, 1))])
        q = np.hstack([rng.normal(0, cfg.init_std, (n_items, k)), np.ones((n_items, 1)), np.zeros((n_items, 1))])
        self.loss_history_: list[float] = []
        for _ in range(cfg.iterations):
            # users: targets r - mu - b_i, fixed item part [q_i, 1]
            resid = ratings - mu - q[items, k + 1]
            solved = _solve_side(user_ptr, items[by_user], resid[by_user], q[:, :k + 1], cfg.reg)
            p[:, :k + 1] = solved
            # items: targets r - mu - b_u, fixed user part [p_u, 1] against [q_i, b_i]
            resid = ratings - mu - p[users, k]
            fixed = np.hstack([p[:, :k], np.ones((n_users, 1))])
            solved = _solve_side(item_ptr, users[by_item], resid[by_item], fixed, cfg.reg)
            q[:, :k] = solved[:, :k]
            q[:, k + 1] = solved[:, k]
            error = ratings - self._raw(p, q, mu, users, items)
            self.loss_history_.append(float(np.sqrt(np.mean(error ** 2))))
        self.mu_, self.p_, self.q_ = mu, p, q
        self.low_, self.high_ = float(ratings.min()), float(ratings.max())
        return self

    @staticmethod
    def _raw(p, q, mu, users, items) -> np.ndarray:
        k = p.shape[1] - 2
        return mu + np.einsum("ij,ij->i", p[users, :k], q[items, :k]) + p[users, k] + q[items, k + 1]

    def predict(self, users: np.ndarray, items: np.ndarray, history: Interactions | None = None) -> np.ndarray:
        """Predicted stars for each (user, item) pair; `history` is not read (the model is fitted)."""
        if not hasattr(self, "p_"):
            raise RecstackError("BiasedMF is not fitted: call fit(train) first")
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        return np.clip(self._raw(self.p_, self.q_, self.mu_, users, items), self.low_, self.high_)
