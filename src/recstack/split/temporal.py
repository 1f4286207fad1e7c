"""Time-aware splits: leave-last-k per user, and one global time cut.

`leave_last_split` is the sequential-recommendation protocol (SASRec, BERT4Rec): per user, the
last k events are test, the k before them valid, the rest train. "Last" follows the log's order,
(timestamp, original row order): with equal timestamps the row that came later in the source
is later. Users with fewer than 2k + 1 events keep everything in train, so every evaluated
user has at least one training event (they are skipped at evaluation, not half-evaluated).

`temporal_split` cuts the whole log at two instants (Meng et al., RecSys 2020, "Exploring Data
Splitting Strategies for the Evaluation of Recommendation Models"): nothing after the first cut
is ever trained on, so no model sees the future. An event exactly at a cut belongs to the
earlier part: train = t <= c1, valid = c1 < t <= c2, test = t > c2.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.split.base import Split
from recstack.split.random import check_ratios, round_half_up


def leave_last_split(data: Interactions, rng: np.random.Generator | None = None, k: int = 1) -> Split:
    """Per user: last k events -> test, the k before -> valid, the rest -> train (needs >= 2k+1 events).

    `rng` is accepted for the common splitter signature and not used: the split is deterministic.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RecstackError(f"leave_last_split needs an integer k >= 1 (events held out per user), got {k!r}")
    k = int(k)
    counts = data.user_counts()
    # position counted from the user's end: 0 is the user's last event
    from_end = data.indptr[data.user + 1] - 1 - np.arange(len(data), dtype=np.int64)
    eligible = (counts >= 2 * k + 1)[data.user]
    test = eligible & (from_end < k)
    valid = eligible & (from_end >= k) & (from_end < 2 * k)
    return Split(data.take(~(test | valid)), data.take(valid), data.take(test),
                 method="leave_last", params={"k": k})


def temporal_split(
    data: Interactions,
    rng: np.random.Generator | None = None,
    ratios: Sequence[float] | None = (0.8, 0.1, 0.1),
    cutoffs: tuple[int, int] | None = None,
) -> Split:
    """Global time cut at `cutoffs` (c1 <= c2, in the timestamp unit of the data) or at quantiles.

    With `ratios`, c1 is the timestamp of the event at global position round_half_up(N * r_train)
    in time order (1-based) and c2 the one at round_half_up(N * (r_train + r_valid)); ties at a
    cut go to the earlier part, so train can hold slightly more than its ratio and test less.
    `cutoffs`, when given, take precedence over `ratios`. `rng` is not used.
    """
    if data.timestamp is None:
        raise RecstackError("temporal_split needs timestamps, and this data has none; "
                            "load a timestamp column or use leave_last_split / random_split")
    ts = data.timestamp
    if cutoffs is not None:
        try:
            first, second = (int(c) for c in cutoffs)
        except (TypeError, ValueError):
            raise RecstackError(f"cutoffs must be two integer timestamps (c1, c2), got {cutoffs!r}") from None
        if first > second:
            raise RecstackError(f"cutoffs must be ordered c1 <= c2, got {cutoffs!r}")
        params = {"cutoffs": [first, second]}
    else:
        if ratios is None:
            raise RecstackError("temporal_split needs either ratios=(train, valid, test) or cutoffs=(c1, c2)")
        values = check_ratios(ratios)
        ordered = np.sort(ts, kind="stable")
        n = len(ordered)
        if n == 0:
            first = second = 0
        else:
            n_train = int(round_half_up(n * values[0]))
            n_head = int(round_half_up(n * (values[0] + values[1])))
            # position 0 means "nothing before the cut": one below the earliest timestamp
            below = int(ordered[0]) - 1
            first = int(ordered[n_train - 1]) if n_train > 0 else below
            second = int(ordered[min(n_head, n) - 1]) if n_head > 0 else below
        params = {"ratios": values.tolist(), "cutoffs": [first, second]}
    train = ts <= first
    test = ts > second
    return Split(data.take(train), data.take(~train & ~test), data.take(test), method="temporal", params=params)
