"""Self-supervised two-tower retrieval (Yao et al. 2021): the batch softmax with logQ correction, the
InfoNCE of the SSL views, correlated / random feature masking, learning on the clustered fixture and
scores for cold items from their features.

The contract suite (tests/contract) covers the model too, with the item table through `use_dataset`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recstack.errors import RecstackError
from recstack.models import ConfigError, build
from recstack.models.content.ssl_two_tower import (batch_softmax_loss, correlated_masks, mutual_information,
                                                   random_masks)
from recstack.testing import built_module
from recstack.testing import held_out_ndcg as ndcg
from recstack.train.losses import info_nce_loss

FAST = {"text_encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 8, "learning_rate": 3e-3,
        "batch_size": 512, "ssl_batch_size": 128, "field_size": 16, "mlp_hidden": 64, "embedding_size": 32,
        "verbose": False}
PINNED_NDCG = 0.580  # measured with FAST, seed 0 (pop: about 0.10)


@pytest.fixture(scope="module")
def fitted(clustered_with_items):
    dataset, split = clustered_with_items
    return build("ssl-two-tower", FAST).use_dataset(dataset).fit(split.train, split.valid)


# ---- the losses by hand -----------------------------------------------------------------------------
def test_batch_softmax_subtracts_log_q_from_every_logit():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    # logits / tau (tau = 0.5) minus log Q of the column: row 0 [2 + ln 2, 1.2 + ln 4], row 1 [0 + ln 2, 1.6 + ln 4]
    row0 = -(2 + math.log(2)) + math.log(math.exp(2 + math.log(2)) + math.exp(1.2 + math.log(4)))
    row1 = -(1.6 + math.log(4)) + math.log(math.exp(math.log(2)) + math.exp(1.6 + math.log(4)))
    assert batch_softmax_loss(q, k, 0.5, log_q).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    plain0 = -2 + math.log(math.exp(2) + math.exp(1.2))
    plain1 = -1.6 + math.log(1 + math.exp(1.6))
    assert batch_softmax_loss(q, k, 0.5).item() == pytest.approx((plain0 + plain1) / 2, rel=1e-6)


def test_accidental_hits_leave_the_softmax():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    items = torch.tensor([7, 3, 7])  # rows 0 and 2 hold the same item: neither is the other's negative
    logits = (q @ k.T).numpy().astype(np.float64)
    expected = [-logits[0, 0] + np.log(np.exp(logits[0, [0, 1]]).sum()),
                -logits[1, 1] + np.log(np.exp(logits[1]).sum()),
                -logits[2, 2] + np.log(np.exp(logits[2, [1, 2]]).sum())]
    assert batch_softmax_loss(q, k, 1.0, items=items).item() == pytest.approx(np.mean(expected), rel=1e-6)


def test_info_nce_on_two_pairs_by_hand():
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    second = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cosines / 0.5: row 0 [2, 1.2] (positive 2), row 1 [0, 1.6] (positive 1.6)
    expected = (-2 + math.log(math.exp(2) + math.exp(1.2)) - 1.6 + math.log(1 + math.exp(1.6))) / 2
    assert info_nce_loss(first, second, 0.5).item() == pytest.approx(expected, rel=1e-6)


# ---- masking ------------------------------------------------------------------------------------------
def test_mutual_information_by_hand():
    same = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])
    independent = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_allclose(mutual_information(same), np.full((2, 2), math.log(2)), atol=1e-12)
    np.testing.assert_allclose(mutual_information(independent), np.diag([math.log(2)] * 2), atol=1e-12)


def test_correlated_masks_group_by_mutual_information_and_split_complementary_halves():
    rng = np.random.default_rng(0)
    a, c = rng.integers(0, 2, 400), rng.integers(0, 3, 400)
    # features 0 and 2 copy a, features 1 and 3 copy c (up to relabelling); a and c are independent
    codes = np.stack([a, c, 1 - a, c + 5], axis=1)
    mi = mutual_information(codes)
    assert mi[0, 2] == pytest.approx(mi[0, 0]) and mi[0, 1] < 0.02
    table = correlated_masks(mi)
    np.testing.assert_array_equal(table, [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert (table.sum(1) == 2).all()  # half each; the second view masks the complement (~table[seed])


def test_random_masks_mask_half_the_features_at_random():
    masks = random_masks(500, 5, np.random.default_rng(0))
    assert (masks.sum(1) == 2).all()
    assert 0.3 < masks.mean(0).min() and masks.mean(0).max() < 0.5


def test_the_views_of_a_batch_follow_the_feature_groups(clustered_with_items):
    dataset, split = clustered_with_items
    model, module = built_module("ssl-two-tower", FAST, dataset, split)
    names = module.order
    assert names == ["id", "genres", "year", "text"]
    batch = next(iter(model.batches()))
    masked = 1.0 - batch[8]  # the features the first view masks; the second view keeps exactly these
    table = model._mask_table
    assert masked.shape == (FAST["ssl_batch_size"], table.shape[1])
    assert all(any((row == t).all() for t in table) for row in masked.astype(bool))
    # the ID determines every feature of an item, so its MI with any seed is the seed's entropy: the ID
    # always joins the seed's group (ties go to the earlier feature)
    assert table[:, 0].all()
    assert (table.sum(1) == table.shape[1] // 2).all()
    # plain two-tower: the same pairs, no SSL part
    plain, _ = built_module("ssl-two-tower", {**FAST, "ssl_weight": 0.0}, dataset, split)
    first = next(iter(plain.batches()))
    assert len(first) == 7 and all(np.array_equal(x, y) for x, y in zip(first, batch[:7]))


# ---- learning and cold items ----------------------------------------------------------------------------
def test_pinned_ndcg_on_clustered_data_beats_pop(fitted, clustered_with_items):
    _, split = clustered_with_items
    value = ndcg(fitted, split)
    assert value > ndcg(build("pop").fit(split.train), split) + 0.2
    assert value == pytest.approx(PINNED_NDCG, abs=0.03)
    np.testing.assert_allclose(np.linalg.norm(fitted.item_factors_, axis=1), 1.0, rtol=1e-5)


def test_cold_items_are_scored_from_their_features(clustered_with_items):
    dataset, split = clustered_with_items
    item_ids = np.asarray(split.train.items.ids).astype(np.int64)
    cluster = item_ids % 6  # the fixture: item id i is in cluster i % 6, and its genres name the cluster
    cold = np.flatnonzero(item_ids < 6)  # one item of each cluster
    train = split.train.take(~np.isin(split.train.item, cold))
    valid = split.valid.take(~np.isin(split.valid.item, cold))
    assert (train.item_counts()[cold] == 0).all()
    model = build("ssl-two-tower", FAST).use_dataset(dataset).fit(train, valid)
    history = split.history("test")
    scores = model.score(np.arange(history.n_users), history)[:, cold]
    assert (np.ptp(scores, axis=0) > 0.1).all()  # not one constant per cold item
    # feature-driven: a cold item's vector lies with the warm items of its genre (its cluster)
    vectors, warm = model.item_factors_, np.flatnonzero(train.item_counts() > 0)
    for item in cold:
        similarity = vectors[warm] @ vectors[item]
        own = cluster[warm] == cluster[item]
        assert similarity[own].mean() > similarity[~own].mean() + 0.15
    # and a user's best cold item is the one of the user's own cluster (the majority of the history)
    majority = np.array([np.bincount(cluster[row], minlength=6).argmax() for row in train.sequences()])
    assert np.mean(cluster[cold[scores.argmax(axis=1)]] == majority) > 0.9


def test_a_new_user_is_scored_from_the_history_given(fitted, clustered_with_items):
    _, split = clustered_with_items
    history = split.history("test")
    queries = fitted.user_queries(np.array([3]), history)
    emptied = history.take(history.user != 3)
    assert not np.allclose(queries, fitted.user_queries(np.array([3]), emptied))
    assert fitted.can_score(np.array([history.n_users + 2]), history).tolist() == [False]


# ---- errors ---------------------------------------------------------------------------------------------
def test_bad_configs_and_missing_inputs_raise_one_clear_error(clustered_with_items):
    dataset, split = clustered_with_items
    with pytest.raises(ConfigError, match="more than once"):
        build("ssl-two-tower", {"features": ["id", "id"]})
    with pytest.raises(ConfigError, match="features"):
        build("ssl-two-tower", {"features": ["id", "actors"]})
    with pytest.raises(RecstackError, match="needs the item modalities structure, text before fit"):
        build("ssl-two-tower", FAST).fit(split.train, split.valid)
    with pytest.raises(RecstackError, match="set ssl_weight: 0"):
        build("ssl-two-tower", {**FAST, "features": ["id"]}).fit(split.train, split.valid)
    no_genres = type(dataset)(dataset.interactions, item_table={k: v for k, v in dataset.item_table.items()
                                                                if k != "genres"})
    with pytest.raises(RecstackError, match="feature 'genres' needs a genres column"):
        build("ssl-two-tower", FAST).use_dataset(no_genres).fit(split.train, split.valid)
