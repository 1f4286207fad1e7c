"""Top-k accuracy metrics as pure functions `(Rankings, k) -> per-user float64 array`.

Pinned definitions (binary relevance unless `Rankings.ideal_gains` is set), with
rel_i the relevance of the item at rank i (1-based) and R = n_relevant:
    Hit@k       = 1 if any rel_i > 0 for i <= k
    Precision@k = #hits in top k / k
    Recall@k    = #hits in top k / R
    MRR@k       = 1 / rank of the first hit within k, 0 if none
    NDCG@k      = sum_{i<=k} rel_i / log2(i + 1)  /  IDCG@k, IDCG over min(R, k) ideal items
    MAP@k       = sum_{i<=k} Precision@i * [rel_i > 0]  /  min(R, k)
Users with R = 0 never reach these functions (the evaluator skips and counts them).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from recstack.evaluate.rankings import Rankings


def _top(rankings: Rankings, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > rankings.depth:
        raise ValueError(f"k={k} exceeds the ranking depth {rankings.depth}; evaluate with a larger max k")
    return rankings.hits[:, :k].astype(np.float64)


def _binary(rankings: Rankings, k: int) -> np.ndarray:
    return (_top(rankings, k) > 0).astype(np.float64)


def hit(rankings: Rankings, k: int) -> np.ndarray:
    return _binary(rankings, k).max(axis=1, initial=0.0)


def precision(rankings: Rankings, k: int) -> np.ndarray:
    return _binary(rankings, k).sum(axis=1) / k


def recall(rankings: Rankings, k: int) -> np.ndarray:
    return _binary(rankings, k).sum(axis=1) / rankings.n_relevant


def mrr(rankings: Rankings, k: int) -> np.ndarray:
    rel = _binary(rankings, k)
    first = rel.argmax(axis=1)
    return np.where(rel.any(axis=1), 1.0 / (first + 1.0), 0.0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg(rankings: Rankings, k: int) -> np.ndarray:
    gains = _top(rankings, k)
    discounts = _discounts(k)
    dcg = gains @ discounts
    if rankings.ideal_gains is None:
        # binary: the ideal list puts min(R, k) hits first
        cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
        idcg = cumulative[np.minimum(rankings.n_relevant, k)]
    else:
        ideal = rankings.ideal_gains[:, :k].astype(np.float64)
        idcg = ideal @ discounts[: ideal.shape[1]]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def average_precision(rankings: Rankings, k: int) -> np.ndarray:
    rel = _binary(rankings, k)
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    return (precision_at_i * rel).sum(axis=1) / np.minimum(rankings.n_relevant, k)


METRICS: dict[str, Callable[[Rankings, int], np.ndarray]] = {
    "Recall": recall,
    "Precision": precision,
    "NDCG": ndcg,
    "MRR": mrr,
    "Hit": hit,
    "MAP": average_precision,
}


def item_coverage(rankings: Rankings, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top-k list (a per-run figure)."""
    items = rankings.items[:, :k]
    return float(len(np.unique(items[items >= 0]))) / n_items


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - actual) ** 2)))


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - actual)))
