"""The event log as a table `recstack run` trains on: the served run's events, then the posted ones,
with the columns the table loader finds by name (user_id, item_id, rating, timestamp)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from recstack.data.interactions import is_integer_text
from recstack.serve.events import Event


def _ids(run_ids: np.ndarray, posted: list[str]) -> pa.Array:
    """One id column: numbers stay numbers when the run's ids are numbers and every posted id reads as
    one (events store ids as text), else everything as text."""
    if run_ids.dtype.kind in "iu" and all(is_integer_text(p) for p in posted):
        return pa.array(np.concatenate([run_ids.astype(np.int64), np.array([int(p) for p in posted], np.int64)]))
    return pa.array([str(x) for x in run_ids.tolist()] + posted, type=pa.string())


def event_table(run, events: list[Event], *, include_run: bool = True) -> pa.Table:
    """`run`'s events (type "run", no event id; rating 1 and timestamp 0 where the run had none) and
    the posted `events` (rating 1 where none was sent), in that order."""
    base = run.base if include_run else run.base.take(np.zeros(0, dtype=np.int64))
    n = len(base)
    users = _ids(base.users.ids[base.user], [e.user_id for e in events])
    items = _ids(base.items.ids[base.item], [e.item_id for e in events])
    rating = np.concatenate([base.value if base.value is not None else np.ones(n, np.float32),
                             np.array([1.0 if e.value is None else e.value for e in events], np.float32)])
    timestamp = np.concatenate([base.timestamp if base.timestamp is not None else np.zeros(n, np.int64),
                                np.array([e.timestamp for e in events], np.int64)])
    return pa.table({"user_id": users, "item_id": items, "rating": pa.array(rating.astype(np.float64)),
                     "timestamp": pa.array(timestamp.astype(np.int64)),
                     "type": pa.array(["run"] * n + [e.type for e in events], type=pa.string()),
                     "event_id": pa.array([None] * n + [e.event_id for e in events], type=pa.string())})


def write_table(table: pa.Table, format: str) -> bytes:
    sink = io.BytesIO()
    if format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    return sink.getvalue()
