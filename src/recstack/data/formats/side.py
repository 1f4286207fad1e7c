"""Side tables (item / user attributes) aligned onto a vocabulary: shared by the MovieLens and atomic readers."""

from __future__ import annotations

import numpy as np


def _fill_value(array: np.ndarray):
    if array.dtype.kind in "iu":
        return -1
    if array.dtype.kind == "f":
        return np.nan
    if array.dtype.kind == "b":
        return False
    return ""


def align_side_table(vocab_ids: np.ndarray, side_ids: np.ndarray, columns: dict[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
    """Re-order side-file columns onto a vocabulary (dense index order), vectorised.

    Side rows whose id is not in the vocabulary are dropped; vocabulary ids without a side
    row get "" (text), -1 (integers) or NaN (floats). The first row wins for repeated ids.
    """
    vocab_ids, side_ids = np.asarray(vocab_ids), np.asarray(side_ids)
    if (vocab_ids.dtype.kind in "iuf") != (side_ids.dtype.kind in "iuf"):
        vocab_ids, side_ids = vocab_ids.astype(str).astype(object), side_ids.astype(str).astype(object)
    order = np.argsort(side_ids, kind="stable")
    sorted_ids = side_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, vocab_ids), 0, max(len(sorted_ids) - 1, 0))
    if len(sorted_ids):
        found = np.asarray(sorted_ids[position] == vocab_ids, dtype=bool)
        row = order[position]
    else:
        found, row = np.zeros(len(vocab_ids), dtype=bool), np.zeros(len(vocab_ids), dtype=np.int64)
    table = {}
    for name, values in columns.items():
        values = np.asarray(values)
        out = values[row] if len(values) else np.empty(len(vocab_ids), dtype=values.dtype)
        if not found.all():
            out = out.copy()
            if out.dtype.kind in "US":
                out = out.astype(object)
            out[~found] = _fill_value(values)
        table[name] = out
    return table
