import json

import numpy as np
import pytest
import torch

from conftest import make_clustered
from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.factorization.neumf import NeuMF, NeuMFConfig, _Net, _scores
from recstack.models.protocol import ConfigError, NotFittedError, make_config
from recstack.testing import assert_scores_equivalent

FAST = dict(epochs=8, batch_size=256, learning_rate=0.01, embedding_size=16, mlp_layers=[32, 16, 8], dropout=0.0,
            verbose=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(clustered_split):
    return NeuMF(NeuMFConfig(**FAST)).fit(clustered_split.train, clustered_split.valid)


def _random_net(n_users=7, n_items=23, **config) -> _Net:
    torch.manual_seed(3)
    net = _Net(n_users, n_items, NeuMFConfig(**config))
    with torch.no_grad():  # weights large enough that the ReLUs are neither all on nor all off
        for p in net.parameters():
            p.normal_(0.0, 0.5)
    return net.eval()


def _by_hand(net: _Net, u: int, i: int) -> float:
    """One logit straight from the paper's formula, from the torch state dict, in float64."""
    s = {k: v.double().numpy() for k, v in net.state_dict().items()}
    gmf = s["user_gmf.weight"][u] * s["item_gmf.weight"][i]
    h = np.concatenate([s["user_mlp.weight"][u], s["item_mlp.weight"][i]])
    k = 0
    while f"layers.{k}.weight" in s:
        h = np.maximum(s[f"layers.{k}.weight"] @ h + s[f"layers.{k}.bias"], 0.0)
        k += 1
    return float(s["predict.weight"][0] @ np.concatenate([gmf, h]) + s["predict.bias"][0])


@pytest.mark.parametrize("layers", [[8, 6], [16, 8, 4, 3]])
def test_numpy_scores_equal_the_torch_forward_and_the_formula(layers):
    net = _random_net(embedding_size=5, mlp_layers=layers)
    users, items = np.array([0, 6, 3, 3]), np.arange(23)
    with torch.no_grad():
        expected = net(torch.as_tensor(users)[:, None], torch.as_tensor(items)[None, :]).numpy()
    scores = _scores(net.arrays(), users, None)
    assert scores.shape == (4, 23) and scores.dtype == np.float32
    assert expected.std() > 0.1  # a non-degenerate network
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert scores[1, 17] == pytest.approx(_by_hand(net, 6, 17), rel=1e-4, abs=1e-4)
    assert scores[0, 2] == pytest.approx(_by_hand(net, 0, 2), rel=1e-4, abs=1e-4)
    # shared candidates (C,) and per-user candidates (B, C)
    subset = np.array([22, 0, 5, 5])
    np.testing.assert_allclose(_scores(net.arrays(), users, subset), expected[:, subset], rtol=1e-4, atol=1e-4)
    per_user = np.random.default_rng(0).integers(0, 23, size=(4, 6))
    np.testing.assert_allclose(_scores(net.arrays(), users, per_user),
                               np.take_along_axis(expected, per_user, axis=1), rtol=1e-4, atol=1e-4)


def test_chunked_scoring_matches_unchunked(monkeypatch):
    import recstack.models.factorization.neumf as module

    net = _random_net(embedding_size=4, mlp_layers=[8, 6, 3])
    users = np.arange(7)
    whole = _scores(net.arrays(), users, None)
    monkeypatch.setattr(module, "_CHUNK_CELLS", 7 * 6 * 2)  # two items per chunk
    np.testing.assert_allclose(_scores(net.arrays(), users, None), whole, rtol=1e-5, atol=1e-6)
    per_user = np.random.default_rng(1).integers(0, 23, size=(7, 5))
    np.testing.assert_allclose(_scores(net.arrays(), users, per_user), np.take_along_axis(whole, per_user, 1), rtol=1e-5)


def test_neumf_beats_popularity_on_clustered_data(fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    neumf = evaluate(fitted, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert neumf > 0.35 and neumf > 2.5 * pop


def test_history_log_and_best_epoch_restored(fitted, clustered_split):
    history = fitted.history_
    json.dumps(history)
    assert history[0]["loss"] < np.log(2) + 1e-2  # starts near log 2 (logits near 0)
    assert history[-1]["loss"] < history[0]["loss"]
    best = max(h["NDCG@10"] for h in history)
    valid = evaluate(fitted, history=clustered_split.train, test=clustered_split.valid, metrics=["NDCG@10"])
    assert valid["NDCG@10"] == pytest.approx(best, abs=1e-6)


def test_same_seed_same_model_other_seed_other_model(clustered_split):
    def fit(seed):
        return NeuMF(NeuMFConfig(**{**FAST, "epochs": 2, "seed": seed})).fit(clustered_split.train)

    first, again, other = fit(0), fit(0), fit(1)
    users = np.arange(20)
    np.testing.assert_array_equal(again.score(users, clustered_split.train), first.score(users, clustered_split.train))
    assert np.array_equal(again.mlp_weight_1_, first.mlp_weight_1_)
    assert not np.allclose(other.item_gmf_, first.item_gmf_)


def test_save_load_round_trip(fitted, clustered_split, tmp_path):
    fitted.save(tmp_path / "neumf")
    loaded = load_model(tmp_path / "neumf")
    assert isinstance(loaded, NeuMF) and loaded.config == fitted.config
    users = np.arange(12)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), fitted.score(users, clustered_split.train))
    assert loaded.history_ == fitted.history_


def test_refit_with_another_tower_and_catalogue_replaces_state(clustered_split):
    other = make_clustered(n_users=60, n_items=40, per_user=10, seed=3)
    model = NeuMF(NeuMFConfig(**{**FAST, "epochs": 1, "mlp_layers": [8, 4, 4, 2]})).fit(other)
    assert model.score(np.array([0, 1]), other).shape == (2, 40)
    model.config = NeuMFConfig(**{**FAST, "epochs": 1})
    # validation scores the model holding this fit's arrays beside the deeper fit's mlp_weight_2_
    model.fit(clustered_split.train, clustered_split.valid)
    assert not hasattr(model, "mlp_weight_2_")
    fresh = NeuMF(NeuMFConfig(**{**FAST, "epochs": 1})).fit(clustered_split.train, clustered_split.valid)
    assert model.history_[0]["NDCG@10"] == fresh.history_[0]["NDCG@10"]
    users = np.arange(10)
    np.testing.assert_array_equal(model.score(users, clustered_split.train), fresh.score(users, clustered_split.train))


def test_untrained_and_unknown_users_score_from_the_item_side(clustered_split):
    train = clustered_split.train
    model = NeuMF(NeuMFConfig(**{**FAST, "epochs": 1})).fit(train.take(train.user != 0))
    assert not model.user_gmf_[0].any() and not model.user_mlp_[0].any()
    scores = model.score(np.array([0, train.n_users + 5]), train)
    assert np.isfinite(scores).all()
    assert_scores_equivalent(scores[1], scores[0])


def test_errors(clustered_split):
    with pytest.raises(NotFittedError):
        NeuMF().score(np.array([0]), clustered_split.train)
    with pytest.raises(Exception, match="empty training data"):
        NeuMF(NeuMFConfig(**FAST)).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), bool)))
    with pytest.raises(ConfigError, match="must be even"):
        make_config(NeuMFConfig, {"mlp_layers": [7, 4]})
    with pytest.raises(ConfigError, match="at least one hidden layer"):
        make_config(NeuMFConfig, {"mlp_layers": [8]})
