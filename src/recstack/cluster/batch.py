"""Every user's top-k as partitioned Parquet, written by Ray tasks
(`recstack recommend RUN --all-users --out DIR --backend ray`).

Each task ranks one block of users with the single-process code (`serve.batch.top_k_table`:
the evaluation's blocked `rank` and the server's cold-user rule) and writes its own part, so
nothing but the parts' paths comes back through the driver. The folder is laid out for
Hive-style readers (pyarrow.dataset, DuckDB, Spark, Ray Data): `model=<label>/part-00000.parquet`.
On a cluster, `out` must be on storage every node writes to (a shared or network file system);
the folder appears whole or not at all.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from recstack.cluster import TASK_RETRIES, RaySettings, connect, import_ray, put_writable, take_writable
from recstack.cluster.evaluate import user_blocks
from recstack.fs import atomic_directory


@functools.cache
def _remote_write() -> Any:
    ray = import_ray()

    @ray.remote(max_retries=TASK_RETRIES, num_cpus=1)
    def write_block(label: str, model: bytes, fallback: bytes, users: np.ndarray, history: Any, options: dict[str, Any],
                    path: str) -> int:
        import pyarrow.parquet as pq

        from recstack.serve.batch import top_k_table

        model, fallback = take_writable(model), take_writable(fallback)
        # the label is the folder's partition key (model=<label>), not a column of the part
        table = top_k_table(label, model, fallback, users, history, **options).drop_columns(["model"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)  # a retried task writes the same part again, whole
        return table.num_rows

    return write_block


def write_partitioned(served: Any, out: Path, *, k: int, include_seen: bool, memory_budget_mb: float,
                      settings: RaySettings) -> dict[str, float]:
    """Write every user's top-k of each of `served.models` under the folder `out`; seconds per model."""
    ray = connect(settings)
    history = served.base
    users = np.arange(history.n_users, dtype=np.int32)
    blocks = user_blocks(len(users), history.n_items, settings.workers, memory_budget_mb)
    options = {"k": k, "include_seen": include_seen, "min_history": served.min_history,
               "memory_budget_mb": memory_budget_mb}
    history_ref, fallback_ref, options_ref = ray.put(history), put_writable(ray, served.fallback), ray.put(options)
    seconds: dict[str, float] = {}
    with atomic_directory(out) as folder:
        for label, model in served.models.items():
            tick = time.perf_counter()
            model_ref = put_writable(ray, model)
            parts = [_remote_write().remote(label, model_ref, fallback_ref, users[start:stop], history_ref,
                                            options_ref, str(folder / f"model={label}" / f"part-{i:05d}.parquet"))
                     for i, (start, stop) in enumerate(blocks)]
            ray.get(parts)
            seconds[label] = time.perf_counter() - tick
    return seconds
