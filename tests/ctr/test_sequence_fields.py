"""Sequence fields (`kind: sequence`): hand-worked sequences on a tiny log (strictly before, ties by row
order, positive_only, max_len, shared item ids, the full-ranking sequence), no leakage from validation
or test rows, and every bad input named before training (exit code 2 from the command line)."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from recstack.cli import app
from recstack.data import Interactions, Vocab
from recstack.data.ctr import (MAX_SEQUENCE_LEN, CTRData, FeatureError, FieldSpec, fit_features, make_ctr_split,
                               random_row_split, row_ranks)
from recstack.data.dataset import Dataset
from recstack.experiment.config import ExperimentConfigError, parse_config
from recstack.models.ctr import build_ctr

# user 0: a (item 0, +, t10), b (item 1, -, t20), c (item 2, +, t20: a tie, after b in row order),
# d (item 3, +, t30), e (item 4, -, t40); user 1: f (item 0, +, t5), g (item 4, +, t50)
USERS = [0, 0, 0, 0, 0, 1, 1]
ITEMS = [0, 1, 2, 3, 4, 0, 4]
RATINGS = [5, 1, 5, 5, 1, 5, 5]
TIMES = [10, 20, 20, 30, 40, 5, 50]
TRAIN = [0, 1, 2, 3, 5]  # a b c d f; e and g (item 4 with them) are validation / test rows


def tiny(times=TIMES) -> Dataset:
    inter = Interactions(np.array(USERS), np.array(ITEMS), Vocab(np.arange(2), name="user"),
                         Vocab(np.arange(5), name="item"), value=np.array(RATINGS, np.float32),
                         timestamp=None if times is None else np.array(times))
    return Dataset(inter, provenance={"name": "tiny"})


def tiny_features(max_len: int = 3, positive_only: bool = False):
    data = tiny()
    specs = [FieldSpec("user_id"), FieldSpec("item_id"),
             FieldSpec("history", kind="sequence", max_len=max_len, positive_only=positive_only)]
    inter = data.interactions
    rank = row_ranks(data)
    label = (inter.value >= 4).astype(np.float32)
    users, items = np.asarray(inter.user, np.int64), np.asarray(inter.item, np.int64)
    # the log keeps its rows in (user, time, row order): the fixture's order, so row i is row i above
    assert (users == USERS).all() and (items == ITEMS).all()
    train = np.array(TRAIN)
    features = fit_features(data, specs, users[train], items[train], train_rank=rank[train], train_labels=label[train])
    rows = CTRData(features, users, items, label, rank)
    return features, rows


def item_ids(features):
    """The item_id field's id of each item (the sequence must hold the same ids)."""
    return features.item_index[:, features.fields.index("item_id") - features.user_index.shape[1], 0]


def test_hand_worked_sequences_strictly_before_with_ties_in_row_order():
    features, rows = tiny_features(max_len=3)
    i0, i1, i2, i3, _ = item_ids(features)
    expected = [[0, 0, 0],  # a: nothing before it
                [0, 0, i0],  # b: a
                [0, i0, i1],  # c: the same time as b, after it in row order: a, b
                [i0, i1, i2],  # d
                [i1, i2, i3],  # e (a validation row): a b c d, the latest 3
                [0, 0, 0],  # f: user 1's first row
                [0, 0, i0]]  # g (a test row): f only
    (got,) = rows.sequences()
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64


def test_positive_only_keeps_the_training_positives():
    features, rows = tiny_features(max_len=3, positive_only=True)
    i0, _, i2, i3, _ = item_ids(features)
    (got,) = rows.sequences()
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, i0], [0, 0, i0], [0, i0, i2], [i0, i2, i3],
                                        [0, 0, 0], [0, 0, i0]])
    latest = features.sequences[0].gather(np.array([0, 1]))
    np.testing.assert_array_equal(latest, [[i0, i2, i3], [0, 0, i0]])


def test_max_len_truncates_to_the_latest_and_the_full_ranking_sequence_is_the_latest_training_items():
    features, rows = tiny_features(max_len=2)
    i0, i1, i2, i3, _ = item_ids(features)
    (got,) = rows.sequences(np.array([3, 4]))
    np.testing.assert_array_equal(got, [[i1, i2], [i2, i3]])
    # a (user, candidate) pair after training: every training row of the user counts, e (validation) never
    (latest,) = CTRData(features, np.array([0, 1]), np.array([4, 4]), np.zeros(2, np.float32)).sequences()
    np.testing.assert_array_equal(latest, [[i2, i3], [0, i0]])


def test_sequence_ids_are_the_item_id_fields_and_an_unseen_item_is_oov():
    features, rows = tiny_features()
    ids = item_ids(features)
    info = features.info
    assert info["history"]["item_field"] == "item_id" and info["history"]["kind"] == "sequence"
    assert ids[4] == info["item_id"]["offset"]  # item 4 has validation and test rows only: the OOV id
    assert len(set(ids[:4].tolist())) == 4 and 0 not in ids[:4]
    (got,) = rows.sequences()
    # built from training rows only, a sequence never holds the OOV id, and "history" is not an F-axis field
    assert ids[4] not in got and "history" not in features.fields
    assert features.rows(rows.user, rows.item)[0].shape[1] == len(features.fields) == 2


def test_no_leakage_from_validation_and_test_rows(planted):
    specs = [FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("history", kind="sequence", max_len=8),
             FieldSpec("liked", kind="sequence", max_len=5, positive_only=True)]
    split = make_ctr_split(planted, specs, seed=0)
    before = {part: getattr(split, part).sequences() for part in ("train", "valid", "test")}

    # the same log with every validation and test row's item and rating changed (the split draws its rows
    # from their count and the seed only, so the changed rows stay validation and test rows)
    inter = planted.interactions
    _, valid_rows, test_rows = random_row_split(len(inter), seed=0)
    held_out = np.concatenate([valid_rows, test_rows])
    rng = np.random.default_rng(5)
    items, value = np.asarray(inter.item).copy(), np.asarray(inter.value).copy()
    items[held_out] = rng.integers(0, inter.n_items, len(held_out))
    value[held_out] = 6.0 - value[held_out]
    changed = Dataset(Interactions(inter.user, items, inter.users, inter.items, value=value,
                                   timestamp=inter.timestamp), item_table=planted.item_table,
                      user_table=planted.user_table, provenance={"name": "planted"})
    again = make_ctr_split(changed, specs, seed=0)
    for part, sequences in before.items():
        for old, new in zip(sequences, getattr(again, part).sequences()):
            np.testing.assert_array_equal(old, new)
    assert again.fingerprint() != split.fingerprint()  # the labels did change

    # against a direct reading of the definition on some rows
    train_rank = split.train.rank
    ids = item_ids(split.features)
    for part in ("train", "valid", "test"):
        data = getattr(split, part)
        for row in range(0, len(data), 97):
            mine = np.flatnonzero((split.train.user == data.user[row]) & (train_rank < data.rank[row]))
            mine = mine[np.argsort(train_rank[mine])][-8:]
            want = ids[split.train.item[mine]]
            got = data.sequences(np.array([row]))[0][0]
            np.testing.assert_array_equal(got[8 - len(want):], want)
            assert (got[:8 - len(want)] == 0).all()


def test_sequence_settings_enter_the_fingerprint_and_plain_splits_keep_theirs(planted):
    base = [FieldSpec("user_id"), FieldSpec("item_id")]
    plain = make_ctr_split(planted, base, seed=0)
    assert plain.train.rank is None and plain.features.sequences == []
    prints = {make_ctr_split(planted, base + [FieldSpec("h", kind="sequence", max_len=n, positive_only=p)],
                             seed=0).fingerprint() for n in (5, 6) for p in (False, True)}
    assert len(prints) == 4 and plain.fingerprint() not in prints


# ---- bad input -------------------------------------------------------------------------------------

def test_bad_sequence_fields_are_named(planted):
    ids = [FieldSpec("user_id"), FieldSpec("item_id")]
    with pytest.raises(FeatureError, match=rf"feature 'history': max_len 1001 is outside 1..{MAX_SEQUENCE_LEN}"):
        make_ctr_split(planted, ids + [FieldSpec("history", kind="sequence", max_len=1001)])
    with pytest.raises(FeatureError, match="feature 'history' is a sequence field, but 'tiny' has no timestamps"):
        make_ctr_split(tiny(times=None), ids + [FieldSpec("history", kind="sequence")])
    with pytest.raises(FeatureError, match="'history' is a sequence of item ids, but item_id is not a feature"):
        make_ctr_split(planted, [FieldSpec("user_id"), FieldSpec("history", kind="sequence")])
    split = make_ctr_split(planted, ids + [FieldSpec("history", kind="sequence", max_len=4)], seed=0)
    with pytest.raises(FeatureError, match="'history' is a sequence field, which DeepFM does not read"):
        build_ctr("deepfm", {"epochs": 1}).fit(split.train, split.valid)
    plain = make_ctr_split(planted, ids, seed=0)
    with pytest.raises(FeatureError, match="DiffuMIN reads exactly one sequence field"):
        build_ctr("diffumin", {"epochs": 1}).fit(plain.train, plain.valid)


def _raw(features, models=({"name": "deepfm"},)):
    return {"task": "ctr", "data": "ml-100k", "ctr": {"features": features}, "models": list(models)}


@pytest.mark.parametrize("features, models, message", [
    ([{"name": "item_id"}, {"name": "h", "kind": "sequence", "max_len": 5000}], [{"name": "diffumin"}],
     "feature 'h': max_len 5000 is outside 1..1000"),
    ([{"name": "item_id"}, {"name": "h", "max_len": 5}], [{"name": "fm"}], "apply to kind: sequence only"),
    ([{"name": "item_id"}, {"name": "h", "kind": "sequence", "table": "user"}], [{"name": "diffumin"}],
     "table do not apply to kind: sequence"),
    ([{"name": "user_id"}, {"name": "h", "kind": "sequence"}], [{"name": "diffumin"}],
     r"models\[0\] \(diffumin\): feature 'h' is a sequence of item ids, but item_id is not a feature"),
    ([{"name": "item_id"}, {"name": "h", "kind": "sequence"}], [{"name": "deepfm"}],
     r"models\[0\] \(deepfm\): feature 'h' is a sequence field, which deepfm does not read"),
    ([{"name": "item_id"}], [{"name": "diffumin"}], "diffumin reads exactly one sequence field, got none"),
])
def test_bad_sequence_configs_are_named(features, models, message):
    with pytest.raises(ExperimentConfigError, match=message):
        parse_config(_raw(features, models), "ctr.yaml")


def test_a_config_gives_the_sequence_to_diffumin_only():
    features = [{"name": "user_id"}, {"name": "item_id"}, {"name": "history", "kind": "sequence", "max_len": 20}]
    config = parse_config(_raw(features, [{"name": "deepfm", "features": ["user_id", "item_id"]},
                                          {"name": "diffumin"}]), "ctr.yaml")
    spec = config.ctr.features[2].spec()
    assert (spec.kind, spec.max_len, spec.positive_only) == ("sequence", 20, False)
    assert config.to_dict()["ctr"]["features"][2] == {"name": "history", "kind": "sequence", "max_len": 20}


def _write_config(tmp_path: Path, data: Path, features: list[dict], models: list[dict]) -> Path:
    raw = {"task": "ctr", "data": {"path": str(data), "format": "atomic"}, "output_dir": str(tmp_path / "runs"),
           "ctr": {"features": features}, "models": models}
    path = tmp_path / "ctr.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_exit_2(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_the_command_line_exits_2_before_training(planted_atomic, tmp_path):
    runner = CliRunner()
    too_long = _write_config(tmp_path, planted_atomic, [{"name": "item_id"}, {"name": "history", "kind": "sequence",
                                                                                 "max_len": 1001}],
                             [{"name": "diffumin", "params": {"epochs": 1}}])
    _assert_exit_2(runner.invoke(app, ["run", str(too_long)]), "'history'", "max_len 1001")
    # the same log without its timestamp column
    folder = tmp_path / "untimed"
    folder.mkdir()
    for path in planted_atomic.iterdir():
        text = path.read_text()
        if path.suffix == ".inter":
            text = "\n".join("\t".join(line.split("\t")[:3]) for line in text.splitlines()) + "\n"
        (folder / path.name).write_text(text)
    untimed = _write_config(tmp_path, folder, [{"name": "item_id"}, {"name": "history", "kind": "sequence"}],
                            [{"name": "diffumin", "params": {"epochs": 1}}])
    _assert_exit_2(runner.invoke(app, ["run", str(untimed)]), "'history'", "no timestamps")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("manifest.json"))
