"""Random and Pop: hand-worked rankings, an analytic expectation, and independent re-computations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recstack.data import Interactions, Vocab
from recstack.evaluate.evaluator import evaluate
from recstack.models.baseline.pop import Pop
from recstack.models.baseline.random import Random, RandomConfig


def ndcg10(model, split) -> float:
    return evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]


# ---- Random ------------------------------------------------------------------------------

def test_random_is_deterministic_per_seed_user_and_item(clustered_split):
    history = clustered_split.train
    model = Random(RandomConfig(seed=7)).fit(history)
    block = model.score(np.array([3, 9, 4]), history)
    alone = model.score(np.array([9]), history)
    np.testing.assert_array_equal(block[1], alone[0])  # a user's scores do not depend on the block
    np.testing.assert_array_equal(model.score(np.array([4]), history, items=np.array([11, 2])), block[2:, [11, 2]])
    assert not np.array_equal(block[0], block[2])  # users differ
    other_seed = Random(RandomConfig(seed=8)).fit(history).score(np.array([3, 9, 4]), history)
    assert np.mean(other_seed == block) < 0.01  # seeds differ


def test_random_scores_are_uniform_on_the_unit_interval(clustered_split):
    history = clustered_split.train
    scores = Random().fit(history).score(np.arange(history.n_users), history)
    assert scores.min() >= 0.0 and scores.max() < 1.0
    # 36,000 uniform draws: mean 0.5 and deciles 10% each, within a few standard errors
    assert abs(scores.mean() - 0.5) < 0.01
    deciles = np.bincount((scores.ravel() * 10).astype(int), minlength=10) / scores.size
    np.testing.assert_allclose(deciles, 0.1, atol=0.01)


def test_random_ndcg_matches_its_analytic_expectation(clustered_split):
    """A uniform ranking of the n_c unmasked items hits each rank with probability R / n_c."""
    history, test = clustered_split.history("test"), clustered_split.test
    n_relevant = test.user_counts()
    users = np.flatnonzero(n_relevant > 0)
    n_candidates = history.n_items - history.user_counts()[users]
    discounts = 1.0 / np.log2(np.arange(2, 12))
    ideal = np.array([discounts[: min(r, 10)].sum() for r in n_relevant[users]])
    expected = np.mean(n_relevant[users] / n_candidates * discounts.sum() / ideal)
    observed = np.mean([ndcg10(Random(RandomConfig(seed=s)).fit(clustered_split.train), clustered_split)
                        for s in range(5)])
    assert observed == pytest.approx(expected, abs=0.01)


# ---- Pop ---------------------------------------------------------------------------------

def test_pop_hand_worked_ranking():
    # train: u0 {i0, i1}, u1 {i1}, u2 {i1, i2}  -> counts i0 1, i1 3, i2 1, i3 0
    users, items = Vocab(["u0", "u1", "u2"], "user"), Vocab(["i0", "i1", "i2", "i3"], "item")
    train = Interactions.from_ids(np.array(["u0", "u0", "u1", "u2", "u2"]), np.array(["i0", "i1", "i1", "i1", "i2"]),
                                  users=users, items=items)
    scores = Pop().fit(train).score(np.array([0, 1, 2]), train)
    np.testing.assert_array_equal(scores, np.tile([1.0, 3.0, 1.0, 0.0], (3, 1)))
    # u0 (history i0, i1) wants i2: rank 1 of {i2, i3}; u1 (history i1) wants i3: rank 3 of {i0, i2, i3}
    test = Interactions.from_ids(np.array(["u0", "u1"]), np.array(["i2", "i3"]), users=users, items=items)
    result = evaluate(Pop().fit(train), train, test, metrics=["NDCG@3", "Hit@1"])
    assert result["NDCG@3"] == pytest.approx((1.0 + 1.0 / np.log2(4)) / 2)
    assert result["Hit@1"] == pytest.approx(0.5)


def test_pop_counts_interactions_not_batches_and_ignores_history(clustered_split):
    train = clustered_split.train
    counts = Counter(train.item.tolist())
    expected = np.array([counts.get(i, 0) for i in range(train.n_items)], dtype=np.float32)
    model = Pop().fit(train)
    np.testing.assert_array_equal(model.score(np.array([1]), train)[0], expected)
    # a different history changes nothing: Pop ranks every user alike
    np.testing.assert_array_equal(model.score(np.array([1]), clustered_split.history("test"))[0], expected)


class _NaivePop:
    """Counts by a Python dict, no numpy aggregation."""

    def __init__(self, train: Interactions) -> None:
        counts = Counter(zip(train.item.tolist()))
        self.counts = np.array([counts.get((i,), 0) for i in range(train.n_items)], dtype=np.float32)

    def score(self, users, history, items=None):
        return np.tile(self.counts, (len(users), 1))


def test_pop_metric_pinned_and_beats_random(clustered_split):
    pop = ndcg10(Pop().fit(clustered_split.train), clustered_split)
    assert pop == pytest.approx(ndcg10(_NaivePop(clustered_split.train), clustered_split), abs=1e-12)
    random = ndcg10(Random().fit(clustered_split.train), clustered_split)
    assert pop > random + 0.02
