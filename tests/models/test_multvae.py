import math

import numpy as np
import pytest
import torch

from conftest import make_clustered
from recstack.evaluate import evaluate
from recstack.models import ConfigError, build, load_model, make_config
from recstack.models.factorization.multvae import (
    MultDAE,
    MultVAE,
    _Net,
    _scores,
    gaussian_kl,
    multinomial_nll,
)
from recstack.models.protocol import NotFittedError
from recstack.testing import assert_scores_equivalent

FAST = dict(epochs=25, hidden_size=64, embedding_size=16, batch_size=64, learning_rate=3e-3, verbose=False)
VAE_FAST = dict(FAST, anneal_steps=50, beta_max=0.2)
CLASSES = [(MultVAE, VAE_FAST), (MultDAE, FAST)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vae(clustered_split):
    return MultVAE(MultVAE.Config(**VAE_FAST)).fit(clustered_split.train, clustered_split.valid)


@pytest.fixture(scope="module")
def dae(clustered_split):
    return MultDAE(MultDAE.Config(**FAST)).fit(clustered_split.train, clustered_split.valid)


def ndcg(model, split) -> float:
    return evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]


def test_multinomial_loss_on_a_hand_worked_example():
    # user 1: softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6, items 0 and 2 -> -(ln 1/6 + ln 3/6) = 2 ln 6 - ln 3
    # user 2: uniform over 3 items, item 1 -> ln 3;   mean over the two users = ln 6
    logits = torch.tensor([[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert multinomial_nll(logits, x).item() == pytest.approx(math.log(6), abs=1e-6)
    # adding a constant to a user's logits changes nothing (softmax is shift invariant)
    assert multinomial_nll(logits + torch.tensor([[5.0], [-2.0]]), x).item() == pytest.approx(math.log(6), abs=1e-5)


def test_kl_matches_the_closed_form_and_torch_distributions():
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, e^-2) || N(0, 1)) = (e^-2 + 2 - 1) / 2
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, -2.0]])
    np.testing.assert_allclose(gaussian_kl(mu, logvar).numpy(), [[0.5, (math.exp(-2) + 1) / 2]], rtol=1e-6)
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    prior = torch.rand(4, generator=gen) + 0.1
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros(4), torch.ones(4)))
    np.testing.assert_allclose(gaussian_kl(mu, logvar).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros(4), prior.sqrt()))
    np.testing.assert_allclose(gaussian_kl(mu, logvar, prior).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variational", [True, False])
def test_numpy_scores_equal_the_torch_forward_in_eval_mode(variational, clustered_split):
    history = clustered_split.train
    torch.manual_seed(3)
    net = _Net(history.n_items, 32, 8, dropout=0.5, variational=variational).eval()
    users = np.array([0, 7, 7, 100, 299])
    x = torch.from_numpy(history.matrix()[users].toarray().astype(np.float32))
    with torch.no_grad():
        expected = net(x)[0].numpy()
        again = net(x)[0].numpy()  # eval mode: no dropout, no sampling
    np.testing.assert_array_equal(expected, again)
    np.testing.assert_allclose(_scores(net.weights(), users, history, None), expected, rtol=1e-4, atol=1e-5)


def test_fitted_model_scores_like_its_torch_network(vae, clustered_split):
    history = clustered_split.history("test")
    net = _Net(history.n_items, 64, 16, dropout=0.5, variational=True).eval()
    with torch.no_grad():
        for name in ("encoder_1", "encoder_2", "decoder_1", "decoder_2"):
            getattr(net, name).weight.copy_(torch.from_numpy(getattr(vae, f"{name}_weight_").T))
            getattr(net, name).bias.copy_(torch.from_numpy(getattr(vae, f"{name}_bias_")))
        # the hand-written normalisation: x / ||x||_2 of the binary row
        x = history.matrix()[np.arange(50)].toarray().astype(np.float32)
        x = (x > 0).astype(np.float32)
        h = torch.tanh(net.encoder_1(torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))))
        mu = net.encoder_2(h)[:, :16]
        expected = net.decoder_2(torch.tanh(net.decoder_1(mu))).numpy()
    np.testing.assert_allclose(vae.score(np.arange(50), history), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["vae", "dae"])
def test_beats_popularity_on_clustered_data(which, request, clustered_split):
    model = request.getfixturevalue(which)
    pop = build("pop").fit(clustered_split.train)
    ours, theirs = ndcg(model, clustered_split), ndcg(pop, clustered_split)
    assert ours > 0.3 and ours > 2 * theirs


def test_new_users_are_folded_in_from_history_alone(clustered_split):
    split = clustered_split
    held_out = np.arange(0, split.train.n_users, 5)  # a fifth of the users never seen in training
    train = split.train.take(~np.isin(split.train.user, held_out))
    model = MultVAE(MultVAE.Config(**VAE_FAST)).fit(train)
    history, test = split.history("test"), split.test
    test_new = test.take(np.isin(test.user, held_out))
    new = evaluate(model, history, test_new, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(train), history, test_new, metrics=["NDCG@10"])["NDCG@10"]
    assert new > 0.3 and new > 2 * pop
    # change the history of a held-out user: the scores change, and follow the new history
    user = np.array([held_out[0]])
    other = history.take(history.user != user[0])
    before, after = model.score(user, history), model.score(user, other)
    assert not np.allclose(before, after)
    assert_scores_equivalent(model.score(np.array([held_out[1]]), other.take(other.user != held_out[1])), after)


def test_ard_marks_only_a_few_of_sixteen_dimensions_relevant(clustered_split):
    model = MultVAE(MultVAE.Config(**{**VAE_FAST, "ard": True, "epochs": 40})).fit(clustered_split.train,
                                                                                  clustered_split.valid)
    assert model.prior_variance_.shape == model.relevance_.shape == model.kl_per_dim_.shape == (16,)
    assert 1 <= model.relevant_dims_count_ < 16 == model.config.embedding_size
    assert model.relevant_dims_count_ == len(model.relevant_dims_)
    irrelevant = np.setdiff1d(np.arange(16), model.relevant_dims_)
    # the irrelevant dimensions collapsed: tiny prior variance, and the codes barely move along them
    assert model.prior_variance_[irrelevant].max() < 0.01 * model.prior_variance_.max()
    users = np.arange(clustered_split.train.n_users)
    codes = model.embed(users, clustered_split.train)
    spread = codes.std(0)
    assert spread[irrelevant].max() < 0.2 * spread[model.relevant_dims_].max()

    # ablation by hand: zeroing the irrelevant coordinates leaves the ranking intact, zeroing the
    # relevant ones destroys it
    def decode(z):
        h = np.tanh(z @ model.decoder_1_weight_ + model.decoder_1_bias_)
        return h @ model.decoder_2_weight_ + model.decoder_2_bias_

    class Ablated:
        def __init__(self, dims):
            self.dims = dims

        def score(self, users, history, items=None):
            z = model.embed(users, history)
            z[:, self.dims] = 0.0
            return decode(z).astype(np.float32)

    np.testing.assert_allclose(Ablated(np.array([], dtype=int)).score(users[:9], clustered_split.train),
                               model.score(users[:9], clustered_split.train), rtol=1e-4, atol=1e-5)
    full = ndcg(model, clustered_split)
    assert full > 0.3
    assert ndcg(Ablated(irrelevant), clustered_split) > full - 0.02
    assert ndcg(Ablated(model.relevant_dims_), clustered_split) < full - 0.1


def test_dae_code_is_deterministic_and_bounded(dae, clustered_split):
    codes = dae.embed(np.arange(20), clustered_split.train)
    assert codes.shape == (20, 16) and np.abs(codes).max() <= 1.0  # tanh code
    assert dae.encoder_2_weight_.shape == (64, 16)  # no logvar half
    assert not hasattr(dae, "relevance_")
    with pytest.raises(ConfigError, match="ard"):
        make_config(MultDAE.Config, {"ard": True})


@pytest.mark.parametrize("cls,fast", CLASSES)
def test_same_seed_same_model_other_seed_other_model(cls, fast, clustered_split):
    def fit(seed):
        return cls(cls.Config(**{**fast, "epochs": 3, "seed": seed})).fit(clustered_split.train, clustered_split.valid)

    first, again, other = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(again.decoder_2_weight_, first.decoder_2_weight_)
    assert again.history_ == [dict(h, seconds=a["seconds"]) for h, a in zip(first.history_, again.history_)]
    assert not np.allclose(other.decoder_2_weight_, first.decoder_2_weight_)


@pytest.mark.parametrize("cls,fast", CLASSES)
def test_save_load_round_trip(cls, fast, clustered_split, tmp_path):
    params = {**fast, "epochs": 3, "ard": True} if cls is MultVAE else {**fast, "epochs": 3}
    model = cls(cls.Config(**params)).fit(clustered_split.train, clustered_split.valid)
    model.save(tmp_path / "m")
    assert not any(p.suffix in {".pkl", ".pt"} for p in (tmp_path / "m").iterdir())
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is cls and loaded.config == model.config
    users = np.array([0, 5, 5, 299])
    history = clustered_split.history("test")
    np.testing.assert_array_equal(loaded.score(users, history), model.score(users, history))
    assert loaded.history_ == model.history_ and loaded.best_epoch_ == model.best_epoch_
    if cls is MultVAE:
        np.testing.assert_array_equal(loaded.relevant_dims_, model.relevant_dims_)
        assert loaded.relevant_dims_count_ == model.relevant_dims_count_


@pytest.mark.contract
@pytest.mark.parametrize("cls,fast", CLASSES)
def test_contract_essentials(cls, fast, clustered_split, monkeypatch):
    from recstack import models

    name = cls.__name__.lower()
    monkeypatch.setitem(models.MODELS, name, f"{cls.__module__}:{cls.__name__}")
    with pytest.raises(NotFittedError):
        build(name, fast).score(np.array([0]), clustered_split.train)
    with pytest.raises(ConfigError, match="did you mean 'embedding_size'"):
        make_config(cls.Config, {"embeding_size": 8})
    other = make_clustered(n_users=60, n_items=40, per_user=10, seed=3)
    model = build(name, {**fast, "epochs": 2}).fit(other)
    assert model.score(np.array([0, 1]), other).shape == (2, 40)
    model.fit(clustered_split.train)  # refit on another catalogue replaces the state
    fresh = build(name, {**fast, "epochs": 2}).fit(clustered_split.train)
    history = clustered_split.history("test")
    users = np.array([0, 5, 17, 299, 5])
    full = model.score(users, history)
    assert_scores_equivalent(full, fresh.score(users, history))
    assert full.dtype == np.float32 and full.shape == (5, history.n_items) and np.isfinite(full).all()
    assert_scores_equivalent(full[4], full[1], what="the same user twice in one block")
    subset = np.array([7, 0, 119, 3, 3])
    np.testing.assert_allclose(model.score(users, history, subset), full[:, subset], rtol=1e-6)
    per_user = np.random.default_rng(0).integers(0, history.n_items, size=(5, 4))
    np.testing.assert_allclose(model.score(users, history, per_user), np.take_along_axis(full, per_user, 1), rtol=1e-6)
    full[:] = 0.0
    assert model.score(users, history).any()  # a fresh array each call
    empty = history.take(history.user != 5)  # an empty history scores without error
    empty_scores = model.score(np.array([5]), empty)
    assert np.isfinite(empty_scores).all()
    beyond = model.score(np.array([0, history.n_users + 3, 17]), history)  # beyond the vocabulary: empty history
    np.testing.assert_allclose(beyond[1], empty_scores[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(beyond[[0, 2]], model.score(np.array([0, 17]), history), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="empty training data"):
        build(name, fast).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), bool)))
