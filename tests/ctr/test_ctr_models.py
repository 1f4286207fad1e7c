"""FM, DeepFM, AutoInt, AutoInt+, OptInter and DNIS-FM each learn the planted group x kind interaction
(see conftest)."""

import numpy as np
import pytest
import torch

from recstack.data.ctr import FieldSpec, make_ctr_split
from recstack.evaluate.ctr import auc
from recstack.models.ctr import CTR_MODELS, build_ctr
from recstack.models.ctr.autoint import AutoInt
from recstack.models.ctr.fm import FM, fm_interaction
from recstack.models.protocol import ConfigError

FAST = {"epochs": 8, "learning_rate": 1e-2, "batch_size": 256, "verbose": False, "embedding_size": 8}
PARAMS = {
    "fm": {},
    "deepfm": {"hidden_units": [32, 32], "dropout": 0.0},
    "autoint": {"n_layers": 2, "attention_size": 8},
    "autoint+": {"n_layers": 2, "attention_size": 8, "hidden_units": [32]},
    "optinter": {"hidden_units": [32, 32], "dropout": 0.0, "search_epochs": 4, "hash_size": 4096, "min_count": 2},
    "dnis-fm": {},
}
# test AUC of each model on the planted split (seed 0, the settings above); the 10% label flip caps it
# near 0.92; without the group and kind fields the same data gives 0.5 (test below)
PINNED = {"fm": 0.919, "deepfm": 0.919, "autoint": 0.911, "autoint+": 0.913, "optinter": 0.923, "dnis-fm": 0.920}


@pytest.fixture(scope="module")
def split(planted_split):
    return planted_split


@pytest.fixture(scope="module")
def fitted(split):
    # every CTR model but the behaviour models, which need a sequence field (tests/ctr/test_diffumin.py)
    return {name: build_ctr(name, {**FAST, **PARAMS[name]}).fit(split.train, split.valid) for name in CTR_MODELS
            if not CTR_MODELS.resolve(name).reads_sequences}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_learns_the_planted_interaction(fitted, split, name):
    p = fitted[name].predict(split.test)
    assert p.shape == (len(split.test),) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()
    assert auc(split.test.label, p) == pytest.approx(PINNED[name], abs=0.02)
    assert fitted[name].best_epoch_ >= 1 and "AUC" in fitted[name].history_[0]


def test_without_the_interaction_fields_nothing_is_learned(planted):
    # the same data with group and kind left out: ids alone cannot carry the pair on this little data
    split = make_ctr_split(planted, [FieldSpec("age", kind="numeric"), FieldSpec("genres", kind="multi")], seed=0)
    model = build_ctr("fm", FAST).fit(split.train, split.valid)
    assert abs(auc(split.test.label, model.predict(split.test)) - 0.5) < 0.08


def test_score_is_the_logit_of_predict(fitted, split):
    model = fitted["deepfm"]
    rows = split.test.take(np.arange(5))
    logits = np.diagonal(model.score(rows.user, None, rows.item[None, :].repeat(5, 0)))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), model.predict(rows), rtol=1e-5, atol=1e-6)
    full = model.score(np.array([0, 1]), None)
    assert full.shape == (2, split.train.features.item_index.shape[0])


def test_save_and_load_give_the_same_predictions(fitted, split, tmp_path):
    model = fitted["autoint+"]
    model.save(tmp_path / "m")
    again = type(model).load(tmp_path / "m")
    np.testing.assert_allclose(again.predict(split.test), model.predict(split.test), rtol=1e-5, atol=1e-6)


def test_fm_interaction_is_the_pairwise_sum():
    e = torch.randn(3, 4, 5)
    explicit = sum((e[:, i] * e[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(fm_interaction(e), explicit)


def test_logloss_early_stopping_and_no_validation(split):
    model = FM(FM.Config(**{**FAST, "epochs": 3}, valid_metric="logloss")).fit(split.train, split.valid)
    assert model.config.valid_metric == "LogLoss" and model.history_[0]["LogLoss"] < 0  # recorded as -LogLoss
    plain = AutoInt(AutoInt.Config(**{**FAST, "epochs": 2}, residual=False)).fit(split.train)
    assert plain.best_epoch_ == 2 and plain.history_[0]["AUC"] is None


def test_config_and_data_errors(split, planted):
    with pytest.raises(ConfigError, match="not a CTR metric"):
        build_ctr("fm", {"valid_metric": "NDCG@10"})
    with pytest.raises(ConfigError, match="unknown CTR model|Did you mean"):
        build_ctr("deepfn")
    with pytest.raises(TypeError, match="CTR model: fit it on recstack.data.ctr.CTRData"):
        build_ctr("fm", FAST).fit(planted.interactions)


def test_a_seed_repeats_a_fit_and_a_refit_replaces_it(split):
    params = {**FAST, "epochs": 2, "early_stopping_patience": None}
    first = build_ctr("deepfm", {**params, **PARAMS["deepfm"]}).fit(split.train, split.valid)
    again = build_ctr("deepfm", {**params, **PARAMS["deepfm"]}).fit(split.train, split.valid)
    np.testing.assert_allclose(first.predict(split.test), again.predict(split.test), rtol=1e-4, atol=1e-5)
    other = build_ctr("deepfm", {**params, **PARAMS["deepfm"], "seed": 1}).fit(split.train, split.valid)
    assert not np.allclose(first.predict(split.test), other.predict(split.test), atol=1e-4)
    before = first.predict(split.test)
    first.fit(split.train.take(np.arange(500)), None)  # refit on other rows: the new state only
    assert len(first.history_) == 2 and first.history_[0]["AUC"] is None
    assert not np.allclose(before, first.predict(split.test), atol=1e-4)
