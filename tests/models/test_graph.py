"""LightGCN and NGCF: propagation against dense numpy maths written here, learning, determinism, persistence."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.data import Interactions
from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.graph.lightgcn import LightGCN, LightGCNConfig
from recstack.models.kernels.graph import normalized_adjacency, sparse_tensor
from recstack.models.graph import lightgcn as lightgcn_module
from recstack.models.graph import ngcf as ngcf_module
from recstack.models.graph.ngcf import NGCF
from recstack.models.protocol import NotFittedError
from recstack.testing import assert_scores_equivalent

LIGHTGCN_FAST = dict(epochs=8, batch_size=512, learning_rate=0.01, embedding_size=32, verbose=False)
NGCF_FAST = dict(epochs=8, batch_size=512, learning_rate=0.01, embedding_size=32, n_layers=2, verbose=False)
MODELS = [(LightGCN, LIGHTGCN_FAST), (NGCF, NGCF_FAST)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(clustered_split):
    return {cls: cls(cls.Config(**fast)).fit(clustered_split.train, clustered_split.valid) for cls, fast in MODELS}


# a tiny graph: 3 users x 4 items; item 3 has no edge, user 2 has one; a duplicate event counts once
R = np.array([[1, 1, 0, 0],
              [0, 1, 1, 0],
              [1, 0, 0, 0]], dtype=float)


def dense_normalized(r: np.ndarray) -> np.ndarray:
    """D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]] entry by entry (zero-degree nodes: zero rows)."""
    n_users, n_items = r.shape
    a = np.zeros((n_users + n_items,) * 2)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    degree = a.sum(axis=1)
    out = np.zeros_like(a)
    for x in range(len(a)):
        for y in range(len(a)):
            if a[x, y]:
                out[x, y] = 1.0 / np.sqrt(degree[x] * degree[y])
    return out


def tiny_interactions() -> Interactions:
    users, items = np.nonzero(R)
    users, items = np.append(users, 0), np.append(items, 1)  # a repeated (0, 1) event
    return Interactions.from_ids(users, items)


def test_normalized_adjacency_matches_the_dense_formula():
    expected = dense_normalized(R)
    got = normalized_adjacency(sp.csr_matrix(R * 2.0)).toarray()  # values are binarised
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert expected[1, 3 + 1] == pytest.approx(1 / np.sqrt(2 * 2))  # user 1 (2 items) - item 1 (2 users)
    assert not got[-1].any()  # item 3 has no edges


def test_lightgcn_propagation_equals_dense_numpy_layers():
    rng = np.random.default_rng(0)
    a = dense_normalized(R)
    e0 = rng.normal(size=(7, 5)).astype(np.float32)
    net = lightgcn_module._Net(sparse_tensor(normalized_adjacency(sp.csr_matrix(R))), 3, 4, 5, 3, 0.1)
    with torch.no_grad():
        net.embedding.weight.copy_(torch.from_numpy(e0))
    e1 = a @ e0
    e2 = a @ e1
    e3 = a @ e2
    expected = (e0 + e1 + e2 + e3) / 4
    np.testing.assert_allclose(net.propagate().detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # the gradient of the custom symmetric product equals the dense one: d sum(W * E_final) / d E0
    weights = rng.normal(size=(7, 5)).astype(np.float32)
    (net.propagate() * torch.from_numpy(weights)).sum().backward()
    expected_grad = (weights + a.T @ weights + a.T @ a.T @ weights + a.T @ a.T @ a.T @ weights) / 4
    np.testing.assert_allclose(net.embedding.weight.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-6)


def _leaky(x):
    return np.where(x > 0, x, 0.2 * x)


def test_ngcf_propagation_equals_dense_numpy_layers():
    rng = np.random.default_rng(1)
    a = dense_normalized(R)
    net = ngcf_module._Net(sparse_tensor(normalized_adjacency(sp.csr_matrix(R))), 3, 4, 5, 2,
                           dropout=0.5, node_dropout=0.5)
    params = {}
    with torch.no_grad():
        for name, p in net.named_parameters():
            params[name] = rng.normal(size=tuple(p.shape)).astype(np.float64)
            p.copy_(torch.from_numpy(params[name]))
    net.eval()  # no dropout outside training
    e = params["embedding.weight"]
    layers = [e]
    for k in range(2):
        w1, b1 = params[f"w1.{k}.weight"], params[f"w1.{k}.bias"]
        w2, b2 = params[f"w2.{k}.weight"], params[f"w2.{k}.bias"]
        side = a @ e
        e = _leaky(((a + np.eye(7)) @ e) @ w1.T + b1 + (side * e) @ w2.T + b2)
        layers.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    expected = np.concatenate(layers, axis=1)
    got = net.propagate().detach().numpy()
    assert got.shape == (7, 15)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # in training, node and message dropout change the output
    net.train()
    torch.manual_seed(0)
    assert not np.allclose(net.propagate().detach().numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_beats_popularity_on_clustered_data(cls, fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    graph = evaluate(fitted[cls], history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert graph > 0.3 and graph > 2 * pop


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_score_is_p_times_q_transpose(cls, fitted, clustered_split):
    model, train = fitted[cls], clustered_split.train
    users = np.arange(train.n_users)
    expected = model.user_factors_ @ model.item_factors_.T
    scores = model.score(users, train)
    assert scores.dtype == np.float32 and scores.shape == (train.n_users, train.n_items)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(users[:4], train, np.array([5, 1])), expected[:4][:, [5, 1]], rtol=1e-5)
    per_user = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    np.testing.assert_allclose(model.score(users[:4], train, per_user),
                               np.take_along_axis(expected[:4], per_user, axis=1), rtol=1e-5)
    width = model.config.embedding_size * (1 if cls is LightGCN else model.config.n_layers + 1)
    assert model.user_factors_.shape == (train.n_users, width)


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_best_epoch_is_restored_and_history_is_a_json_log(cls, fitted, clustered_split):
    model = fitted[cls]
    json.dumps(model.history_)
    values = [h["NDCG@10"] for h in model.history_]
    assert model.best_epoch_ == 1 + int(np.argmax(values))
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]
    valid = evaluate(model, history=clustered_split.train, test=clustered_split.valid, metrics=["NDCG@10"])
    assert valid["NDCG@10"] == pytest.approx(max(values), abs=1e-6)


def test_lightgcn_stored_factors_are_the_propagated_embeddings(clustered_split):
    """Rebuild the final embeddings from the layer-0 weights with dense numpy and compare."""
    train = clustered_split.train
    captured = {}
    original = lightgcn_module._Net.factors

    def spy(self):
        captured["e0"] = self.embedding.weight.detach().numpy().astype(np.float64).copy()
        return original(self)

    lightgcn_module._Net.factors = spy
    try:
        model = LightGCN(LightGCNConfig(**{**LIGHTGCN_FAST, "epochs": 2, "n_layers": 2})).fit(train)
    finally:
        lightgcn_module._Net.factors = original
    a = dense_normalized(train.matrix().toarray() > 0)
    e0 = captured["e0"]
    final = (e0 + a @ e0 + a @ a @ e0) / 3
    np.testing.assert_allclose(model.user_factors_, final[:train.n_users], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.item_factors_, final[train.n_users:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls,fast", MODELS)
def test_same_seed_same_model_other_seed_other_model(cls, fast, clustered_split):
    def fit(seed):
        return cls(cls.Config(**{**fast, "epochs": 2, "seed": seed, "node_dropout": 0.1} if cls is NGCF
                              else {**fast, "epochs": 2, "seed": seed})).fit(clustered_split.train, clustered_split.valid)

    first, again, other = fit(0), fit(0), fit(1)
    assert np.array_equal(again.user_factors_, first.user_factors_)
    assert np.array_equal(again.item_factors_, first.item_factors_)
    assert again.history_[-1]["loss"] == first.history_[-1]["loss"]
    assert not np.allclose(other.item_factors_, first.item_factors_)


@pytest.mark.parametrize("cls", [LightGCN, NGCF])
def test_save_load_round_trip(cls, fitted, clustered_split, tmp_path):
    model = fitted[cls]
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is cls and loaded.config == model.config
    users = np.arange(10)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), model.score(users, clustered_split.train))
    assert loaded.history_ == model.history_ and loaded.best_epoch_ == model.best_epoch_


@pytest.mark.parametrize("cls,fast", MODELS)
def test_users_without_training_events_score_zero(cls, fast, clustered_split):
    train = clustered_split.train
    model = cls(cls.Config(**{**fast, "epochs": 1})).fit(train.take(train.user != 0))
    assert not model.user_factors_[0].any() and not model.score(np.array([0]), train).any()
    assert not model.score(np.array([train.n_users + 3]), train).any()  # beyond the vocabulary


def test_fit_on_the_tiny_graph_with_an_isolated_item():
    data = tiny_interactions()
    data = Interactions.from_ids(np.append(data.user, 2), np.append(data.item, 3))  # item 3 exists ...
    data = data.take(data.item != 3)  # ... but has no edge after filtering (keeps the vocabulary)
    for cls, fast in MODELS:
        model = cls(cls.Config(**{**fast, "epochs": 2, "batch_size": 2})).fit(data)
        scores = model.score(np.arange(3), data)
        assert scores.shape == (3, 4) and np.isfinite(scores).all()


@pytest.mark.parametrize("cls,fast", MODELS)
def test_not_fitted_and_empty_data_errors(cls, fast, clustered_split):
    with pytest.raises(NotFittedError):
        cls().score(np.array([0]), clustered_split.train)
    with pytest.raises(Exception, match="empty training data"):
        cls(cls.Config(**fast)).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), bool)))


@pytest.mark.parametrize("name,cls,fast", [("lightgcn", LightGCN, LIGHTGCN_FAST), ("ngcf", NGCF, NGCF_FAST)])
def test_contract_suite_via_a_temporary_registration(name, cls, fast, clustered_split, monkeypatch):
    """The registry path works once registered (MODELS itself is edited by the integrator)."""
    from recstack import models

    monkeypatch.setitem(models.MODELS, name, f"{cls.__module__}:{cls.__name__}")
    model = build(name, {**fast, "epochs": 1})
    assert isinstance(model, cls)
    model.fit(clustered_split.train)
    users = np.array([0, 5, 5, 299])
    scores = model.score(users, clustered_split.history("test"))
    assert scores.shape == (4, clustered_split.train.n_items) and np.isfinite(scores).all()
    assert_scores_equivalent(scores[2], scores[1], what="the same user twice in one block")
