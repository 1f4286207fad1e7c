"""Assertions for testing recommenders, shipped with the package so a user's own model tests use them.

What recstack promises about scores, and what it does not: a float32 score may move in its last
bits with the CPU's kernels (AVX2, AVX-512, AMX, generic), the thread count, and a row's position
in a BLAS block (the same user twice in one block may round differently). So two score arrays of
the same model and inputs are *equivalent* when they agree within a small tolerance relative to
each row's scale, give the same items -inf, and rank the items identically except among items
whose scores are that close. Bit-identical scores are promised only for the same call on the same
machine (for example a model and its saved-and-loaded copy), never across shapes or kernels.
"""

from __future__ import annotations

import numpy as np

# float32 carries 24 bits (~6e-8); deep models (attention, several layers) accumulate a few
# hundred ulps between kernels, still far below any difference a ranking could mean.
SCORE_RTOL = 1e-5


def assert_scores_equivalent(actual: np.ndarray, expected: np.ndarray, *, rtol: float = SCORE_RTOL,
                             what: str = "scores") -> None:
    """Raise AssertionError unless `actual` and `expected` are equivalent scores (see the module doc).

    The tolerance of a row is `rtol` times the largest finite |score| in that row of `expected`
    (scores near zero after cancellation are no more exact than the row's scale). Agreement within
    it is also the ranking promise: two items can swap places only when their scores are within
    twice the tolerance of each other, a near-tie."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != {expected.shape}")
    if actual.ndim == 1:
        actual, expected = actual[None], expected[None]
    if actual.ndim != 2:
        raise AssertionError(f"{what}: expected a (users, items) array, got {actual.ndim} dimensions")
    for name, array in (("actual", actual), ("expected", expected)):
        if np.isnan(array).any():
            raise AssertionError(f"{what}: {name} holds NaN")
    finite = np.isfinite(expected)
    if not np.array_equal(finite, np.isfinite(actual)) or not np.array_equal(actual[~finite], expected[~finite]):
        rows = np.flatnonzero((finite != np.isfinite(actual)).any(axis=1))
        raise AssertionError(f"{what}: the infinite entries differ (rows {rows[:5].tolist()})")
    scale = np.where(finite, np.abs(expected), 0.0).max(axis=1, initial=0.0)
    tolerance = rtol * np.maximum(scale, np.finfo(np.float32).tiny)
    gap = np.abs(np.where(finite, actual, 0.0) - np.where(finite, expected, 0.0)).max(axis=1, initial=0.0)
    bad = np.flatnonzero(gap > tolerance)
    if len(bad):
        row = bad[0]
        raise AssertionError(f"{what}: row {row} differs by {gap[row]:.3g}, more than {rtol:g} of its scale "
                             f"{scale[row]:.3g} ({len(bad)} rows differ)")
