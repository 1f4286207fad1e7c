"""Cold-item split: a random share of the catalogue is held out entirely (item cold start).

Every event of a held-out item leaves training: the items drawn for test send all their events
to `Split.test`, those drawn for validation to `Split.valid`, and train keeps only the events of
the remaining (warm) items. A model therefore never sees an interaction with a cold item, only
its side information (text, genres, ...), which is what content-based and ID-free models are
evaluated on (AlphaRec's zero-shot setting, Sheng et al. 2024; M2TRec, Shalaby et al. 2022).

Candidates (pinned in docs/protocol.md): each cold part ranks only its own cold items
(`Interactions.item_pool` of the part, read by the evaluator, so `recstack run`, `recstack
tune` and the trainer's early stopping all rank the same candidates), with the user's history masked as usual. Ranking the full catalogue
would mostly measure how far below the warm items a model pushes items it has never seen
trained, which is not the question a cold-start evaluation asks.

Counts: of the items with at least one event, round_half_up(share * n) go to each cold part,
drawn uniformly without overlap; items with no events stay in the warm set.
"""

from __future__ import annotations

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.split.base import Split
from recstack.split.random import check_fraction, round_half_up


def cold_item_split(
    data: Interactions,
    rng: np.random.Generator,
    valid_items: float = 0.1,
    test_items: float = 0.1,
) -> Split:
    """Hold out `valid_items` / `test_items` shares of the active items; see the module docstring."""
    valid_share = check_fraction(valid_items, "valid_items")
    test_share = check_fraction(test_items, "test_items")
    if valid_share + test_share >= 1.0:
        raise RecstackError(f"valid_items + test_items must leave warm items for training, got "
                            f"{valid_share} + {test_share} >= 1")
    active = np.flatnonzero(data.item_counts() > 0)
    chosen = rng.permutation(active)
    n_test = int(round_half_up(len(active) * test_share))
    n_valid = int(round_half_up(len(active) * valid_share))
    role = np.zeros(data.n_items, dtype=np.int8)  # 0 warm, 1 cold valid, 2 cold test
    test_pool = np.sort(chosen[:n_test]).astype(np.int32)
    valid_pool = np.sort(chosen[n_test:n_test + n_valid]).astype(np.int32)
    role[test_pool] = 2
    role[valid_pool] = 1
    row_role = role[data.item]
    return Split(
        data.take(row_role == 0),
        data.take(row_role == 1).with_item_pool(valid_pool),
        data.take(row_role == 2).with_item_pool(test_pool),
        method="cold_items",
        params={"valid_items": valid_share, "test_items": test_share},
    )

