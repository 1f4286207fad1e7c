"""Padded item sequences from an `Interactions` log, vectorised (numpy only, no torch).

Everything is index arithmetic on the log's CSR row pointer (`indptr`): the last n events of
user u are rows `indptr[u+1] - n .. indptr[u+1] - 1`, so a block of users becomes one (B, n)
matrix of row numbers by broadcasting, and one fancy-indexing step reads their items. There is
no Python loop per user or per event.

Conventions shared with the sequential models:
- items are shifted by one, so 0 is padding and item index i is token i + 1;
- sequences are LEFT-padded: the most recent event is always in the last column, which keeps
  "the position counted from the end" fixed, as a learned positional embedding expects;
- `history` decides what a sequence may contain. For training that is the train part only;
  at scoring time it is whatever the evaluator hands the model (train for validation,
  train + valid for test), so no event outside it can reach an input or a target.

>>> seq = last_items(split.history("test"), users, max_seq_len=50)        # (B, 50) tokens
>>> for users, inputs, targets in SequenceBatches(split.train, 50, 128, rng=0):
...     ...                                  # targets[b, t] is the event after inputs[b, :t+1]
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError

PAD = 0  # token of an empty slot; item i is token i + 1


def _check_length(max_seq_len: int) -> int:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
        raise RecstackError(f"max_seq_len must be an integer >= 1, got {max_seq_len!r}")
    return int(max_seq_len)


def window_rows(indptr: np.ndarray, users: np.ndarray, length: int) -> np.ndarray:
    """(B, length) row numbers of each user's last `length` events, left-padded with -1.

    `indptr` is the log's row pointer (user u owns rows indptr[u]:indptr[u+1]), rows are in
    time order within a user, so column -1 is the user's most recent event.
    """
    users = np.asarray(users, dtype=np.int64)
    start, end = indptr[users], indptr[users + 1]
    rows = end[:, None] - length + np.arange(length, dtype=np.int64)[None, :]
    return np.where(rows >= start[:, None], rows, -1)


def last_items(history: Interactions, users: np.ndarray, max_seq_len: int) -> np.ndarray:
    """(B, max_seq_len) int64 tokens (item + 1, 0 = padding) of each user's last events in `history`.

    Truncation keeps the most recent `max_seq_len` events; shorter histories are left-padded.
    A user with no events in `history` gets an all-padding row.
    """
    max_seq_len = _check_length(max_seq_len)
    users = np.asarray(users, dtype=np.int64)
    if len(users) and (users.min() < 0 or users.max() >= history.n_users):
        raise RecstackError(f"user index out of range for a history of {history.n_users} users")
    rows = window_rows(history.indptr, users, max_seq_len)
    return _tokens(history.item, rows)


def _tokens(items: np.ndarray, rows: np.ndarray) -> np.ndarray:
    tokens = np.zeros(rows.shape, dtype=np.int64)
    valid = rows >= 0
    tokens[valid] = items[rows[valid]].astype(np.int64) + 1
    return tokens


def shifted_pairs(train: Interactions, users: np.ndarray, max_seq_len: int,
                  return_rows: bool = False) -> tuple[np.ndarray, ...]:
    """Next-item training pairs (inputs, targets), each (B, max_seq_len) tokens, from `train` only.

    The window is the user's last max_seq_len + 1 training events: inputs are its first
    max_seq_len tokens and targets the same window shifted by one, so targets[b, t] is the
    event that followed inputs[b, :t+1]. Where the input slot is padding the target is set to
    padding too (a user's first event has no context to be predicted from). With
    `return_rows=True`, also the (B, max_seq_len) row numbers in `train` of the targets
    (-1 where the target is padding), which lets a test trace every target to its event.
    """
    max_seq_len = _check_length(max_seq_len)
    rows = window_rows(train.indptr, users, max_seq_len + 1)
    tokens = _tokens(train.item, rows)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].copy()
    target_rows = rows[:, 1:].copy()
    no_context = inputs == PAD
    targets[no_context] = PAD
    target_rows[no_context] = -1
    if return_rows:
        return inputs, targets, target_rows
    return inputs, targets


class SequenceBatches:
    """Mini-batches of (users, inputs, targets) for next-item training; each `iter()` is one epoch.

    One training sequence per user with at least two events in `train` (a user needs one event
    of context and one to predict), in a fresh random order per epoch. Only an index
    permutation is drawn per epoch; every batch's windows are built by `shifted_pairs`.
    """

    def __init__(self, train: Interactions, max_seq_len: int, batch_size: int,
                 rng: np.random.Generator | int | None = None, shuffle: bool = True) -> None:
        self.train = train
        self.max_seq_len = _check_length(max_seq_len)
        if isinstance(batch_size, bool) or batch_size < 1:
            raise RecstackError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.users = np.flatnonzero(train.user_counts() >= 2).astype(np.int64)
        self.shuffle = shuffle
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        order = self.rng.permutation(self.users) if self.shuffle else self.users
        for start in range(0, len(order), self.batch_size):
            users = order[start:start + self.batch_size]
            inputs, targets = shifted_pairs(self.train, users, self.max_seq_len)
            yield users, inputs, targets
