import math

import numpy as np
import pytest
import torch

from recstack.data.dataset import Dataset
from recstack.data.modalities import dataset_modalities
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.factorization.cml import CML, CMLConfig, cml_loss, covariance_loss, feature_loss
from recstack.models.protocol import ConfigError, NotFittedError
from recstack.split import cold_item_split
from recstack.testing import assert_scores_equivalent, check_recommender, clustered_dataset

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


# ---- item features (the paper's feature loss; `content`) ----------------------------------------

CONTENT = dict(content="text+structure", tfidf_dim=32, cache_embeddings=False)


@pytest.fixture(scope="module")
def cold_split():
    """The clustered fixture with 20% + 20% of its items held out entirely (valid / test cold items)."""
    dataset = clustered_dataset()
    return dataset, cold_item_split(dataset.interactions, np.random.default_rng(0), valid_items=0.2, test_items=0.2)


@pytest.fixture(scope="module")
def content_fitted(cold_split):
    dataset, split = cold_split
    return CML(CMLConfig(**FAST, **CONTENT)).use_dataset(dataset).fit(split.train, split.valid)


def test_feature_loss_on_a_hand_worked_example():
    # rows: ||(1, 0) - (0, 0)||^2 = 1 and ||(0, 0) - (0, 2)||^2 = 4 -> mean 2.5
    projected = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    items = torch.tensor([[0.0, 0.0], [0.0, 2.0]], requires_grad=True)
    loss = feature_loss(projected, items)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    # d/df of mean ||f - v||^2 = 2 (f - v) / N, and the opposite for v: both sides are pulled together
    np.testing.assert_allclose(projected.grad.numpy(), [[1.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(items.grad.numpy(), [[-1.0, 0.0], [0.0, 2.0]])


def test_batch_loss_adds_the_weighted_feature_loss_over_trained_items(cold_split):
    dataset, split = cold_split

    def losses(weight):
        model = CML(CMLConfig(**{**FAST, **CONTENT, "feature_weight": weight, "dropout": 0.0})).use_dataset(dataset)
        torch.manual_seed(0)
        module = model.build_module(split.train, np.random.default_rng(0))
        batch = next(iter(model.batches()))
        loss = model.batch_loss(module, tuple(torch.from_numpy(x) for x in batch))
        warm = torch.from_numpy(np.flatnonzero(split.train.item_counts() > 0))
        with torch.no_grad():
            expected = feature_loss(module.project(warm), module.item_embedding(warm))
        return loss.item(), expected.item()

    plain, f = losses(0.0)
    weighted, f_again = losses(3.0)
    assert f == pytest.approx(f_again) and f > 0
    assert weighted == pytest.approx(plain + 3.0 * f, rel=1e-5)


def test_content_none_gives_exactly_the_old_scores(clustered_split):
    # scores of CML before item features existed (same config, 2 epochs, seed 0, one thread)
    old = np.array([[-1.0983379, -1.342516, -1.3805742, -1.2761567],
                    [-1.4448893, -1.7360476, -1.5796056, -1.613223],
                    [-1.1788002, -1.4312372, -1.0053617, -1.3096156]])
    config = CMLConfig(**{**FAST, "epochs": 2})
    assert config.content == "none" and config == CMLConfig(**{**FAST, "epochs": 2, "content": "none"})
    users, items = np.array([0, 3, 299]), np.array([0, 7, 50, 119])
    plain = CML(config).fit(clustered_split.train, clustered_split.valid)
    np.testing.assert_allclose(plain.score(users, clustered_split.train, items), old, rtol=1e-4, atol=1e-5)
    # a dataset handed over (as `recstack run` does) changes nothing: the same draws, the same state
    given = CML(config).use_dataset(clustered_dataset(clustered_split.train)).fit(clustered_split.train,
                                                                                clustered_split.valid)
    assert np.array_equal(given.item_factors_, plain.item_factors_)
    assert np.array_equal(given.user_factors_, plain.user_factors_)
    assert not hasattr(given, "content_items_") and not hasattr(given, "feature_mlp_")


def test_cold_items_sit_at_f_of_their_features_and_rank_by_distance(content_fitted, cold_split):
    dataset, split = cold_split
    model = content_fitted
    cold = split.train.item_counts() == 0
    np.testing.assert_array_equal(model.content_items_, cold)
    assert cold.sum() == len(split.valid.item_pool) + len(split.test.item_pool)
    # f by hand from the saved MLP weights: Linear -> ReLU -> (dropout off) -> Linear, clipped to the ball
    x = np.concatenate([dataset_modalities(dataset, ["text", "structure"], tfidf_dim=32, cache=False)[m]
                        .aligned(split.train.items) for m in ("text", "structure")], axis=1).astype(np.float64)
    w = {key: value.astype(np.float64) for key, value in model.feature_mlp_.items()}
    f = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0) @ w["3.weight"].T + w["3.bias"]
    f /= np.maximum(1.0, np.linalg.norm(f, axis=1, keepdims=True))
    np.testing.assert_allclose(model.item_factors_[cold], f[cold], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.place_items(x[cold]), model.item_factors_[cold], rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.item_factors_[~cold], f[~cold], atol=1e-3)  # trained items keep their own
    # a user's cold pool is ranked by the distance to f(x_j)
    users, pool = np.array([0, 7, 42]), split.test.item_pool
    u = model.user_factors_[users].astype(np.float64)
    distance = ((u[:, None, :] - f[pool][None]) ** 2).sum(-1)
    scores = model.score(users, split.history("test"), pool)
    np.testing.assert_allclose(scores, -distance, rtol=1e-4, atol=1e-4)
    # a cold item lands among the trained items of its own cluster (item id % 6, named by its genre)
    ids = split.train.items.ids.astype(int)
    for item in np.flatnonzero(cold)[:10]:
        d = ((model.item_factors_[~cold] - model.item_factors_[item]) ** 2).sum(1)
        nearest = ids[~cold][np.argsort(d)[:5]]
        assert (nearest % 6 == ids[item] % 6).mean() >= 0.6


def test_content_beats_pop_and_random_on_cold_items(content_fitted, cold_split):
    _, split = cold_split
    history, test = split.history("test"), split.test

    def ndcg(model):
        return evaluate(model, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]

    plain = CML(CMLConfig(**FAST)).fit(split.train, split.valid)  # cold items at their initial draws
    content, pop = ndcg(content_fitted), ndcg(build("pop").fit(split.train))
    random = ndcg(build("random").fit(split.train))
    # pinned on one thread: content 0.80, pop 0.31, random 0.30, plain CML 0.29 (24 cold test items)
    assert content == pytest.approx(0.80, abs=0.03)
    assert content > pop + 0.3 and content > random + 0.3 and content > ndcg(plain) + 0.3


def test_content_model_save_load_round_trip(content_fitted, cold_split, tmp_path):
    _, split = cold_split
    content_fitted.save(tmp_path / "cml")
    loaded = load_model(tmp_path / "cml")
    assert loaded.config == content_fitted.config
    np.testing.assert_array_equal(loaded.content_items_, content_fitted.content_items_)
    for key, value in content_fitted.feature_mlp_.items():
        np.testing.assert_array_equal(loaded.feature_mlp_[key], value)
    users = np.arange(12)
    assert_scores_equivalent(loaded.score(users, split.train), content_fitted.score(users, split.train))
    x = np.random.default_rng(0).normal(size=(3, content_fitted.feature_mlp_["0.weight"].shape[1]))
    np.testing.assert_array_equal(loaded.place_items(x), content_fitted.place_items(x))


def test_content_without_features_names_the_fix(cold_split, clustered_split):
    _, split = cold_split
    with pytest.raises(RecstackError, match=r"content='text'.*use_dataset\(dataset\).*content: none") as caught:
        CML(CMLConfig(**FAST, content="text")).fit(split.train)
    assert type(caught.value) is RecstackError
    bare = Dataset(split.train)  # no item table
    with pytest.raises(RecstackError, match=r"content='text\+structure'.*no item table.*content: none"):
        CML(CMLConfig(**FAST, **CONTENT)).use_dataset(bare)
    with pytest.raises(RecstackError, match="content: none"):
        CML(CMLConfig(**FAST)).fit(clustered_split.train).place_items(np.zeros((1, 4)))
    with pytest.raises(ConfigError, match="content"):
        build("cml", {"content": "image"})


def test_content_variant_passes_the_contract():
    check_recommender("cml", {**FAST, **CONTENT, "epochs": 5, "batch_size": 512})
