"""`recstack.testing.assert_scores_equivalent`: what it accepts and what it must refuse."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.testing import SCORE_RTOL, assert_scores_equivalent

SCORES = np.array([[4.0, 2.0, -np.inf, 1.0], [0.5, 0.25, 0.125, -np.inf]], dtype=np.float32)


def test_identical_and_last_bit_differences_pass():
    assert_scores_equivalent(SCORES, SCORES.copy())
    moved = np.nextafter(SCORES, np.float32(np.inf))  # one ulp up everywhere finite
    moved[~np.isfinite(SCORES)] = -np.inf
    assert_scores_equivalent(moved, SCORES)


def test_tolerance_is_relative_to_the_row_scale():
    near_zero = np.array([[1000.0, 0.0]], dtype=np.float32)
    assert_scores_equivalent(near_zero + [[0.0, 1000 * SCORE_RTOL / 2]], near_zero)  # cancellation noise
    with pytest.raises(AssertionError, match="row 0 differs"):
        assert_scores_equivalent(near_zero + [[0.0, 1000 * SCORE_RTOL * 3]], near_zero)


def test_a_changed_score_or_ranking_fails():
    swapped = SCORES.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    with pytest.raises(AssertionError, match="row 0 differs"):
        assert_scores_equivalent(swapped, SCORES)
    with pytest.raises(AssertionError, match="row 1 differs"):
        assert_scores_equivalent(SCORES * np.array([[1.0], [1.001]], dtype=np.float32), SCORES)


def test_infinite_entries_nan_and_shape_must_match():
    with pytest.raises(AssertionError, match="infinite entries differ"):
        assert_scores_equivalent(np.where(np.isfinite(SCORES), SCORES, 0.0), SCORES)
    with pytest.raises(AssertionError, match="NaN"):
        assert_scores_equivalent(np.where(np.isfinite(SCORES), SCORES, np.nan), SCORES)
    with pytest.raises(AssertionError, match="shape"):
        assert_scores_equivalent(SCORES[:1], SCORES)
