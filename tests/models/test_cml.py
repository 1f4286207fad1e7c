import math

import numpy as np
import pytest
import torch

from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.factorization.cml import CML, CMLConfig, cml_loss, covariance_loss
from recstack.models.protocol import NotFittedError
from recstack.testing import assert_scores_equivalent

FAST = dict(epochs=8, batch_size=256, learning_rate=0.01, verbose=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(clustered_split):
    return CML(CMLConfig(**FAST)).fit(clustered_split.train, clustered_split.valid)


def test_hinge_loss_on_a_hand_worked_example():
    # row 0: user at the origin, positive at distance^2 1; negatives at distance^2 0.25, 4, 1.44.
    #   margin 0.5: impostors are those with 0.5 + 1 - d^2 > 0 -> 0.25 and 1.44, so M = 2 of U = 3;
    #   weight log(1 + J*M/U) = log(1 + 10*2/3) = log(23/3); hinge vs the closest: 0.5 + 1 - 0.25 = 1.25
    # row 1: positive at distance^2 0.01, every negative farther than 0.51 -> no impostor, zero loss
    user = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0], [0.1, 0.0]], requires_grad=True)
    neg = torch.tensor([[[0.5, 0.0], [2.0, 0.0], [0.0, 1.2]],
                        [[1.0, 0.0], [0.0, -1.0], [0.8, 0.6]]], requires_grad=True)
    loss = cml_loss(user, pos, neg, margin=0.5, n_items=10)
    weight = math.log(23 / 3)
    assert loss.item() == pytest.approx(1.25 * weight / 2, rel=1e-6)
    loss.backward()
    # the weight is a constant: d/d pos_0 of weight * |pos_0|^2 / 2 = weight * pos_0
    np.testing.assert_allclose(pos.grad.numpy(), [[weight, 0.0], [0.0, 0.0]], rtol=1e-6)
    # only the closest negative of row 0 gets a gradient: -weight * 2 * (neg - user) / 2
    expected = np.zeros((2, 3, 2))
    expected[0, 0] = [-weight * 0.5, 0.0]
    np.testing.assert_allclose(neg.grad.numpy(), expected, rtol=1e-6, atol=1e-12)


def test_covariance_loss_is_the_squared_off_diagonal_covariance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    x = np.vstack([a, b])
    cov = np.cov(x, rowvar=False, bias=True)
    expected = (cov ** 2).sum() - (np.diag(cov) ** 2).sum()
    got = covariance_loss(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(expected, rel=1e-10)
    # independent coordinates: zero
    assert covariance_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])).item() == pytest.approx(0.0)


def test_rows_lie_in_the_unit_ball_and_clipping_was_active(fitted):
    for factors in (fitted.user_factors_, fitted.item_factors_):
        norms = np.linalg.norm(factors.astype(np.float64), axis=1)
        assert norms.max() <= 1.0 + 1e-5
    assert np.linalg.norm(fitted.user_factors_, axis=1).max() > 0.99  # rows reached the boundary


def test_score_is_minus_squared_distance(fitted, clustered_split):
    users = np.array([0, 3, 299, 3])
    u, v = fitted.user_factors_[users].astype(np.float64), fitted.item_factors_.astype(np.float64)
    expected = -((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    scores = fitted.score(users, clustered_split.train)
    assert scores.dtype == np.float32 and scores.shape == (4, clustered_split.train.n_items)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    subset = np.array([7, 0, 119, 3])
    np.testing.assert_allclose(fitted.score(users, clustered_split.train, subset), expected[:, subset], rtol=1e-5, atol=1e-5)
    per_user = np.random.default_rng(0).integers(0, 120, size=(4, 5))
    np.testing.assert_allclose(fitted.score(users, clustered_split.train, per_user),
                               np.take_along_axis(expected, per_user, axis=1), rtol=1e-5, atol=1e-5)


def test_cml_beats_popularity_on_clustered_data(fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    cml = evaluate(fitted, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert cml > 0.35 and cml > 2.5 * pop


def test_best_epoch_is_restored(fitted, clustered_split):
    best = max(h["NDCG@10"] for h in fitted.history_)
    valid = evaluate(fitted, history=clustered_split.train, test=clustered_split.valid, metrics=["NDCG@10"])
    assert valid["NDCG@10"] == pytest.approx(best, abs=1e-6)
    assert fitted.history_[-1]["loss"] < fitted.history_[0]["loss"]


def test_same_seed_same_model_other_seed_other_model(clustered_split):
    def fit(seed):
        return CML(CMLConfig(**{**FAST, "epochs": 2, "seed": seed})).fit(clustered_split.train)

    first, again, other = fit(0), fit(0), fit(1)
    assert np.array_equal(again.user_factors_, first.user_factors_)
    assert np.array_equal(again.item_factors_, first.item_factors_)
    assert not np.allclose(other.item_factors_, first.item_factors_)


def test_save_load_round_trip(fitted, clustered_split, tmp_path):
    fitted.save(tmp_path / "cml")
    loaded = load_model(tmp_path / "cml")
    assert isinstance(loaded, CML) and loaded.config == fitted.config
    users = np.arange(12)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), fitted.score(users, clustered_split.train))
    assert loaded.history_ == fitted.history_


def test_untrained_users_sit_at_the_origin_and_errors(clustered_split):
    train = clustered_split.train
    model = CML(CMLConfig(**{**FAST, "epochs": 1})).fit(train.take(train.user != 0))
    assert not model.user_factors_[0].any()
    scores = model.score(np.array([0, train.n_users + 2]), train)
    np.testing.assert_allclose(scores[0], -(model.item_factors_ ** 2).sum(1), rtol=1e-6)
    assert_scores_equivalent(scores[1], scores[0])  # both at the origin
    with pytest.raises(NotFittedError):
        CML().score(np.array([0]), train)
    with pytest.raises(Exception, match="empty training data"):
        CML(CMLConfig(**FAST)).fit(train.take(np.zeros(len(train), bool)))
