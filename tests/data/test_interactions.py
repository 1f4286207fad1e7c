import numpy as np
import pytest

from recstack.data import Interactions, UnknownIdError, Vocab
from recstack.errors import RecstackError


def test_vocab_first_appearance_and_round_trip():
    vocab, codes = Vocab.from_values(np.array([30, 10, 30, 20]), name="user")
    assert vocab.ids.tolist() == [30, 10, 20]
    assert codes.tolist() == [0, 1, 0, 2]
    assert vocab.index([20, 30]).tolist() == [2, 0]
    assert vocab.index("10") == 1  # ids typed on a command line arrive as strings
    assert vocab.id_of(np.array([2, 1])).tolist() == [20, 10]


def _sorted_first_appearance(values):
    """The sort-based reference: np.unique, then the uniques reordered by first position."""
    uniques, first, codes = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[codes.ravel()]


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).integers(-50, 5000, 20_000),  # int64, negatives included
    np.random.default_rng(1).integers(0, 40, 500).astype(np.int32),
    np.array([2**63 + 5, 7, 2**63 + 5], dtype=np.uint64),
    np.array(["b", "a", "b", "é", "a"], dtype=object),
    np.array(["b", "a", "b"]),  # fixed-width unicode
    np.array([1.5, 2.5, 1.5]),  # floats take the sort-based path
    np.array([], dtype=np.int64),
])
def test_vocab_from_values_matches_the_sort_based_reference(values):
    # the hash-based encoding (Arrow) must give the ids and codes the sort-based definition gives
    vocab, codes = Vocab.from_values(values)
    uniques, expected = _sorted_first_appearance(values)
    assert vocab.ids.tolist() == uniques.tolist()
    assert codes.dtype == np.int32 and codes.tolist() == expected.tolist()
    if values.dtype.kind in "iu":
        assert vocab.ids.dtype == values.dtype  # integer ids keep their type


def test_vocab_unknown_id_is_a_user_error_with_suggestion():
    vocab = Vocab(np.array(["alice", "bob"], dtype=object), name="user")
    with pytest.raises(UnknownIdError, match="unknown user 'alise'.*alice") as info:
        vocab.index("alise")
    assert isinstance(info.value, RecstackError)


def test_vocab_reads_ascii_integer_text_as_a_numeric_id_and_nothing_else():
    vocab = Vocab(np.array([3, -5, 7]), "user")
    assert vocab.index("-5") == 1 and "7" in vocab and "3" in vocab
    for text in ("²", "٣", "--5", "-", "", "3.0", " 3"):  # Unicode digits, stray signs, floats, spaces
        assert text not in vocab
        with pytest.raises(UnknownIdError):
            vocab.index(text)


def test_vocab_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(np.array([1, 2, 1]))


def test_sorted_by_user_time_then_original_order():
    # user b has two events at t=5: the one that came first in the file stays first
    data = Interactions.from_ids(
        np.array(["b", "a", "b", "b", "a"], dtype=object),
        np.array(["x", "y", "z", "w", "x"], dtype=object),
        timestamp=np.array([5, 9, 5, 1, 3]),
    )
    users = data.users.id_of(data.user).tolist()
    items = data.items.id_of(data.item).tolist()
    assert list(zip(users, items, data.timestamp.tolist())) == [
        ("b", "w", 1), ("b", "x", 5), ("b", "z", 5), ("a", "x", 3), ("a", "y", 9),
    ]
    assert [s.tolist() for s in data.sequences()] == [
        data.items.index(["w", "x", "z"]).tolist(), data.items.index(["x", "y"]).tolist(),
    ]


def test_matrix_rows_are_users_and_binary_collapses_duplicates():
    data = Interactions.from_ids(np.array([1, 1, 2]), np.array([7, 7, 8]), value=np.array([4.0, 5.0, 1.0]))
    binary = data.matrix()
    assert binary.shape == (2, 2)
    assert binary.toarray().tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert data.matrix(binary=False).toarray().tolist() == [[9.0, 0.0], [0.0, 1.0]]
    assert data.user_counts().tolist() == [2, 1] and data.item_counts().tolist() == [2, 1]


def test_take_concat_and_fingerprint():
    rng = np.random.default_rng(0)
    data = Interactions.from_ids(rng.integers(0, 20, 200), rng.integers(0, 30, 200), timestamp=rng.integers(0, 99, 200))
    mask = rng.random(200) < 0.5
    left, right = data.take(mask), data.take(~mask)
    assert len(left) + len(right) == len(data)
    joined = left.concat(right)
    # same multiset of events, re-sorted: (user, time) keys are non-decreasing
    assert sorted(zip(joined.user, joined.item, joined.timestamp)) == sorted(zip(data.user, data.item, data.timestamp))
    assert np.all(np.diff(joined.user.astype(np.int64) * 1000 + joined.timestamp) >= 0)
    assert left.fingerprint() != right.fingerprint()
    assert data.take(np.arange(len(data))).fingerprint() == data.fingerprint()


def test_arrays_are_read_only_and_bounds_checked():
    data = Interactions.from_ids(np.array([1, 2]), np.array([3, 4]))
    with pytest.raises(ValueError):
        data.item[0] = 1
    with pytest.raises(ValueError, match="item index out of range"):
        Interactions(np.array([0]), np.array([5]), data.users, data.items)


def test_file_order_keeps_the_given_order_through_take_and_concat():
    # user a's file lists t=5 before t=3 (a one-second-style inversion): file order keeps it
    users, user = Vocab.from_values(np.array(["a", "b", "a", "a"], dtype=object), name="user")
    items, item = Vocab.from_values(np.array(["x", "y", "z", "w"], dtype=object), name="item")
    stamps = np.array([5, 1, 3, 4])
    by_file = Interactions(user, item, users, items, timestamp=stamps, order="file")
    by_time = Interactions(user, item, users, items, timestamp=stamps)
    assert items.id_of(by_file.sequences()[0]).tolist() == ["x", "z", "w"]
    assert by_file.timestamp[by_file.user == 0].tolist() == [5, 3, 4]  # not monotone: the file's order
    assert items.id_of(by_time.sequences()[0]).tolist() == ["z", "w", "x"]
    assert by_file.fingerprint() != by_time.fingerprint() and "file order" in repr(by_file)
    head, tail = by_file.take(np.array([0, 1])), by_file.take(np.array([2, 3]))
    assert head.order == tail.order == "file"
    # concat sorts by user only: a's events stay x (head) then z, w (tail) despite x's later time
    joined = head.concat(tail)
    assert joined.order == "file" and items.id_of(joined.sequences()[0]).tolist() == ["x", "z", "w"]
    # one time-ordered log does not undo the other's file order
    mixed = by_time.take(np.array([0])).concat(tail)
    assert mixed.order == "file"
    with pytest.raises(ValueError, match="order"):
        Interactions(user, item, users, items, order="files")


@pytest.mark.parametrize("order", ["time", "file"])
def test_one_user_log_equals_the_general_constructor(order):
    # served requests build one user's log directly (issue 14): repeats, unsorted items, ties in time
    users, items = Vocab(np.arange(6)), Vocab(np.arange(9))
    item = np.array([7, 2, 7, 0, 5, 2, 8], dtype=np.int32)
    stamp = np.array([4, 1, 4, 9, 1, 3, 0])
    value = np.arange(7, dtype=np.float32)
    fast = Interactions.of_one_user(4, item, users, items, value, stamp, order=order)
    general = Interactions(np.full(7, 4), item, users, items, value, stamp, order=order)
    assert fast.item.tolist() == general.item.tolist() and fast.timestamp.tolist() == general.timestamp.tolist()
    assert fast.indptr.tolist() == general.indptr.tolist() == [0, 0, 0, 0, 0, 7, 7]
    assert (fast.matrix() != general.matrix()).nnz == 0 and fast.matrix().shape == (6, 9)
    assert fast.matrix()[4].indices.tolist() == [0, 2, 5, 7, 8]  # sorted, distinct
    assert fast.matrix(binary=False).toarray().tolist() == general.matrix(binary=False).toarray().tolist()
    empty = Interactions.of_one_user(0, np.zeros(0, dtype=np.int32), users, items)
    assert empty.matrix().nnz == 0 and empty.user_counts().tolist() == [0] * 6
    with pytest.raises(ValueError, match="out of range"):
        Interactions.of_one_user(6, item, users, items)


@pytest.mark.parametrize("presorted_input", [True, False])
def test_rows_end_sorted_by_user_then_time_with_ties_in_given_order(presorted_input):
    # the linear in-order check must agree with the stable lexsort it short-cuts
    rng = np.random.default_rng(3)
    user, item, stamp = rng.integers(0, 30, 2_000), np.arange(2_000) % 97, rng.integers(0, 20, 2_000)
    if presorted_input:
        rows = np.lexsort((stamp, user))
        user, item, stamp = user[rows], item[rows], stamp[rows]
    log = Interactions(user, item, Vocab(np.arange(30)), Vocab(np.arange(97)), timestamp=stamp)
    expected = np.lexsort((stamp, user))
    assert log.user.tolist() == user[expected].tolist()
    assert log.timestamp.tolist() == stamp[expected].tolist()
    assert log.item.tolist() == item[expected].tolist()  # ties keep the given order

