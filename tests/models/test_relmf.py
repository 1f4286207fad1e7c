import math

import numpy as np
import pytest
import torch

from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.factorization.relmf import (
    NaiveMF,
    NaiveMFConfig,
    RelMF,
    RelMFConfig,
    item_propensities,
    relmf_loss,
)
from recstack.models.protocol import ConfigError, NotFittedError, make_config
from recstack.train.losses import bce_loss

FAST = dict(epochs=15, batch_size=256, learning_rate=0.01, n_negatives=4, verbose=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(clustered_split):
    return {
        "relmf": RelMF(RelMFConfig(**FAST)).fit(clustered_split.train, clustered_split.valid),
        "naive": NaiveMF(NaiveMFConfig(**FAST)).fit(clustered_split.train, clustered_split.valid),
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_propensity_is_popularity_to_the_power_half_clipped_below():
    counts = np.array([16, 4, 1, 0, 9])
    # (n / 16) ** 0.5 = 1, 0.5, 0.25, 0, 0.75 ; then max(., clip)
    np.testing.assert_allclose(item_propensities(counts, 0.5, 0.1), [1.0, 0.5, 0.25, 0.1, 0.75], rtol=1e-6)
    np.testing.assert_allclose(item_propensities(counts, 0.5, 0.3), [1.0, 0.5, 0.3, 0.3, 0.75], rtol=1e-6)
    np.testing.assert_allclose(item_propensities(counts, 1.0, 0.1), [1.0, 0.25, 0.1, 0.1, 0.5625], rtol=1e-6)
    assert item_propensities(counts).dtype == np.float32
    np.testing.assert_array_equal(item_propensities(np.zeros(3)), np.ones(3))


def test_unbiased_loss_on_a_hand_worked_example():
    pos = torch.tensor([0.0, 2.0, -1.0])
    theta = torch.tensor([0.5, 1.0, 0.25])
    neg = torch.tensor([[-1.0], [1.0], [0.5]])
    # click 1: Y/theta = 2 -> -(2 log sigma(0) + (1 - 2) log(1 - sigma(0))) = -(2 - 1) log 0.5 = log 2
    click_1 = math.log(2.0)
    # click 2: theta = 1 -> plain -log sigma(2)
    click_2 = -math.log(_sigmoid(2.0))
    # click 3: Y/theta = 4 -> -(4 log sigma(-1) - 3 log(1 - sigma(-1)))
    click_3 = -(4 * math.log(_sigmoid(-1.0)) - 3 * math.log(1 - _sigmoid(-1.0)))
    # non-clicks: weight 1 on -log(1 - sigma(s))
    negatives = sum(-math.log(1 - _sigmoid(s)) for s in (-1.0, 1.0, 0.5))
    expected = (click_1 + click_2 + click_3 + negatives) / 6
    assert relmf_loss(pos, neg, theta).item() == pytest.approx(expected, rel=1e-6)


def test_naive_variant_is_plain_binary_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(7, generator=generator), torch.randn(7, 3, generator=generator)
    labels = torch.cat([torch.ones(7), torch.zeros(21)])
    by_hand = torch.nn.functional.binary_cross_entropy(torch.sigmoid(torch.cat([pos, neg.flatten()])), labels)
    assert relmf_loss(pos, neg, None).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert relmf_loss(pos, neg, torch.ones(7)).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert bce_loss(pos, neg).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert relmf_loss(pos, neg, torch.full((7,), 0.5)).item() != pytest.approx(by_hand.item(), rel=1e-3)


def test_fit_uses_distinct_user_popularity_for_propensities(fitted, clustered_split):
    train = clustered_split.train
    users_of = [set() for _ in range(train.n_items)]
    for u, i in zip(train.user.tolist(), train.item.tolist()):
        users_of[i].add(u)
    counts = np.array([len(s) for s in users_of], dtype=float)
    expected = np.maximum(np.sqrt(counts / counts.max()), 0.1)
    np.testing.assert_allclose(fitted["relmf"].propensity_, expected, rtol=1e-6)
    np.testing.assert_array_equal(fitted["naive"].propensity_, np.ones(train.n_items))


@pytest.mark.parametrize("name", ["relmf", "naive"])
def test_beats_popularity_on_clustered_data(name, fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    ndcg = evaluate(fitted[name], history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > 0.3 and ndcg > 2 * pop


@pytest.mark.parametrize("name", ["relmf", "naive"])
def test_score_is_p_q_plus_item_bias_and_history_is_kept(name, fitted, clustered_split):
    model = fitted[name]
    users = np.array([0, 3, 3, 250])
    expected = model.user_factors_[users] @ model.item_factors_.T + model.item_bias_
    scores = model.score(users, clustered_split.train)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(users, clustered_split.train, np.array([4, 1])), expected[:, [4, 1]], rtol=1e-5)
    values = [h["NDCG@10"] for h in model.history_]
    assert model.best_epoch_ == 1 + int(np.argmax(values))


def test_same_seed_same_model_other_seed_other_model(clustered_split):
    def fit(seed):
        return RelMF(RelMFConfig(**{**FAST, "epochs": 3, "seed": seed})).fit(clustered_split.train, clustered_split.valid)

    first, again, other = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(again.item_factors_, first.item_factors_)
    np.testing.assert_array_equal(again.user_factors_, first.user_factors_)
    assert not np.allclose(other.item_factors_, first.item_factors_)


@pytest.mark.parametrize("name", ["relmf", "naive"])
def test_save_load_round_trip(name, fitted, clustered_split, tmp_path):
    model = fitted[name]
    model.save(tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model) and loaded.config == model.config
    users = np.arange(12)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), model.score(users, clustered_split.train))
    np.testing.assert_array_equal(loaded.propensity_, model.propensity_)
    assert loaded.history_ == model.history_


def test_config_errors_and_not_fitted(clustered_split):
    with pytest.raises(ConfigError):
        make_config(NaiveMFConfig, {"unbiased": True})  # the naive class is theta = 1 by definition
    with pytest.raises(ConfigError, match="propensity_clip"):
        make_config(RelMFConfig, {"propensity_clip": 0.0})
    with pytest.raises(RecstackError, match="reg > 0"):
        RelMF(RelMFConfig(**FAST, reg=0.0)).fit(clustered_split.train)
    with pytest.raises(NotFittedError):
        NaiveMF().score(np.array([0]), clustered_split.train)
    with pytest.raises(RecstackError, match="empty training data"):
        RelMF(RelMFConfig(**FAST)).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), bool)))


def test_users_without_training_events_get_zero_factors(clustered_split):
    train = clustered_split.train
    model = NaiveMF(NaiveMFConfig(**{**FAST, "epochs": 2})).fit(train.take(train.user != 0))
    assert not model.user_factors_[0].any()
    np.testing.assert_allclose(model.score(np.array([0, train.n_users + 2]), train), np.stack([model.item_bias_] * 2))
