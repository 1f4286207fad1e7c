"""The durable event store: an append-only SQLite log, idempotent by event id.

SQLite in WAL mode with `synchronous=FULL`: a write is acknowledged only after its commit is on
disk (fsync of the WAL), so an event the client saw accepted survives a SIGKILL or a power cut;
WAL lets readers (export, replay at start-up) run while the one writer appends. It is in the
standard library (no extra dependency, no server), and one serving process is one writer, which
is all SQLite asks. DuckDB would read the log faster for analytics, but it is a columnar engine
built for bulk loads, not for many small durable transactions. docs/serving.md says more.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DEFAULT_EVENTS_FILE = "events.sqlite"  # next to the run directory unless `--events` names a path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    value REAL,
    received_at REAL NOT NULL
)
"""
# the run an admin reload switched to, so that every process serving from this store follows it
_SERVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    run_dir TEXT NOT NULL,
    labels TEXT
)
"""


@dataclass(frozen=True)
class Event:
    """One interaction as stored: external ids as text, timestamp in epoch seconds."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    timestamp: int
    value: float | None = None
    seq: int = 0  # the store's order of arrival (0 before it is stored)


class ChangeCounter:
    """A 64-bit counter in a small memory-mapped file beside the store, bumped after every commit
    under an exclusive file lock. A process that reads a value other than the one it last saw knows
    another process committed (the bump follows the commit, so the commit is visible by then). A
    read is one memory access: SQLite's own `PRAGMA data_version` costs ~12 us through the sqlite3
    module, on every request (issue 14's profile)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115  held for the store's life
        if os.fstat(self._file.fileno()).st_size < 8:
            self._file.truncate(8)
        self._map = mmap.mmap(self._file.fileno(), 8)

    def value(self) -> int:
        return struct.unpack_from("<Q", self._map)[0]

    def bump(self) -> None:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # no lost update between two processes' bumps
        try:
            struct.pack_into("<Q", self._map, 0, (self.value() + 1) % 2**64)
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        self._file.close()


class EventStore:
    """Append-only event log; `add` commits durably before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection, one writer: the lock serialises writers and readers of this process
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync at each commit: acknowledged means on disk
        self._db.execute(_SCHEMA)
        self._db.execute(_SERVED_SCHEMA)
        self.changes = ChangeCounter(self.path.with_name(self.path.name + "-changes"))

    def add(self, events: list[Event]) -> list[Event]:
        """Store `events` in one transaction; returns those that were new (with their `seq`), in order.
        An event id already stored (or repeated in `events`) is skipped: ingest is idempotent."""
        added: list[Event] = []
        received = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO events (event_id, user_id, item_id, type, timestamp, value, "
                        "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value, received))
                    if cursor.rowcount == 1:
                        added.append(Event(e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value,
                                           int(cursor.lastrowid)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if added:
                self.changes.bump()
        return added

    def since(self, seq: int = 0) -> Iterator[Event]:
        """Every stored event after `seq`, in order of arrival."""
        with self._lock:
            rows = self._db.execute("SELECT event_id, user_id, item_id, type, timestamp, value, seq FROM events "
                                    "WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
        return (Event(*row) for row in rows)

    def mark_served(self, run_dir: str, labels: list[str] | None) -> int:
        """Record the run an admin reload switched to; returns the new switch number."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT version FROM served WHERE id = 1").fetchone()
                version = (row[0] if row else 0) + 1
                self._db.execute("INSERT OR REPLACE INTO served (id, version, run_dir, labels) VALUES (1, ?, ?, ?)",
                                 (version, run_dir, None if labels is None else json.dumps(labels)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.changes.bump()
        return version

    def served(self) -> tuple[int, str, list[str] | None] | None:
        """(switch number, run directory, labels) of the last admin reload, or None if none happened."""
        with self._lock:
            row = self._db.execute("SELECT version, run_dir, labels FROM served WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), row[1], None if row[2] is None else json.loads(row[2]))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self.changes.close()
