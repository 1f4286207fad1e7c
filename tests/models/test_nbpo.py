import math

import numpy as np
import pytest
import torch

from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.factorization.nbpo import (
    NBPO,
    NBPOConfig,
    nbpo_loss,
    noisy_label_probability,
    noisy_nll,
)
from recstack.models.protocol import ConfigError, NotFittedError, make_config

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
        noise: NBPO(NBPOConfig(**FAST, noise=noise)).fit(clustered_split.train, clustered_split.valid)
        for noise in ("low_rank", "global", "fixed")
    }


def _logit(p: float) -> float:
    return -math.inf if p == 0 else math.log(p / (1 - p))


@pytest.mark.parametrize("rho_10, rho_01", [(0.2, 0.0), (0.3, 0.05), (0.0, 0.1), (0.6, 0.3)])
def test_corrected_likelihood_equals_the_hand_formula(rho_10, rho_01):
    scores = [-3.0, -0.5, 0.0, 1.2, 4.0]
    for s in scores:
        clean = 1 / (1 + math.exp(-s))
        p_observed = clean * (1 - rho_10) + (1 - clean) * rho_01
        t = torch.tensor([s], dtype=torch.float64)
        l10, l01 = torch.tensor(_logit(rho_10), dtype=torch.float64), torch.tensor(_logit(rho_01), dtype=torch.float64)
        assert noisy_nll(t, True, l10, l01).item() == pytest.approx(-math.log(p_observed), rel=1e-9)
        assert noisy_nll(t, False, l10, l01).item() == pytest.approx(-math.log(1 - p_observed), rel=1e-9)
        assert noisy_label_probability(np.array(s), rho_10, rho_01) == pytest.approx(p_observed, rel=1e-12)


def test_batch_loss_averages_clicks_and_sampled_non_clicks():
    pos, neg = torch.tensor([0.5, -1.0]), torch.tensor([[0.0, 2.0], [-2.0, 1.0]])
    rho, fixed = 0.25, torch.tensor(-math.inf)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    terms = [-math.log(sig(s) * (1 - rho)) for s in (0.5, -1.0)]
    terms += [-math.log(1 - sig(s) * (1 - rho)) for s in (0.0, 2.0, -2.0, 1.0)]
    logit = torch.tensor(_logit(rho))
    assert nbpo_loss(pos, neg, logit, logit, fixed).item() == pytest.approx(sum(terms) / 6, rel=1e-5)


def test_reduces_to_bce_at_zero_noise_with_finite_gradients():
    generator = torch.Generator().manual_seed(0)
    scores = (3 * torch.randn(20, generator=generator)).requires_grad_()
    zero = torch.tensor(-math.inf)
    pos = noisy_nll(scores, True, zero, zero)
    neg = noisy_nll(scores, False, zero, zero)
    bce_pos = torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.ones(20), reduction="none")
    bce_neg = torch.nn.functional.binary_cross_entropy_with_logits(scores, torch.zeros(20), reduction="none")
    torch.testing.assert_close(pos, bce_pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(neg, bce_neg, rtol=1e-5, atol=1e-6)
    (pos.sum() + neg.sum()).backward()
    assert torch.isfinite(scores.grad).all()
    # with noise the loss of a confident negative is capped near -log(rho): it is a possible unlabelled positive
    rho = torch.tensor(_logit(0.2))
    assert noisy_nll(torch.tensor([10.0]), False, rho, zero).item() == pytest.approx(-math.log(0.2), rel=1e-3)


@pytest.mark.parametrize("noise", ["low_rank", "global", "fixed"])
def test_beats_popularity_on_clustered_data(noise, fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    ndcg = evaluate(fitted[noise], history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > 0.3 and ndcg > 2 * pop


def test_noise_models_learn_or_stay_fixed_and_flip_rate_matches_the_stored_factors(fitted):
    start = _logit(0.1)
    assert fitted["fixed"].noise_logit_ == pytest.approx(start, abs=1e-6)
    assert fitted["global"].noise_logit_ != pytest.approx(start, abs=1e-3)
    assert not hasattr(fitted["global"], "noise_user_factors_")
    low_rank = fitted["low_rank"]
    users, items = np.array([0, 7, 7, 100]), np.array([3, 3, 50, 119])
    logit = low_rank.noise_logit_ + (low_rank.noise_user_factors_[users] * low_rank.noise_item_factors_[items]).sum(1)
    np.testing.assert_allclose(low_rank.flip_rate(users, items), 1 / (1 + np.exp(-logit)), rtol=1e-5)
    np.testing.assert_allclose(fitted["global"].flip_rate(users, items), 1 / (1 + np.exp(-fitted["global"].noise_logit_)))


def test_score_is_p_q_plus_item_bias(fitted, clustered_split):
    model = fitted["low_rank"]
    users = np.array([1, 2, 2, 299])
    expected = model.user_factors_[users] @ model.item_factors_.T + model.item_bias_
    np.testing.assert_allclose(model.score(users, clustered_split.train), expected, rtol=1e-5, atol=1e-6)


def test_same_seed_same_model_other_seed_other_model(clustered_split):
    def fit(seed):
        return NBPO(NBPOConfig(**{**FAST, "epochs": 3, "seed": seed})).fit(clustered_split.train, clustered_split.valid)

    first, again, other = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(again.item_factors_, first.item_factors_)
    np.testing.assert_array_equal(again.noise_item_factors_, first.noise_item_factors_)
    assert not np.allclose(other.item_factors_, first.item_factors_)


@pytest.mark.parametrize("noise", ["low_rank", "fixed"])
def test_save_load_round_trip(noise, fitted, clustered_split, tmp_path):
    model = fitted[noise]
    model.save(tmp_path / noise)
    loaded = load_model(tmp_path / noise)
    assert type(loaded) is NBPO and loaded.config == model.config
    users = np.arange(12)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), model.score(users, clustered_split.train))
    np.testing.assert_array_equal(loaded.flip_rate(users, users), model.flip_rate(users, users))
    assert loaded.history_ == model.history_


def test_refit_with_another_noise_model_drops_the_old_flip_factors(clustered_split):
    model = NBPO(NBPOConfig(**{**FAST, "epochs": 1})).fit(clustered_split.train)
    assert hasattr(model, "noise_user_factors_")
    model.config = NBPOConfig(**{**FAST, "epochs": 1, "noise": "fixed"})
    model.fit(clustered_split.train)
    assert not hasattr(model, "noise_user_factors_")


def test_config_errors_and_not_fitted(clustered_split):
    with pytest.raises(ConfigError, match="must be < 1"):
        make_config(NBPOConfig, {"noise_rate": 0.6, "positive_noise_rate": 0.4})
    with pytest.raises(ConfigError, match="starting noise_rate > 0"):
        make_config(NBPOConfig, {"noise": "global", "noise_rate": 0.0})
    make_config(NBPOConfig, {"noise": "fixed", "noise_rate": 0.0})  # plain BCE MF is allowed
    with pytest.raises(NotFittedError):
        NBPO().score(np.array([0]), clustered_split.train)
    with pytest.raises(RecstackError, match="empty training data"):
        NBPO(NBPOConfig(**FAST)).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), bool)))


def test_at_zero_noise_it_trains_the_same_model_as_naive_pointwise_mf(clustered_split):
    from recstack.models.factorization.relmf import NaiveMF, NaiveMFConfig

    params = {**FAST, "epochs": 2}
    nbpo = NBPO(NBPOConfig(**params, noise="fixed", noise_rate=0.0)).fit(clustered_split.train)
    naive = NaiveMF(NaiveMFConfig(**params)).fit(clustered_split.train)
    np.testing.assert_allclose(nbpo.item_factors_, naive.item_factors_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(nbpo.user_factors_, naive.user_factors_, rtol=1e-3, atol=1e-5)
