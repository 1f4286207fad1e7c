"""Side data keyed by external item id, aligned to a training vocabulary (shared by the models that
read item texts, vectors or tables through `use_dataset` or a setter)."""

from __future__ import annotations

import numpy as np

from recstack.errors import RecstackError


def rows_for_items(given_ids: np.ndarray, wanted_ids: np.ndarray, *, model: str, what: str) -> np.ndarray:
    """The row of each `wanted_ids` entry in `given_ids` (int64); one error naming the first item
    without side data when any is missing."""
    lookup = {key: row for row, key in enumerate(np.asarray(given_ids).tolist())}
    rows = np.array([lookup.get(key, -1) for key in np.asarray(wanted_ids).tolist()], dtype=np.int64)
    if (rows < 0).any():
        missing = np.asarray(wanted_ids)[rows < 0]
        raise RecstackError(f"{model} has no {what} for {len(missing)} item(s) of the training data, e.g. "
                            f"{missing[0]!r}; give {what} for every item of the item vocabulary")
    return rows
