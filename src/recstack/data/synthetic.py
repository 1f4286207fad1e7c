"""Synthetic power-law interaction logs for scale benchmarks.

Chung-Lu bipartite sampling (Chung & Lu 2002, in its fast edge-skipping-free "multinomial"
form): each event draws a user with probability proportional to a log-normal activity weight
(sigma 1.0) and, independently, an item with probability proportional to rank^-0.8, so
E[#events(u, i)] is proportional to w_u * w_i. Repeated pairs are dropped and events are
over-drawn until `nnz` distinct pairs exist. Sizes follow the real logs these benchmarks stand
in for: n_users = nnz / 100 and n_items = nnz / 500. Ids are permuted so index order carries
no popularity signal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from recstack.data.interactions import Interactions, Vocab


def power_law_interactions(
    nnz: int,
    *,
    seed: int = 0,
    item_exponent: float = 0.8,
    activity_sigma: float = 1.0,
    users_per_event: float = 1 / 100,
    items_per_event: float = 1 / 500,
) -> Interactions:
    """Exactly `nnz` distinct (user, item) events with power-law item popularity, seeded."""
    if nnz < 1:
        raise ValueError("nnz must be positive")
    rng = np.random.default_rng(seed)
    n_users = max(2, int(round(nnz * users_per_event)))
    n_items = max(2, int(round(nnz * items_per_event)))
    if nnz > n_users * n_items // 2:
        raise ValueError(f"nnz={nnz} is too dense for {n_users} users x {n_items} items")
    user_weight = rng.lognormal(0.0, activity_sigma, n_users)
    item_weight = np.arange(1, n_items + 1, dtype=np.float64) ** -item_exponent
    user_cdf = np.cumsum(user_weight / user_weight.sum())
    item_cdf = np.cumsum(item_weight / item_weight.sum())

    keys = np.empty(0, dtype=np.int64)
    while len(keys) < nnz:
        # over-draw by the shortfall plus a margin for the duplicates the draw will produce
        draw = int((nnz - len(keys)) * 1.3) + 1024
        users = np.searchsorted(user_cdf, rng.random(draw) * user_cdf[-1]).clip(max=n_users - 1)
        items = np.searchsorted(item_cdf, rng.random(draw) * item_cdf[-1]).clip(max=n_items - 1)
        fresh = users.astype(np.int64) * n_items + items
        keys = np.unique(np.concatenate([keys, fresh]))
    # keep a random subset of exactly nnz distinct pairs (not the lowest keys, which would bias users)
    keys = np.sort(rng.choice(keys, size=nnz, replace=False))
    users, items = keys // n_items, keys % n_items
    user_perm, item_perm = rng.permutation(n_users), rng.permutation(n_items)
    user_idx = user_perm[users].astype(np.int32)
    item_idx = item_perm[items].astype(np.int32)
    timestamp = rng.integers(0, 10**9, nnz)
    return Interactions(
        user_idx, item_idx, Vocab(np.arange(n_users), name="user"), Vocab(np.arange(n_items), name="item"),
        timestamp=timestamp,
    )


def write_power_law_parquet(folder: str | os.PathLike, nnz: int, *, parts: int = 8, seed: int = 0,
                            **shape: float) -> Path:
    """`power_law_interactions(nnz, seed=seed, **shape)` written as a folder of `parts` Parquet files
    (columns user_id, item_id, timestamp; each part a contiguous range of users), the layout of a
    partitioned table that `recstack.data.load.load_table(folder)` reads in chunks. The folder
    appears whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recstack.fs import atomic_directory

    if parts < 1:
        raise ValueError("parts must be positive")
    log = power_law_interactions(nnz, seed=seed, **shape)
    bounds = np.linspace(0, len(log), parts + 1).astype(np.int64)
    with atomic_directory(folder) as tmp:
        for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            pq.write_table(pa.table({"user_id": log.users.ids[log.user[start:stop]].astype(np.int64),
                                     "item_id": log.items.ids[log.item[start:stop]].astype(np.int64),
                                     "timestamp": log.timestamp[start:stop]}),
                           tmp / f"part-{i:05d}.parquet", row_group_size=1 << 20)
    return Path(folder)
