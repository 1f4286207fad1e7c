"""The compiled top-k (numba heap pass with fused masks) against the sorting path it replaces.

Both paths must give identical lists, masks and hit look-ups, so a machine without numba ranks
exactly as one with it. RECSTACK_TOPK=sort forces the sorting path.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import recstack.topk as topk
from recstack.data.interactions import Interactions, Vocab
from recstack.evaluate import evaluate
from recstack.evaluate.evaluator import _hits, rank
from recstack.topk import compiled_kernels, top_k_items


def test_the_test_environment_has_the_compiled_path():
    """Every test below compares the compiled path with the sorting one: it must be the compiled one."""
    assert compiled_kernels() is not None, "install the `fast` extra (numba): python3 dev.py setup"



def sorting_path(monkeypatch, scores, k, **masks):
    monkeypatch.setenv("RECSTACK_TOPK", "sort")
    try:
        return top_k_items(scores.copy(), k, **masks)
    finally:
        monkeypatch.delenv("RECSTACK_TOPK")


def random_mask(rng, n_rows, n_items, density=0.05):
    return sp.random(n_rows, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_heap_pass_equals_the_sorting_path_with_ties_and_masks(dtype, monkeypatch):
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(80, 257)).astype(dtype)  # ties everywhere, also at the cut
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[:4] = 1.0  # whole rows tied
    scores[4:8] = -np.inf  # rows the model cannot score at all
    history, excluded = random_mask(rng, 100, 257), random_mask(rng, 100, 257, 0.02)
    rows = rng.permutation(100)[:80]
    for k in (1, 2, 10, 64, 257):
        for masks in ((), (history,), (history, excluded)):
            options = {"masks": masks, "rows": rows} if masks else {}
            expected = sorting_path(monkeypatch, scores, k, **options)
            got = top_k_items(scores.copy(), k, **options)
            assert got[1].dtype == dtype
            np.testing.assert_array_equal(got[1], expected[1])
            finite = np.isfinite(got[1])  # -inf slots: the sorting path leaves them unordered
            np.testing.assert_array_equal(np.where(finite, got[0], -1), np.where(finite, expected[0], -1))


@pytest.mark.parametrize("path", ["compiled", "sort"])
def test_masks_score_minus_infinity_without_writing_the_scores(path, monkeypatch):
    if path == "sort":
        monkeypatch.setenv("RECSTACK_TOPK", "sort")
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    scores.flags.writeable = False  # a model's own array: must not be written
    history = sp.csr_matrix((np.ones(3), ([0, 1, 1], [5, 4, 0])), shape=(3, 6))
    items, values = top_k_items(scores, 4, masks=[history], rows=np.array([1, 0]))
    # row 0 reads history row 1 (items 4 and 0), row 1 reads history row 0 (item 5)
    assert items[:, :3].tolist() == [[5, 3, 2], [4, 3, 2]]
    assert values[:, :3].tolist() == [[5.0, 3.0, 2.0], [10.0, 9.0, 8.0]]
    assert scores.tolist() == np.arange(12).reshape(2, 6).tolist()
    items, values = top_k_items(scores, 6, masks=[history], rows=np.array([1, 0]))
    assert np.isneginf(values[0, 4:]).all() and sorted(items[0, 4:]) == [0, 4]  # masked items come last


def test_masks_without_rows_are_refused():
    with pytest.raises(ValueError, match="masks need `rows`"):
        top_k_items(np.zeros((1, 3), np.float32), 1, masks=[sp.csr_matrix((1, 3))])


def test_rows_with_nan_keep_the_sorting_paths_answer(monkeypatch):
    scores = np.array([[0.5, np.nan, 0.9, 0.1], [0.3, 0.2, 0.1, 0.0]], dtype=np.float32)
    expected = sorting_path(monkeypatch, scores, 2)
    got = top_k_items(scores.copy(), 2)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[0][1].tolist() == [0, 1]


def test_thread_split_gives_the_same_lists(monkeypatch):
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 50, size=(301, 400)).astype(np.float32)
    one = top_k_items(scores.copy(), 10)
    monkeypatch.setattr(topk, "_CELLS_PER_THREAD", 1000)  # force several row ranges on the pool
    monkeypatch.setattr(topk, "_threads", lambda: 3)
    several = top_k_items(scores.copy(), 10)
    np.testing.assert_array_equal(one[0], several[0])
    np.testing.assert_array_equal(one[1], several[1])


def test_compiled_hit_look_up_equals_the_binary_search_on_keys(monkeypatch):
    rng = np.random.default_rng(6)
    truth = random_mask(rng, 50, 90, 0.1)
    truth.data = rng.integers(1, 6, truth.nnz).astype(np.float32)
    truth = sp.csr_matrix((truth.data, truth.indices, truth.indptr), shape=truth.shape)
    truth.has_sorted_indices = False  # the look-up must not assume it
    users = rng.permutation(50)[:40]
    items = rng.integers(-1, 90, size=(40, 12))
    got = _hits(items, users, truth)
    monkeypatch.setenv("RECSTACK_TOPK", "sort")
    np.testing.assert_array_equal(got, _hits(items, users, truth))


def test_overlapped_blocks_rank_as_one_block(monkeypatch):
    """`rank` scores the next block while it ranks this one: the lists equal a single block's."""
    rng = np.random.default_rng(7)
    n_users, n_items = 60, 40
    vocab_u, vocab_i = Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item")
    history = Interactions(np.repeat(np.arange(n_users), 5), rng.integers(0, n_items, 5 * n_users), vocab_u, vocab_i)
    test = Interactions(np.arange(n_users), rng.integers(0, n_items, n_users), vocab_u, vocab_i)

    class Tied:
        def score(self, users, history, items=None):
            return np.floor(np.sin(np.outer(users + 1, np.arange(n_items) + 1)) * 3).astype(np.float32)

    users = np.arange(n_users)
    whole = rank(Tied(), users, history, 7)
    blocks = rank(Tied(), users, history, 7, memory_budget_mb=40 * 8 * 7 / 2**20)  # 7 users a block
    np.testing.assert_array_equal(whole[0], blocks[0])
    np.testing.assert_array_equal(whole[1], blocks[1])
    monkeypatch.setenv("RECSTACK_TOPK", "sort")
    by_sorting = evaluate(Tied(), history, test, ks=[5])
    monkeypatch.delenv("RECSTACK_TOPK")
    assert evaluate(Tied(), history, test, ks=[5], memory_budget_mb=40 * 8 * 7 / 2**20).metrics == by_sorting.metrics
