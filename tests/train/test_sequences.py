"""Padded sequences and next-item training pairs: hand-worked cases and a naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data import Interactions
from recstack.errors import RecstackError
from recstack.train.sequences import PAD, SequenceBatches, last_items, shifted_pairs, window_rows


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
