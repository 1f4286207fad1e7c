"""FM, DeepFM, AutoInt, AutoInt+, OptInter and DNIS-FM each learn the planted group x kind interaction
(see conftest), to a pinned AUC. What every CTR model passes (score = logit of predict, save/load, seeds,
refits, errors, unseen ids) is in test_ctr_contract.py."""

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


def test_fm_interaction_is_the_pairwise_sum():
    e = torch.randn(3, 4, 5)
    explicit = sum((e[:, i] * e[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(fm_interaction(e), explicit)


def test_logloss_early_stopping_and_no_validation(split):
    model = FM(FM.Config(**{**FAST, "epochs": 3}, valid_metric="logloss")).fit(split.train, split.valid)
    assert model.config.valid_metric == "LogLoss" and model.history_[0]["LogLoss"] < 0  # recorded as -LogLoss
    plain = AutoInt(AutoInt.Config(**{**FAST, "epochs": 2}, residual=False)).fit(split.train)
    assert plain.best_epoch_ == 2 and plain.history_[0]["AUC"] is None


def test_config_errors():
    with pytest.raises(ConfigError, match="not a CTR metric"):
        build_ctr("fm", {"valid_metric": "NDCG@10"})
    with pytest.raises(ConfigError, match="unknown CTR model|Did you mean"):
        build_ctr("deepfn")


def test_dropout_goes_after_each_activation_or_before_each_linear():
    from recstack.models.ctr.base import mlp

    after = [type(m).__name__ for m in mlp([6, 4, 3], 0.2)]
    assert after == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    before = [type(m).__name__ for m in mlp([6, 4, 3], 0.2, "before_linear")]  # RecBole's MLPLayers
    assert before == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in mlp([6, 4], 0.0, "before_linear")] == ["Linear", "ReLU", "Linear"]


@pytest.mark.parametrize("name", ["deepfm", "autoint+"])
def test_dropout_before_linear_is_a_setting_that_saves(split, name, tmp_path):
    model = build_ctr(name, {**FAST, **PARAMS[name], "dropout": 0.2, "dropout_position": "before_linear"})
    model.fit(split.train, split.valid)
    assert isinstance(model._net().dnn[0], torch.nn.Dropout)  # the embeddings entering the DNN are dropped
    assert auc(split.test.label, model.predict(split.test)) > 0.85
    model.save(tmp_path / "m")
    again = type(model).load(tmp_path / "m")
    assert again.config.dropout_position == "before_linear"
    np.testing.assert_allclose(again.predict(split.test), model.predict(split.test), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="dropout_position"):
        build_ctr(name, {"dropout_position": "middle"})
