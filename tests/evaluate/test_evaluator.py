"""The evaluator: history masking, skipped users, block independence, padding, graded gains."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from recstack.abilities import ListRecommender
from recstack.data import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.evaluate import evaluate, rank
from recstack.evaluate.evaluator import block_size_for, top_k_items

L2, L3, L4 = np.log2(2), np.log2(3), np.log2(4)
N_USERS, N_ITEMS = 4, 6
USERS = Vocab(np.arange(N_USERS), name="user")
ITEMS = Vocab(np.arange(N_ITEMS), name="item")


def log(pairs: list[tuple[int, int]], values: list[float] | None = None) -> Interactions:
    user = np.array([u for u, _ in pairs], dtype=np.int32)
    item = np.array([i for _, i in pairs], dtype=np.int32)
    return Interactions(user, item, USERS, ITEMS, value=None if values is None else np.array(values))


class FixedScores:
    """Scores from a fixed (n_users, n_items) table; counts calls to see the blocks."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float32)
        self.calls: list[int] = []

    def score(self, users, history, items=None):
        self.calls.append(len(users))
        return self.table[users]  # a view: the evaluator must copy before masking


# item preference: 0 > 1 > 2 > 3 > 4 > 5 for every user
DESCENDING = np.tile(np.arange(N_ITEMS, 0, -1, dtype=np.float32), (N_USERS, 1))


def test_hand_worked_evaluation():
    # user 0: history {0}, test {2, 4}; user 1: history {}, test {1}; users 2, 3: no test items
    history = log([(0, 0), (2, 3)])
    test = log([(0, 2), (0, 4), (1, 1)])
    result = evaluate(FixedScores(DESCENDING), history, test, metrics=["Recall", "NDCG", "MAP"], ks=[2, 3])
    # user 0 ranks 1, 2, 3, 4, 5 (0 masked): hit at rank 2 (item 2) and rank 4 (item 4)
    # user 1 ranks 0, 1, 2, ...: hit at rank 2
    assert result.users.tolist() == [0, 1]
    np.testing.assert_allclose(result.per_user["Recall@2"], [1 / 2, 1 / 1])
    np.testing.assert_allclose(result.per_user["NDCG@3"], [(1 / L3) / (1 / L2 + 1 / L3), (1 / L3) / (1 / L2)])
    np.testing.assert_allclose(result.per_user["MAP@3"], [(1 / 2) / 2, (1 / 2) / 1])
    assert result["Recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert result.n_skipped_users == 2 and result.protocol["n_users_skipped"] == 2


def test_history_items_are_never_recommended():
    history = log([(u, i) for u in range(N_USERS) for i in (1, 3, 5)])
    test = log([(u, 0) for u in range(N_USERS)] + [(u, 2) for u in range(N_USERS)])
    loves_history = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    loves_history[:, [1, 3, 5]] = 100.0  # history items score highest
    model = FixedScores(loves_history)
    items, _ = rank(model, np.arange(N_USERS), history, 3)
    assert not np.isin(items, [1, 3, 5]).any()
    assert sorted(items[0].tolist()) == [0, 2, 4]
    assert model.table[0, 1] == 100.0  # the model's own array was not written into
    result = evaluate(model, history, test, metrics=["Recall"], ks=[2])
    np.testing.assert_allclose(result.per_user["Recall@2"], 1.0)  # ties 0, 2, 4 -> lower index first
    unmasked = evaluate(model, history, test, metrics=["Recall"], ks=[2], mask_history=False)
    np.testing.assert_allclose(unmasked.per_user["Recall@2"], 0.0)


def test_restricting_users_counts_skips_among_them():
    test = log([(0, 2), (1, 1)])
    result = evaluate(FixedScores(DESCENDING), log([]), test, metrics=["Hit"], ks=[1], users=np.array([1, 2, 3]))
    assert result.users.tolist() == [1]
    assert result.n_skipped_users == 2


def test_results_do_not_depend_on_the_block_size():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    users, items = Vocab(np.arange(n_users)), Vocab(np.arange(n_items))
    pairs = rng.random((n_users, n_items))
    hist = Interactions(*np.nonzero(pairs < 0.2), users, items)
    test = Interactions(*np.nonzero(pairs > 0.85), users, items)
    table = rng.random((n_users, n_items)).astype(np.float32)
    big = FixedScores(table)
    tiny = FixedScores(table)
    assert block_size_for(n_items, memory_budget_mb=1e-4) == 1
    a = evaluate(big, hist, test, ks=[1, 5, 10])
    b = evaluate(tiny, hist, test, ks=[1, 5, 10], memory_budget_mb=1e-4)
    assert len(big.calls) == 1 and len(tiny.calls) == len(a.users) > 10
    assert a.metrics == b.metrics
    for label in a.per_user:
        np.testing.assert_array_equal(a.per_user[label], b.per_user[label])


def test_k_larger_than_the_catalogue_is_a_user_error():
    test = log([(0, 1)])
    with pytest.raises(RecstackError, match="catalogue"):
        evaluate(FixedScores(DESCENDING), log([]), test, ks=[N_ITEMS + 1])
    with pytest.raises(RecstackError, match="catalogue"):
        rank(FixedScores(DESCENDING), np.array([0]), log([]), N_ITEMS + 1)
    with pytest.raises(RecstackError, match="unknown metric"):
        evaluate(FixedScores(DESCENDING), log([]), test, metrics=["NDGC"])


def test_minus_inf_scores_become_padding_and_never_hit():
    # only items 4 and 5 can be scored; the test items 0 and 5 -> item 0 is unscorable
    table = np.full((N_USERS, N_ITEMS), -np.inf, dtype=np.float32)
    table[:, 4], table[:, 5] = 2.0, 1.0
    test = log([(0, 0), (0, 5)])
    items, scores = rank(FixedScores(table), np.array([0]), log([]), 4)
    assert items.tolist() == [[4, 5, -1, -1]]
    assert np.isneginf(scores[0, 2:]).all()
    result = evaluate(FixedScores(table), log([]), test, metrics=["Recall", "Precision", "Hit", "NDCG"], ks=[4],
                      keep_rankings=True)
    assert result.rankings.items.tolist() == [[4, 5, -1, -1]]
    assert result.rankings.hits.tolist() == [[0, 1, 0, 0]]
    assert result["Recall@4"] == pytest.approx(1 / 2)     # item 0 is never found
    assert result["Precision@4"] == pytest.approx(1 / 4)  # padding still counts in k
    assert result["NDCG@4"] == pytest.approx((1 / L3) / (1 / L2 + 1 / L3))


def test_everything_masked_or_unscorable_pads_the_whole_list():
    history = log([(0, i) for i in range(4)])
    table = DESCENDING.copy()
    table[:, 4] = -np.inf
    test = log([(0, 4), (0, 5)])
    result = evaluate(FixedScores(table), history, test, metrics=["Recall", "MRR"], ks=[3], keep_rankings=True)
    # 0-3 masked, 4 unscorable: only item 5 is left
    assert result.rankings.items.tolist() == [[5, -1, -1]]
    assert result["Recall@3"] == pytest.approx(1 / 2)
    assert result["MRR@3"] == pytest.approx(1.0)


def test_graded_ndcg_uses_test_values():
    # user 0 holds out item 1 (rating 5) and item 2 (rating 1); the model ranks 2 before 1
    table = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    table[0, 2], table[0, 1] = 3.0, 2.0
    test = log([(0, 1), (0, 2)], values=[5.0, 1.0])
    graded = evaluate(FixedScores(table), log([], values=[]), test, metrics=["NDCG", "Recall"], ks=[2], graded=True)
    assert graded["NDCG@2"] == pytest.approx((1 / L2 + 5 / L3) / (5 / L2 + 1 / L3))
    assert graded["Recall@2"] == pytest.approx(1.0)  # any positive gain is a hit
    binary = evaluate(FixedScores(table), log([], values=[]), test, metrics=["NDCG"], ks=[2])
    assert binary["NDCG@2"] == pytest.approx(1.0)
    with pytest.raises(RecstackError, match="value column"):
        evaluate(FixedScores(table), log([]), log([(0, 1)]), metrics=["NDCG"], ks=[2], graded=True)


def test_graded_ideal_is_over_the_best_k_test_values():
    table = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    table[0] = [6, 5, 4, 3, 2, 1]  # ranks items 0, 1, 2, ...
    test = log([(0, 0), (0, 3), (0, 4), (0, 5)], values=[1.0, 2.0, 4.0, 3.0])
    result = evaluate(FixedScores(table), log([], values=[]), test, metrics=["NDCG"], ks=[2, 4], graded=True)
    # @2: DCG = 1/log2(2) (item 0, gain 1); ideal = 4, 3 at ranks 1, 2
    assert result["NDCG@2"] == pytest.approx((1 / L2) / (4 / L2 + 3 / L3))
    # @4: ranked 0, 1, 2, 3 -> gains 1, 0, 0, 2; ideal 4, 3, 2, 1
    dcg = 1 / L2 + 2 / np.log2(5)
    idcg = 4 / L2 + 3 / L3 + 2 / L4 + 1 / np.log2(5)
    assert result["NDCG@4"] == pytest.approx(dcg / idcg)


def test_coverage_is_reported_per_run():
    test = log([(0, 2), (1, 1)])
    result = evaluate(FixedScores(DESCENDING), log([(0, 0)]), test, metrics=["Coverage", "Hit"], ks=[2])
    # user 0 gets items 1, 2 (0 masked); user 1 gets items 0, 1: {0, 1, 2} of 6
    assert result["Coverage@2"] == pytest.approx(3 / 6)
    assert "Coverage@2" not in result.per_user


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_top_k_breaks_ties_by_lower_index(backend, monkeypatch):
    if backend == "numpy":
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails: numpy fallback
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(60, 300)).astype(np.float32)  # heavy ties everywhere
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[:5] = 0.0  # whole rows tied
    for k in (1, 7, 50, 300):
        idx, values = top_k_items(scores, k)
        # reference: a stable sort on -score keeps lower indices first among equal scores
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        finite = np.isfinite(np.take_along_axis(scores, expected, axis=1))
        np.testing.assert_array_equal(np.where(finite, idx, -1), np.where(finite, expected, -1))
        np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))
    assert top_k_items(np.zeros((1, 5), np.float32), 3)[0].tolist() == [[0, 1, 2]]


class ListsOnly:
    """A generative-style model: its own lists through top_k, recording the masking it was asked for."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def top_k(self, users, history, k, *, mask_history):
        self.seen.append(mask_history)
        return np.tile(np.arange(k), (len(users), 1)), np.zeros((len(users), k), np.float32)


def test_top_k_models_are_told_whether_the_history_is_masked():
    history = log([(0, 0)])
    lists = ListsOnly()
    assert isinstance(lists, ListRecommender)
    rank(lists, np.array([0]), history, 3)
    rank(lists, np.array([0]), history, 3, mask_history=False)
    assert lists.seen == [True, False]


def test_a_scorer_with_a_top_k_of_another_name_is_ranked_by_its_scores():
    class ScoresOnly:
        def score(self, users, history, items=None):
            return np.tile(np.arange(history.n_items, dtype=np.float32), (len(users), 1))

        def top_n(self, users, history, k):  # not the declared ability: never called
            raise AssertionError("rank used a method the model did not declare")

    history = log([(0, 5)])
    items, _ = rank(ScoresOnly(), np.array([0]), history, 2)
    assert items.tolist() == [[4, 3]]  # the highest scores, the history item 5 masked


# ---- exclude: items masked although the model does not read them (`test_history: train`) ----------

class ReadsHistory(FixedScores):
    """FixedScores that records the history it was given."""

    def score(self, users, history, items=None):
        self.read = history
        return super().score(users, history, items)


def test_excluded_events_are_masked_but_never_read():
    history, valid = log([(0, 0)]), log([(0, 1), (1, 0)])  # user 0: train {0}, valid {1}; user 1: valid {0}
    test = log([(0, 2), (1, 2)])
    model = ReadsHistory(DESCENDING)
    items, _ = rank(model, np.array([0, 1]), history, 3, exclude=valid)
    assert model.read is history  # the model reads train only
    assert items.tolist() == [[2, 3, 4], [1, 2, 3]]  # train and valid items both left out
    assert rank(model, np.array([0, 1]), history, 3)[0].tolist() == [[1, 2, 3], [0, 1, 2]]
    # unmasked, nothing is left out, excluded or not
    assert rank(model, np.array([0]), history, 2, exclude=valid, mask_history=False)[0].tolist() == [[0, 1]]
    result = evaluate(model, history, test, metrics=["MRR"], ks=[3], exclude=valid)
    np.testing.assert_allclose(result.per_user["MRR@3"], [1.0, 0.5])
    # cold users are counted on what the model reads: user 1 has no train event
    assert result.history_counts.n_no_history == 1
    with pytest.raises(ValueError, match="share vocabularies"):
        other = Interactions(np.array([0]), np.array([0]), Vocab(np.arange(9), "user"), ITEMS)
        rank(model, np.array([0]), history, 2, exclude=other)


def test_a_list_recommender_s_lists_drop_the_excluded_items_and_stay_k_long():
    class Lists(ListsOnly):
        def top_k(self, users, history, k, *, mask_history):
            self.asked = k
            return super().top_k(users, history, k, mask_history=mask_history)

    lists = Lists()
    valid = log([(0, 1), (0, 2), (1, 0)])
    items, scores = rank(lists, np.array([0, 1]), log([]), 3, exclude=valid)
    assert lists.asked == 5  # k plus the most items any listed user has excluded
    assert items.tolist() == [[0, 3, 4], [1, 2, 3]]
    assert scores.shape == (2, 3)
