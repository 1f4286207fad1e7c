"""Cold-item split: held-out items never reach training, pools are the parts' items, and the
evaluator and the trainer rank only a cold part's own items."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data import Interactions
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.split import cold_item_split, make_split


def log(n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, size=per_user, replace=False) for _ in range(n_users)])
    return Interactions.from_ids(users, items, timestamp=np.arange(len(users)))


DATA = log()


def test_cold_items_never_have_a_training_event_and_pools_are_disjoint():
    split = make_split(DATA, "cold_items", seed=3, valid_items=0.1, test_items=0.25)
    train_items = set(np.flatnonzero(split.train.item_counts() > 0))
    valid_pool, test_pool = split.item_pool("valid"), split.item_pool("test")
    n_active = int((DATA.item_counts() > 0).sum())
    assert len(test_pool) == int(np.floor(n_active * 0.25 + 0.5)) and len(valid_pool) == int(np.floor(n_active * 0.1 + 0.5))
    assert not set(valid_pool) & set(test_pool)
    assert not train_items & (set(valid_pool) | set(test_pool))
    # every event of a cold item went to its part: counts per item are preserved
    np.testing.assert_array_equal(split.test.item_counts()[test_pool], DATA.item_counts()[test_pool])
    np.testing.assert_array_equal(split.valid.item_counts()[valid_pool], DATA.item_counts()[valid_pool])
    assert set(np.flatnonzero(split.test.item_counts())) == set(test_pool)


def test_other_splits_rank_the_whole_catalogue():
    split = make_split(DATA, "random", seed=0)
    assert split.item_pool("test") is None and split.item_pool("valid") is None
    assert "item_pool_sizes" not in split.summary()


def test_the_pool_stays_with_the_part_and_not_with_logs_derived_from_it():
    split = cold_item_split(DATA, np.random.default_rng(1))
    assert split.summary()["item_pool_sizes"] == {"valid": 4, "test": 4}
    assert split.history("test").item_pool is None and split.valid.take(np.arange(3)).item_pool is None
    with pytest.raises(ValueError, match="every item"):
        split.test.with_item_pool(split.item_pool("valid"))


def test_bad_shares_name_the_parameter():
    with pytest.raises(RecstackError, match="valid_items"):
        cold_item_split(DATA, np.random.default_rng(0), valid_items=1.5)
    with pytest.raises(RecstackError, match="leave warm items"):
        cold_item_split(DATA, np.random.default_rng(0), valid_items=0.5, test_items=0.5)


class Fixed:
    """Scores item i as i for every user: the top of the full catalogue is the last items."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def score(self, users, history):
        return np.tile(np.arange(self.n_items, dtype=np.float32), (len(users), 1))


def test_item_pool_restricts_the_ranking_to_the_pool():
    split = cold_item_split(DATA, np.random.default_rng(2), test_items=0.25)
    pool = split.item_pool("test")
    model = Fixed(DATA.n_items)
    everything = np.arange(DATA.n_items)
    full = evaluate(model, split.history("test"), split.test, metrics=["Recall"], ks=[5], item_pool=everything)
    pooled = evaluate(model, split.history("test"), split.test, metrics=["Recall", "Coverage"], ks=[5],
                      keep_rankings=True)  # the part's own pool
    ranked = pooled.rankings.items
    assert set(ranked[ranked >= 0].ravel()) <= set(pool)
    # the fixed scorer ranks the highest-indexed pool items first for every user with nothing masked
    top = np.sort(pool)[::-1][:5]
    unmasked = [i for i, u in enumerate(pooled.users) if not set(top) & set(split.history("test").matrix()[u].indices)]
    assert unmasked and all(list(ranked[i]) == list(top) for i in unmasked)
    assert pooled.protocol["ranking"] == "item_pool" and pooled.protocol["n_items"] == len(pool)
    assert pooled.metrics["Recall@5"] > full.metrics["Recall@5"]
    assert pooled.metrics["Coverage@5"] <= 1.0


def test_constant_scores_in_a_pool_are_ordered_by_the_fixed_random_order_not_the_index():
    split = cold_item_split(DATA, np.random.default_rng(2), test_items=0.5)
    pool = split.item_pool("test")

    class Constant(Fixed):
        def score(self, users, history):
            return np.zeros((len(users), self.n_items), dtype=np.float32)

    result = evaluate(Constant(DATA.n_items), split.history("test"), split.test, metrics=["Hit"], ks=[5],
                      keep_rankings=True, mask_history=False)
    order = np.random.default_rng(0).permutation(DATA.n_items)
    expected = [i for i in order if i in set(pool)][:5]
    assert all(list(row) == expected for row in result.rankings.items)
    assert expected != sorted(pool)[:5]  # the index order would have been a different list
