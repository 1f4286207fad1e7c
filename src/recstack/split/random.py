"""Per-user random split: each user's events are shuffled and cut by ratios (weak generalisation).

Rounding rule (pinned, tested): a user with n events gives round_half_up(n * valid_ratio)
events to valid and round_half_up(n * test_ratio) to test; train keeps the rest. When that
would leave train empty, test and then valid hand events back until train has one, so every
user with at least one event keeps at least one train event (a user with a single event goes
to train). With the default 0.8/0.1/0.1, users with 1-4 events stay wholly in train, a user
with 5 events gets 3/1/1 and one with 10 events 8/1/1.

The shuffle is vectorised: a random permutation serves as sort key, a stable lexsort by
(user, key) groups each user's events in random order, and the position inside the group is
the row's rank, computed from `indptr` without a loop over users.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.split.base import Split


def check_ratios(ratios: Sequence[float], what: str = "ratios") -> np.ndarray:
    """Three non-negative (train, valid, test) ratios summing to 1, as float64."""
    try:
        values = np.asarray([float(r) for r in ratios], dtype=np.float64)
    except (TypeError, ValueError):
        raise RecstackError(f"{what} must be three numbers (train, valid, test), got {ratios!r}") from None
    if values.shape != (3,):
        raise RecstackError(f"{what} must be three numbers (train, valid, test), got {ratios!r}")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise RecstackError(f"{what} must be non-negative, got {ratios!r}")
    if abs(values.sum() - 1.0) > 1e-6:
        raise RecstackError(f"{what} must sum to 1, got {ratios!r} (sum {values.sum():g}); e.g. (0.8, 0.1, 0.1)")
    return values


def check_fraction(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise RecstackError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return value


def round_half_up(x: np.ndarray) -> np.ndarray:
    # numpy rounds halves to even (2.5 -> 2); a pinned split rule should not depend on parity
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5 + 1e-9).astype(np.int64)


def shuffled_rank(data: Interactions, rng: np.random.Generator) -> np.ndarray:
    """Per row, its 0-based position among its user's events after a seeded per-user shuffle."""
    n = len(data)
    index = np.int32 if n < 2**31 else np.int64  # 32-bit where it fits: 50M events are 200 MB a column
    keys = np.arange(n, dtype=index)
    rng.shuffle(keys)  # rng.permutation(n)'s draws, in place: distinct keys, so the order is fully random
    order = np.lexsort((keys, data.user))
    del keys
    # rows are grouped by user, so the user at sorted position p is data.user[p]
    position = np.arange(n, dtype=index)
    position -= data.indptr[:-1].astype(index)[data.user]
    rank = np.empty(n, dtype=index)
    rank[order] = position
    return rank


def ratio_counts(n: np.ndarray, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) event counts per user for `n` events each, by the module's rounding rule."""
    n = np.asarray(n, dtype=np.int64)
    n_valid = round_half_up(n * ratios[1])
    n_test = round_half_up(n * ratios[2])
    short = np.maximum(0, np.minimum(n, 1) - (n - n_valid - n_test))  # events train is missing
    from_test = np.minimum(short, n_test)
    n_test -= from_test
    n_valid -= short - from_test
    return n - n_valid - n_test, n_valid, n_test


def random_split(data: Interactions, rng: np.random.Generator,
                 ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> Split:
    """Shuffle each user's events and cut them by `ratios` (see the module docstring for rounding)."""
    values = check_ratios(ratios)
    rank = shuffled_rank(data, rng)
    n_train, n_valid, _ = ratio_counts(data.user_counts(), values)
    # each row's part (0 train, 1 valid, 2 test) from its rank and its user's train and train + valid
    # counts, one per-row temporary at a time (a 50M-event log is split within a few bytes an event)
    part = (rank >= n_train.astype(rank.dtype)[data.user]).view(np.int8)
    part += rank >= (n_train + n_valid).astype(rank.dtype)[data.user]
    del rank
    return Split(
        data.take(part == 0),
        data.take(part == 1),
        data.take(part == 2),
        method="random",
        params={"ratios": values.tolist()},
    )
