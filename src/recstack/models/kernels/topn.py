"""Sparsification shared by the neighbourhood models: keep each row's n strongest neighbours."""

from __future__ import annotations

import numpy as np

from recstack.topk import top_k_items


def top_n_per_row(dense: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the `n` largest positive entries of each row; ties keep lower columns.

    The selection is the ranking's top-k (same tie rule), minus non-positive entries; the indices
    come back in row-major order, as `np.nonzero` gives them.
    """
    keep = np.zeros(dense.shape, dtype=bool)
    if dense.shape[1]:
        idx, values = top_k_items(dense, n)
        # slots the ranking leaves unordered hold -inf, which `values > 0` drops anyway
        np.put_along_axis(keep, idx, values > 0, axis=1)
    return np.nonzero(keep)
