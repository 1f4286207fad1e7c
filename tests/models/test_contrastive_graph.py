"""SimGCL and DCCF: graph operators against dense numpy, InfoNCE against a hand count, noise, quality, persistence."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.graph import dccf, simgcl
from recstack.models.graph.dccf import DCCF, DCCFConfig
from recstack.models.graph.simgcl import SimGCL, SimGCLConfig

SIMGCL_FAST = dict(epochs=12, batch_size=512, learning_rate=0.02, ssl_weight=0.05, verbose=False)
DCCF_FAST = dict(epochs=10, batch_size=1024, learning_rate=0.02, embedding_size=16, n_intents=8, verbose=False)

# 3 users x 4 items; item 3 has no edge, user 2 has one
R = np.array([[1, 1, 0, 0],
              [0, 1, 1, 0],
              [1, 0, 0, 0]], dtype=np.float64)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dense_normalized(r: np.ndarray) -> np.ndarray:
    n_users, n_items = r.shape
    a = np.zeros((n_users + n_items,) * 2)
    a[:n_users, n_users:], a[n_users:, :n_users] = r, r.T
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0.0)
    return inv[:, None] * a * inv[None, :]


def _info_nce_by_hand(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    total = 0.0
    for i in range(len(a)):
        cos = [a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]) for j in range(len(b))]
        total += -np.log(np.exp(cos[i] / tau) / sum(np.exp(c / tau) for c in cos))
    return total / len(a)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---- graph operators -----------------------------------------------------------------------

def test_normalized_adjacency_matches_dense_numpy():
    expected = _dense_normalized(R)
    np.testing.assert_allclose(simgcl.normalized_adjacency(sp.csr_matrix(R)).toarray(), expected, atol=1e-12)
    np.testing.assert_allclose(dccf.normalized_adjacency(dccf.bipartite_adjacency(sp.csr_matrix(R))).toarray(),
                               expected, atol=1e-12)
    # duplicates and values other than 1 still give the binary graph
    weighted = sp.coo_matrix((np.array([5.0, 2.0, 2.0, 1.0, 3.0, 1.0]),
                              (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 2, 0]))), shape=R.shape)
    np.testing.assert_allclose(simgcl.normalized_adjacency(weighted).toarray(), expected, atol=1e-12)


def _tiny_dccf_net(seed: int = 0) -> dccf._Net:
    torch.manual_seed(seed)
    net = dccf._Net(dccf.bipartite_adjacency(sp.csr_matrix(R)), 3, 4, embedding_size=5, n_layers=2, n_intents=3)
    return net.double()


def test_dccf_edge_mask_matches_a_dense_numpy_computation():
    net = _tiny_dccf_net()
    z = np.random.default_rng(1).normal(size=(7, 5))
    a = _dense_normalized(R) > 0
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    alpha = np.where(a, (unit @ unit.T + 1) / 2, 0.0)
    rows = alpha.sum(1, keepdims=True)
    expected = np.divide(alpha, rows, out=np.zeros_like(alpha), where=rows > 0)

    values = dccf.edge_mask_values(torch.from_numpy(z), net.heads, net.tails, net.transpose)
    mask = np.zeros((7, 7))
    mask[net.heads.numpy(), net.tails.numpy()] = values.numpy()
    np.testing.assert_allclose(mask, expected, atol=1e-12)
    np.testing.assert_allclose(expected.sum(1), [1, 1, 1, 1, 1, 1, 0])  # item 3 has no edge
    # the masked product: forward and the custom backward (values and dense) against finite differences
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(7, 4)))
    np.testing.assert_allclose(net.masked_matmul(values, x).numpy(), expected @ x.numpy(), atol=1e-12)
    v = values.detach().clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda v, x: net.masked_matmul(v, x), (v, x.clone().requires_grad_(True)))


def test_dccf_layer_and_propagation_match_dense_numpy():
    net = _tiny_dccf_net()
    a_hat = _dense_normalized(R)
    mask_of = lambda m: (lambda alpha: alpha / np.maximum(alpha.sum(1, keepdims=True), 1e-300))(
        np.where(a_hat > 0, (m / np.linalg.norm(m, axis=1, keepdims=True)) @
                 (m / np.linalg.norm(m, axis=1, keepdims=True)).T / 2 + 0.5, 0.0))
    c_u, c_i = net.user_intent.detach().numpy(), net.item_intent.detach().numpy()

    e = np.vstack([net.user_embedding.detach().numpy(), net.item_embedding.detach().numpy()])
    total, layers = e.copy(), []
    with np.errstate(invalid="ignore"):  # the isolated item's local row is 0: its 0/0 cosines are masked out
        for _ in range(2):
            local = a_hat @ e
            intent = np.vstack([_softmax(e[:3] @ c_u) @ c_u.T, _softmax(e[3:] @ c_i) @ c_i.T])
            graph_aug, intent_aug = mask_of(local) @ e, mask_of(intent) @ e
            layers.append((local, intent, graph_aug, intent_aug))
            e = local + intent + graph_aug + intent_aug + e
            total = total + e
    with torch.no_grad():
        final, views = net.propagate()
    # A_hat is stored in float32, hence the tolerance
    np.testing.assert_allclose(final.numpy(), total, rtol=1e-6, atol=1e-7)
    for got, want in zip(views, layers):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-6, atol=1e-7)


def test_simgcl_propagation_is_the_mean_of_layers_one_to_k():
    a_hat = _dense_normalized(R)
    torch.manual_seed(0)
    net = simgcl._Net(simgcl.sparse_tensor(simgcl.normalized_adjacency(sp.csr_matrix(R))), 3, 4, 6, 3, 0.1)
    e0 = net.embedding.weight.detach().numpy().astype(np.float64)
    expected = (a_hat @ e0 + a_hat @ a_hat @ e0 + a_hat @ a_hat @ a_hat @ e0) / 3  # no layer-0 term
    with torch.no_grad():
        np.testing.assert_allclose(net.propagate().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_simgcl_noise_has_the_sign_of_e_and_norm_eps_per_row():
    torch.manual_seed(3)
    e = torch.randn(50, 16)
    e[0, :5] = 0.0  # zero entries get no noise
    delta = simgcl.perturbation(e, 0.1)
    assert torch.all(torch.sign(delta[1:]) == torch.sign(e[1:]))
    assert torch.all(delta[0, :5] == 0) and torch.all(torch.sign(delta[0, 5:]) == torch.sign(e[0, 5:]))
    np.testing.assert_allclose(delta[1:].norm(dim=1).numpy(), 0.1, rtol=1e-5)
    assert not torch.allclose(simgcl.perturbation(e, 0.1), delta)  # a fresh draw every call
    # the perturbed propagation differs from the clean one by at most eps per row (mean of layers)
    torch.manual_seed(0)
    net = simgcl._Net(simgcl.sparse_tensor(simgcl.normalized_adjacency(sp.csr_matrix(R))), 3, 4, 6, 1, 0.1)
    with torch.no_grad():
        diff = (net.propagate(0.1) - net.propagate()).norm(dim=1).numpy()
    np.testing.assert_allclose(diff[:6], 0.1, rtol=1e-5)  # one layer: exactly the noise
    assert diff[6] == 0  # the isolated item's row stays zero, so its noise is zero


# ---- InfoNCE ---------------------------------------------------------------------------------

def test_contrastive_losses_match_a_hand_count():
    rng = np.random.default_rng(5)
    view1, view2 = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    users, items = torch.tensor([2, 0, 2, 1]), torch.tensor([1, 1, 3])  # repeats count once
    got = simgcl.contrastive_loss(torch.from_numpy(view1), torch.from_numpy(view2), users, items, 3, 0.2)
    u, i = [0, 1, 2], [3 + 1, 3 + 3]
    expected = _info_nce_by_hand(view1[u], view2[u], 0.2) + _info_nce_by_hand(view1[i], view2[i], 0.2)
    assert float(got) == pytest.approx(expected, rel=1e-10)

    # DCCF: per layer, the local view against each of the three others, for users and for items
    layers = [tuple(torch.from_numpy(rng.normal(size=(7, 3))) for _ in range(4)) for _ in range(2)]
    got = dccf.contrastive_loss(layers, users, items, 3, 0.5)
    expected = sum(_info_nce_by_hand(local.numpy()[idx], other.numpy()[idx], 0.5)
                   for local, *others in layers for other in others for idx in (u, i))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    # a hand number: two orthogonal pairs, tau = 1: -log(e / (e + 1))
    a = np.eye(2)
    assert _info_nce_by_hand(a, a, 1.0) == pytest.approx(np.log1p(np.exp(-1.0)))


# ---- fitted models -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(clustered_split):
    return {
        "simgcl": SimGCL(SimGCLConfig(**SIMGCL_FAST)).fit(clustered_split.train, clustered_split.valid),
        "dccf": DCCF(DCCFConfig(**DCCF_FAST)).fit(clustered_split.train, clustered_split.valid),
    }


@pytest.mark.parametrize("name", ["simgcl", "dccf"])
def test_beats_popularity_on_clustered_data(name, fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    model = evaluate(fitted[name], history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert model > 0.4 and model > 3 * pop, (model, pop)


@pytest.mark.parametrize("name", ["simgcl", "dccf"])
def test_score_is_the_dot_product_of_the_stored_factors(name, fitted, clustered_split):
    model = fitted[name]
    users = np.arange(10)
    expected = model.user_factors_[users] @ model.item_factors_.T
    np.testing.assert_allclose(model.score(users, clustered_split.train), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(users, clustered_split.train, np.array([3, 1])), expected[:, [3, 1]],
                               rtol=1e-5, atol=1e-6)
    assert model.user_factors_.dtype == np.float32 and len(model.history_) >= 1 and model.best_epoch_ >= 1


@pytest.mark.parametrize("cls, config, fast", [(SimGCL, SimGCLConfig, SIMGCL_FAST), (DCCF, DCCFConfig, DCCF_FAST)])
def test_same_seed_same_model_other_seed_other_model(cls, config, fast, clustered_split):
    def fit(seed):
        return cls(config(**{**fast, "epochs": 2, "seed": seed})).fit(clustered_split.train, clustered_split.valid)

    torch.set_num_threads(2)  # the backward of tensor[index] accumulates in a thread-dependent order
    try:
        first, again, other = fit(0), fit(0), fit(1)
    finally:
        torch.set_num_threads(1)
    assert np.array_equal(first.user_factors_, again.user_factors_)
    assert np.array_equal(first.item_factors_, again.item_factors_)
    assert first.history_[-1]["loss"] == again.history_[-1]["loss"]
    assert not np.allclose(first.item_factors_, other.item_factors_)


@pytest.mark.parametrize("name", ["simgcl", "dccf"])
def test_save_load_round_trip(name, fitted, clustered_split, tmp_path):
    model = fitted[name]
    model.save(tmp_path / name)
    loaded = load_model(tmp_path / name)  # resolves "module:Class" from model.json
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    users = np.arange(20)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), model.score(users, clustered_split.train))
    assert loaded.history_ == model.history_ and loaded.best_epoch_ == model.best_epoch_


@pytest.mark.parametrize("cls, config, fast", [(SimGCL, SimGCLConfig, SIMGCL_FAST), (DCCF, DCCFConfig, DCCF_FAST)])
def test_users_without_training_events_score_zero(cls, config, fast, clustered_split):
    train = clustered_split.train
    model = cls(config(**{**fast, "epochs": 1})).fit(train.take(train.user != 0))
    assert not model.user_factors_[0].any() and not model.score(np.array([0]), train).any()


def test_empty_training_data_is_a_clear_error(clustered_split):
    empty = clustered_split.train.take(np.zeros(len(clustered_split.train), bool))
    for model in (SimGCL(SimGCLConfig(**SIMGCL_FAST)), DCCF(DCCFConfig(**DCCF_FAST))):
        with pytest.raises(Exception, match="empty training data"):
            model.fit(empty)
