"""Individual item fairness (Rampisela et al., ACM TORS 2024): hand-worked values, ranges, edge cases.

Independent checks: Gini against the O(n^2) mean-absolute-difference formula, entropy against
scipy.stats.entropy, VoCD against a direct loop over pairs, the corrections against the closed forms
in the authors' code, and the corrected ranges against brute-force enumeration of every list set.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from recstack.errors import RecstackError
from recstack.evaluate.fairness import (
    LOWER_IS_FAIRER,
    ai_d,
    entropy,
    fsat,
    gini,
    gini_w,
    ii_d,
    item_fairness,
    jain_index,
    qualification_fairness,
    vocd,
)

# n = 4 items, m = 3 users, k = 2: item 0 to everyone, item 1 twice, item 2 once, item 3 never.
#   c = (3, 2, 1, 0), S = 6, floor(S/n) = f = 1, S mod n = r = 2
#   unfairest counts (same 2 items for all): (3, 3, 0, 0); fairest: (2, 2, 1, 1)
LISTS = np.array([[0, 1], [0, 2], [0, 1]])
N = 4
W2 = 1 / math.log2(3)  # rank-2 weight of Gini-w


def test_jain_hand_worked():
    # original: 6^2 / (4 * (9 + 4 + 1 + 0)) = 36 / 56 = 9/14
    assert jain_index(LISTS, N) == pytest.approx(9 / 14)
    # unfairest: 36 / (4 * 18) = 1/2 = k/n; fairest: 36 / (4 * (4 + 4 + 1 + 1)) = 0.9
    # corrected: (9/14 - 1/2) / (0.9 - 1/2) = (1/7) / (2/5) = 5/14
    assert jain_index(LISTS, N, corrected=True) == pytest.approx(5 / 14)


def test_qf_hand_worked():
    # three of four items shown: 3/4; corrected (3 - k) / (min(n, S) - k) = (3 - 2) / (4 - 2)
    assert qualification_fairness(LISTS, N) == pytest.approx(3 / 4)
    assert qualification_fairness(LISTS, N, corrected=True) == pytest.approx(1 / 2)


def test_entropy_hand_worked():
    # p = (1/2, 1/3, 1/6, 0): H = (1/2 ln 2 + 1/3 ln 3 + 1/6 ln 6) / ln 4
    h = (0.5 * math.log(2) + math.log(3) / 3 + math.log(6) / 6) / math.log(4)
    assert entropy(LISTS, N) == pytest.approx(h)
    # unfairest: log_4 2 = 1/2; fairest p = (1/3, 1/3, 1/6, 1/6): (2/3 ln 3 + 1/3 ln 6) / ln 4
    best = (2 / 3 * math.log(3) + math.log(6) / 3) / math.log(4)
    assert entropy(LISTS, N, corrected=True) == pytest.approx((h - 0.5) / (best - 0.5))


def test_gini_hand_worked():
    # ascending c = (0, 1, 2, 3), weights 2j - n - 1 = (-3, -1, 1, 3): (0 - 1 + 2 + 9) / (4 * 6) = 10/24
    assert gini(LISTS, N) == pytest.approx(10 / 24)
    # fairest (1, 1, 2, 2): (-3 - 1 + 2 + 6) / 24 = 1/6 = r (n - r) / (n S) = 2 * 2 / 24
    # unfairest (0, 0, 3, 3): (3 + 9) / 24 = 1/2 = 1 - k/n
    # corrected: (10/24 - 4/24) / (12/24 - 4/24) = 6/8
    assert gini(LISTS, N, corrected=True) == pytest.approx(3 / 4)


def test_gini_w_hand_worked():
    # exposure e = (3 * 1, 2 * w, 1 * w, 0), w = 1/log2 3; ascending (0, w, 2w, 3)
    # numerator -1 * w + 1 * 2w + 3 * 3 = 9 + w; total 3 + 3w  ->  G_w = (9 + w) / (4 (3 + 3w))
    g = (9 + W2) / (4 * (3 + 3 * W2))
    assert gini_w(LISTS, N) == pytest.approx(g)
    # unfairest: everyone gets (a, b) in that order: (0, 0, 3w, 3): (3w + 9) / (4 (3 + 3w))
    # S = 6 > n = 4, so the fairest end is taken as 0: corrected = G_w / G_w,worst = (9 + w) / (9 + 3w)
    assert gini_w(LISTS, N, corrected=True) == pytest.approx((9 + W2) / (9 + 3 * W2))


def test_fsat_hand_worked():
    # maximin share floor(6/4) = 1; items with c >= 1: three of four
    assert fsat(LISTS, N) == pytest.approx(3 / 4)
    # corrected (3/4 - k/n) / (1 - k/n) = (1/4) / (1/2)
    assert fsat(LISTS, N, corrected=True) == pytest.approx(1 / 2)


def test_vocd_hand_worked():
    # exposed c = {3, 2, 1}: |3-2|/3 + |3-1|/3 + |2-1|/2 = 1/3 + 2/3 + 1/2 = 3/2 over 3 pairs
    assert vocd(LISTS, N) == pytest.approx(1 / 2)


def test_ii_d_and_ai_d_hand_worked():
    # gamma = 1/2: rank exposures (1, 1/2), target E* = (1 + 1/2) / 4 = 3/8
    # each user: (1 - 3/8)^2 + (1/2 - 3/8)^2 + 2 * (3/8)^2 = 25/64 + 1/64 + 18/64 = 44/64
    # II-D = 3 * 44/64 / (3 * 4) = 11/64
    assert ii_d(LISTS, N, gamma=0.5) == pytest.approx(11 / 64)
    # mean exposure per item: (3/3, 2 * (1/2) / 3, (1/2) / 3, 0) = (1, 1/3, 1/6, 0)
    # squared gaps to 3/8: 25/64 + 1/576 + 25/576 + 9/64 = 332/576; AI-D = 332 / (576 * 4) = 83/576
    assert ai_d(LISTS, N, gamma=0.5) == pytest.approx(83 / 576)


def test_item_fairness_collects_everything_with_directions():
    out = item_fairness(LISTS, N, gamma=0.5)
    assert out["Jain"] == pytest.approx(9 / 14) and out["Gini_corrected"] == pytest.approx(3 / 4)
    assert out["II-D"] == pytest.approx(11 / 64)
    assert set(out) == {"Jain", "Jain_corrected", "QF", "QF_corrected", "Ent", "Ent_corrected", "Gini",
                        "Gini_corrected", "Gini-w", "Gini-w_corrected", "FSat", "FSat_corrected", "VoCD",
                        "II-D", "AI-D"}
    assert LOWER_IS_FAIRER <= set(out)


# --------------------------------------------------------------------------------------------
# the fairest and unfairest lists map to the ends of the corrected range
# --------------------------------------------------------------------------------------------

def cyclic_lists(m: int, n: int, k: int) -> np.ndarray:
    """Fill slots with items 0, 1, ..., n-1, 0, 1, ... : counts differ by at most one (the fairest)."""
    return (np.arange(m * k) % n).reshape(m, k)


HIGHER_FAIRER = [jain_index, qualification_fairness, entropy, fsat]
LOWER_FAIRER = [gini, gini_w]


@pytest.mark.parametrize("m, n, k", [(7, 10, 3), (5, 13, 4), (3, 20, 5), (6, 4, 2)])
def test_corrected_ends(m, n, k):
    fairest = cyclic_lists(m, n, k)
    unfairest = np.tile(np.arange(k), (m, 1))
    for fn in HIGHER_FAIRER:
        if fn is fsat and m * k < n:
            continue  # FSat's correction is undefined when S < n (tested below)
        assert fn(fairest, n, corrected=True) == 1.0, fn.__name__
        assert fn(unfairest, n, corrected=True) == 0.0, fn.__name__
    assert gini(fairest, n, corrected=True) == 0.0
    assert gini(unfairest, n, corrected=True) == 1.0
    assert gini_w(unfairest, n, corrected=True) == 1.0
    if m * k <= n:  # every slot a different item: the exact Gini-w minimum
        assert gini_w(fairest, n, corrected=True) == 0.0


def test_padding_generalises_the_unfairest_lists():
    # lengths (3, 2, 1): the same items in the same order, truncated, is the unfairest: c = (3, 2, 1, 0...)
    n = 6
    same = np.array([[0, 1, 2], [0, 1, -1], [0, -1, -1]])
    for fn in HIGHER_FAIRER:
        assert fn(same, n, corrected=True) == 0.0, fn.__name__
    assert gini(same, n, corrected=True) == 1.0
    assert gini_w(same, n, corrected=True) == 1.0
    # S = 6 = n: six different items is the fairest
    spread = np.array([[0, 1, 2], [3, 4, -1], [5, -1, -1]])
    assert jain_index(spread, n, corrected=True) == 1.0
    assert gini(spread, n, corrected=True) == 0.0
    assert gini_w(spread, n, corrected=True) == 0.0


def all_list_sets(m: int, n: int, k: int, ordered: bool):
    rows = list(itertools.permutations(range(n), k) if ordered else itertools.combinations(range(n), k))
    for combo in itertools.product(rows, repeat=m):
        yield np.array(combo)


@pytest.mark.parametrize("m, n, k", [(3, 4, 2), (2, 5, 2), (4, 3, 1), (2, 6, 3), (3, 5, 3)])
def test_count_corrections_by_enumeration(m, n, k):
    """Every possible set of lists: the corrected values stay in [0, 1] and reach both ends."""
    values = {fn.__name__: [] for fn in HIGHER_FAIRER + [gini]}
    for lists in all_list_sets(m, n, k, ordered=False):  # count measures ignore the order in a list
        for fn in HIGHER_FAIRER + [gini]:
            values[fn.__name__].append(fn(lists, n, corrected=True))
    for name, got in values.items():
        got = np.array(got)
        if name == "fsat" and m * k < n:
            assert np.isnan(got).all()
            continue
        assert got.min() == pytest.approx(0.0, abs=1e-12), name
        assert got.max() == pytest.approx(1.0, abs=1e-12), name
        assert got.min() >= -1e-12 and got.max() <= 1 + 1e-12, name


def test_gini_w_correction_by_enumeration():
    # S = 4 <= n = 5: both ends exact
    got = np.array([gini_w(lists, 5, corrected=True) for lists in all_list_sets(2, 5, 2, ordered=True)])
    assert got.min() == pytest.approx(0.0, abs=1e-12) and got.max() == pytest.approx(1.0, abs=1e-12)
    # S = 6 > n = 4: the lower end 0 is a bound the lists cannot reach (the documented limitation)
    got = np.array([gini_w(lists, 4, corrected=True) for lists in all_list_sets(3, 4, 2, ordered=True)])
    assert got.max() == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < got.min() < 0.5


# --------------------------------------------------------------------------------------------
# cross-checks against independent formulas
# --------------------------------------------------------------------------------------------

def random_lists(rng, m, n, k):
    p = 1 / np.arange(1, n + 1) ** 0.8  # popularity-skewed, so exposure is uneven
    return np.array([rng.choice(n, k, replace=False, p=p / p.sum()) for _ in range(m)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gini_against_mean_absolute_difference(seed):
    rng = np.random.default_rng(seed)
    m, n, k = 40, 30, 5
    lists = random_lists(rng, m, n, k)
    c = np.bincount(lists.ravel(), minlength=n).astype(float)
    mad = np.abs(c[:, None] - c[None, :]).sum() / (2 * n * n * c.mean())
    assert gini(lists, n) == pytest.approx(mad)
    w = 1 / np.log2(np.arange(k) + 2)
    e = np.bincount(lists.ravel(), weights=np.tile(w, m), minlength=n)
    assert gini_w(lists, n) == pytest.approx(np.abs(e[:, None] - e[None, :]).sum() / (2 * n * n * e.mean()))


@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_against_scipy(seed):
    rng = np.random.default_rng(seed)
    lists = random_lists(rng, 50, 40, 6)
    c = np.bincount(lists.ravel(), minlength=40)
    assert entropy(lists, 40) == pytest.approx(scipy_entropy(c, base=40))


@pytest.mark.parametrize("seed", [0, 1])
def test_vocd_against_pairwise_loop(seed):
    rng = np.random.default_rng(seed)
    lists = random_lists(rng, 30, 25, 4)
    c = np.bincount(lists.ravel(), minlength=25)
    exposed = c[c > 0].astype(float)
    pairs = [abs(a - b) / max(a, b) for a, b in itertools.combinations(exposed, 2)]
    assert vocd(lists, 25) == pytest.approx(np.mean(pairs))


@pytest.mark.parametrize("m, n, k", [(50, 40, 5), (7, 40, 3), (100, 37, 10)])
def test_corrections_against_authors_closed_forms(m, n, k):
    """The closed forms of get_jain / get_QF / get_entropy / get_gini / get_fsat in the authors' code."""
    rng = np.random.default_rng(m + n + k)
    lists = random_lists(rng, m, n, k)
    c = np.bincount(lists.ravel(), minlength=n).astype(float)
    s = m * k
    f, r = divmod(s, n)
    jain = s ** 2 / (n * (c ** 2).sum())
    jain_max = s ** 2 / n / (n * f ** 2 + r * (2 * f + 1))
    assert jain_index(lists, n, corrected=True) == pytest.approx((jain - k / n) / (jain_max - k / n))
    unique = np.count_nonzero(c)
    assert qualification_fairness(lists, n, corrected=True) == pytest.approx(
        (unique - k) / ((n - k) if s >= n else k * (m - 1)))
    p = c[c > 0] / s
    h = -(p * np.log(p)).sum() / np.log(n)
    if s >= n:
        x0, x1 = f / s, (f + 1) / s
        h_max = -((n - r) * x0 * np.log(x0) + r * x1 * np.log(x1)) / np.log(n)
        denom = h_max - np.log(k) / np.log(n)
    else:
        denom = np.log(s / k) / np.log(n)
    assert entropy(lists, n, corrected=True) == pytest.approx((h - np.log(k) / np.log(n)) / denom)
    g_min = (n - r) * r / (n * s)
    assert gini(lists, n, corrected=True) == pytest.approx((gini(lists, n) - g_min) / (1 - k / n - g_min))
    if s >= n:
        sat = np.count_nonzero(c >= f) / n
        assert fsat(lists, n, corrected=True) == pytest.approx((sat - k / n) / (1 - k / n))


def test_gini_w_minimum_against_authors_loop():
    # get_gini's numerator_gini_w_min for km <= n: items n - l m + 1 ... n - l m + m (1-based, ascending
    # order) carry weight 1/log2(l + 1) for l = 1..k
    m, n, k = 3, 20, 4
    count = sum((2 * j - n - 1) / math.log2(l + 1)
                for l in range(1, k + 1) for j in range(n - l * m + 1, n - l * m + m + 1))
    w = 1 / np.log2(np.arange(k) + 2)
    g_min = count / (n * m * w.sum())
    spread = cyclic_lists(m, n, k)  # all 12 slots different items
    assert gini_w(spread, n) == pytest.approx(g_min)


# --------------------------------------------------------------------------------------------
# the paper's edge cases and limitations
# --------------------------------------------------------------------------------------------

ALL = [jain_index, qualification_fairness, entropy, gini, gini_w, fsat]


def test_empty_exposure_is_nan():
    for lists in (np.full((3, 2), -1), np.empty((0, 5), dtype=np.int64)):
        for fn in ALL:
            assert math.isnan(fn(lists, 4)) and math.isnan(fn(lists, 4, corrected=True))
        for fn in (vocd, ii_d, ai_d):
            assert math.isnan(fn(lists, 4))
        assert all(math.isnan(v) for v in item_fairness(lists, 4).values())


def test_ties_do_not_matter():
    # items 1 and 2 are equally exposed; swapping their identities changes nothing
    a = np.array([[0, 1], [0, 2], [3, 1], [3, 2]])
    b = np.where(a == 1, 2, np.where(a == 2, 1, a))
    assert item_fairness(a, 5) == pytest.approx(item_fairness(b, 5), nan_ok=True)
    # all exposures equal: Gini 0, Jain 1, VoCD 0
    even = cyclic_lists(4, 4, 2)
    assert gini(even, 4) == 0.0 and jain_index(even, 4) == pytest.approx(1.0) and vocd(even, 4) == 0.0


def test_items_never_recommended():
    # adding never-recommended items to the catalogue changes count-based measures but not VoCD
    lists = np.array([[0, 1], [0, 2]])
    assert vocd(lists, 3) == vocd(lists, 30)
    assert gini(lists, 30) > gini(lists, 3)
    assert qualification_fairness(lists, 30) == pytest.approx(3 / 30)
    # the original entropy stays finite (0 log 0 = 0) where the authors' code would give NaN
    assert np.isfinite(entropy(lists, 30))
    # VoCD limitation: the same k items for everyone scores the best value, 0
    assert vocd(np.tile([0, 1], (5, 1)), 30) == 0.0
    assert math.isnan(vocd(np.zeros((4, 1), dtype=int), 30))  # a single exposed item has no pair


def test_fewer_slots_than_items():
    # S = 6 < n = 10: the maximin share is 0, so FSat = 1 whatever the lists; its correction is undefined
    for lists in (np.tile([0, 1, 2], (2, 1)), np.array([[0, 1, 2], [3, 4, 5]])):
        assert fsat(lists, 10) == 1.0
        assert math.isnan(fsat(lists, 10, corrected=True))
    # QF's fairest is S/n = 6/10 and Ent's is log_10 6
    spread = np.array([[0, 1, 2], [3, 4, 5]])
    assert qualification_fairness(spread, 10) == pytest.approx(0.6)
    assert qualification_fairness(spread, 10, corrected=True) == 1.0
    assert entropy(spread, 10) == pytest.approx(math.log(6) / math.log(10))


def test_k_equals_n_makes_count_corrections_undefined():
    lists = np.array([[0, 1, 2], [2, 1, 0]])
    for fn in HIGHER_FAIRER + [gini]:
        assert math.isnan(fn(lists, 3, corrected=True)), fn.__name__
    assert jain_index(lists, 3) == pytest.approx(1.0) and gini(lists, 3) == 0.0
    # rank weights still tell orders apart: the same order for both users is the unfairest
    assert gini_w(np.array([[0, 1, 2], [0, 1, 2]]), 3, corrected=True) == 1.0
    assert 0 < gini_w(lists, 3, corrected=True) < 1


def test_fsat_correction_can_go_negative():
    # n = 4, m = 4, k = 3: c = (4, 4, 2, 2), share floor(12/4) = 3: only items 0 and 1 satisfied
    lists = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 3], [0, 1, 3]])
    assert fsat(lists, 4) == pytest.approx(2 / 4)
    # (2/4 - 3/4) / (1 - 3/4) = -1: below the same-k-items baseline, which scores 0
    assert fsat(lists, 4, corrected=True) == pytest.approx(-1.0)


def test_ii_d_cannot_tell_deterministic_lists_apart():
    rng = np.random.default_rng(0)
    n, k, gamma = 30, 5, 0.8
    w = gamma ** np.arange(k)
    expected = (w ** 2).sum() / n - (w.sum() / n) ** 2
    for lists in (random_lists(rng, 20, n, k), np.tile(np.arange(k), (20, 1)), cyclic_lists(20, n, k)):
        assert ii_d(lists, n, gamma) == pytest.approx(expected)


def test_ai_d_range():
    rng = np.random.default_rng(1)
    n, k = 30, 5
    same = np.tile(np.arange(k), (12, 1))
    assert ai_d(same, n) == pytest.approx(ii_d(same, n))  # the upper end
    lists = random_lists(rng, 12, n, k)
    assert 0 <= ai_d(lists, n) < ii_d(lists, n)
    # every item at every rank equally often: mean exposure = E* for each item, AI-D = 0
    rotation = np.array([[(u + r) % n for r in range(k)] for u in range(n)])
    assert ai_d(rotation, n) == pytest.approx(0.0, abs=1e-15)


def test_bad_input_raises():
    with pytest.raises(RecstackError, match="twice"):
        gini(np.array([[0, 0]]), 3)
    with pytest.raises(RecstackError, match="n_items"):
        gini(np.array([[0, 5]]), 3)
    with pytest.raises(RecstackError, match="end of a list"):
        gini(np.array([[-1, 1]]), 3)
    with pytest.raises(RecstackError, match="integer"):
        gini(np.array([[0.0, 1.0]]), 3)
    with pytest.raises(RecstackError, match="gamma"):
        ii_d(LISTS, N, gamma=0.0)
