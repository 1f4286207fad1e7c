"""Sparsification shared by the neighbourhood models: keep each row's n strongest neighbours."""

from __future__ import annotations

import numpy as np


def top_n_per_row(dense: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the `n` largest positive entries of each row; ties keep lower columns."""
    n_cols = dense.shape[1]
    if n < n_cols:
        kth = np.partition(dense, n_cols - n, axis=1)[:, n_cols - n][:, None]
        above = dense > kth
        tied = dense == kth
        # fill the slots left after the strictly larger entries with the lowest-index ties
        room = n - above.sum(axis=1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
        keep &= dense > 0
    else:
        keep = dense > 0
    return np.nonzero(keep)
