"""Beyond-accuracy measures: hand-worked values, ranges, edge cases, independent cross-checks, speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import pdist
from scipy.stats import entropy as scipy_entropy

from recstack.errors import RecstackError
from recstack.evaluate import fairness
from recstack.evaluate.beyond import (
    aclt,
    aplt,
    arp,
    catalogue_coverage,
    check_lists,
    exposure_entropy,
    exposure_gini,
    gini_index,
    intra_list_diversity,
    item_exposure,
    long_tail_mask,
    miscalibration,
    novelty,
    serendipity,
    unexpectedness,
)
from recstack.evaluate.rankings import Rankings

# Five items, two users; user 1 got only two items (-1 pads the end).
LISTS = np.array([[0, 1, 2], [0, 3, -1]])
N = 5
# train popularity (distinct users, 4 train users): item 3 never seen in train
POP = np.array([4, 2, 1, 0, 1])
# features: item 3 has none
FEATURES = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], dtype=float)


def test_catalogue_coverage():
    # items 0, 1, 2, 3 appear: 4 of 5
    assert catalogue_coverage(LISTS, N) == pytest.approx(4 / 5)
    assert catalogue_coverage(np.full((2, 3), -1), N) == 0.0


def test_exposure_gini_and_entropy():
    # counts (2, 1, 1, 1, 0), ascending (0, 1, 1, 1, 2), weights 2j - 6 = (-4, -2, 0, 2, 4)
    # (0 - 2 + 0 + 2 + 8) / (5 * 5) = 8/25
    assert exposure_gini(LISTS, N) == pytest.approx(8 / 25)
    # shares (2/5, 1/5, 1/5, 1/5): H = 2/5 ln(5/2) + 3/5 ln 5 nats
    h = 0.4 * math.log(2.5) + 0.6 * math.log(5)
    assert exposure_entropy(LISTS, N) == pytest.approx(h)
    assert exposure_entropy(LISTS, N, normalised=True) == pytest.approx(h / math.log(5))
    assert math.isnan(exposure_gini(np.full((1, 2), -1), N))
    assert math.isnan(exposure_entropy(np.full((1, 2), -1), N))


def test_gini_and_entropy_cross_checks():
    rng = np.random.default_rng(0)
    lists = np.array([rng.choice(60, 8, replace=False) for _ in range(40)])
    c = np.bincount(lists.ravel(), minlength=60).astype(float)
    # Gini = sum_ij |c_i - c_j| / (2 n^2 mean)
    assert exposure_gini(lists, 60) == pytest.approx(np.abs(c[:, None] - c[None, :]).sum() / (2 * 60 ** 2 * c.mean()))
    assert exposure_entropy(lists, 60) == pytest.approx(scipy_entropy(c))
    assert gini_index(np.ones(7)) == 0.0
    assert gini_index(np.array([0, 0, 0, 5.0])) == pytest.approx(3 / 4)  # (n - 1)/n


def test_novelty():
    # self-information log2(4 / pop): item0 log2 1 = 0, item1 log2 2 = 1, item2 log2 4 = 2,
    # item3 (pop 0, taken as 1) log2 4 = 2
    # list 0: (0 + 1 + 2) / 3 = 1; list 1: (0 + 2) / 2 = 1
    np.testing.assert_allclose(novelty(LISTS, POP, n_users=4), [1.0, 1.0])
    assert math.isnan(novelty(np.full((1, 3), -1), POP, 4)[0])
    with pytest.raises(RecstackError, match="distinct train users"):
        novelty(LISTS, POP, n_users=3)


def test_intra_list_diversity_cosine_and_jaccard():
    # cosine distances: d(0,1) = 1, d(0,2) = d(1,2) = 1 - 1/sqrt 2; list 0: (3 - sqrt 2) / 3
    # list 1: item 3 has no features, similarity 0: distance 1
    np.testing.assert_allclose(intra_list_diversity(LISTS, FEATURES), [(3 - math.sqrt(2)) / 3, 1.0])
    # jaccard: d(0,1) = 1 - 0/2, d(0,2) = d(1,2) = 1 - 1/2: (1 + 1/2 + 1/2) / 3 = 2/3
    np.testing.assert_allclose(intra_list_diversity(LISTS, FEATURES, metric="jaccard"), [2 / 3, 1.0])
    # sparse features give the same answer
    np.testing.assert_allclose(intra_list_diversity(LISTS, sp.csr_matrix(FEATURES)),
                               intra_list_diversity(LISTS, FEATURES))
    # fewer than two items: undefined
    assert math.isnan(intra_list_diversity(np.array([[0, -1, -1]]), FEATURES)[0])
    with pytest.raises(RecstackError, match="binary"):
        intra_list_diversity(LISTS, FEATURES * 0.5, metric="jaccard")


def test_intra_list_diversity_against_pdist():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 16))
    lists = np.array([rng.choice(50, 6, replace=False) for _ in range(20)])
    expected = [pdist(emb[row], metric="cosine").mean() for row in lists]
    np.testing.assert_allclose(intra_list_diversity(lists, emb), expected)
    binary = (rng.random((50, 12)) < 0.3).astype(float)
    binary[:, 0] = 1.0  # no empty rows, where pdist's jaccard convention differs from ours
    expected = [pdist(binary[row].astype(bool), metric="jaccard").mean() for row in lists]
    np.testing.assert_allclose(intra_list_diversity(lists, binary, metric="jaccard"), expected)


def test_unexpectedness_and_serendipity():
    reference = np.array([0, 4])  # one most-popular list for everyone
    # list 0: items 1 and 2 are not in the reference: 2/3; list 1: item 3: 1/2
    np.testing.assert_allclose(unexpectedness(LISTS, reference, N), [2 / 3, 1 / 2])
    relevant = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))
    # list 0: unexpected and relevant = {1}: 1/3 of the list, 1/2 of the unexpected
    # list 1: unexpected {3} is not relevant (item 0 is relevant but expected): 0
    np.testing.assert_allclose(serendipity(LISTS, reference, relevant), [1 / 3, 0.0])
    np.testing.assert_allclose(serendipity(LISTS, reference, relevant, denominator="unexpected"), [1 / 2, 0.0])
    # per-user references: user 1's reference holds item 3, so nothing of list 1 is unexpected
    per_user = np.array([[0, 4], [3, 0]])
    np.testing.assert_allclose(unexpectedness(LISTS, per_user, N), [2 / 3, 0.0])
    got = serendipity(LISTS, per_user, relevant, denominator="unexpected")
    assert got[0] == pytest.approx(1 / 2) and math.isnan(got[1])
    with pytest.raises(RecstackError, match="same users"):
        serendipity(LISTS, reference, relevant[:1])


def test_popularity_bias():
    # ARP: (4 + 2 + 1) / 3 and (4 + 0) / 2
    np.testing.assert_allclose(arp(LISTS, POP), [7 / 3, 2.0])
    # total 8, head share 0.8 -> 6.4: popularity order 0 (4), 1 (6), 2 (7 >= 6.4): head {0, 1, 2};
    # item 4 ties item 2 at 1 but comes later; long tail {3, 4}
    tail = long_tail_mask(POP)
    assert tail.tolist() == [False, False, False, True, True]
    np.testing.assert_allclose(aplt(LISTS, tail), [0.0, 1 / 2])
    np.testing.assert_allclose(aclt(LISTS, tail), [0.0, 1.0])
    # a share reached exactly: 0.5 of 8 = 4 is item 0 alone
    assert long_tail_mask(POP, head_share=0.5).tolist() == [False, True, True, True, True]


def test_miscalibration_hand_worked():
    genres = FEATURES  # item 2 is half genre 0, half genre 1; item 3 has no genre
    history = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 1, 0, 0, 1]]))
    # user 0: p = ((1, 0) + (0, 1)) / 2 = (1/2, 1/2); q = ((1,0) + (0,1) + (1/2,1/2)) / 3 = (1/2, 1/2): 0
    # user 1: p = (1/2, 1/2); list (0, 3): item 3 has no genre, q = (1, 0)
    #   q~ = 0.99 (1, 0) + 0.01 (1/2, 1/2) = (0.995, 0.005)
    #   C_KL = 1/2 ln(0.5 / 0.995) + 1/2 ln(0.5 / 0.005)
    expected = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    np.testing.assert_allclose(miscalibration(LISTS, history, genres), [0.0, expected], atol=1e-12)
    np.testing.assert_allclose(miscalibration(LISTS, history, sp.csr_matrix(genres)), [0.0, expected], atol=1e-12)
    # rank weights (1, 1/2, 1/3) on list 0: q = ((1,0) + (0,1)/2 + (1/2,1/2)/3) / (11/6)
    #   = (1 + 1/6, 1/2 + 1/6) / (11/6) = (7/11, 4/11)
    q = np.array([7 / 11, 4 / 11])
    q_s = 0.99 * q + 0.01 * np.array([0.5, 0.5])
    got = miscalibration(LISTS, history, genres, rank_weights=np.array([1, 1 / 2, 1 / 3]))
    assert got[0] == pytest.approx(scipy_entropy([0.5, 0.5], q_s))


def test_miscalibration_range_and_edges():
    genres = FEATURES
    history = sp.csr_matrix(np.array([[0, 0, 0, 1, 0], [1, 0, 0, 0, 0]]))  # user 0: only a genre-less item
    got = miscalibration(np.array([[0, 1, 2], [3, -1, -1]]), history, genres, alpha=0.01)
    assert math.isnan(got[0])
    # a list without any genre scores the ceiling -ln alpha
    assert got[1] == pytest.approx(-math.log(0.01))


def test_miscalibration_against_scipy():
    rng = np.random.default_rng(2)
    n_items, n_users, n_genres, k = 40, 25, 6, 5
    genres = (rng.random((n_items, n_genres)) < 0.3).astype(float)
    genres[:, 0] += 1.0  # every item has a genre
    dense = (rng.random((n_users, n_items)) < 0.2).astype(float)
    dense[:, 0] = 1.0  # every user has a history
    history = sp.csr_matrix(dense)
    lists = np.array([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
    got = miscalibration(lists, history, genres, alpha=0.05)
    p_item = genres / genres.sum(axis=1, keepdims=True)
    for u in range(n_users):
        items = history[u].indices
        p = p_item[items].mean(axis=0)
        q = p_item[lists[u]].mean(axis=0)
        assert got[u] == pytest.approx(scipy_entropy(p, 0.95 * q + 0.05 * p))


def test_check_lists_and_rankings_input():
    rankings = Rankings(np.arange(2), LISTS, np.zeros(LISTS.shape), np.ones(2))
    assert catalogue_coverage(rankings, N) == catalogue_coverage(LISTS, N)
    np.testing.assert_array_equal(item_exposure(LISTS, N), [2, 1, 1, 1, 0])
    np.testing.assert_allclose(item_exposure(LISTS, N, rank_weights=np.array([1, 0.5, 0.25])),
                               [2, 0.5, 0.25, 0.5, 0])
    with pytest.raises(RecstackError, match="2-D"):
        check_lists(np.array([0, 1]), N)
    with pytest.raises(RecstackError, match="twice"):
        check_lists(np.array([[1, 1]]), N)
    with pytest.raises(RecstackError, match="end of a list"):
        check_lists(np.array([[1, -1, 2]]), N)
    with pytest.raises(RecstackError, match="n_items"):
        check_lists(np.array([[7]]), N)


def test_all_measures_on_a_large_random_run_are_fast():
    """1,000 users x 500 items, k = 10: every measure of both modules well under a second."""
    rng = np.random.default_rng(3)
    n_users, n_items, k = 1000, 500, 10
    # distinct items a row: the top k of random scores
    lists = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :k]
    lists[:50, 7:] = -1  # some short lists
    popularity = rng.integers(0, n_users, n_items)
    history = sp.random(n_users, n_items, density=0.05, format="csr", random_state=4)
    history.data[:] = 1.0
    relevant = sp.random(n_users, n_items, density=0.02, format="csr", random_state=5)
    genres = (rng.random((n_items, 18)) < 0.15).astype(float)
    embeddings = rng.normal(size=(n_items, 32))
    reference = np.argsort(-popularity, kind="stable")[:k]
    tail = long_tail_mask(popularity)

    start = time.perf_counter()
    per_run = [catalogue_coverage(lists, n_items), exposure_gini(lists, n_items), exposure_entropy(lists, n_items)]
    per_list = [
        novelty(lists, popularity, n_users),
        intra_list_diversity(lists, (genres > 0).astype(float), metric="jaccard"),
        intra_list_diversity(lists, embeddings),
        unexpectedness(lists, reference, n_items),
        serendipity(lists, reference, relevant),
        arp(lists, popularity), aplt(lists, tail), aclt(lists, tail),
        miscalibration(lists, history, genres),
    ]
    fair = fairness.item_fairness(lists, n_items)
    elapsed = time.perf_counter() - start

    assert all(np.isfinite(v) for v in per_run)
    assert all(v.shape == (n_users,) and np.isfinite(v).mean() > 0.9 for v in per_list)
    assert all(np.isfinite(v) for v in fair.values())
    assert elapsed < 1.0, f"all measures took {elapsed:.2f}s"
