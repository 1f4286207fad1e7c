"""One contract for every registered model: lifecycle, shapes, determinism, persistence, sanity.

Parametrised over `MODELS`, so a newly registered model is covered without editing this file.
`FAST_PARAMS` holds small settings for models whose defaults are slow on a 300-user fixture.
Scores are compared as `recstack.testing.assert_scores_equivalent` defines: float32 rounding moves
with the CPU's kernels and a row's place in a block, so no check here is bit for bit across calls of
different shapes. `python3 dev.py test` re-runs this file with other CPU kinds' kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_clustered
from recstack.evaluate.evaluator import evaluate
from recstack.models import MODELS, ConfigError, NotFittedError, build, load_model, make_config, resolve
from recstack.testing import assert_scores_equivalent

pytestmark = pytest.mark.contract

FAST_PARAMS: dict[str, dict] = {
    "als": {"epochs": 5, "threads": 1},
    "bpr": {"epochs": 5, "learning_rate": 0.05, "batch_size": 512, "verbose": False},
    "multvae": {"epochs": 10, "hidden_size": 64, "embedding_size": 16, "batch_size": 64, "learning_rate": 3e-3,
                "anneal_steps": 50, "beta_max": 0.2, "verbose": False},
    "multdae": {"epochs": 10, "hidden_size": 64, "embedding_size": 16, "batch_size": 64, "learning_rate": 3e-3,
                "verbose": False},
    "neumf": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "embedding_size": 16,
              "mlp_layers": [32, 16, 8], "dropout": 0.0, "verbose": False},
    "cml": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "verbose": False},
    "relmf": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "verbose": False},
    "naivemf": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "verbose": False},
    "nbpo": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "verbose": False},
    "dnis": {"search_epochs": 4, "epochs": 3, "learning_rate": 0.02, "batch_size": 512, "n_blocks": 4,
             "verbose": False},
    "dsl": {"epochs": 5, "learning_rate": 0.02, "batch_size": 512, "density": 0.3, "update_every": 5,
            "verbose": False},
    "lightgcn": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "verbose": False},
    "ngcf": {"epochs": 5, "learning_rate": 0.01, "batch_size": 512, "n_layers": 2, "embedding_size": 32,
             "verbose": False},
    "simgcl": {"epochs": 3, "learning_rate": 0.02, "batch_size": 1024, "verbose": False},
    "dccf": {"epochs": 3, "learning_rate": 0.02, "batch_size": 2048, "embedding_size": 16, "n_intents": 8,
             "n_layers": 1, "verbose": False},
    "sasrec": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "gru4rec": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "bert4rec": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "tiger": {"epochs": 4, "embedding_size": 32, "n_heads": 2, "ffn_size": 64, "n_layers": 1, "max_seq_len": 10,
              "learning_rate": 3e-3, "tokenizer": {"codebook_size": 8}, "verbose": False},
    "adaretrieval": {"epochs": 2, "samples_per_user": 1, "learning_rate": 1e-3, "retrieval_size": 6, "n_rounds": 3, "n_negatives": 20,
                     "verbose": False, "backbone_params": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20,
                                                           "learning_rate": 5e-3}},
    "mqsated": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
    "hcn": {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3, "verbose": False},
}

# models that need item side data: tests/models/test_<name>.py runs these same checks with item vectors
NEEDS_ITEM_TEXTS = {"alpharec", "m2trec", "colarec"}
NAMES = sorted(n for n in MODELS if n not in NEEDS_ITEM_TEXTS)
USERS = np.array([0, 5, 17, 42, 299, 5], dtype=np.int32)  # a repeated user on purpose


def params(name: str) -> dict:
    return dict(FAST_PARAMS.get(name, {}))


@pytest.fixture(scope="module")
def fitted(clustered_split):
    """One fitted model per name, shared by the read-only checks below."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name, params(name)).fit(clustered_split.train, clustered_split.valid)
        return cache[name]

    return get


def misspelt(field: str) -> str:
    """Drop one inner character: 'n_neighbors' -> 'n_neihbors'."""
    middle = len(field) // 2
    return field[:middle] + field[middle + 1:]


@pytest.mark.parametrize("name", NAMES)
def test_config_is_frozen_and_rejects_unknown_keys_with_a_suggestion(name):
    cls = resolve(name)
    config = make_config(cls.Config, params(name))
    with pytest.raises(Exception):
        config.seed = 123
    assert config.seed == 0
    with pytest.raises(ConfigError, match="embeding_size"):
        make_config(cls.Config, {"embeding_size": 8})
    field = max(cls.Config.model_fields, key=len)
    typo = misspelt(field)
    with pytest.raises(ConfigError, match=f"unknown parameter '{typo}'.*did you mean '{field}'"):
        make_config(cls.Config, {typo: 1})


@pytest.mark.parametrize("name", NAMES)
def test_score_before_fit_raises_not_fitted(name, clustered_split):
    model = build(name, params(name))
    with pytest.raises(NotFittedError):
        model.score(USERS, clustered_split.train)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self(name, clustered_split):
    model = build(name, params(name))
    assert model.fit(clustered_split.train, clustered_split.valid) is model


@pytest.mark.parametrize("name", NAMES)
def test_score_shape_dtype_and_no_nan(name, fitted, clustered_split):
    history = clustered_split.history("test")
    scores = fitted(name).score(USERS, history)
    assert scores.shape == (len(USERS), history.n_items)
    assert scores.dtype == np.float32
    assert not np.isnan(scores).any()
    assert not np.isposinf(scores).any()
    # the same user twice in one block: equal up to the rounding of its place in the block
    assert_scores_equivalent(scores[-1], scores[1], what="the same user twice in one block")


@pytest.mark.parametrize("name", NAMES)
def test_score_returns_a_fresh_array(name, fitted, clustered_split):
    history = clustered_split.history("test")
    model = fitted(name)
    first = model.score(USERS, history)
    expected = first.copy()
    first[:] = 12345.0  # the evaluator masks in place
    assert_scores_equivalent(model.score(USERS, history), expected)


@pytest.mark.parametrize("name", NAMES)
def test_items_subset_equals_gathering_full_scores(name, fitted, clustered_split):
    history = clustered_split.history("test")
    model = fitted(name)
    full = model.score(USERS, history)
    subset = np.array([7, 0, 119, 3, 3, 64])
    np.testing.assert_allclose(model.score(USERS, history, items=subset), full[:, subset], rtol=1e-5, atol=1e-6)
    per_user = np.random.default_rng(0).integers(0, history.n_items, size=(len(USERS), 9))
    np.testing.assert_allclose(model.score(USERS, history, items=per_user),
                               np.take_along_axis(full, per_user, axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_scores(name, clustered_split):
    history = clustered_split.history("test")
    a = build(name, params(name)).fit(clustered_split.train, clustered_split.valid).score(USERS, history)
    b = build(name, params(name)).fit(clustered_split.train, clustered_split.valid).score(USERS, history)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_refit_replaces_state(name, clustered_split):
    other = make_clustered(n_users=60, n_items=40, per_user=10, seed=3)  # another catalogue size
    model = build(name, params(name)).fit(other)
    assert model.score(np.array([0, 1]), other).shape == (2, 40)
    model.fit(clustered_split.train, clustered_split.valid)
    fresh = build(name, params(name)).fit(clustered_split.train, clustered_split.valid)
    history = clustered_split.history("test")
    np.testing.assert_allclose(model.score(USERS, history), fresh.score(USERS, history), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_without_pickle(name, fitted, clustered_split, tmp_path):
    model = fitted(name)
    model.save(tmp_path / name)
    files = [p for p in (tmp_path / name).rglob("*") if p.is_file()]
    assert files and not any(p.suffix in {".pkl", ".pickle", ".pt", ".joblib"} for p in files)
    for path in files:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:  # raises if anything needs pickle
                for key in npz.files:
                    assert npz[key].dtype != object
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model) and loaded.config == model.config
    for attribute, value in vars(model).items():  # the fitted arrays come back bit for bit ...
        if attribute.endswith("_") and isinstance(value, np.ndarray) and attribute in vars(loaded):
            np.testing.assert_array_equal(vars(loaded)[attribute], value, err_msg=attribute)
    history = clustered_split.history("test")
    # ... and score alike (one GEMM may still round with the arrays' memory alignment)
    assert_scores_equivalent(loaded.score(USERS, history), model.score(USERS, history))


@pytest.mark.parametrize("name", NAMES)
def test_user_with_empty_history_scores_without_error(name, fitted, clustered_split):
    history = clustered_split.train
    history = history.take(history.user != 5)
    scores = fitted(name).score(np.array([5, 0], dtype=np.int32), history)
    assert scores.shape == (2, history.n_items)
    assert not np.isnan(scores).any() and not np.isposinf(scores).any()


@pytest.mark.parametrize("name", NAMES)
def test_build_from_module_path(name):
    model = build(MODELS[name], params(name))
    assert isinstance(model, resolve(name))
    assert model.config == make_config(resolve(name).Config, params(name))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "random"])
def test_beats_random_on_clustered_data(name, fitted, clustered_split):
    def ndcg(model) -> float:
        return evaluate(model, clustered_split.history("test"), clustered_split.test, metrics=["NDCG@10"])["NDCG@10"]

    random = build("random").fit(clustered_split.train)
    assert ndcg(fitted(name)) > ndcg(random) + 0.02
