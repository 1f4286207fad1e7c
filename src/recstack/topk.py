"""The one top-k helper: the k best columns of each row of a score block, best first, ties broken
towards the lower index so that rankings never depend on thread counts or library versions.

It sits on the ground floor (numpy only; torch when installed, for speed) so that `evaluate/` and
`models/` share it without either importing the other.
"""

from __future__ import annotations

import numpy as np


def _largest(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of k largest scores per row, in no guaranteed order among ties."""
    try:
        import torch
    except ImportError:  # numpy fallback: partition, the k survivors are ordered by the caller
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return idx, np.take_along_axis(scores, idx, axis=1)
    # torch.topk is multi-threaded and avoids numpy's full argpartition copy
    values, idx = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1, sorted=False)
    return idx.numpy(), values.numpy()


def top_k_items(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest scores per row, best first (ties: lower index first).

    Neither torch.topk nor argpartition orders ties, and either may keep a higher-indexed item
    over an equal lower-indexed one at the cut; both are resolved here so that results do not
    depend on thread counts or library versions. Slots whose score is -inf are left unordered
    (the evaluator turns them into -1 padding).
    """
    k = min(k, scores.shape[1])
    idx, values = _largest(scores, k)
    order = np.lexsort((idx, -values), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    threshold = values[:, -1:]
    tied_at_cut = np.count_nonzero(scores == threshold, axis=1) > np.count_nonzero(values == threshold, axis=1)
    rows = np.flatnonzero(tied_at_cut & (threshold[:, 0] > -np.inf))
    if len(rows):
        _prefer_lower_index_at_cut(scores, idx, values, rows, k)
    return idx, values


def _prefer_lower_index_at_cut(scores, idx, values, rows, k) -> None:
    """In `rows`, refill the slots that tie with the k-th score with the lowest-indexed tied items."""
    n_items = scores.shape[1]
    # -index as a float key: exact while indices fit the mantissa
    positions = -np.arange(n_items, dtype=np.float32 if n_items <= 2**24 else np.float64)
    chunk = max(1, 2**22 // n_items)  # bounds the temporary key matrix to ~16-32 MB
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        threshold = values[part, -1:]
        n_above = (values[part] > threshold).sum(axis=1)
        key = np.where(scores[part] == threshold, positions, -np.inf)
        lowest, key_values = _largest(key, k)
        lowest = np.take_along_axis(lowest, np.argsort(-key_values, axis=1, kind="stable"), axis=1)
        slot = np.arange(k) - n_above[:, None]  # slot j of the list takes the (j - n_above)-th tied item
        refill = slot >= 0
        block = idx[part]
        block[refill] = np.take_along_axis(lowest, np.maximum(slot, 0), axis=1)[refill]
        idx[part] = block
