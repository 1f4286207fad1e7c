import json

import numpy as np
import pytest
import scipy.sparse as sp

from recstack.models import ConfigError, ModelConfig, NotFittedError, SaveLoad, build, load_model, make_config, resolve
from recstack.models.protocol import check_fitted, gather_items


class ToyConfig(ModelConfig):
    embedding_size: int = 8
    reg: float = 0.1


class Toy(SaveLoad):
    Config = ToyConfig

    def __init__(self, config: ToyConfig | None = None) -> None:
        self.config = config or ToyConfig()

    def fit(self, train, valid=None):
        self.weights_ = np.arange(6, dtype=np.float32).reshape(2, 3)
        self.similarity_ = sp.csr_matrix(np.eye(3, dtype=np.float32))
        self.n_seen_ = 7
        return self

    def score(self, users, history, items=None):
        check_fitted(self, "weights_")
        return gather_items(self.weights_[users], items)


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown parameter 'embeding_size'.*did you mean 'embedding_size'"):
        make_config(ToyConfig, {"embeding_size": 4})


def test_config_is_frozen_and_typed():
    config = make_config(ToyConfig, {"reg": 2})
    assert config.reg == 2.0 and config.seed == 0
    with pytest.raises(Exception):
        config.reg = 3.0
    with pytest.raises(ConfigError, match="reg"):
        make_config(ToyConfig, {"reg": "lots"})


def test_registry_resolves_names_and_module_paths():
    assert resolve(f"{__name__}:Toy") is Toy
    assert isinstance(build(f"{__name__}:Toy", {"reg": 1.0}), Toy)
    with pytest.raises(ConfigError, match="unknown model 'eaes'.*'ease'"):
        resolve("eaes")
    with pytest.raises(ConfigError, match="has no class"):
        resolve(f"{__name__}:Nope")


def test_not_fitted_is_a_clear_error():
    with pytest.raises(NotFittedError, match="Toy is not fitted"):
        Toy().score(np.array([0]), None)


def test_gather_items_one_and_two_dimensional():
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert gather_items(scores, np.array([3, 0])).tolist() == [[3, 0], [7, 4], [11, 8]]
    assert gather_items(scores, np.array([[1], [2], [3]])).tolist() == [[1], [6], [11]]


def test_save_load_round_trip_without_pickle(tmp_path):
    model = Toy(ToyConfig(reg=0.5)).fit(None)
    model.save(tmp_path / "toy")
    files = sorted(p.name for p in (tmp_path / "toy").iterdir())
    assert files == ["model.json", "state.npz"]
    meta = json.loads((tmp_path / "toy" / "model.json").read_text())
    assert meta["class"].endswith(":Toy") and meta["config"]["reg"] == 0.5
    loaded = load_model(tmp_path / "toy", trust=True)  # Toy is a user class, not a registered one
    assert isinstance(loaded, Toy) and loaded.config == model.config and loaded.n_seen_ == 7
    np.testing.assert_array_equal(loaded.score(np.array([1, 0]), None), model.score(np.array([1, 0]), None))
    assert (loaded.similarity_ != model.similarity_).nnz == 0
    with np.load(tmp_path / "toy" / "state.npz", allow_pickle=False) as npz:
        assert "weights_" in npz.files


def test_save_before_fit_raises(tmp_path):
    with pytest.raises(NotFittedError):
        Toy().save(tmp_path / "x")
    assert not (tmp_path / "x").exists()
