"""Feature processing: train-only vocabularies, OOV ids counted, numeric transforms, labels, bad input."""

import numpy as np
import pytest

from recstack.data import Interactions, Vocab
from recstack.data.ctr import (FeatureError, FieldSpec, fit_features, labels_from_ratings, make_ctr_split,
                               random_row_split)
from recstack.data.dataset import Dataset


def tiny(values=(5, 1, 4, 2, 3)) -> Dataset:
    inter = Interactions([0, 1, 2, 3, 0], [0, 1, 2, 0, 1], Vocab(np.arange(4)), Vocab(np.arange(3)),
                         value=np.asarray(values, dtype=np.float32))
    return Dataset(inter,
                   user_table={"occupation": np.array(["a", "b", "c", "a"], dtype=object),
                               "age": np.array([10, 20, 30, 40]),
                               "zip": np.array(["1", "2", "x3", ""], dtype=object)},
                   item_table={"genres": np.array(["x|y", "y", "z"], dtype=object)})


def test_vocabularies_come_from_training_rows_and_unseen_values_are_oov():
    specs = [FieldSpec("user_id"), FieldSpec("occupation"), FieldSpec("item_id"), FieldSpec("genres", kind="multi")]
    # training rows touch users 0, 1 and items 0, 1: user 2's occupation 'c', users 2, 3 and item 2 are unseen
    features = fit_features(tiny(), specs, train_users=np.array([0, 1]), train_items=np.array([0, 1]))
    assert features.fields == ["user_id", "occupation", "item_id", "genres"]
    info = features.info
    assert info["user_id"]["vocabulary"] == 2 and info["occupation"]["vocabulary"] == 2
    assert info["genres"]["vocabulary"] == 2  # x, y (z only on an unseen item)
    occupation_oov = info["occupation"]["offset"]
    assert features.user_index[2, 1, 0] == occupation_oov  # 'c' -> OOV
    assert features.user_index[3, 1, 0] == features.user_index[0, 1, 0]  # 'a' was seen through user 0
    assert features.user_index[3, 0, 0] == info["user_id"]["offset"]  # user 3 itself unseen
    counts = features.oov_counts(np.array([0, 2, 3, 3]), np.array([2, 0, 1, 2]))
    assert counts == {"user_id": 3, "occupation": 1, "item_id": 2, "genres": 2}
    # ids never collide across fields; 0 is padding
    used = np.concatenate([features.user_index[features.user_weight != 0], features.item_index[features.item_weight != 0]])
    assert used.min() >= 1 and used.max() < features.n_ids


def test_multi_valued_fields_are_mean_pooled_and_padded():
    features = fit_features(tiny(), [FieldSpec("genres", kind="multi")], np.array([0]), np.array([0, 1, 2]))
    index, weight = features.rows(np.array([0, 0]), np.array([0, 1]))
    assert index.shape == (2, 1, 2)
    np.testing.assert_allclose(weight[0, 0], [0.5, 0.5])
    np.testing.assert_allclose(weight[1, 0], [1.0, 0.0])
    assert index[1, 0, 1] == 0  # padding


def test_numeric_normalise_uses_training_statistics():
    features = fit_features(tiny(), [FieldSpec("age", kind="numeric")], np.array([0, 1]), np.array([0]))
    assert features.info["age"]["mean"] == 15.0 and features.info["age"]["std"] == 5.0
    np.testing.assert_allclose(features.user_weight[:, 0, 0], [-1, 1, 3, 5])
    assert len(set(features.user_index[:, 0, 0])) == 1  # one embedding, scaled by the value


def test_numeric_bucketise_uses_training_quantiles():
    features = fit_features(tiny(), [FieldSpec("age", kind="numeric", transform="bucketise", n_buckets=2)],
                            np.array([0, 1, 2]), np.array([0]))
    assert features.info["age"]["edges"] == [20.0]
    ids = features.user_index[:, 0, 0] - features.info["age"]["offset"]
    assert list(ids) == [1, 2, 2, 2]  # 10 < 20 <= 20, 30, 40 (0 would be missing)


def test_labels_follow_the_threshold():
    np.testing.assert_array_equal(labels_from_ratings(np.array([5, 4, 3.5, 1]), 4), [1, 1, 0, 0])


@pytest.mark.parametrize("values, message", [((4, 5, 4, 5, 4), "does not split"), ((1, 2, 3, 1, 2), "does not split")])
def test_labels_the_threshold_cannot_split_are_refused(values, message):
    with pytest.raises(FeatureError, match=f"label: threshold 4 {message}"):
        make_ctr_split(tiny(values), [FieldSpec("user_id")], threshold=4)


def test_implicit_data_has_no_labels():
    inter = Interactions([0, 1], [0, 1], Vocab(np.arange(2)), Vocab(np.arange(2)))
    with pytest.raises(FeatureError, match="label: the data has no rating"):
        make_ctr_split(Dataset(inter), [FieldSpec("user_id")])


def test_a_feature_not_in_the_data_is_named():
    with pytest.raises(FeatureError, match=r"feature 'occupaton' is not in the data.*available: age, genres, "
                                           r"item_id, occupation, user_id, zip"):
        make_ctr_split(tiny(), [FieldSpec("user_id"), FieldSpec("occupaton")])
    with pytest.raises(FeatureError, match="feature 'genres' is not in the data in the user table"):
        make_ctr_split(tiny(), [FieldSpec("genres", table="user")])


def test_a_numeric_field_with_text_is_named():
    with pytest.raises(FeatureError, match=r"feature 'zip' is declared numeric but holds text \(e.g. 'x3'\)"):
        make_ctr_split(tiny(), [FieldSpec("zip", kind="numeric")])
    with pytest.raises(FeatureError, match="feature 'occupation' is declared numeric"):
        make_ctr_split(tiny(), [FieldSpec("occupation", kind="numeric")])


def test_random_split_is_8_1_1_disjoint_and_seeded():
    train, valid, test = random_row_split(1000, (0.8, 0.1, 0.1), seed=1)
    assert (len(train), len(valid), len(test)) == (800, 100, 100)
    assert len(np.unique(np.concatenate([train, valid, test]))) == 1000
    again = random_row_split(1000, (0.8, 0.1, 0.1), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))


def test_split_counts_oov_rows_of_the_planted_data(planted):
    split = make_ctr_split(planted, [FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("group")], seed=0)
    summary = split.summary()
    assert summary["train"]["rows"] == 4800 and summary["test"]["rows"] == 600
    assert set(summary["test"]["oov_rows"]) == {"user_id", "group", "item_id"}
    assert 0.4 < split.train.positive_rate < 0.6


def test_the_split_fingerprint_changes_with_the_rows_the_labels_and_the_features(planted):
    fields = [FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("group")]
    first = make_ctr_split(planted, fields, seed=0).fingerprint()
    assert make_ctr_split(planted, fields, seed=0).fingerprint() == first
    assert make_ctr_split(planted, fields, seed=1).fingerprint() != first  # other rows
    assert make_ctr_split(planted, fields, seed=0, threshold=3).fingerprint() == first  # ratings are 1 or 5
    flipped = Dataset(Interactions(planted.interactions.user, planted.interactions.item, planted.interactions.users,
                                   planted.interactions.items, value=6.0 - planted.interactions.value,
                                   timestamp=planted.interactions.timestamp),
                      item_table=planted.item_table, user_table=planted.user_table)
    assert make_ctr_split(flipped, fields, seed=0).fingerprint() != first  # the labels flipped
    assert make_ctr_split(planted, fields[:2], seed=0).fingerprint() != first  # other features


def test_given_parts_are_the_rows_of_each_part_and_vocabularies_follow_them():
    # a peer's exported split, as row indices into the stored interactions: 0, 1, 2 train, 3 valid, 4 test
    data = tiny()
    inter = data.interactions
    split = make_ctr_split(data, [FieldSpec("user_id"), FieldSpec("item_id")], parts=([2, 0, 1], [3], [4]))
    for part, rows in ((split.train, [0, 1, 2]), (split.valid, [3]), (split.test, [4])):
        np.testing.assert_array_equal(part.user, np.asarray(inter.user)[rows])
        np.testing.assert_array_equal(part.item, np.asarray(inter.item)[rows])
        np.testing.assert_array_equal(part.label, (np.asarray(inter.value)[rows] >= 4).astype(np.float32))
    seen_users = set(np.asarray(inter.user)[[0, 1, 2]].tolist())
    assert split.features.info["user_id"]["vocabulary"] == len(seen_users)
    assert split.valid.oov_counts()["user_id"] == int(np.asarray(inter.user)[3] not in seen_users)
    other = make_ctr_split(data, [FieldSpec("user_id"), FieldSpec("item_id")], parts=([0, 1, 3], [2], [4]))
    assert other.fingerprint() != split.fingerprint()


@pytest.mark.parametrize("parts, message", [
    (([0, 1], [1], [4]), "a row is in two parts"),
    (([0, 1], [2], [5]), r"the test rows index outside the 5 interactions \(0..4\)"),
    (([0, 1], [2]), "three row-index arrays"),
    (([0.0, 1.0], [2], [3]), "the train rows must be a 1-d array of integer row indices"),
])
def test_given_parts_that_are_not_a_split_are_refused(parts, message):
    with pytest.raises(FeatureError, match=message):
        make_ctr_split(tiny(), [FieldSpec("user_id")], parts=parts)
