"""Every user's top-k in one pass (`recstack recommend RUN_DIR --all-users --out recs.parquet`): the
evaluation's blocked ranking (`rank`) over the run's whole history, with the server's cold-user
rule (`serve_cold`), written as one long table."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import rank, serve_cold
from recstack.serve.ranking import cold_rows
from recstack.serve.state import load_served


def recommend_all(run_dir: str | Path, out: str | Path, *, labels: list[str] | None = None, k: int = 10,
                  include_seen: bool = False, trust: bool = False, memory_budget_mb: float = 1024.0,
                  ray: object | None = None) -> dict[str, float]:
    """Write the top-k of every user of the run, for each saved model (or `labels`), to the parquet
    file `out`: columns model, user_id, rank, item_id, score, fallback (the run's fallback answered a
    cold user). Returns the seconds each model took. The file appears whole or not at all.

    With `ray` (`recstack.cluster.RaySettings`), blocks of users are ranked by Ray tasks and each
    task writes its own part: `out` is then a folder of partitioned Parquet,
    `out/model=<label>/part-00000.parquet`, ... (`recstack.cluster.batch`)."""
    out = Path(out)
    if ray is None and out.suffix.lower() != ".parquet":
        raise RecstackError(f"--out {str(out)!r}: write recommendations to a .parquet file")
    if ray is not None and out.suffix:
        raise RecstackError(f"--out {str(out)!r}: on Ray every block of users is its own part: give a folder "
                            "name (e.g. recs/), the parts go to recs/model=<label>/part-*.parquet")
    if k < 1:
        raise RecstackError(f"k must be >= 1, got {k}")
    served = load_served(run_dir, labels, trust=trust)
    history = served.base
    if k > history.n_items:
        raise RecstackError(f"k={k} is larger than the catalogue of run {served.name!r} ({history.n_items} items); "
                            f"choose k <= {history.n_items}")
    users = np.arange(history.n_users, dtype=np.int32)
    if ray is not None:
        from recstack.cluster.batch import write_partitioned

        return write_partitioned(served, out, k=k, include_seen=include_seen, memory_budget_mb=memory_budget_mb,
                                 settings=ray)
    tables, seconds = [], {}
    for label, model in served.models.items():
        tick = time.perf_counter()
        tables.append(top_k_table(label, model, served.fallback, users, history, k, include_seen=include_seen,
                                  min_history=served.min_history, memory_budget_mb=memory_budget_mb))
        seconds[label] = time.perf_counter() - tick
    table = pa.concat_tables(tables) if tables else None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        pq.write_table(table, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return seconds


def top_k_table(label: str, model: object, fallback: object, users: np.ndarray, history: Interactions, k: int, *,
                include_seen: bool, min_history: int, memory_budget_mb: float) -> pa.Table:
    """The top-k rows of `users` by `model` (cold users by `fallback`, flagged), as the output table;
    `recstack.cluster.batch` calls it once per block of users, in a Ray task."""
    cold = cold_rows(model, users, history, min_history)

    def rank_rows(scorer: object, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rank(scorer, users[rows], history, k, mask_history=not include_seen, memory_budget_mb=memory_budget_mb)

    items, scores = serve_cold(model, fallback, cold, rank_rows)
    filled = items >= 0
    row, position = np.nonzero(filled)
    return pa.table({
        "model": pa.array(np.full(len(row), label, dtype=object), type=pa.string()),
        "user_id": _column(history.users.ids[users[row]]),
        "rank": pa.array((position + 1).astype(np.int32)),
        "item_id": _column(history.items.ids[items[filled]]),
        "score": pa.array(scores[filled].astype(np.float32)),
        "fallback": pa.array(cold[row]),
    })


def _column(ids: np.ndarray) -> pa.Array:
    return pa.array(ids) if ids.dtype.kind in "iuf" else pa.array(ids.astype(str), type=pa.string())
