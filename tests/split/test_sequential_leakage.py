"""The next-item protocol on ml-100k-like data: leave-last by time, and no leakage into training.

- the last event (timestamp, then source row order) is test, the one before valid, the rest train;
- every training target SASRec sees comes from the train part and precedes the user's valid event;
  no validation or test event is ever a target (no sequence augmentation before the split), with
  every `train_windows` choice (BERT4Rec's Cloze windows too);
- at test time the model's input is train + valid (the valid event is the last input item), and
  the experiment runner hands exactly those histories to the model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import recstack.experiment.run as run_module
import recstack.models.sequential.bert4rec as bert4rec_module
import recstack.models.sequential.sasrec as sasrec_module
from recstack.data import Interactions
from recstack.experiment import parse_config, run_experiment
from recstack.models.sequential.bert4rec import BERT4Rec
from recstack.models.sequential.sasrec import SASRec
from recstack.split import make_split
from recstack.train.sequences import PAD, SequenceBatches, shifted_pairs, window_rows


def ml100k_like(n_users: int = 80, n_items: int = 150, seed: int = 0) -> Interactions:
    """Like ml-100k: >= 20 distinct items per user, popularity skew, ratings 1-5, many equal
    timestamps per user (several ratings in one second), rows not in time order in the source."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users, items, times = [], [], []
    for u in range(n_users):
        count = int(rng.integers(20, 45))
        users.append(np.full(count, u))
        items.append(rng.choice(n_items, size=count, replace=False, p=popularity / popularity.sum()))
        times.append(880_000_000 + 10_000 * u + rng.integers(0, count // 3, count))  # ~3 events a second
    order = rng.permutation(sum(len(x) for x in users))  # the source is not sorted by time
    return Interactions.from_ids(
        np.concatenate(users)[order], np.concatenate(items)[order], value=rng.integers(1, 6, len(order)).astype(
            np.float32), timestamp=np.concatenate(times)[order])


@pytest.fixture(scope="module")
def data() -> Interactions:
    return ml100k_like()


@pytest.fixture(scope="module")
def split(data):
    return make_split(data, "leave_last", seed=0, k=1)


def events(part: Interactions) -> set[tuple[int, int, int]]:
    return set(zip(part.user.tolist(), part.item.tolist(), part.timestamp.tolist()))


def test_fixture_has_timestamp_ties_at_the_end_of_histories(data):
    last = data.indptr[1:] - 1
    tied = data.timestamp[last] == data.timestamp[last - 1]
    assert tied.sum() >= 10  # the tie rule decides the held-out events of these users


def test_leave_last_by_time_with_ties_broken_by_source_order(data, split):
    # the source order of rows: Interactions keeps it among equal (user, timestamp)
    for part, from_end in (("test", 0), ("valid", 1)):
        held = getattr(split, part)
        assert (held.user_counts() == 1).all()
        for u in range(data.n_users):
            times = data.timestamp[data.indptr[u]:data.indptr[u + 1]]
            items = data.item[data.indptr[u]:data.indptr[u + 1]]
            assert np.all(np.diff(times) >= 0)
            assert held.item[u] == items[-1 - from_end] and held.timestamp[u] == times[-1 - from_end]
    # train holds only events at or before the valid event, valid at or before test
    assert (split.train.timestamp <= split.valid.timestamp[split.train.user]).all()
    assert (split.valid.timestamp <= split.test.timestamp).all()
    assert len(split.train) + len(split.valid) + len(split.test) == len(data)


def test_tie_broken_by_source_row_not_by_item_or_value():
    # three events of one user in one second; the source's last row is the test event
    data = Interactions.from_ids(np.array(["u"] * 4), np.array(["z", "b", "a", "c"]),
                                 timestamp=np.array([1, 5, 5, 5]))
    split = make_split(data, "leave_last", seed=0)
    assert data.items.id_of(split.test.item).tolist() == ["c"]
    assert data.items.id_of(split.valid.item).tolist() == ["a"]
    assert sorted(data.items.id_of(split.train.item).tolist()) == ["b", "z"]


class RecordingBatches(sasrec_module.SequenceBatches):
    seen: list = []

    def __iter__(self):
        for users, inputs, targets in super().__iter__():
            RecordingBatches.seen.append((self.train, users.copy(), targets.copy()))
            yield users, inputs, targets


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_no_validation_or_test_event_is_ever_a_training_target(split, monkeypatch, loss):
    RecordingBatches.seen = []
    monkeypatch.setattr(sasrec_module, "SequenceBatches", RecordingBatches)
    SASRec(SASRec.Config(epochs=2, max_seq_len=12, embedding_size=8, batch_size=32, loss=loss, verbose=False,
                         early_stopping_patience=None)).fit(split.train, split.valid)
    assert RecordingBatches.seen, "SASRec.fit did not build its batches with SequenceBatches"
    held_out = {(u, i) for u, i, _ in events(split.valid) | events(split.test)}
    train_pairs = {(u, i) for u, i, _ in events(split.train)}
    n_targets = 0
    for train, users, targets in RecordingBatches.seen:
        assert train is split.train  # batches come from the train part only
        rows, slots = np.nonzero(targets != PAD)
        pairs = set(zip(users[rows].tolist(), (targets[rows, slots] - 1).tolist()))
        assert not pairs & held_out
        assert pairs <= train_pairs
        n_targets += len(rows)
    assert n_targets > 0
    # and traced to events: every target is a train event no later than the user's valid event
    users = np.arange(split.train.n_users)
    _, targets, target_rows = shifted_pairs(split.train, users, 12, return_rows=True)
    rows = target_rows[target_rows >= 0]
    assert not events(split.train.take(np.unique(rows))) & (events(split.valid) | events(split.test))
    assert (split.train.timestamp[rows] <= split.valid.timestamp[split.train.user[rows]]).all()


@pytest.mark.parametrize("model, windows, stride", [("sasrec", "latest", None), ("sasrec", "sliding", None),
                                                   ("sasrec", "sliding", 5), ("sasrec", "prefixes", None),
                                                   ("bert4rec", "latest", None), ("bert4rec", "sliding", None)])
def test_every_window_choice_trains_on_train_events_only_each_once_an_epoch(split, monkeypatch, model, windows, stride):
    RecordingBatches.seen = []
    module, cls = (sasrec_module, SASRec) if model == "sasrec" else (bert4rec_module, BERT4Rec)
    monkeypatch.setattr(module, "SequenceBatches", RecordingBatches)
    cls(cls.Config(epochs=2, max_seq_len=12, embedding_size=8, batch_size=32, verbose=False, train_windows=windows,
                   train_stride=stride, early_stopping_patience=None)).fit(split.train, split.valid)
    assert RecordingBatches.seen, f"{cls.__name__}.fit did not build its batches with SequenceBatches"
    held_out = {(u, i) for u, i, _ in events(split.valid) | events(split.test)}
    train_pairs = {(u, i) for u, i, _ in events(split.train)}
    for train, users, targets in RecordingBatches.seen:  # for BERT4Rec the targets are the windows' items
        assert train is split.train
        rows, slots = np.nonzero(targets != PAD)
        pairs = set(zip(users[rows].tolist(), (targets[rows, slots] - 1).tolist()))
        assert pairs <= train_pairs and not pairs & held_out
    # traced to events: one epoch's targets are train events, each at most once, none later than the
    # user's valid event; with "sliding" and "prefixes" they are every train event (after each user's
    # first for next-item training), with "latest" each user's newest 12
    batches = SequenceBatches(split.train, 12, 32, rng=0, windows=windows,
                              objective="cloze" if model == "bert4rec" else "next_item", stride=stride)
    if model == "bert4rec":
        rows = window_rows(split.train.indptr, batches.window_users, 12, batches.window_stops)
    else:
        _, _, rows = shifted_pairs(split.train, batches.window_users, 12, return_rows=True, stops=batches.window_stops)
        rows = rows[:, -batches.kept:]  # a prefix's last slot; a strided window's newest `stride` slots
    rows = np.sort(rows[rows >= 0])
    starts, ends = split.train.indptr[:-1], split.train.indptr[1:]
    if model != "bert4rec":
        starts = starts + 1  # a user's first event has no context to be predicted from
    if windows == "latest":
        starts = np.maximum(starts, ends - 12)
    expected = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
    np.testing.assert_array_equal(rows, expected)
    assert (split.train.timestamp[rows] <= split.valid.timestamp[split.train.user[rows]]).all()


def test_test_time_input_is_train_plus_valid(split):
    model = SASRec(SASRec.Config(max_seq_len=6))
    users = np.arange(split.train.n_users)
    test_input = model.input_sequences(users, split.history("test"))
    valid_input = model.input_sequences(users, split.history("valid"))
    last_train = split.train.item[split.train.indptr[1:] - 1] + 1
    np.testing.assert_array_equal(test_input[:, -1], split.valid.item + 1)  # the valid event is the newest input
    np.testing.assert_array_equal(test_input[:, -2], last_train)
    np.testing.assert_array_equal(valid_input[:, -1], last_train)  # validation reads train only
    np.testing.assert_array_equal(test_input[:, :-1], valid_input[:, 1:])
    assert not (test_input == (split.test.item + 1)[:, None]).any()  # the test event is never an input


def test_the_runner_gives_sasrec_train_for_valid_and_train_plus_valid_for_test(data, tmp_path, monkeypatch):
    path = tmp_path / "log.tsv"
    lines = ["user\titem\trating\ttimestamp"] + [
        f"{u}\t{i}\t{v:g}\t{t}" for u, i, v, t in zip(data.users.id_of(data.user), data.items.id_of(data.item),
                                                      data.value, data.timestamp)]
    path.write_text("\n".join(lines) + "\n")
    calls = []
    real = run_module.evaluate

    def recording(model, history, truth, **kwargs):
        calls.append((history.fingerprint(), truth.fingerprint(), kwargs.get("mask_history")))
        return real(model, history, truth, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", recording)
    config = parse_config({
        "data": {"path": str(path), "format": "table"}, "split": {"method": "leave_last"},
        "models": [{"name": "sasrec", "params": {"epochs": 1, "max_seq_len": 8, "embedding_size": 8,
                                                 "verbose": False}}],
        "metrics": ["Hit", "NDCG", "MRR"], "ks": [5, 10, 20], "output_dir": str(tmp_path / "runs")})
    result = run_experiment(config, progress=False)
    split = result.split
    assert split.method == "leave_last"
    assert calls == [(split.train.fingerprint(), split.valid.fingerprint(), True),
                     (split.train.concat(split.valid).fingerprint(), split.test.fingerprint(), True)]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["protocol"]["test_history"] == "train + valid"
    assert set(result.metrics["sasrec"]["test"]) == {f"{m}@{k}" for m in ("Hit", "NDCG", "MRR") for k in (5, 10, 20)}
