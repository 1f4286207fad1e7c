"""The currency of recstack: a `Vocab` per id space and an `Interactions` event log.

`Interactions` keeps columnar numpy arrays sorted by (user, timestamp, original order).
The original order breaks timestamp ties, so "last" is well defined even on data such as
ml-100k where many events share a second. A log made with `order="file"` is sorted by
(user, original order) instead: the source's sequence order is kept even where its timestamps
disagree (RecBole's exports). Derived views (`matrix()`, `sequences()`) are cached; every
operation returns a new object.
"""

from __future__ import annotations

import difflib
import hashlib
from functools import cached_property
from typing import Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sp

from recstack.errors import RecstackError


class UnknownIdError(RecstackError, KeyError):
    """An external id that the vocabulary does not contain."""

    def __str__(self) -> str:  # KeyError quotes its message; a user error should read plainly
        return str(self.args[0])



def is_integer_text(text: str) -> bool:
    """Whether `text` is an optionally signed integer in ASCII digits ("42", "-7"). str.isdigit is
    not enough: it accepts "²" and other Unicode digits that int() refuses or reads as other numbers."""
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def _dictionary_encoded(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids in order of first appearance, int32 codes) by Arrow's hash-based dictionary encoding, or
    None for arrays it does not take (floats, mixed objects). One pass and int32 codes, where
    `np.unique` sorts and holds several 64-bit arrays of the log's length (issue 18: loading 50M
    events peaked at 3.8 GiB)."""
    if values.ndim != 1 or values.dtype.kind not in "iuOU":
        return None
    import pyarrow as pa

    try:
        array = pa.array(values, type=pa.string() if values.dtype.kind in "OU" else None)
    except (pa.ArrowException, TypeError, ValueError):  # an object array that is not all str
        return None
    encoded = array.dictionary_encode()
    # the codes copied into numpy's memory and Arrow's buffers released now: Arrow's allocator keeps
    # freed memory for reuse, which at 50M events held hundreds of MB after the log was gone
    codes = np.array(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int32)
    ids = encoded.dictionary.to_numpy(zero_copy_only=False)
    del array, encoded
    if len(codes) >= 1 << 20:
        pa.default_memory_pool().release_unused()
    return ids, codes


def _in_order(user: np.ndarray, timestamp: np.ndarray | None) -> bool:
    """Whether rows are already sorted by (user, timestamp): one linear pass instead of a sort, since
    logs partitioned by user (Spark, Parquet folders) usually arrive sorted."""
    if len(user) < 2:
        return True
    step = np.diff(user)
    if (step < 0).any():
        return False
    return timestamp is None or bool(np.all((step > 0) | (timestamp[1:] >= timestamp[:-1])))


class Vocab:
    """Bijection between external ids (as loaded) and dense int32 indices 0..n-1."""

    def __init__(self, ids: Sequence | np.ndarray, name: str = "id") -> None:
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"{name} vocabulary needs a 1-D array of ids, got shape {ids.shape}")
        if ids.dtype.kind == "U":  # fixed-width unicode arrays make later concatenation brittle
            ids = ids.astype(object)
        self.ids = ids
        self.name = name
        if len(self._lookup) != len(ids):
            raise ValueError(f"{name} vocabulary has duplicate ids")

    @classmethod
    def from_values(cls, values: np.ndarray, name: str = "id") -> tuple["Vocab", np.ndarray]:
        """Build a vocabulary from raw id values in order of first appearance; return it and the codes."""
        values = np.asarray(values)
        encoded = _dictionary_encoded(values)
        if encoded is not None:
            return cls(encoded[0], name=name), encoded[1]
        uniques, first, codes = np.unique(values, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # first-appearance order keeps indices readable
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return cls(uniques[order], name=name), rank[codes.ravel()].astype(np.int32)

    @cached_property
    def _lookup(self) -> dict:
        return {key: i for i, key in enumerate(self.ids.tolist())}

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self is other or np.array_equal(self.ids, other.ids))

    __hash__ = object.__hash__

    def __contains__(self, external_id) -> bool:
        return self._coerce(external_id) in self._lookup

    def _coerce(self, external_id):
        # ids typed on a command line arrive as strings even when the vocabulary holds ints
        if self.ids.dtype.kind in "iu" and isinstance(external_id, str) and is_integer_text(external_id):
            return int(external_id)
        if self.ids.dtype == object and len(self.ids) and isinstance(self.ids[0], str):
            return str(external_id)
        return external_id

    def index(self, external_ids: Iterable | object) -> np.ndarray | int:
        """External id(s) -> dense index(es); an unknown id raises `UnknownIdError` naming it."""
        scalar = np.ndim(external_ids) == 0
        keys = [external_ids] if scalar else list(external_ids)
        out = np.empty(len(keys), dtype=np.int32)
        for pos, key in enumerate(keys):
            idx = self._lookup.get(self._coerce(key))
            if idx is None:
                close = difflib.get_close_matches(str(key), [str(x) for x in self.ids[:100_000]], n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise UnknownIdError(f"unknown {self.name} {key!r}: it is not in the data ({len(self)} known).{hint}")
            out[pos] = idx
        return int(out[0]) if scalar else out

    def id_of(self, index: int | np.ndarray):
        """Dense index(es) -> external id(s)."""
        return self.ids[index]

    def fingerprint(self) -> str:
        return hashlib.sha1("\x1f".join(map(str, self.ids.tolist())).encode()).hexdigest()[:16]


class Interactions:
    """An immutable event log: `user`, `item` (int32 indices), optional `value`, `timestamp`.

    Rows are sorted by (user, timestamp, original order); without timestamps the original
    order is the time order. With `order="file"` rows are sorted by (user, original order): the
    given order is the sequence order and timestamps need not increase within a user.
    `item_pool` is None, or, on a held-out part that must be ranked
    against a subset of the catalogue (a cold-item split's part), the sorted item indices to rank;
    the evaluator reads it. Derived logs (`take`, `concat`, ...) do not inherit it.
    """

    item_pool: np.ndarray | None = None

    def __init__(
        self,
        user: np.ndarray,
        item: np.ndarray,
        users: Vocab,
        items: Vocab,
        value: np.ndarray | None = None,
        timestamp: np.ndarray | None = None,
        *,
        presorted: bool = False,
        order: Literal["time", "file"] = "time",
    ) -> None:
        if order not in ("time", "file"):
            raise ValueError(f"order must be 'time' or 'file', got {order!r}")
        user = np.asarray(user, dtype=np.int32)
        item = np.asarray(item, dtype=np.int32)
        if user.shape != item.shape or user.ndim != 1:
            raise ValueError(f"user and item columns must be 1-D and equally long, got {user.shape} and {item.shape}")
        for column, name in ((value, "value"), (timestamp, "timestamp")):
            if column is not None and np.shape(column) != user.shape:
                raise ValueError(f"{name} column has length {np.shape(column)}, expected {user.shape}")
        if len(user):
            if user.min() < 0 or user.max() >= len(users):
                raise ValueError(f"user index out of range for a vocabulary of {len(users)} users")
            if item.min() < 0 or item.max() >= len(items):
                raise ValueError(f"item index out of range for a vocabulary of {len(items)} items")
        value = None if value is None else np.asarray(value, dtype=np.float32)
        timestamp = None if timestamp is None else np.asarray(timestamp, dtype=np.int64)
        time_key = None if order == "file" else timestamp
        if not presorted and not _in_order(user, time_key):
            # lexsort is stable: equal (user, time) keep their original order, which breaks ties.
            rows = np.lexsort((user,) if time_key is None else (time_key, user))
            user, item = user[rows], item[rows]
            value = None if value is None else value[rows]
            timestamp = None if timestamp is None else timestamp[rows]
        for array in (user, item, value, timestamp):
            if array is not None:
                array.flags.writeable = False
        self.user, self.item, self.value, self.timestamp = user, item, value, timestamp
        self.users, self.items = users, items
        self.order = order

    # ---- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        extras = [c for c in ("value", "timestamp") if getattr(self, c) is not None]
        return (f"Interactions({len(self)} events, {self.n_users} users, {self.n_items} items"
                + (f", with {', '.join(extras)}" if extras else "")
                + (", in file order" if self.order == "file" else "") + ")")

    # ---- derived views (cached) -------------------------------------------------------
    @cached_property
    def indptr(self) -> np.ndarray:
        """Row pointer: user u's events are rows indptr[u]:indptr[u+1]."""
        counts = np.bincount(self.user, minlength=self.n_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def matrix(self, binary: bool = True) -> sp.csr_matrix:
        """CSR (n_users, n_items), rows = users. Binary by default; `binary=False` sums values."""
        return self._binary_matrix if binary else self._value_matrix

    @cached_property
    def _binary_matrix(self) -> sp.csr_matrix:
        m = sp.csr_matrix(
            (np.ones(len(self), dtype=np.float32), (self.user, self.item)), shape=(self.n_users, self.n_items)
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    @cached_property
    def _value_matrix(self) -> sp.csr_matrix:
        values = np.ones(len(self), dtype=np.float32) if self.value is None else self.value
        m = sp.csr_matrix((values, (self.user, self.item)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        return m

    def sequences(self) -> list[np.ndarray]:
        """Item indices per user in log order (views into one array; empty for inactive users)."""
        return np.split(self.item, self.indptr[1:-1])

    def user_counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.item, minlength=self.n_items)

    def active_users(self) -> np.ndarray:
        return np.flatnonzero(self.user_counts() > 0).astype(np.int32)

    # ---- new objects ------------------------------------------------------------------
    @classmethod
    def of_one_user(cls, user: int, item: np.ndarray, users: Vocab, items: Vocab, value: np.ndarray | None = None,
                    timestamp: np.ndarray | None = None, *, order: Literal["time", "file"] = "time"
                    ) -> "Interactions":
        """One user's events (a served request's history), with `indptr` and the binary matrix built
        directly: the general COO-to-CSR path is O(events + users) in Python-level scipy checks and
        was most of a served request's time (issue 14). Equal to the general constructor's result."""
        log = cls(np.full(len(item), user, dtype=np.int32), item, users, items, value, timestamp, order=order)
        if not 0 <= user < len(users):
            raise ValueError(f"user index {user} out of range for a vocabulary of {len(users)} users")
        ends = np.zeros(len(users) + 1, dtype=np.int64)
        ends[user + 1:] = len(log)
        log.__dict__["indptr"] = ends  # the cached_property's slot
        columns = np.sort(log.item)  # sorted and distinct: the canonical CSR row (np.unique hashes first)
        columns = columns[np.concatenate(([True], columns[1:] != columns[:-1]))] if len(columns) else columns
        row_ends = np.zeros(len(users) + 1, dtype=np.int32)
        row_ends[user + 1:] = len(columns)
        matrix = sp.csr_matrix((np.ones(len(columns), dtype=np.float32), columns, row_ends),
                               shape=(len(users), len(items)))
        matrix.has_sorted_indices = True
        log.__dict__["_binary_matrix"] = matrix
        return log

    def take(self, rows: np.ndarray) -> "Interactions":
        """Subset by a boolean mask or sorted row indices; keeps vocabularies and sort order."""
        rows = np.asarray(rows)
        # a mask indexes as it is: no 64-bit row list (320 MB for 40M rows)
        if rows.dtype != bool and len(rows) > 1 and np.any(np.diff(rows) < 0):
            rows = np.sort(rows)
        return Interactions(
            self.user[rows], self.item[rows], self.users, self.items,
            value=None if self.value is None else self.value[rows],
            timestamp=None if self.timestamp is None else self.timestamp[rows],
            presorted=True, order=self.order,
        )

    def concat(self, other: "Interactions") -> "Interactions":
        """Events of both logs, re-sorted; `self` comes first among exact ties.

        If either log is in file order the result is too (sorted by user only), so neither
        log's sequence order is undone by a time sort.
        """
        if self.users != other.users or self.items != other.items:
            raise ValueError("cannot concatenate interactions with different vocabularies")
        if (self.value is None) != (other.value is None) or (self.timestamp is None) != (other.timestamp is None):
            raise ValueError("cannot concatenate interactions with different columns (value/timestamp)")

        def join(a, b):
            return None if a is None else np.concatenate([a, b])

        return Interactions(
            np.concatenate([self.user, other.user]), np.concatenate([self.item, other.item]),
            self.users, self.items, value=join(self.value, other.value),
            timestamp=join(self.timestamp, other.timestamp),
            order="file" if "file" in (self.order, other.order) else "time",
        )

    def with_vocab(self, users: Vocab | None = None, items: Vocab | None = None) -> "Interactions":
        """Re-index onto larger vocabularies that contain the current ones as a prefix."""
        users, items = users or self.users, items or self.items
        for old, new, what in ((self.users, users, "user"), (self.items, items, "item")):
            if len(new) < len(old) or not np.array_equal(new.ids[: len(old)], old.ids):
                raise ValueError(f"new {what} vocabulary must extend the old one")
        return Interactions(self.user, self.item, users, items, self.value, self.timestamp, presorted=True,
                            order=self.order)

    def fingerprint(self) -> str:
        """Content hash of the events and vocabularies (stable across processes)."""
        h = hashlib.sha1()
        for array in (self.user, self.item, self.value, self.timestamp):
            h.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        h.update(self.users.fingerprint().encode())
        h.update(self.items.fingerprint().encode())
        if self.item_pool is not None:
            h.update(b"pool" + np.ascontiguousarray(self.item_pool, dtype=np.int64).tobytes())
        if self.order == "file":  # same rows, but concat keeps them in another order
            h.update(b"file-order")
        return h.hexdigest()[:16]

    def with_item_pool(self, items: np.ndarray) -> "Interactions":
        """The same events, to be ranked only against `items` (see the class docstring)."""
        pool = np.unique(np.asarray(items, dtype=np.int64))
        if len(pool) and (pool[0] < 0 or pool[-1] >= self.n_items):
            raise ValueError(f"item_pool indices must lie in [0, {self.n_items})")
        if not np.isin(np.unique(self.item), pool).all():
            raise ValueError("item_pool must contain every item of the events it is attached to")
        copy = Interactions(self.user, self.item, self.users, self.items, self.value, self.timestamp, presorted=True,
                            order=self.order)
        copy.item_pool = pool.astype(np.int32)
        copy.item_pool.flags.writeable = False
        return copy

    @classmethod
    def from_ids(
        cls,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        value: np.ndarray | None = None,
        timestamp: np.ndarray | None = None,
        users: Vocab | None = None,
        items: Vocab | None = None,
    ) -> "Interactions":
        """Build from external ids; vocabularies are created (first-appearance order) unless given."""
        users, user = _encoded(user_ids, users, "user")
        items, item = _encoded(item_ids, items, "item")
        return cls(user, item, users, items, value=value, timestamp=timestamp)


def _encoded(ids: np.ndarray, vocab: Vocab | None, name: str) -> tuple[Vocab, np.ndarray]:
    """External ids -> (vocabulary, dense indices): a new vocabulary in first-appearance order unless given."""
    if vocab is None:
        return Vocab.from_values(ids, name=name)
    return vocab, (vocab.index(ids) if len(ids) else np.empty(0, np.int32))
