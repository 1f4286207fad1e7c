"""Splitters: determinism, hand-counted ratios, leave-last ties, time cuts, user hold-out, files."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from recstack.data import Interactions
from recstack.errors import RecstackError, RecstackWarning
from recstack.split import (
    SPLITTERS,
    Split,
    leave_last_split,
    make_split,
    random_split,
    split_from_files,
    temporal_split,
    user_holdout_split,
)


# ---- helpers -----------------------------------------------------------------------------------
def log_with_counts(counts: list[int], seed: int = 0) -> Interactions:
    """User "u{i}" has counts[i] events on distinct items; timestamps distinct, values distinct."""
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{i}" for i in range(len(counts))], counts)
    items = np.concatenate([rng.choice(50, size=c, replace=False) for c in counts]).astype(np.int64)
    times = rng.permutation(len(users)).astype(np.int64) * 10 + 1_000
    values = np.arange(len(users), dtype=np.float32)  # unique per row: identifies a row
    return Interactions.from_ids(users, items, value=values, timestamp=times)


def external_rows(part: Interactions) -> Counter:
    """Multiset of (user_id, item_id, value, timestamp) rows: independent of vocab indices."""
    users = part.users.id_of(part.user)
    items = part.items.id_of(part.item)
    values = part.value if part.value is not None else [None] * len(part)
    times = part.timestamp if part.timestamp is not None else [None] * len(part)
    return Counter(zip(users.tolist(), items.tolist(),
                       [None if v is None else float(v) for v in values],
                       [None if t is None else int(t) for t in times]))


def counts_per_user(part: Interactions) -> dict[str, int]:
    return {str(part.users.id_of(u)): int(c) for u, c in enumerate(part.user_counts()) if c}


def assert_partition(data: Interactions, split: Split) -> None:
    parts = [split.train, split.valid, split.test] + ([split.test_fold_in] if split.test_fold_in is not None else [])
    union = Counter()
    for part in parts:
        union += external_rows(part)
    assert union == external_rows(data)          # union = input, multiplicities included
    assert sum(len(p) for p in parts) == len(data)  # ... and no row is in two parts


def moved_one_row(split: Split) -> Split:
    """The same split with the first test row moved into train."""
    test = split.test
    row = np.zeros(len(test), dtype=bool)
    row[0] = True
    return Split(split.train.concat(test.take(row)), split.valid, test.take(~row),
                 method=split.method, params=split.params, test_fold_in=split.test_fold_in)


MIXED = log_with_counts([1, 2, 3, 5, 10, 15, 40, 7, 4, 12] * 3, seed=3)
ALL_SPLITS = {
    "random": {},
    "leave_last": {"k": 1},
    "temporal": {},
    "user_holdout": {"valid_users": 0.2, "test_users": 0.2},
    "cold_items": {"valid_items": 0.2, "test_items": 0.2},
}


# ---- properties every splitter has ---------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(SPLITTERS))
def test_every_split_partitions_the_rows_and_is_deterministic(method):
    params = ALL_SPLITS[method]
    first = make_split(MIXED, method, seed=7, **params)
    again = make_split(MIXED, method, seed=7, **params)
    assert_partition(MIXED, first)
    assert first.fingerprint() == again.fingerprint()
    assert first.method == method and first.params["seed"] == 7
    for part in (first.valid, first.test):
        assert part.users is first.train.users and part.items is first.train.items
    assert moved_one_row(first).fingerprint() != first.fingerprint()


@pytest.mark.parametrize("method", ["random", "user_holdout", "cold_items"])
def test_randomised_splits_differ_between_seeds(method):
    prints = {make_split(MIXED, method, seed=s, **ALL_SPLITS[method]).fingerprint() for s in range(5)}
    assert len(prints) == 5


@pytest.mark.parametrize("method", ["leave_last", "temporal"])
def test_time_splits_ignore_the_seed(method):
    assert make_split(MIXED, method, seed=1).fingerprint() == make_split(MIXED, method, seed=2).fingerprint()


# ---- random --------------------------------------------------------------------------------------
def test_random_split_counts_follow_the_rounding_rule():
    data = log_with_counts([1, 2, 3, 4, 5, 10, 15, 25])
    split = random_split(data, np.random.default_rng(0))
    # valid = test = round_half_up(0.1 n), train = rest:
    # n=1..4 -> 0.1..0.4 rounds to 0; n=5 -> 0.5 -> 1; n=10 -> 1; n=15 -> 1.5 -> 2; n=25 -> 2.5 -> 3
    expected = {1: (1, 0, 0), 2: (2, 0, 0), 3: (3, 0, 0), 4: (4, 0, 0), 5: (3, 1, 1),
                10: (8, 1, 1), 15: (11, 2, 2), 25: (19, 3, 3)}
    for i, n in enumerate([1, 2, 3, 4, 5, 10, 15, 25]):
        got = tuple(counts_per_user(p).get(f"u{i}", 0) for p in (split.train, split.valid, split.test))
        assert got == expected[n], (n, got)
    assert_partition(data, split)


def test_random_split_keeps_one_train_event_when_ratios_would_take_all():
    data = log_with_counts([1, 2, 3, 4])
    split = random_split(data, np.random.default_rng(0), ratios=(0.0, 0.5, 0.5))
    # n=1: 0.5 -> 1 each, train -1 -> test gives 1, valid gives 1 -> (1, 0, 0)
    # n=2: 1 each, train 0 -> test gives 1 -> (1, 1, 0)
    # n=3: 1.5 -> 2 each, train -1 -> test gives 2 -> (1, 2, 0)
    # n=4: 2 each, train 0 -> test gives 1 -> (1, 2, 1)
    expected = [(1, 0, 0), (1, 1, 0), (1, 2, 0), (1, 2, 1)]
    for i, want in enumerate(expected):
        got = tuple(counts_per_user(p).get(f"u{i}", 0) for p in (split.train, split.valid, split.test))
        assert got == want, (i, got)


def test_random_split_three_events_with_even_ratios():
    data = log_with_counts([3, 6])
    split = random_split(data, np.random.default_rng(0), ratios=(0.2, 0.4, 0.4))
    # n=3: 1.2 -> 1 each, train 1; n=6: 2.4 -> 2 each, train 2
    assert counts_per_user(split.train) == {"u0": 1, "u1": 2}
    assert counts_per_user(split.valid) == {"u0": 1, "u1": 2}
    assert counts_per_user(split.test) == {"u0": 1, "u1": 2}


def test_random_split_draws_every_position_evenly():
    # one user with 10 events: each event should land in test about 10% of the time, whatever its time
    data = log_with_counts([10])
    hits = np.zeros(10)
    order = np.argsort(data.timestamp)
    for seed in range(400):
        split = random_split(data, np.random.default_rng(seed))
        hits += np.isin(data.value[order], split.test.value)
    assert hits.sum() == 400
    assert hits.min() > 15 and hits.max() < 75  # binomial(400, 0.1): mean 40, sd 6


def test_random_split_rejects_bad_ratios():
    with pytest.raises(RecstackError, match="sum to 1"):
        random_split(MIXED, np.random.default_rng(0), ratios=(0.8, 0.1, 0.2))
    with pytest.raises(RecstackError, match="three numbers"):
        random_split(MIXED, np.random.default_rng(0), ratios=(0.9, 0.1))
    with pytest.raises(RecstackError, match="non-negative"):
        random_split(MIXED, np.random.default_rng(0), ratios=(1.1, -0.1, 0.0))


# ---- leave-last ----------------------------------------------------------------------------------
def test_leave_last_breaks_timestamp_ties_by_original_order():
    # u1's rows in file order: items a,b,c at t=5 then d at t=1. Time order: d, a, b, c;
    # among the t=5 ties the later row is later, so c is last (test) and b is valid.
    data = Interactions.from_ids(
        np.array(["u1", "u1", "u1", "u2", "u1", "u2", "u2"]),
        np.array(["a", "b", "c", "x", "d", "y", "z"]),
        timestamp=np.array([5, 5, 5, 7, 1, 7, 7]),
    )
    split = leave_last_split(data)
    item = data.items.id_of
    assert sorted(item(split.train.item[split.train.user == data.users.index("u1")])) == ["a", "d"]
    assert item(split.valid.item[split.valid.user == data.users.index("u1")]).tolist() == ["b"]
    assert item(split.test.item[split.test.user == data.users.index("u1")]).tolist() == ["c"]
    # u2: all three at t=7 -> file order x, y, z
    u2 = data.users.index("u2")
    assert item(split.train.item[split.train.user == u2]).tolist() == ["x"]
    assert item(split.valid.item[split.valid.user == u2]).tolist() == ["y"]
    assert item(split.test.item[split.test.user == u2]).tolist() == ["z"]


def test_leave_last_without_timestamps_uses_row_order():
    data = Interactions.from_ids(np.array([1, 1, 1, 1]), np.array([10, 20, 30, 40]))
    split = leave_last_split(data)
    assert data.items.id_of(split.test.item).tolist() == [40]
    assert data.items.id_of(split.valid.item).tolist() == [30]
    assert data.items.id_of(split.train.item).tolist() == [10, 20]


def test_leave_last_k_and_short_users_stay_in_train():
    data = log_with_counts([4, 5, 9])
    split = leave_last_split(data, k=2)
    # k=2 needs 2k+1 = 5 events: u0 (4) stays in train; u1: 1/2/2; u2: 5/2/2
    assert counts_per_user(split.train) == {"u0": 4, "u1": 1, "u2": 5}
    assert counts_per_user(split.valid) == {"u1": 2, "u2": 2}
    assert counts_per_user(split.test) == {"u1": 2, "u2": 2}
    # test holds each user's two latest timestamps, valid the two before
    for u in (1, 2):
        times = np.sort(data.timestamp[data.user == u])
        assert set(split.test.timestamp[split.test.user == u]) == set(times[-2:])
        assert set(split.valid.timestamp[split.valid.user == u]) == set(times[-4:-2])
    with pytest.raises(RecstackError, match="k >= 1"):
        leave_last_split(data, k=0)


# ---- temporal ------------------------------------------------------------------------------------
def timed(times: list[int]) -> Interactions:
    n = len(times)
    return Interactions.from_ids(np.arange(n) % 3, np.arange(n), value=np.arange(n, dtype=np.float32),
                                 timestamp=np.array(times))


def test_temporal_quantile_cuts():
    data = timed(list(range(1, 11)))  # t = 1..10
    split = temporal_split(data)
    # c1 = 8th timestamp (round(10*0.8) = 8) = 8, c2 = 9th = 9
    assert sorted(split.train.timestamp) == list(range(1, 9))
    assert sorted(split.valid.timestamp) == [9]
    assert sorted(split.test.timestamp) == [10]
    assert split.params["cutoffs"] == [8, 9]


def test_temporal_ties_at_a_cut_go_to_the_earlier_part():
    data = timed([1, 2, 3, 4, 5, 6, 7, 8, 8, 10])
    split = temporal_split(data)
    # c1 = 8th timestamp = 8 and c2 = 9th = 8: both 8s are train, valid is empty
    assert sorted(split.train.timestamp) == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert len(split.valid) == 0
    assert sorted(split.test.timestamp) == [10]


def test_temporal_explicit_cutoffs():
    data = timed([1, 3, 3, 5, 7, 7, 9])
    split = temporal_split(data, cutoffs=(3, 7))
    assert sorted(split.train.timestamp) == [1, 3, 3]   # t <= 3
    assert sorted(split.valid.timestamp) == [5, 7, 7]   # 3 < t <= 7
    assert sorted(split.test.timestamp) == [9]          # t > 7
    # cutoffs win over ratios
    assert temporal_split(data, ratios=(0.5, 0.25, 0.25), cutoffs=(3, 7)).fingerprint() == split.fingerprint()


def test_temporal_errors():
    no_time = Interactions.from_ids(np.array([1, 2]), np.array([1, 2]))
    with pytest.raises(RecstackError, match="timestamps"):
        temporal_split(no_time)
    with pytest.raises(RecstackError, match="c1 <= c2"):
        temporal_split(timed([1, 2, 3]), cutoffs=(5, 2))
    with pytest.raises(RecstackError, match="ratios"):
        temporal_split(timed([1, 2, 3]), ratios=None)


def test_temporal_split_never_trains_on_the_future():
    split = make_split(MIXED, "temporal", ratios=(0.6, 0.2, 0.2))
    assert split.train.timestamp.max() < split.valid.timestamp.min()
    assert split.valid.timestamp.max() < split.test.timestamp.min()


# ---- user hold-out -------------------------------------------------------------------------------
def test_user_holdout_never_trains_on_test_users():
    data = log_with_counts([10] * 20 + [2, 1, 7] * 10, seed=5)
    split = user_holdout_split(data, np.random.default_rng(4), valid_users=0.1, test_users=0.2)
    test_users = set(np.unique(np.concatenate([split.test.user, split.test_fold_in.user])).tolist())
    valid_users = set(np.unique(split.valid.user).tolist())
    assert len(test_users) == 10  # round_half_up(0.2 * 50 active users)
    assert not test_users & set(split.train.user.tolist())
    assert not test_users & set(split.valid.user.tolist())
    assert not test_users & valid_users
    assert_partition(data, split)

    history = split.history("test")
    assert external_rows(split.test_fold_in) <= external_rows(history)  # fold-in is shown at test time
    assert not external_rows(split.test) & external_rows(history)       # the targets are not
    assert len(history) == len(split.train) + len(split.valid) + len(split.test_fold_in)


def test_user_holdout_fold_in_counts():
    data = log_with_counts([10, 2, 1, 5])
    split = user_holdout_split(data, np.random.default_rng(0), valid_users=0.0, test_users=1.0 - 1e-9)
    # every user is a test user (round(4 * ~1) = 4). fold_in 0.8: n=10 -> 8 shown / 2 test;
    # n=2 -> round(1.6)=2 capped at n-1 -> 1/1; n=1 -> 1/0 (nothing to predict); n=5 -> 4/1
    assert len(split.train) == 0
    assert counts_per_user(split.test_fold_in) == {"u0": 8, "u1": 1, "u2": 1, "u3": 4}
    assert counts_per_user(split.test) == {"u0": 2, "u1": 1, "u3": 1}


def test_user_holdout_validation_users_fold_in_to_train():
    data = log_with_counts([10] * 10)
    split = user_holdout_split(data, np.random.default_rng(1), valid_users=0.3, test_users=0.2, fold_in=0.6)
    valid_users = np.unique(split.valid.user)
    assert len(valid_users) == 3 and len(np.unique(split.test.user)) == 2
    train_counts = split.train.user_counts()
    assert np.all(train_counts[valid_users] == 6)            # their shown 60% is trained on
    assert np.all(split.valid.user_counts()[valid_users] == 4)
    assert (train_counts == 10).sum() == 5                   # the five ordinary users keep everything
    assert split.test_fold_in.user_counts().sum() == 2 * 6


def test_user_holdout_fold_in_zero_is_pure_cold_start():
    data = log_with_counts([6] * 10)
    split = user_holdout_split(data, np.random.default_rng(1), valid_users=0.0, test_users=0.2, fold_in=0.0)
    assert len(split.test_fold_in) == 0 and len(split.test) == 12


def test_user_holdout_rejects_bad_fractions():
    with pytest.raises(RecstackError, match="leave users"):
        user_holdout_split(MIXED, np.random.default_rng(0), valid_users=0.5, test_users=0.5)
    with pytest.raises(RecstackError, match="fold_in"):
        user_holdout_split(MIXED, np.random.default_rng(0), fold_in=1.5)


# ---- make_split ----------------------------------------------------------------------------------
def test_make_split_names_and_params():
    with pytest.raises(RecstackError, match="leave_last") as info:
        make_split(MIXED, "leave-last")
    assert "Known:" in str(info.value) and "Did you mean 'leave_last'" in str(info.value)
    with pytest.raises(RecstackError, match="'ratio'.*Did you mean 'ratios'"):
        make_split(MIXED, "random", ratio=(0.8, 0.1, 0.1))
    split = make_split(MIXED, "random", seed=3, ratios=[0.6, 0.2, 0.2])
    assert split.params == {"ratios": [0.6, 0.2, 0.2], "seed": 3}
    # same as calling the splitter with the seeded generator
    direct = random_split(MIXED, np.random.default_rng(3), ratios=(0.6, 0.2, 0.2))
    assert split.fingerprint() == direct.fingerprint()


# ---- from files ----------------------------------------------------------------------------------
def write_tsv(path, rows, header="user_id\titem_id\trating\ttimestamp"):
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def test_split_from_files_joint_vocab_and_row_order(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [("b", 1, 4, 100), ("a", 2, 3, 100), ("b", 3, 5, 100)])
    valid = write_tsv(tmp_path / "valid.tsv", [("c", 4, 1, 200), ("a", 1, 2, 150)])
    test = write_tsv(tmp_path / "test.tsv", [("d", 5, 2, 300), ("b", 9, 1, 300), ("b", 7, 1, 300)])
    split = split_from_files(train, valid, test)
    # first appearance over train, then valid, then test
    assert split.train.users.ids.tolist() == ["b", "a", "c", "d"]
    assert split.train.items.ids.tolist() == [1, 2, 3, 4, 5, 9, 7]
    assert split.valid.users is split.train.users and split.test.items is split.train.items
    # equal (user, timestamp): file order kept -> b's test items 9 then 7; b's train items 1 then 3
    b = split.train.users.index("b")
    assert split.test.items.id_of(split.test.item[split.test.user == b]).tolist() == [9, 7]
    assert split.train.items.id_of(split.train.item[split.train.user == b]).tolist() == [1, 3]
    assert external_rows(split.valid) == Counter({("c", 4, 1.0, 200): 1, ("a", 1, 2.0, 150): 1})
    assert split.method == "files"


def test_split_from_files_round_trip(tmp_path):
    original = make_split(MIXED, "random", seed=2)
    paths = []
    for name in ("train", "valid", "test"):
        part = getattr(original, name)
        rows = zip(part.users.id_of(part.user), part.items.id_of(part.item), part.value.astype(int), part.timestamp)
        paths.append(write_tsv(tmp_path / f"{name}.tsv", list(rows)))
    loaded = split_from_files(*paths)
    for name in ("train", "valid", "test"):
        assert external_rows(getattr(loaded, name)) == external_rows(getattr(original, name))
    # parts keep the time order within each user, as any Interactions does
    assert np.all(np.diff(loaded.train.timestamp[loaded.train.user == 0]) >= 0)


def test_split_from_files_mixed_id_types_and_missing_columns(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [(1, 10, 5, 1), (2, 10, 4, 2)])
    test = write_tsv(tmp_path / "test.tsv", [("1", "x7", 3, 3), ("u3", 10, 2, 4)])
    split = split_from_files(train, None, test)
    assert len(split.valid) == 0
    # integer-looking ids in train and string ids in test meet as the same strings
    assert split.train.users.ids.tolist() == ["1", "2", "u3"]
    assert split.train.items.ids.tolist() == ["10", "x7"]
    no_time = write_tsv(tmp_path / "valid.tsv", [(1, 10, 5)], header="user_id\titem_id\trating")
    with pytest.raises(RecstackError, match="timestamp"):
        split_from_files(train, no_time, test)


def inverted_parts(tmp_path):
    """RecBole-like exports: u1 and u2 list an event one second before the one above it."""
    train = write_tsv(tmp_path / "train.tsv", [
        ("u1", "a", 5, 101), ("u1", "b", 4, 100), ("u2", "a", 3, 50), ("u2", "c", 3, 49), ("u2", "d", 3, 48),
        ("u3", "b", 1, 10), ("u3", "c", 1, 11)])
    valid = write_tsv(tmp_path / "valid.tsv", [("u1", "c", 2, 102), ("u3", "a", 2, 5)])  # u3: earlier than train
    test = write_tsv(tmp_path / "test.tsv", [("u1", "d", 1, 103), ("u2", "b", 1, 60), ("u3", "d", 2, 12)])
    return train, valid, test


def item_ids(part: Interactions, user: str) -> list:
    return part.items.id_of(part.item[part.user == part.users.index(user)]).tolist()


def test_split_from_files_warns_once_with_the_count_when_file_order_disagrees_with_time(tmp_path):
    parts = inverted_parts(tmp_path)
    with pytest.warns(RecstackWarning) as caught:
        split = split_from_files(*parts)
    assert len(caught) == 1
    message = str(caught[0].message)
    # u1 and u2 are out of order inside train; u3's valid event precedes its train events, but
    # across parts no order is claimed, so it is not counted
    assert "for 2 of 3 users" in message and "order: file" in message and "\n" not in message
    assert item_ids(split.train, "u1") == ["b", "a"] and item_ids(split.train, "u2") == ["d", "c", "a"]
    assert split.train.order == "time"


def test_split_from_files_keeps_the_file_order_on_request(tmp_path):
    parts = inverted_parts(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the user chose the file order: nothing to warn about
        split = split_from_files(*parts, order="file")
    assert item_ids(split.train, "u1") == ["a", "b"] and item_ids(split.train, "u2") == ["a", "c", "d"]
    assert split.train.timestamp[split.train.user == split.train.users.index("u2")].tolist() == [50, 49, 48]
    # the test-time history is train then valid as listed, not re-sorted by time
    history = split.history("test")
    assert item_ids(history, "u1") == ["a", "b", "c"] and item_ids(history, "u3") == ["b", "c", "a"]
    assert split.params["order"] == "file" and split.test.order == split.valid.order == "file"
    with pytest.raises(RecstackError, match="order must be 'time'.*or 'file'"):
        split_from_files(*parts, order="files")


def test_split_from_files_in_time_order_does_not_warn(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [("u1", "a", 5, 100), ("u1", "b", 4, 100), ("u2", "a", 3, 7)])
    test = write_tsv(tmp_path / "test.tsv", [("u1", "c", 1, 90), ("u2", "b", 1, 8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = split_from_files(train, None, test)
    assert item_ids(split.train, "u1") == ["a", "b"]  # equal seconds keep the file order


def test_file_order_is_reachable_from_the_experiment_config(tmp_path):
    from recstack.experiment.config import parse_config
    from recstack.experiment.run import prepare_data

    train, valid, test = (str(p) for p in inverted_parts(tmp_path))
    raw = {"data": {"files": {"train": train, "valid": valid, "test": test, "order": "file"}},
           "models": [{"name": "pop"}], "ks": [2], "valid_metric": "NDCG@2"}
    config = parse_config(raw)
    assert config.resolved().data.files.order == "file" and config.to_dict()["data"]["files"]["order"] == "file"
    dataset, split = prepare_data(config)
    assert split.train.order == "file" and item_ids(split.train, "u2") == ["a", "c", "d"]
    assert item_ids(dataset.interactions, "u1") == ["a", "b", "c", "d"]
    with pytest.raises(RecstackError, match=r"data\.files\.order: Input should be 'time' or 'file'"):
        parse_config({**raw, "data": {"files": {"train": train, "test": test, "order": "files"}}})
