"""Distributed full-ranking evaluation: the users of a part ranked in blocks by Ray tasks.

`evaluate(model, history, test, ranker=RayRanker(settings))` is the single-process evaluation
with one step moved: `rank` runs in Ray tasks, each on a contiguous block of the users, with the
model, the history and the options put in the object store once. Hits, metrics, significance
tests and reports are then computed by the same code on the gathered lists, so the per-user
values equal the local ones (the lists are the same: each task runs `rank` itself).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from recstack.cluster import TASK_RETRIES, RaySettings, connect, import_ray, put_writable, take_writable
from recstack.evaluate.evaluator import block_size_for, rank


@functools.cache
def _remote_rank() -> Any:
    ray = import_ray()

    @ray.remote(max_retries=TASK_RETRIES, num_cpus=1)
    def rank_block(model: bytes, users: np.ndarray, history: Any, k: int, options: bytes):
        return rank(take_writable(model), users, history, k, **take_writable(options))

    return rank_block


def user_blocks(n_users: int, n_items: int, workers: int, memory_budget_mb: float) -> list[tuple[int, int]]:
    """[start, stop) ranges of the users, never more in one than the local evaluation scores at once.

    With enough users for every worker to get a whole local scoring block, the ranges are exactly
    the local blocks: each task multiplies the same shapes as one process does, so its scores are
    bit for bit the local ones. With fewer, the users are shared out evenly (ceil(n / workers) each)
    to keep every worker busy; scores of other shapes may then differ in their last bits, which
    changes a list only where two items' scores tie to within that."""
    if n_users == 0:
        return []
    block = block_size_for(n_items, memory_budget_mb)
    size = block if n_users >= workers * block else min(block, -(-n_users // workers))
    return [(start, min(start + size, n_users)) for start in range(0, n_users, size)]


class RayRanker:
    """`rank` with the users split into blocks ranked as Ray tasks (the `ranker` of `evaluate`).

    The model goes to the object store once per call (as bytes: each task unpickles its own
writable copy, see `put_writable`); a task whose worker dies is run again
    (`TASK_RETRIES`), so a killed worker costs time, not results.
    """

    def __init__(self, settings: RaySettings | None = None) -> None:
        self.settings = settings or RaySettings()

    def __call__(self, model: Any, users: np.ndarray, history: Any, k: int, **options: Any
                 ) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(users, dtype=np.int32)
        blocks = user_blocks(len(users), history.n_items, self.settings.workers,
                             options.get("memory_budget_mb", 1024.0))
        if len(blocks) <= 1:  # nothing to share out
            return rank(model, users, history, k, **options)
        ray = connect(self.settings)
        model_ref, history_ref, options_ref = put_writable(ray, model), ray.put(history), put_writable(ray, options)
        task = _remote_rank()
        parts = ray.get([task.remote(model_ref, users[start:stop], history_ref, k, options_ref)
                         for start, stop in blocks])
        return (np.concatenate([items for items, _ in parts]).astype(np.int32, copy=False),
                np.concatenate([scores for _, scores in parts]).astype(np.float32, copy=False))
