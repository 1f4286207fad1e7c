"""Hand-worked examples for every accuracy metric; expected values are written as arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.evaluate.accuracy import (
    METRICS,
    average_precision,
    hit,
    item_coverage,
    mae,
    mrr,
    ndcg,
    precision,
    recall,
    rmse,
)
from recstack.evaluate.rankings import Rankings

L2, L3, L4, L5, L6 = (np.log2(x) for x in (2, 3, 4, 5, 6))  # discounts 1/log2(rank + 1)

# Five users, depth 5:
#   A  hit at rank 1 only,                R = 1
#   B  no hits,                           R = 2
#   C  hits at ranks 2 and 4,             R = 2
#   D  hits at ranks 1, 2, 3 and 5,       R = 6  (|test_u| > k for every k used)
#   E  two ranked items then -1 padding, the second a hit, R = 1
ITEMS = np.array([
    [10, 11, 12, 13, 14],
    [10, 11, 12, 13, 14],
    [20, 21, 22, 23, 24],
    [30, 31, 32, 33, 34],
    [3, 7, -1, -1, -1],
])
HITS = np.array([
    [1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 1, 0, 1, 0],
    [1, 1, 1, 0, 1],
    [0, 1, 0, 0, 0],
], dtype=np.float32)
RANKINGS = Rankings(np.arange(5), ITEMS, HITS, np.array([1, 2, 2, 6, 1]))


def test_hit():
    assert hit(RANKINGS, 1).tolist() == [1, 0, 0, 1, 0]
    assert hit(RANKINGS, 3).tolist() == [1, 0, 1, 1, 1]


def test_precision_divides_by_k_even_with_padding():
    np.testing.assert_allclose(precision(RANKINGS, 3), [1 / 3, 0, 1 / 3, 3 / 3, 1 / 3])
    np.testing.assert_allclose(precision(RANKINGS, 5), [1 / 5, 0, 2 / 5, 4 / 5, 1 / 5])


def test_recall_divides_by_all_relevant():
    np.testing.assert_allclose(recall(RANKINGS, 3), [1 / 1, 0, 1 / 2, 3 / 6, 1 / 1])
    np.testing.assert_allclose(recall(RANKINGS, 5), [1 / 1, 0, 2 / 2, 4 / 6, 1 / 1])


def test_mrr():
    np.testing.assert_allclose(mrr(RANKINGS, 1), [1, 0, 0, 1, 0])
    np.testing.assert_allclose(mrr(RANKINGS, 5), [1, 0, 1 / 2, 1, 1 / 2])


def test_ndcg_binary_ideal_over_min_relevant_and_k():
    expected_k3 = [
        1.0,                                   # A: DCG = IDCG = 1/log2(2)
        0.0,                                   # B: no hits
        (1 / L3) / (1 / L2 + 1 / L3),          # C: hit at rank 2; ideal puts min(2, 3) = 2 hits first
        (1 / L2 + 1 / L3 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4),  # D: 3 hits, ideal over min(6, 3) = 3
        (1 / L3) / (1 / L2),                   # E: hit at rank 2, one relevant item
    ]
    np.testing.assert_allclose(ndcg(RANKINGS, 3), expected_k3)
    expected_k5 = [
        1.0,
        0.0,
        (1 / L3 + 1 / L5) / (1 / L2 + 1 / L3),
        (1 / L2 + 1 / L3 + 1 / L4 + 1 / L6) / (1 / L2 + 1 / L3 + 1 / L4 + 1 / L5 + 1 / L6),  # min(6, 5) = 5
        (1 / L3) / (1 / L2),
    ]
    np.testing.assert_allclose(ndcg(RANKINGS, 5), expected_k5)


def test_ndcg_graded_uses_gains_and_ideal_gains():
    # gains of the ranked items: 3 at rank 1, 5 at rank 3; held-out gains 5, 3, 2 (R = 3)
    graded = Rankings(np.array([0]), np.array([[4, 8, 1, 9]]), np.array([[3.0, 0.0, 5.0, 0.0]]),
                      np.array([3]), ideal_gains=np.array([[5.0, 3.0, 2.0, 0.0]]))
    dcg3 = 3 / L2 + 5 / L4
    idcg3 = 5 / L2 + 3 / L3 + 2 / L4
    np.testing.assert_allclose(ndcg(graded, 3), [dcg3 / idcg3])
    idcg2 = 5 / L2 + 3 / L3  # only the two best held-out gains fit in k = 2
    np.testing.assert_allclose(ndcg(graded, 2), [(3 / L2) / idcg2])
    # every other metric treats any positive gain as a hit
    np.testing.assert_allclose(precision(graded, 3), [2 / 3])
    np.testing.assert_allclose(recall(graded, 4), [2 / 3])


def test_map_normalised_by_min_relevant_and_k():
    expected_k3 = [
        (1 / 1) / 1,                    # A: P@1 at the hit, min(1, 3) = 1
        0.0,                            # B
        (1 / 2) / 2,                    # C: P@2 = 1/2 at the hit, min(2, 3) = 2
        (1 / 1 + 2 / 2 + 3 / 3) / 3,    # D: min(6, 3) = 3
        (1 / 2) / 1,                    # E
    ]
    np.testing.assert_allclose(average_precision(RANKINGS, 3), expected_k3)
    expected_k5 = [1.0, 0.0, (1 / 2 + 2 / 4) / 2, (1 / 1 + 2 / 2 + 3 / 3 + 4 / 5) / 5, (1 / 2) / 1]
    np.testing.assert_allclose(average_precision(RANKINGS, 5), expected_k5)


def test_metrics_table_and_cutoff_errors():
    assert set(METRICS) == {"Recall", "Precision", "NDCG", "MRR", "Hit", "MAP"}
    for metric in METRICS.values():
        assert metric(RANKINGS, 2).shape == (5,)
        assert metric(RANKINGS, 2).dtype == np.float64
        with pytest.raises(ValueError, match="depth"):
            metric(RANKINGS, 6)
        with pytest.raises(ValueError, match=">= 1"):
            metric(RANKINGS, 0)


def test_item_coverage_ignores_padding():
    # top-2 lists: {10, 11}, {10, 11}, {20, 21}, {30, 31}, {3, 7}: 8 distinct items of 100
    assert item_coverage(RANKINGS, 2, n_items=100) == 8 / 100
    # top-5 adds 12, 13, 14, 22, 23, 24, 32, 33, 34; user E's -1 padding is not an item
    assert item_coverage(RANKINGS, 5, n_items=40) == 17 / 40


def test_rmse_and_mae():
    predicted = np.array([1.0, 2.0, 3.0, 4.0])
    actual = np.array([2.0, 2.0, 5.0, 4.0])  # errors -1, 0, -2, 0
    assert rmse(predicted, actual) == pytest.approx(np.sqrt((1 + 0 + 4 + 0) / 4))
    assert mae(predicted, actual) == pytest.approx((1 + 0 + 2 + 0) / 4)
