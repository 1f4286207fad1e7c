"""The CTR contract: what every model in `CTR_MODELS` passes, run for each registered name.

The ranking contract (`tests/contract`) fits on an `Interactions` log; a CTR model fits on labelled
feature rows, so it has this one. Each model is fitted once, small and fast, on the planted rows
(`conftest.py`; a behaviour model, `reads_sequences`, on the split with the `history` field), and
checked for: probabilities that beat chance, `score` = the logits of `predict`, save/load, seeding
and refits, clear errors before fit and on the wrong data, and rows with users and items unseen in
training. A model added to the registry is covered without editing this file: the small settings
below apply to whichever of their keys its config has. The pinned AUCs stay with each model's tests.
"""

import numpy as np
import pytest

from recstack.data.ctr import CTRData, make_ctr_split
from recstack.data.dataset import Dataset
from recstack.evaluate.ctr import auc
from recstack.models.ctr import CTR_MODELS, build_ctr
from recstack.models.protocol import NotFittedError

from .conftest import planted_specs

NAMES = sorted(CTR_MODELS)
FAST = {"epochs": 4, "learning_rate": 2e-2, "batch_size": 512, "verbose": False, "embedding_size": 8}
# smaller than the defaults, for whichever model has the key; hidden_units only where a model has an
# MLP by default (AutoInt's empty default means "no MLP": a list would turn it into AutoInt+)
SMALLER = {"hidden_units": [32, 16], "dropout": 0.0, "n_layers": 1, "attention_size": 8, "search_epochs": 2,
           "infer_steps": 2, "hash_size": 4096, "min_count": 2}
SHORT = {"epochs": 2, "early_stopping_patience": None}  # the seeding and refit fits, on fewer rows
COLD_USERS, COLD_ITEMS = np.arange(4), np.arange(3)  # no training rows: their ids are out of vocabulary


def small(name: str, **override) -> dict:
    fields = CTR_MODELS.resolve(name).Config.model_fields
    params = dict(FAST)
    for key, value in SMALLER.items():
        if key in fields and (key != "hidden_units" or fields[key].get_default(call_default_factory=True)):
            params[key] = value
    return {**params, **override}


def reads_sequences(name: str) -> bool:
    return bool(CTR_MODELS.resolve(name).reads_sequences)


@pytest.fixture(scope="module")
def splits(planted_split, planted_sequence_split):
    return {False: planted_split, True: planted_sequence_split}


@pytest.fixture(scope="module")
def fitted(splits):
    """name -> (the model, what its fit returned): each model fitted once, when a test first asks."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            split = splits[reads_sequences(name)]
            model = build_ctr(name, small(name))
            cache[name] = (model, model.fit(split.train, split.valid))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def cold_splits(planted):
    """The planted data without any row of COLD_USERS or COLD_ITEMS: in the vocabularies (the user and
    item tables hold them) but never seen in training, so their id fields map to the OOV ids."""
    inter = planted.interactions
    kept = inter.take(~np.isin(inter.user, COLD_USERS) & ~np.isin(inter.item, COLD_ITEMS))
    data = Dataset(kept, item_table=planted.item_table, user_table=planted.user_table)
    return {sequence: make_ctr_split(data, planted_specs(sequence), seed=0) for sequence in (False, True)}


def plain_rows(split, users, items) -> CTRData:
    """(user, item) pairs without a position in time: what `score` sees (a behaviour model reads the
    user's latest training items)."""
    return CTRData(split.features, np.asarray(users), np.asarray(items), np.zeros(len(users), np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_the_model_and_predict_gives_probabilities_that_beat_chance(fitted, splits, name):
    model, returned = fitted(name)
    assert returned is model
    test = splits[reads_sequences(name)].test
    p = model.predict(test)
    assert p.shape == (len(test),) and p.dtype == np.float32
    assert ((p > 0) & (p < 1)).all()
    assert auc(test.label, p) > 0.75  # the planted pair caps it near 0.92; chance is 0.5
    assert 1 <= model.best_epoch_ <= len(model.history_) <= FAST["epochs"]


@pytest.mark.parametrize("name", NAMES)
def test_score_is_the_logit_of_predict(fitted, splits, name):
    model, split = fitted(name)[0], splits[reads_sequences(name)]
    users, items = split.test.user[:8], split.test.item[:8]
    pairs = model.score(users, None, items[:, None])  # one candidate per user: (B, 1)
    assert pairs.shape == (8, 1)
    np.testing.assert_allclose(1 / (1 + np.exp(-pairs[:, 0])), model.predict(plain_rows(split, users, items)),
                               rtol=1e-4, atol=1e-5)
    shared = model.score(users, None, items)  # the same candidates for every user: (B, C)
    assert shared.shape == (8, 8)
    np.testing.assert_allclose(np.diagonal(shared), pairs[:, 0], rtol=1e-4, atol=1e-5)
    full = model.score(users, None)  # every item
    assert full.shape == (8, split.features.item_index.shape[0]) and np.isfinite(full).all()
    np.testing.assert_allclose(full[np.arange(8), items], pairs[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_give_the_same_predictions(fitted, splits, name, tmp_path):
    model, split = fitted(name)[0], splits[reads_sequences(name)]
    model.save(tmp_path / "m")
    again = type(model).load(tmp_path / "m")
    assert type(again) is type(model)
    np.testing.assert_allclose(again.predict(split.test), model.predict(split.test), rtol=1e-5, atol=1e-6)
    users = np.array([0, 5])
    np.testing.assert_allclose(again.score(users, None), model.score(users, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_repeats_a_fit_and_another_seed_differs(splits, name):
    split = splits[reads_sequences(name)]
    rows, valid, some = (split.train.take(np.arange(800)), split.valid.take(np.arange(200)),
                         split.test.take(np.arange(200)))
    first = build_ctr(name, small(name, **SHORT)).fit(rows, valid).predict(some)
    again = build_ctr(name, small(name, **SHORT)).fit(rows, valid).predict(some)
    np.testing.assert_allclose(again, first, rtol=1e-4, atol=1e-5)
    other = build_ctr(name, small(name, **SHORT, seed=1)).fit(rows, valid).predict(some)
    assert not np.allclose(other, first, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_a_refit_on_other_rows_replaces_the_state(splits, name):
    split = splits[reads_sequences(name)]
    valid, some = split.valid.take(np.arange(200)), split.test.take(np.arange(200))
    model = build_ctr(name, small(name, **SHORT)).fit(split.train.take(np.arange(800)), valid)
    assert all(h["AUC"] is not None for h in model.history_)  # validated
    before = model.predict(some)
    assert model.fit(split.train.take(np.arange(800, 1600)), None) is model
    # the new fit's history only: as many epochs, none validated
    assert len(model.history_) == SHORT["epochs"] and all(h["AUC"] is None for h in model.history_)
    assert model.best_epoch_ == SHORT["epochs"]
    assert not np.allclose(model.predict(some), before, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_predicting_before_fit_and_fitting_on_interactions_raise_clear_errors(splits, planted, name):
    model = build_ctr(name, small(name))
    split = splits[reads_sequences(name)]
    with pytest.raises(NotFittedError, match="is not fitted: call fit"):
        model.predict(split.test)
    with pytest.raises(NotFittedError, match="is not fitted: call fit"):
        model.score(np.array([0, 1]), None)
    with pytest.raises(TypeError, match="CTRData"):
        model.fit(planted.interactions)


@pytest.mark.parametrize("name", NAMES)
def test_users_and_items_unseen_in_training_are_predicted(cold_splits, name):
    split = cold_splits[reads_sequences(name)]
    model = build_ctr(name, small(name, epochs=1, early_stopping_patience=None)).fit(split.train, None)
    warm_user, warm_item = int(split.train.user[0]), int(split.train.item[0])
    users = np.concatenate([COLD_USERS, COLD_USERS, np.full(len(COLD_ITEMS), warm_user)])
    items = np.concatenate([COLD_ITEMS[np.arange(len(COLD_USERS)) % len(COLD_ITEMS)],
                            np.full(len(COLD_USERS), warm_item), COLD_ITEMS])
    rows = plain_rows(split, users, items)
    oov = rows.oov_counts()
    assert oov["user_id"] == 2 * len(COLD_USERS) and oov["item_id"] == len(COLD_USERS) + len(COLD_ITEMS)
    p = model.predict(rows)
    assert p.shape == (len(rows),) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    assert np.isfinite(model.score(COLD_USERS, None)).all()
    assert np.isfinite(model.score(np.array([warm_user]), None, COLD_ITEMS)).all()
