"""Hua et al.'s indexing schemes, each checked by hand on a small catalogue (the shared interface is
tested for every tokenizer in test_semantic_ids.py)."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data import Interactions, Vocab
from recstack.models.generative.item_indexing import cooccurrence, digits
from recstack.models.generative.semantic_ids import PAD, TokenizerError, build_tokenizer


def log(users, items, n_items, times=None) -> Interactions:
    n_users = max(users) + 1
    return Interactions(np.array(users), np.array(items), Vocab(np.arange(n_users), "user"),
                        Vocab(np.arange(n_items), "item"), timestamp=None if times is None else np.array(times))


def test_digits_are_fixed_width_and_most_significant_first():
    codes, sizes = digits(np.array([0, 5, 11]), 3, 12)  # 12 numbers need 3 ternary digits
    assert codes.tolist() == [[0, 0, 0], [0, 1, 2], [1, 0, 2]] and sizes == [3, 3, 3]
    codes, sizes = digits(np.array([2, 0, 1]), None, 3)
    assert codes.tolist() == [[2], [0], [1]] and sizes == [3]


def test_random_indexing_is_a_seeded_permutation_in_digits():
    tok = build_tokenizer("random", {"base": 10, "seed": 3}).fit(interactions=log([0], [0], 150))
    assert sorted(tok.numbers_.tolist()) == list(range(150))
    assert tok.codes_.shape == (150, 3)  # 150 numbers: 3 decimal digits
    np.testing.assert_array_equal(tok.codes_ @ np.array([100, 10, 1]), tok.numbers_)
    other = build_tokenizer("random", {"base": 10, "seed": 4}).fit(interactions=log([0], [0], 150))
    assert not np.array_equal(other.numbers_, tok.numbers_)
    single = build_tokenizer("random", {"base": None}).fit(np.zeros((7, 2)))  # IID: one token per item
    assert single.codes_.shape == (7, 1) and single.level_sizes_ == [7]


def test_sequential_indexing_numbers_items_by_first_appearance_in_user_sequences():
    # user 0 consumes 3 then 1 (by time); user 1 consumes 1, 0, 4; item 2 is never consumed
    data = log([0, 0, 1, 1, 1], [1, 3, 4, 1, 0], 5, times=[20, 10, 30, 5, 6])
    tok = build_tokenizer("sequential", {"base": 2}).fit(interactions=data)
    # order of first appearance: 3, 1 (user 0), then 0, 4 (user 1), then unseen 2
    assert tok.numbers_.tolist() == [2, 1, 4, 0, 3]
    assert tok.codes_.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0], [0, 1, 1]]
    with pytest.raises(TokenizerError, match="interactions=train"):
        build_tokenizer("sequential").fit(np.zeros((5, 2)))


def two_communities(size: int = 12, isolated: int = 1) -> Interactions:
    """Users 0-5 consume items 0..size-1, users 6-11 items size..2size-1; the last items are never consumed."""
    users, items = [], []
    rng = np.random.default_rng(0)
    for user in range(12):
        offset = 0 if user < 6 else size
        for item in rng.choice(size, 8, replace=False):
            users.append(user)
            items.append(offset + item)
    return log(users, items, 2 * size + isolated)


def test_cooccurrence_counts_shared_users():
    graph = cooccurrence(log([0, 0, 1, 1, 1], [0, 1, 0, 1, 2], 3)).toarray()
    assert graph.tolist() == [[0, 2, 1], [2, 0, 1], [1, 1, 0]]


def test_collaborative_indexing_splits_communities_and_caps_cluster_sizes():
    data = two_communities()
    tok = build_tokenizer("collaborative", {"n_clusters": 2, "max_cluster_size": 13}).fit(interactions=data)
    first = tok.codes_[:, 0]
    assert len(set(first[:12])) == 1 and len(set(first[12:24])) == 1 and first[0] != first[12]
    assert tok.codes_.shape == (25, 2)  # one split, then the position inside the cluster
    assert tok.codes_[:, 1].max() < 13  # every leaf cluster holds at most max_cluster_size items
    small = build_tokenizer("collaborative", {"n_clusters": 2, "max_cluster_size": 5}).fit(interactions=data)
    lengths = small.lengths()
    assert lengths.min() >= 3 and small.codes_.shape[1] == lengths.max()  # deeper splits, PAD-filled tails
    for prefix in {tuple(r[:-1]) for r in (small.codes_[i][small.codes_[i] != PAD] for i in range(25))}:
        assert len(small.items_of_prefix(prefix)) <= 5


def test_semantic_indexing_orders_categories_by_frequency_and_numbers_collisions():
    table = {"genres": np.array(["Comedy|Drama", "Drama", "Drama|Comedy", "Horror", "", "Drama|Romance|Comedy"],
                                dtype=object)}
    tok = build_tokenizer("semantic", {"depth": 2}).fit(item_table=table)
    # frequency: Drama 4, Comedy 3, Horror 1, Romance 1 (ties by name) -> 0, 1, 2, 3; "none" = 4
    assert tok.categories_ == ["Drama", "Comedy", "Horror", "Romance"]
    assert tok.codes_.tolist() == [[0, 1, 0], [0, 4, 0], [0, 1, 1], [2, 4, 0], [4, 4, 0], [0, 1, 2]]
    assert tok.collision_rate_ == pytest.approx(2 / 6) and tok.level_sizes_ == [5, 5, 3]
    with pytest.raises(TokenizerError, match="'category' not found; available: genres"):
        build_tokenizer("semantic", {"column": "category"}).fit(item_table=table)


def test_hybrid_indexing_puts_the_category_before_or_after_the_collaborative_code():
    data = two_communities(isolated=0)
    table = {"genres": np.array(["Drama", "Comedy"] * 12, dtype=object)}
    params = {"n_clusters": 2, "max_cluster_size": 13}
    hybrid = build_tokenizer("hybrid", params).fit(interactions=data, item_table=table)
    collaborative = build_tokenizer("collaborative", params).fit(interactions=data)
    drama = hybrid.categories_.index("Drama")
    assert hybrid.codes_[0, 0] == drama and hybrid.codes_[1, 0] != drama
    np.testing.assert_array_equal(hybrid.codes_[:, 1:], collaborative.codes_)
    reverse = build_tokenizer("hybrid", {**params, "order": "collaborative_first"}).fit(interactions=data, item_table=table)
    np.testing.assert_array_equal(reverse.codes_[:, :2], collaborative.codes_)
    assert reverse.codes_[0, 2] == drama
    with pytest.raises(TokenizerError, match="interactions=train"):
        build_tokenizer("hybrid").fit(item_table=table)
