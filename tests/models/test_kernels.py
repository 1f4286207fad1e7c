"""The shared kernels keep the behaviour of the copies they replaced."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

import recstack.topk
from recstack.data import Interactions
from recstack.errors import RecstackError
from recstack.evaluate import evaluator
from recstack.models.kernels.topn import top_n_per_row
from recstack.models.protocol import check_trainable


def _reference_top_n(dense: np.ndarray, n: int) -> set[tuple[int, int]]:
    """Sort every row by (score descending, column ascending), keep the first n positive entries."""
    kept = set()
    for row, values in enumerate(dense):
        order = np.lexsort((np.arange(len(values)), -values))[:n]
        kept |= {(row, int(col)) for col in order if values[col] > 0}
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_top_n_per_row_matches_a_sort_with_ties_on_the_lower_column(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 12)))
        dense = rng.integers(-2, 3, shape).astype(np.float64)  # small integers: ties everywhere
        n = int(rng.integers(1, shape[1] + 2))
        rows, cols = top_n_per_row(dense, n)
        assert set(zip(rows.tolist(), cols.tolist())) == _reference_top_n(dense, n)
        assert np.all(np.diff(rows * shape[1] + cols) > 0)  # row-major order, as np.nonzero


def test_top_n_per_row_of_an_empty_block():
    rows, cols = top_n_per_row(np.zeros((3, 0)), 2)
    assert rows.size == 0 and cols.size == 0


def test_one_top_k_helper_on_the_ground_floor():
    assert evaluator.top_k_items is recstack.topk.top_k_items
    tree = ast.parse(inspect.getsource(recstack.topk))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("recstack")], imported


def test_check_trainable_refuses_empty_training_data():
    one = Interactions.from_ids(np.array(["u1"]), np.array(["i1"]))
    check_trainable("NGCF", one)
    empty = one.take(np.zeros(1, dtype=bool))
    with pytest.raises(RecstackError, match="^NGCF cannot be fitted on empty training data"):
        check_trainable("NGCF", empty)
