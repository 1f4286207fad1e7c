"""Padded sequences, next-item training pairs and the training windows (latest, sliding, prefixes):
hand-worked cases and naive per-user references."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data import Interactions
from recstack.errors import RecstackError
from recstack.train.sequences import (PAD, SequenceBatches, last_items, shifted_pairs, window_rows,
                                     window_stops)


def log(rows: list[tuple[str, int, int]], users: list[str] | None = None) -> Interactions:
    """(user_id, item_id, timestamp) rows; items 0..9 are indices 0..9 (the vocabulary is given)."""
    from recstack.data import Vocab

    user_ids = users or list(dict.fromkeys(u for u, _, _ in rows))
    uv, iv = Vocab(np.array(user_ids, dtype=object), "user"), Vocab(np.arange(10), "item")
    u, i, t = zip(*rows)
    return Interactions.from_ids(np.array(u, dtype=object), np.array(i), timestamp=np.array(t), users=uv, items=iv)


# a: items 3, 1, 4 at t = 10, 20, 30 (given out of order); b: nothing; c: 1, 5, 9, 2, 6 with a tie at t = 7
DATA = log([("a", 4, 30), ("a", 3, 10), ("c", 1, 5), ("c", 5, 7), ("c", 9, 7), ("a", 1, 20), ("c", 2, 8),
            ("c", 6, 9)], users=["a", "b", "c"])


def test_last_items_left_pads_truncates_and_shifts_by_one():
    tokens = last_items(DATA, np.array([0, 1, 2]), max_seq_len=4)
    # tokens are item + 1; the most recent event is in the last column; the t=7 tie keeps row order
    np.testing.assert_array_equal(tokens, [[0, 4, 2, 5],
                                           [0, 0, 0, 0],
                                           [6, 10, 3, 7]])
    assert tokens.dtype == np.int64
    np.testing.assert_array_equal(last_items(DATA, np.array([2, 0, 2]), 1), [[7], [5], [7]])


def test_window_rows_marks_padding_with_minus_one():
    rows = window_rows(DATA.indptr, np.array([0, 1]), 4)
    np.testing.assert_array_equal(rows, [[-1, 0, 1, 2], [-1, -1, -1, -1]])


def test_shifted_pairs_predict_the_next_event_and_mask_the_first():
    inputs, targets, rows = shifted_pairs(DATA, np.array([0, 1, 2]), max_seq_len=3, return_rows=True)
    # a: window (L + 1 = 4) is [pad, 3, 1, 4] -> inputs [pad, 3, 1] -> targets [pad (no context), 1, 4]
    # c: tokens 2 6 10 3 7, window [6, 10, 3, 7] -> inputs [6, 10, 3] -> targets [10, 3, 7]
    np.testing.assert_array_equal(inputs, [[0, 4, 2], [0, 0, 0], [6, 10, 3]])
    np.testing.assert_array_equal(targets, [[0, 2, 5], [0, 0, 0], [10, 3, 7]])
    # the row numbers of the targets in DATA (c's events are rows 3..7)
    np.testing.assert_array_equal(rows, [[-1, 1, 2], [-1, -1, -1], [5, 6, 7]])
    np.testing.assert_array_equal(DATA.item[rows[rows >= 0]] + 1, targets[targets != PAD])


def naive_pairs(data: Interactions, users, L):
    """One Python loop per user: the reference the vectorised version must match."""
    inputs = np.zeros((len(users), L), dtype=np.int64)
    targets = np.zeros((len(users), L), dtype=np.int64)
    for b, u in enumerate(users):
        seq = list(data.item[data.indptr[u]:data.indptr[u + 1]] + 1)[-(L + 1):]
        for t in range(len(seq) - 1):
            inputs[b, L - (len(seq) - 1) + t] = seq[t]
            targets[b, L - (len(seq) - 1) + t] = seq[t + 1]
    return inputs, targets


@pytest.mark.parametrize("L", [1, 3, 17])
def test_vectorised_pairs_and_windows_match_a_per_user_loop(L):
    rng = np.random.default_rng(L)
    counts = rng.integers(0, 30, size=40)
    user = np.repeat(np.arange(40), counts)
    data = Interactions.from_ids(user, rng.integers(0, 50, len(user)), timestamp=rng.integers(0, 5, len(user)))
    users = rng.permutation(data.n_users)
    inputs, targets = shifted_pairs(data, users, L)
    expected_inputs, expected_targets = naive_pairs(data, users, L)
    np.testing.assert_array_equal(inputs, expected_inputs)
    np.testing.assert_array_equal(targets, expected_targets)
    windows = last_items(data, users, L)
    for b, u in enumerate(users):
        seq = data.item[data.indptr[u]:data.indptr[u + 1]][-L:] + 1
        np.testing.assert_array_equal(windows[b, L - len(seq):], seq)
        assert (windows[b, :L - len(seq)] == PAD).all()


def test_sequence_batches_cover_each_trainable_user_once_per_epoch_in_a_seeded_order():
    rng = np.random.default_rng(0)
    counts = np.array([0, 1, 2, 5, 9, 1, 3] * 5)
    user = np.repeat(np.arange(len(counts)), counts)
    data = Interactions.from_ids(user, rng.integers(0, 20, len(user)))
    batches = SequenceBatches(data, max_seq_len=4, batch_size=4, rng=7)
    epoch = list(batches)
    trainable = np.flatnonzero(data.user_counts() >= 2)
    assert len(trainable) == (counts >= 2).sum()
    assert len(epoch) == len(batches) == -(-len(trainable) // 4)
    seen = np.concatenate([users for users, _, _ in epoch])
    assert sorted(seen.tolist()) == trainable.tolist()  # every user with >= 2 events, each once
    for users, inputs, targets in epoch:
        assert inputs.shape == targets.shape == (len(users), 4)
        assert ((targets != PAD).sum(1) >= 1).all()  # every sequence predicts something
        np.testing.assert_array_equal((inputs, targets), shifted_pairs(data, users, 4))
    second = np.concatenate([users for users, _, _ in batches])
    assert not np.array_equal(seen, second)  # a fresh order each epoch
    again = np.concatenate([users for users, _, _ in SequenceBatches(data, 4, 4, rng=7)])
    np.testing.assert_array_equal(seen, again)  # ... fixed by the seed


def test_bad_arguments_raise_user_errors():
    with pytest.raises(RecstackError, match="max_seq_len"):
        last_items(DATA, np.array([0]), 0)
    with pytest.raises(RecstackError, match="max_seq_len"):
        shifted_pairs(DATA, np.array([0]), 2.5)
    with pytest.raises(RecstackError, match="batch_size"):
        SequenceBatches(DATA, 3, 0)
    with pytest.raises(RecstackError, match="user index out of range"):
        last_items(DATA, np.array([3]), 2)
    with pytest.raises(RecstackError, match="windows must be one of latest, sliding, prefixes"):
        SequenceBatches(DATA, 3, 2, windows="every")
    with pytest.raises(RecstackError, match="Cloze"):
        SequenceBatches(DATA, 3, 2, windows="prefixes", objective="cloze")
    with pytest.raises(RecstackError, match="objective"):
        SequenceBatches(DATA, 3, 2, objective="mlm")


# ---- training windows ---------------------------------------------------------------------------

def test_window_stops_by_hand():
    # a owns rows 0..2 (3 events: 2 next-item targets), c rows 3..7 (5 events: 4 targets); L = 2
    users = np.array([0, 2])
    for windows, objective, expected_users, expected_stops in [
        ("latest", "next_item", [0, 2], [3, 8]),
        ("sliding", "next_item", [0, 2, 2], [3, 8, 6]),  # a: one window; c: targets 7, 6 | 5, 4
        ("prefixes", "next_item", [0, 0, 2, 2, 2, 2], [3, 2, 8, 7, 6, 5]),  # one window per target row
        ("latest", "cloze", [0, 2], [3, 8]),
        ("sliding", "cloze", [0, 0, 2, 2, 2], [3, 1, 8, 6, 4]),  # every event, a's first alone
    ]:
        owners, stops = window_stops(DATA.indptr, users, 2, windows, objective)
        assert (owners.tolist(), stops.tolist()) == (expected_users, expected_stops), (windows, objective)


def test_sliding_windows_by_hand():
    batches = SequenceBatches(DATA, max_seq_len=2, batch_size=10, shuffle=False, windows="sliding")
    users, inputs, targets = next(iter(batches))
    # a = tokens 4 2 5: one window [4, 2] -> [2, 5]; c = tokens 2 6 10 3 7: [10, 3] -> [3, 7], then
    # [2, 6] -> [6, 10]: the older window's first slot has one event of context
    np.testing.assert_array_equal(users, [0, 2, 2])
    np.testing.assert_array_equal(inputs, [[4, 2], [10, 3], [2, 6]])
    np.testing.assert_array_equal(targets, [[2, 5], [3, 7], [6, 10]])
    # with L = 3, c's older window holds one target and is left-padded like a short user
    users, inputs, targets = next(iter(SequenceBatches(DATA, 3, 10, shuffle=False, windows="sliding")))
    np.testing.assert_array_equal(users, [0, 2, 2])
    np.testing.assert_array_equal(inputs, [[0, 4, 2], [6, 10, 3], [0, 0, 2]])
    np.testing.assert_array_equal(targets, [[0, 2, 5], [10, 3, 7], [0, 0, 6]])


def test_prefix_windows_by_hand():
    users, inputs, targets = next(iter(SequenceBatches(DATA, 2, 10, shuffle=False, windows="prefixes")))
    np.testing.assert_array_equal(users, [0, 0, 2, 2, 2, 2])
    np.testing.assert_array_equal(inputs, [[4, 2], [0, 4], [10, 3], [6, 10], [2, 6], [0, 2]])
    np.testing.assert_array_equal(targets, [[0, 5], [0, 2], [0, 7], [0, 3], [0, 10], [0, 6]])


def random_log(seed: int, n_users: int = 40) -> Interactions:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=n_users)
    user = np.repeat(np.arange(n_users), counts)
    return Interactions.from_ids(user, rng.integers(0, 50, len(user)), timestamp=rng.integers(0, 5, len(user)))


def epoch_examples(batches: SequenceBatches) -> list[tuple[int, tuple[int, ...], int]]:
    """(user, context tokens, target token) of every non-padded target slot of one epoch."""
    out = []
    for users, inputs, targets in batches:
        for b, t in zip(*np.nonzero(targets != PAD)):
            context = inputs[b, :t + 1]
            out.append((int(users[b]), tuple(context[context != PAD].tolist()), int(targets[b, t])))
    return out


@pytest.mark.parametrize("L", [1, 3, 17])
def test_sliding_makes_every_event_after_the_first_a_target_exactly_once(L):
    data = random_log(L)
    batches = SequenceBatches(data, L, batch_size=7, rng=L, windows="sliding")
    got = sorted(epoch_examples(batches))
    # the reference: cut each user's tokens into windows of L targets from the newest event back
    expected = []
    for u in range(data.n_users):
        seq = (data.item[data.indptr[u]:data.indptr[u + 1]] + 1).tolist()
        for stop in range(len(seq), 1, -L):  # targets are seq[stop - L .. stop - 1], never seq[0]
            first = max(stop - L, 1)
            for j in range(first, stop):
                expected.append((u, tuple(seq[max(stop - L - 1, 0):j]), seq[j]))
    assert got == sorted(expected)
    n_targets = int(np.maximum(data.user_counts() - 1, 0).sum())
    assert len(got) == n_targets  # every interaction but a user's first, once
    # rows: ceil(targets / L) per user, never one per prefix
    rows = sum(len(u) for u, _, _ in batches)
    assert rows == int(sum(-(-(c - 1) // L) for c in data.user_counts() if c >= 2))
    assert len(batches) == -(-rows // 7)


@pytest.mark.parametrize("L", [1, 4])
def test_prefixes_predict_each_event_once_from_its_last_events_at_the_last_slot(L):
    data = random_log(10 + L)
    batches = SequenceBatches(data, L, batch_size=16, rng=0, windows="prefixes")
    for _, _, targets in batches:
        assert (targets[:, :-1] == PAD).all() and (targets[:, -1] != PAD).all()
    expected = []
    for u in range(data.n_users):
        seq = (data.item[data.indptr[u]:data.indptr[u + 1]] + 1).tolist()
        expected += [(u, tuple(seq[max(j - L, 0):j]), seq[j]) for j in range(1, len(seq))]
    assert sorted(epoch_examples(batches)) == sorted(expected)


def test_strided_sliding_windows_by_hand():
    # c = tokens 2 6 10 3 7 (rows 3..7), L = 3, stride 2: windows end after rows 7, 5, (3 has no target
    # left): [6 10 3] -> targets [_, 3, 7]; [0 2 6] -> [_, 6, 10]; a = 4 2 5: [0 4 2] -> [_, 2, 5]
    batches = SequenceBatches(DATA, 3, 10, shuffle=False, windows="sliding", stride=2)
    users, inputs, targets = next(iter(batches))
    np.testing.assert_array_equal(users, [0, 2, 2])
    np.testing.assert_array_equal(inputs, [[0, 4, 2], [6, 10, 3], [0, 2, 6]])
    np.testing.assert_array_equal(targets, [[0, 2, 5], [0, 3, 7], [0, 6, 10]])


@pytest.mark.parametrize("L, stride", [(4, 1), (4, 3), (6, 2), (17, 5)])
def test_strided_windows_make_every_event_a_target_once_from_a_long_past(L, stride):
    data = random_log(L + stride)
    batches = SequenceBatches(data, L, batch_size=7, rng=0, windows="sliding", stride=stride)
    got = epoch_examples(batches)
    # every target once, read from exactly its last max(L - stride + 1, ...) events or more
    expected_targets = []
    for u in range(data.n_users):
        seq = (data.item[data.indptr[u]:data.indptr[u + 1]] + 1).tolist()
        expected_targets += [(u, j) for j in range(1, len(seq))]
    assert len(got) == len(expected_targets)
    for user, context, target in got:
        seq = (data.item[data.indptr[user]:data.indptr[user + 1]] + 1).tolist()
        # the context is the events right before one occurrence of the target, at least L - stride + 1
        # of them or the user's whole past
        ends = [j for j in range(1, len(seq)) if seq[j] == target and tuple(seq[max(j - len(context), 0):j]) == context]
        assert ends, (user, context, target)
        assert any(len(context) >= min(L - stride + 1, j) for j in ends)
    rows = sum(len(u) for u, _, _ in batches)
    assert rows == int(sum(-(-(c - 1) // stride) for c in data.user_counts() if c >= 2))
    if stride == 1:  # stride 1 is RecBole's every-prefix augmentation, row for row
        prefixes = SequenceBatches(data, L, batch_size=7, rng=0, windows="prefixes")
        assert sorted(got) == sorted(epoch_examples(prefixes))


def test_stride_is_refused_where_it_does_not_apply():
    with pytest.raises(RecstackError, match="stride must be an integer from 1 to max_seq_len"):
        SequenceBatches(DATA, 3, 2, windows="sliding", stride=4)
    with pytest.raises(RecstackError, match="windows='sliding' only"):
        SequenceBatches(DATA, 3, 2, windows="latest", stride=2)
    with pytest.raises(RecstackError, match="Cloze"):
        SequenceBatches(DATA, 3, 2, windows="sliding", stride=2, objective="cloze")
    # the full stride is the plain sliding windows, for Cloze too
    plain = SequenceBatches(DATA, 3, 10, shuffle=False, windows="sliding", objective="cloze")
    same = SequenceBatches(DATA, 3, 10, shuffle=False, windows="sliding", objective="cloze", stride=3)
    np.testing.assert_array_equal(next(iter(plain))[1], next(iter(same))[1])


def test_latest_is_one_window_per_user_in_the_permutation_of_the_users():
    data = random_log(3)
    batches = SequenceBatches(data, 5, batch_size=6, rng=11)  # "latest" is the default
    trainable = np.flatnonzero(data.user_counts() >= 2)
    order = np.concatenate([users for users, _, _ in batches])
    np.testing.assert_array_equal(order, np.random.default_rng(11).permutation(trainable))  # the same draws
    for users, inputs, targets in SequenceBatches(data, 5, 6, rng=11):
        np.testing.assert_array_equal((inputs, targets), shifted_pairs(data, users, 5))
    # the newest window of "sliding" is the "latest" one
    sliding = SequenceBatches(data, 5, 1000, shuffle=False, windows="sliding")
    users, inputs, targets = next(iter(sliding))
    newest = np.r_[True, users[1:] != users[:-1]]
    np.testing.assert_array_equal(users[newest], trainable)
    np.testing.assert_array_equal((inputs[newest], targets[newest]), shifted_pairs(data, trainable, 5))


def test_sliding_epochs_are_reshuffled_and_seeded():
    data = random_log(4)
    batches = SequenceBatches(data, 3, 8, rng=5, windows="sliding")
    first, second = (np.concatenate([t for _, _, t in batches]) for _ in range(2))
    assert not np.array_equal(first, second)
    again = np.concatenate([t for _, _, t in SequenceBatches(data, 3, 8, rng=5, windows="sliding")])
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("L", [2, 5])
def test_cloze_windows_hold_every_event_once_and_latest_is_last_items(L):
    data = random_log(20 + L)
    trainable = np.flatnonzero(data.user_counts() >= 2)
    latest = SequenceBatches(data, L, 1000, shuffle=False, objective="cloze")
    users, tokens, same = next(iter(latest))
    assert same is tokens
    np.testing.assert_array_equal(tokens, last_items(data, trainable, L))
    held = {u: [] for u in trainable.tolist()}
    for users, tokens, _ in SequenceBatches(data, L, 4, rng=1, windows="sliding", objective="cloze"):
        assert tokens.shape[1] == L
        for u, row in zip(users.tolist(), tokens):
            held[u].append(row[row != PAD].tolist())
    for u, windows in held.items():
        seq = (data.item[data.indptr[u]:data.indptr[u + 1]] + 1).tolist()
        # windows of L items back from the newest: only the oldest may be shorter
        windows = sorted(windows, key=len, reverse=True)
        assert all(len(w) == L for w in windows[:-1]) and 1 <= len(windows[-1]) <= L
        assert sum(len(w) for w in windows) == len(seq)
        rebuilt = [seq[max(stop - L, 0):stop] for stop in range(len(seq), 0, -L)]
        assert sorted(map(tuple, windows)) == sorted(map(tuple, rebuilt))
