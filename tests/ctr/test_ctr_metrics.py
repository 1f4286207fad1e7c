"""CTR metrics: hand-worked values, then scikit-learn as an independent cross-check."""

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from recstack.evaluate.ctr import (auc, auc_interval, calibration, ctr_metrics, delong, delong_test, gauc,
                                  gauc_interval, log_loss, per_user_auc, reliability)


def test_auc_by_hand_with_a_tie():
    # positives 0.9, 0.8, 0.1 against negatives 0.8, 0.3: pairs 1, 1, 0.5 (tie), 1, 0, 0 -> 3.5 / 6
    assert auc([1, 0, 1, 0, 1], [0.9, 0.8, 0.8, 0.3, 0.1]) == pytest.approx(3.5 / 6)


def test_auc_extremes_and_one_class():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert math.isnan(auc([1, 1], [0.1, 0.2]))


def test_log_loss_by_hand():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, not infinite


def test_gauc_by_hand():
    users = ["A", "A", "A", "B", "B", "B", "C", "C", "D", "D"]
    labels = [1, 0, 0, 1, 1, 0, 1, 0, 1, 1]
    scores = [0.6, 0.7, 0.2, 0.9, 0.6, 0.5, 0.2, 0.9, 0.3, 0.4]
    # A: 0.5 (3 rows), B: 1.0 (3 rows), C: 0.0 (2 rows); D has one class: counted, not scored
    assert gauc(labels, scores, users) == pytest.approx((3 * 0.5 + 3 * 1.0 + 2 * 0.0) / 8)
    assert gauc(labels, scores, users, weighting="users") == pytest.approx(0.5)
    per_user = per_user_auc(labels, scores, users)
    assert list(per_user.users) == ["A", "B", "C"] and per_user.n_single_class == 1
    assert list(per_user.rows) == [3, 3, 2]


def test_calibration_by_hand():
    assert calibration([1, 0, 0, 0], [0.5, 0.3, 0.1, 0.1]) == pytest.approx(1.0)
    assert calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
    table = reliability([1, 0, 0, 0], [0.95, 0.5, 0.1, 0.1], n_bins=10)
    assert [(b["bin"], b["rows"], b["observed"]) for b in table] == [(1, 2, 0.0), (5, 1, 0.0), (9, 1, 1.0)]


def test_cross_check_against_scikit_learn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 2000)
    scores = np.round(rng.random(2000), 2)  # rounded: many ties
    users = rng.integers(0, 40, 2000)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    p = scores.clip(0.01, 0.99)
    assert log_loss(labels, p) == pytest.approx(sk_log_loss(labels, p), abs=1e-12)
    expected, weights = [], []
    for u in np.unique(users):
        rows = users == u
        if len(set(labels[rows])) == 2:
            expected.append(roc_auc_score(labels[rows], scores[rows]))
            weights.append(rows.sum())
    assert gauc(labels, scores, users) == pytest.approx(np.average(expected, weights=weights), abs=1e-12)
    assert set(ctr_metrics(labels, p, users)) == {"AUC", "LogLoss", "gAUC", "Calibration"}


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        log_loss([0, 1], [0.1])


def test_gauc_interval_brackets_the_estimate_and_ignores_row_order():
    rng = np.random.default_rng(0)
    labels, scores, users = rng.integers(0, 2, 3000), rng.random(3000), rng.integers(0, 100, 3000)
    scores = scores + 0.3 * labels  # some signal
    low, high = gauc_interval(per_user_auc(labels, scores, users))
    assert low < gauc(labels, scores, users) < high and high - low < 0.1
    order = rng.permutation(3000)
    assert gauc_interval(per_user_auc(labels[order], scores[order], users[order])) == (low, high)


# ---- DeLong: AUC's variance, interval and paired test --------------------------------------------

def test_delong_by_hand():
    # positives 0.8, 0.4; negatives 0.6, 0.2, 0.1. V10 = (3/3, 2/3), V01 = (1/2, 1, 1): AUC 5/6,
    # var = var(V10) / 2 + var(V01) / 3 = (1/18) / 2 + (1/6) / 3 = 1/18
    labels = [1, 1, 0, 0, 0]
    scores = [0.8, 0.4, 0.6, 0.2, 0.1]
    aucs, covariance = delong(labels, scores)
    assert aucs[0] == pytest.approx(5 / 6) and covariance[0, 0] == pytest.approx(1 / 18)
    low, high = auc_interval(labels, scores)
    half = 1.959963984540054 * np.sqrt(1 / 18)
    assert (low, high) == (pytest.approx(5 / 6 - half), 1.0)  # clipped at 1
    # a tie counts one half: positives 0.5, 0.9 against negatives 0.5, 0.1 -> V10 = (0.75, 1)
    assert delong([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1])[0][0] == pytest.approx(0.875)


def _naive_components(labels, score):
    """V10 and V01 by comparing every positive with every negative (ties one half)."""
    labels, score = np.asarray(labels), np.asarray(score)
    x, y = score[labels == 1], score[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_delong_matches_the_pairwise_definition_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(int)
    a = np.round(rng.normal(labels, 1.0), 1)  # rounded: many ties
    b = np.round(rng.normal(labels * 0.5, 1.0), 1)
    aucs, covariance = delong(labels, a, b)
    components = [_naive_components(labels, s) for s in (a, b)]
    m, n = int(labels.sum()), int((1 - labels).sum())
    expected = np.cov([c[0] for c in components]) / m + np.cov([c[1] for c in components]) / n
    np.testing.assert_allclose(aucs, [c[0].mean() for c in components], rtol=1e-12)
    np.testing.assert_allclose(aucs, [auc(labels, a), auc(labels, b)], rtol=1e-12)
    np.testing.assert_allclose(covariance, expected, rtol=1e-10)


def test_delong_paired_test():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.5).astype(int)
    good = rng.normal(labels, 1.0)
    assert delong_test(labels, good, good) == 1.0
    assert delong_test(labels, good, 2 * good + 1) == 1.0  # the same ranking
    assert delong_test(labels, good, rng.normal(size=400)) < 1e-6  # informative against noise
    # two equally informative, independent models: no difference is found
    assert delong_test(labels, rng.normal(labels, 1.0), rng.normal(labels, 1.0)) > 0.05
    with pytest.raises(ValueError, match="at least two rows of each class"):
        delong([1, 0, 0], [0.2, 0.1, 0.3])
    assert np.isnan(auc_interval([1, 0, 0], [0.2, 0.1, 0.3])).all()
