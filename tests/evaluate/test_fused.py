"""The fused path (`recstack.evaluate.fused`): dot-product models ranked tile by tile, in float32 or
bfloat16, give the lists the score-matrix path gives."""

import numpy as np
import pytest
import scipy.sparse as sp

from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.evaluate import fused
from recstack.evaluate.evaluator import rank
from recstack.topk import top_k_items

pytest.importorskip("numba")


class DotModel:
    """score = queries @ vectors.T (+ bias), with the `DotProductScorer` ability."""

    def __init__(self, queries, vectors, bias=None):
        self.queries, self.vectors, self.bias = queries, vectors, bias

    def score(self, users, history, items=None):
        scores = self.queries[np.asarray(users)] @ self.vectors.T
        return (scores if self.bias is None else scores + self.bias).astype(np.float32)

    def user_queries(self, users, history):
        return self.queries[np.asarray(users)]

    def item_vectors(self):
        return self.vectors, self.bias


class ScoresOnly:
    """The same scores without the ability: `rank` takes the score-matrix path."""

    def __init__(self, model):
        self.model = model

    def score(self, users, history, items=None):
        return self.model.score(users, history, items)


def random_history(n_users, n_items, per_user, rng):
    users = np.repeat(np.arange(n_users), per_user)
    return Interactions(users, rng.integers(0, n_items, len(users)), Vocab(np.arange(n_users), "user"),
                        Vocab(np.arange(n_items), "item"))


@pytest.mark.parametrize("n_users, n_items, k", [(5, 40, 10), (700, 1300, 10), (300, 2000, 37), (20, 9, 9)])
@pytest.mark.parametrize("biased", [False, True])
def test_fused_float32_lists_equal_the_score_matrix_path(n_users, n_items, k, biased):
    rng = np.random.default_rng(n_items)
    # small integers: every product is exact in float32 whatever the tile shape, and ties are many
    queries = rng.integers(-2, 3, (n_users, 8)).astype(np.float32)
    vectors = rng.integers(-2, 3, (n_items, 8)).astype(np.float32)
    bias = rng.integers(-1, 2, n_items).astype(np.float32) if biased else None
    model = DotModel(queries, vectors, bias)
    history = random_history(n_users, n_items, 3, rng)
    users = rng.permutation(n_users).astype(np.int32)
    for mask in (True, False):
        fast = rank(model, users, history, k, mask_history=mask)
        slow = rank(ScoresOnly(model), users, history, k, mask_history=mask)
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_array_equal(fast[1], slow[1])


def test_fused_path_is_taken_and_matches_top_k_items_on_random_floats(monkeypatch):
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((600, 16), dtype=np.float32)
    vectors = rng.standard_normal((3000, 16), dtype=np.float32)
    masks = [sp.random(600, 3000, density=0.01, format="csr", random_state=2, dtype=np.float32)]
    rows = np.arange(600)
    calls = []
    monkeypatch.setattr(fused, "GROUP_USERS", 128)  # several groups, spread over the worker threads
    original = fused._Fp32Product.tile
    monkeypatch.setattr(fused._Fp32Product, "tile", lambda self, *a: calls.append(a) or original(self, *a))
    items, values = fused.fused_top_k(queries, vectors, None, 20, masks=masks, rows=rows)
    expected_items, expected_values = top_k_items(queries @ vectors.T, 20, masks=masks, rows=rows)
    assert len(calls) > 1
    assert (items == expected_items).mean() > 0.999  # only near-ties may swap (tile shapes round differently)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-5)
    assert not np.isin(items[0], masks[0][0].indices).any()


def test_nan_scores_are_ranked_as_the_score_matrix_path_ranks_them():
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((30, 4), dtype=np.float32)
    vectors = rng.standard_normal((50, 4), dtype=np.float32)
    queries[4, 2] = np.nan
    vectors[7, 1] = np.nan
    items, values = fused.fused_top_k(queries, vectors, None, 5)
    expected_items, _ = top_k_items((queries @ vectors.T).astype(np.float32), 5)
    np.testing.assert_array_equal(items, expected_items)


def test_bf16_lists_are_float32_lists_rescored_exactly():
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((400, 32), dtype=np.float32)
    vectors = rng.standard_normal((5000, 32), dtype=np.float32)
    bias = rng.standard_normal(5000, dtype=np.float32)
    history = random_history(400, 5000, 10, rng)
    model = DotModel(queries, vectors, bias)
    users = np.arange(400, dtype=np.int32)
    exact_items, exact_values = rank(model, users, history, 10)
    items, values = rank(model, users, history, 10, precision="bf16")
    same = (items == exact_items).all(axis=1)
    assert same.mean() >= 0.99, same.mean()  # a list changes only where bf16 lost a true top-10 item
    # the values are float32 scores, not bf16 ones: re-scored exactly
    rows = np.arange(400)[:, None]
    np.testing.assert_allclose(values, (queries[rows[:, 0]] @ vectors.T + bias)[rows, items], rtol=1e-5, atol=1e-5)
    seen = history.matrix()
    assert not any(np.isin(items[u], seen[u].indices).any() for u in range(400))


def test_bf16_with_fewer_unmasked_items_than_candidates_pads_with_minus_one():
    rng = np.random.default_rng(5)
    model = DotModel(rng.standard_normal((3, 4), dtype=np.float32), rng.standard_normal((12, 4), dtype=np.float32))
    history = Interactions(np.zeros(9, dtype=np.int64), np.arange(9), Vocab(np.arange(3), "user"),
                           Vocab(np.arange(12), "item"))
    items, _ = rank(model, np.array([0, 1], dtype=np.int32), history, 5, precision="bf16")
    assert sorted(items[0][:3]) == [9, 10, 11] and (items[0][3:] == -1).all()
    assert (items[1] >= 0).all()


def test_evaluate_records_the_precision_and_refuses_unknown_ones():
    rng = np.random.default_rng(6)
    model = DotModel(rng.standard_normal((50, 8), dtype=np.float32), rng.standard_normal((80, 8), dtype=np.float32))
    history = random_history(50, 80, 4, rng)
    test = random_history(50, 80, 2, np.random.default_rng(7))
    result = evaluate(model, history, test, ks=[10], precision="bf16")
    assert result.protocol["score_precision"] == "bf16"
    assert evaluate(model, history, test, ks=[10]).protocol["score_precision"] == "fp32"
    with pytest.raises(RecstackError, match="score precision 'fp16'"):
        evaluate(model, history, test, ks=[10], precision="fp16")


def test_the_fused_path_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("RECSTACK_FUSED", "0")
    assert not fused.fused_applies(DotModel(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)))
    monkeypatch.delenv("RECSTACK_FUSED")
    assert fused.fused_applies(DotModel(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)))
    assert not fused.fused_applies(ScoresOnly(None))
