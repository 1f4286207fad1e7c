"""Retrieve then rank: a retriever's top N reordered by a CTR ranker, as one full-ranking scorer.

For each user the retriever scores the catalogue (items in `history` excluded when `mask_history`),
its N best items are kept and reordered by the ranker's logit for each (user, item) pair, and every
other item follows below them in the retriever's own order. The result is an ordinary
`score(users, history, items=None)`, so the full-ranking evaluator measures the chain exactly as it
measures the retriever alone: a cut-off k <= N sees the ranker's order of the retriever's
candidates; beyond N the lists are the retriever's.

>>> chain = RetrieveThenRank(ease.fit(train), deepfm, n=100)
>>> evaluate(chain, history=train, test=test_positives)
"""

from __future__ import annotations

import numpy as np

from recstack.models.protocol import gather_items, history_rows


class RetrieveThenRank:
    """Retriever's top `n` (history masked) reordered by `ranker.pair_logits`; the rest below, in order."""

    def __init__(self, retriever, ranker, n: int = 100, *, mask_history: bool = True) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.retriever, self.ranker, self.n, self.mask_history = retriever, ranker, int(n), mask_history

    def can_score(self, users: np.ndarray, history) -> np.ndarray:
        can = getattr(self.retriever, "can_score", None)
        return np.ones(len(users), dtype=bool) if can is None else can(users, history)

    def score(self, users: np.ndarray, history, items: np.ndarray | None = None) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        base = np.array(self.retriever.score(users, history), dtype=np.float32)  # (B, n_items), a copy
        if self.mask_history:
            seen = history_rows(history, users).tocoo()
            base[seen.row, seen.col] = -np.inf
        n = min(self.n, base.shape[1])
        top = np.argpartition(-base, n - 1, axis=1)[:, :n]
        top_base = np.take_along_axis(base, top, axis=1)
        logits = self.candidate_logits(users, top, history)
        # a candidate the retriever could not score (-inf: seen, or fewer than n scorable items) stays out
        logits = np.where(np.isfinite(top_base), logits, -np.inf).astype(np.float32)
        out = base
        rest = np.ones(base.shape, dtype=bool)
        np.put_along_axis(rest, top, False, axis=1)
        finite_rest = np.where(rest & np.isfinite(base), base, -np.inf)
        rest_max = finite_rest.max(axis=1, keepdims=True)
        finite_logits = np.where(np.isfinite(logits), logits, np.inf)
        floor = np.minimum(finite_logits.min(axis=1, keepdims=True), 0.0) - 1.0
        floor = np.where(np.isfinite(floor), floor, -1.0)
        # the rest keep the retriever's order, shifted to end just below the lowest reranked candidate
        shift = np.where(np.isfinite(rest_max), floor - rest_max, 0.0).astype(np.float32)
        out = np.where(rest, base + shift, out)
        np.put_along_axis(out, top, logits, axis=1)
        return gather_items(out, items)

    def candidate_logits(self, users: np.ndarray, candidates: np.ndarray, history) -> np.ndarray:
        """The ranker's score of each user's candidates, (B, n); a subclass may read the history."""
        n = candidates.shape[1]
        return self.ranker.pair_logits(np.repeat(users, n), candidates.reshape(-1)).reshape(len(users), n)
