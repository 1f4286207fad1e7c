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

Which windows an epoch trains on (`windows`, a model's `train_windows`):
- "latest": one window per user, their last max_seq_len + 1 training events (the SASRec paper's
  and the authors' code's choice). Only the newest max_seq_len targets of a user are learned from
  (on ml-100k with max_seq_len 50: 38,762 of the 97,171 next-item targets, 40%; 943 rows);
- "sliding": windows of max_seq_len targets laid back from the newest event with stride
  max_seq_len, so every training event after a user's first is a target exactly once per epoch.
  The newest window is the "latest" one; older ones are full, the oldest is left-padded. A user
  with n events gives ceil((n - 1) / max_seq_len) rows, never a row per prefix (ml-100k: 2,412).
  A smaller `stride` s lays the windows back by s instead and keeps only each window's last s
  slots as targets: still every event a target once per epoch, but each one read from at least
  max_seq_len - s earlier events (or its whole past), like the test user's last slot is;
  ceil((n - 1) / s) rows. Stride 1 is "prefixes", without a row per prefix where s > 1;
- "prefixes": one row per target event, its up to max_seq_len preceding events as the input and
  the event itself the only target, at the last slot (RecBole's prefix augmentation). n - 1 rows
  per user (ml-100k: 97,171), up to max_seq_len times the rows of "sliding" for the same targets.
Every window is built from `train` alone, so no validation or test event can enter one.

>>> seq = last_items(split.history("test"), users, max_seq_len=50)        # (B, 50) tokens
>>> for users, inputs, targets in SequenceBatches(split.train, 50, 128, rng=0):
...     ...                                  # targets[b, t] is the event after inputs[b, :t+1]
>>> SequenceBatches(split.train, 50, 128, rng=0, windows="sliding")      # every event a target once
"""

from __future__ import annotations

from typing import Iterator, Literal, get_args

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError

PAD = 0  # token of an empty slot; item i is token i + 1

TrainWindows = Literal["latest", "sliding", "prefixes"]  # which windows an epoch trains on (module docstring)
TRAIN_WINDOWS: tuple[str, ...] = get_args(TrainWindows)
Objective = Literal["next_item", "cloze"]  # shifted (inputs, targets) pairs, or item windows to mask


def _check_length(max_seq_len: int) -> int:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
        raise RecstackError(f"max_seq_len must be an integer >= 1, got {max_seq_len!r}")
    return int(max_seq_len)


def window_rows(indptr: np.ndarray, users: np.ndarray, length: int, stops: np.ndarray | None = None) -> np.ndarray:
    """(B, length) row numbers of each user's last `length` events, left-padded with -1.

    `indptr` is the log's row pointer (user u owns rows indptr[u]:indptr[u+1]), rows are in
    time order within a user, so column -1 is the user's most recent event. With `stops` (B,)
    (exclusive row ends inside each user's range) the window ends before row stops[b] instead.
    """
    users = np.asarray(users, dtype=np.int64)
    start = indptr[users]
    end = indptr[users + 1] if stops is None else np.asarray(stops, dtype=np.int64)
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
                  return_rows: bool = False, stops: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Next-item training pairs (inputs, targets), each (B, max_seq_len) tokens, from `train` only.

    The window is the user's last max_seq_len + 1 training events (before row `stops[b]` when
    given, see `window_rows`): inputs are its first max_seq_len tokens and targets the same
    window shifted by one, so targets[b, t] is the event that followed inputs[b, :t+1]. Where
    the input slot is padding the target is set to padding too (a user's first event has no
    context to be predicted from). With `return_rows=True`, also the (B, max_seq_len) row
    numbers in `train` of the targets (-1 where the target is padding), which lets a test trace
    every target to its event.
    """
    max_seq_len = _check_length(max_seq_len)
    rows = window_rows(train.indptr, users, max_seq_len + 1, stops)
    tokens = _tokens(train.item, rows)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].copy()
    target_rows = rows[:, 1:].copy()
    no_context = inputs == PAD
    targets[no_context] = PAD
    target_rows[no_context] = -1
    if return_rows:
        return inputs, targets, target_rows
    return inputs, targets


def _check_stride(stride: int | None, max_seq_len: int, windows: str, objective: str) -> int | None:
    """The sliding windows' stride (None: max_seq_len), refused where it does not apply."""
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= max_seq_len:
        raise RecstackError(f"stride must be an integer from 1 to max_seq_len ({max_seq_len}), got {stride!r}")
    if windows != "sliding":
        raise RecstackError(f"stride applies to windows='sliding' only (windows is {windows!r})")
    if objective == "cloze" and stride != max_seq_len:
        raise RecstackError("a stride below max_seq_len overlaps the windows, and Cloze training masks items "
                            "anywhere in a window, so events would be learnt more than once: leave stride unset")
    return int(stride)


def window_stops(indptr: np.ndarray, users: np.ndarray, max_seq_len: int, windows: TrainWindows = "latest",
                 objective: Objective = "next_item", stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(window_users, stops): every training window of `users`, as its user and exclusive end row.

    A user with n events has n - 1 next-item targets (rows after their first) or n Cloze targets
    (every row). "latest" gives one window per user ending at their last event; "sliding" steps
    the end back by `stride` (None: max_seq_len) until the targets are covered, ceil(targets /
    stride) windows; "prefixes" (next-item only) ends one window at each target. Within a user the
    newest window comes first. Users without a target get no window.
    """
    max_seq_len = _check_length(max_seq_len)
    if windows not in TRAIN_WINDOWS:
        raise RecstackError(f"windows must be one of {', '.join(TRAIN_WINDOWS)}, got {windows!r}")
    if objective == "cloze" and windows == "prefixes":
        raise RecstackError("windows='prefixes' trains each prefix on its last slot only; Cloze training "
                            "masks items anywhere in a window: use 'latest' or 'sliding'")
    stride = _check_stride(stride, max_seq_len, windows, objective)
    users = np.asarray(users, dtype=np.int64)
    end = indptr[users + 1]
    targets = end - indptr[users] - (objective == "next_item")
    if windows == "latest":
        return users, end
    stride = (stride or max_seq_len) if windows == "sliding" else 1
    counts = np.maximum(-(-targets // stride), 0)
    owners = np.repeat(np.arange(len(users)), counts)
    back = np.arange(len(owners), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return users[owners], end[owners] - back * stride


class SequenceBatches:
    """Mini-batches of (users, inputs, targets) for next-item training; each `iter()` is one epoch.

    Training sequences come from users with at least two events in `train` (a user needs one
    event of context and one to predict); `windows` picks which ("latest", "sliding",
    "prefixes", see the module docstring). The windows are listed once as (user, end row) pairs;
    each epoch draws only a permutation of them, in a fresh random order, and every batch's rows
    are built by `shifted_pairs`. `users` in a batch is each row's user (a user may own several
    rows with "sliding" or "prefixes"). With "prefixes" every target but the last slot's is
    padding.

    `objective="cloze"` (BERT4Rec) yields (users, tokens, tokens) instead: each window's
    max_seq_len items, any of which the model may mask; its "sliding" windows hold every training
    event once per epoch, and "prefixes" is refused.

    `stride` (sliding windows only, next-item only): lay the windows back by `stride` events and
    keep each window's last `stride` slots as its targets (module docstring); None is max_seq_len.
    """

    def __init__(self, train: Interactions, max_seq_len: int, batch_size: int,
                 rng: np.random.Generator | int | None = None, shuffle: bool = True,
                 windows: TrainWindows = "latest", objective: Objective = "next_item",
                 stride: int | None = None) -> None:
        self.train = train
        self.max_seq_len = _check_length(max_seq_len)
        if isinstance(batch_size, bool) or batch_size < 1:
            raise RecstackError(f"batch_size must be >= 1, got {batch_size!r}")
        if objective not in get_args(Objective):
            raise RecstackError(f"objective must be one of {', '.join(get_args(Objective))}, got {objective!r}")
        self.batch_size = int(batch_size)
        self.users = np.flatnonzero(train.user_counts() >= 2).astype(np.int64)
        self.windows, self.objective = windows, objective
        self.window_users, self.window_stops = window_stops(train.indptr, self.users, self.max_seq_len, windows,
                                                            objective, stride)
        # the targets each window keeps: its last `kept` slots (earlier ones belong to a newer window)
        self.kept = 1 if windows == "prefixes" else (stride or self.max_seq_len) if windows == "sliding" \
            else self.max_seq_len
        self.shuffle = shuffle
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __len__(self) -> int:
        return -(-len(self.window_users) // self.batch_size)

    def rows(self, users: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of the windows of `users` that end before rows `stops`."""
        if self.objective == "cloze":
            tokens = _tokens(self.train.item, window_rows(self.train.indptr, users, self.max_seq_len, stops))
            return tokens, tokens
        inputs, targets = shifted_pairs(self.train, users, self.max_seq_len, stops=stops)
        if self.kept < self.max_seq_len:
            # a prefix's own target only ("prefixes"), or a strided window's newest `kept`: the earlier
            # slots are the targets of an older window, where they are read from a longer past
            targets[:, :-self.kept] = PAD
        return inputs, targets

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        # one window per user with "latest": the permutation of the users, the same draws as always
        n = len(self.window_users)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            pick = order[start:start + self.batch_size]
            users = self.window_users[pick]
            yield users, *self.rows(users, self.window_stops[pick])
