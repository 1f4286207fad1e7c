"""ItemKNN, UserKNN, EASE, RP3beta against naive re-implementations (loops / dense numpy) and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data import Interactions
from recstack.evaluate.evaluator import evaluate
from recstack.models.baseline.pop import Pop
from recstack.models.neighborhood.ease import EASE, EASEConfig
from recstack.models.neighborhood.itemknn import ItemKNN, ItemKNNConfig
from recstack.models.kernels.topn import top_n_per_row
from recstack.models.neighborhood.rp3beta import RP3beta, RP3betaConfig
from recstack.models.neighborhood.userknn import UserKNN, UserKNNConfig


def ndcg10(model, split) -> float:
    return evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]


class DenseScorer:
    """Scores = binary history rows @ a dense item-item matrix computed by a naive implementation."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def score(self, users, history, items=None):
        rows = history.matrix().toarray()[users].astype(np.float64)
        return (rows @ self.weights).astype(np.float32)


def dense(interactions: Interactions) -> np.ndarray:
    x = np.zeros((interactions.n_users, interactions.n_items))
    x[interactions.user, interactions.item] = 1.0
    return x


def keep_top(values: dict[int, float], n: int) -> dict[int, float]:
    """The n largest positive values, ties to the lower index: a plain sort, not a partition."""
    ranked = sorted(((v, j) for j, v in values.items() if v > 0), key=lambda t: (-t[0], t[1]))
    return {j: v for v, j in ranked[:n]}


@pytest.fixture(scope="module")
def pop_ndcg(clustered_split) -> float:
    return ndcg10(Pop().fit(clustered_split.train), clustered_split)


def test_top_n_per_row_hand_worked():
    block = np.array([[3.0, 1.0, 3.0, 3.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0],
                      [-1.0, 2.0, 2.0, 2.0, 2.0],
                      [0.5, 0.0, 0.0, 0.0, -2.0]])
    rows, cols = top_n_per_row(block, 2)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (0, 2), (2, 1), (2, 2), (3, 0)]
    rows, cols = top_n_per_row(block, 9)  # n beyond the width keeps every positive entry
    assert len(rows) == 9


# ---- ItemKNN -----------------------------------------------------------------------------

def naive_itemknn(train: Interactions, n_neighbors: int, shrink: float) -> np.ndarray:
    """S[i, j] = cosine with shrink for i among j's n_neighbors, by a loop over item pairs."""
    x = dense(train)
    n_items = x.shape[1]
    norms = [np.sqrt(x[:, i].sum()) for i in range(n_items)]
    weights = np.zeros((n_items, n_items))
    for j in range(n_items):
        sims = {i: float(x[:, i] @ x[:, j]) / (norms[i] * norms[j] + shrink) for i in range(n_items) if i != j}
        for i, value in keep_top(sims, n_neighbors).items():
            weights[i, j] = value
    return weights


def test_itemknn_hand_worked():
    # users: {a, b}, {a, b, c}, {a}: |a| = sqrt 3, |b| = sqrt 2, |c| = 1
    # sim(a, b) = 2 / (sqrt 6 + 1) = .580, sim(a, c) = 1 / (sqrt 3 + 1) = .366, sim(b, c) = 1 / (sqrt 2 + 1) = .414
    train = Interactions.from_ids(np.array([0, 0, 1, 1, 1, 2]), np.array(["a", "b", "a", "b", "c", "a"]))
    model = ItemKNN(ItemKNNConfig(n_neighbors=1, shrink=1.0, feature_weighting="none")).fit(train)
    s_ab, s_ac, s_bc = 2 / (np.sqrt(6) + 1), 1 / (np.sqrt(3) + 1), 1 / (np.sqrt(2) + 1)
    # column j keeps j's single best neighbour: a <- b (s_ab > s_ac), b <- a (s_ab > s_bc), c <- b (s_bc > s_ac)
    expected = np.array([[0, s_ab, 0], [s_ab, 0, s_bc], [0, 0, 0]])
    np.testing.assert_allclose(model.similarity_.toarray(), expected, rtol=1e-6)
    np.testing.assert_allclose(model.score(np.array([2]), train)[0], expected[0], rtol=1e-6)  # user 2 has {a}


def test_itemknn_equals_brute_force_and_is_pinned(clustered_split, pop_ndcg):
    config = ItemKNNConfig(n_neighbors=15, shrink=5.0, feature_weighting="none")
    model = ItemKNN(config).fit(clustered_split.train)
    expected = naive_itemknn(clustered_split.train, 15, 5.0)
    np.testing.assert_allclose(model.similarity_.toarray(), expected, rtol=1e-6, atol=1e-7)
    naive = ndcg10(DenseScorer(expected), clustered_split)
    assert ndcg10(model, clustered_split) == pytest.approx(naive, abs=1e-6)
    assert naive > pop_ndcg + 0.2


def test_itemknn_tfidf_weights_users_by_inverse_degree(clustered_split):
    train = clustered_split.train
    x = dense(train)
    idf = np.log(train.n_items / np.maximum(x.sum(axis=1), 1))
    weighted = x * idf[:, None]
    norms = np.linalg.norm(weighted, axis=0)
    expected = weighted.T @ weighted / (np.outer(norms, norms) + 10.0)
    np.fill_diagonal(expected, 0.0)
    model = ItemKNN(ItemKNNConfig(n_neighbors=train.n_items, shrink=10.0, feature_weighting="tfidf")).fit(train)
    np.testing.assert_allclose(model.similarity_.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_itemknn_bm25_is_accepted_and_learns(clustered_split, pop_ndcg):
    model = ItemKNN(ItemKNNConfig(feature_weighting="bm25")).fit(clustered_split.train)
    assert ndcg10(model, clustered_split) > pop_ndcg + 0.2


# ---- UserKNN -----------------------------------------------------------------------------

class FixedScorer:
    """Precomputed (n_users, n_items) scores."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores.astype(np.float32)

    def score(self, users, history, items=None):
        return self.scores[users].copy()


def naive_userknn(train: Interactions, history: Interactions, n_neighbors: int, shrink: float,
                  users: list[int] | None = None) -> np.ndarray:
    """Loops over the query users and every training user; a user is never their own neighbour."""
    x, h = dense(train), dense(history)
    users = range(h.shape[0]) if users is None else users
    out = np.zeros((len(users), h.shape[1]))
    for row, u in enumerate(users):
        sims = {}
        for v in range(x.shape[0]):
            denominator = np.sqrt(h[u].sum()) * np.sqrt(x[v].sum()) + shrink
            if v != u and denominator > 0:
                sims[v] = float(h[u] @ x[v]) / denominator
        for v, value in keep_top(sims, n_neighbors).items():
            out[row] += value * x[v]
    return out


def test_userknn_equals_brute_force_and_is_pinned(clustered_split, pop_ndcg):
    model = UserKNN(UserKNNConfig(n_neighbors=20, shrink=2.0)).fit(clustered_split.train)
    history = clustered_split.history("test")
    expected = naive_userknn(clustered_split.train, history, 20, 2.0)
    np.testing.assert_allclose(model.score(np.arange(history.n_users), history), expected, rtol=1e-5, atol=1e-6)
    naive = ndcg10(FixedScorer(expected), clustered_split)
    assert ndcg10(model, clustered_split) == pytest.approx(naive, abs=2e-3)  # float ties may break differently
    assert naive > pop_ndcg + 0.2


def test_userknn_scores_a_user_unseen_at_fit_from_history(clustered_split):
    train = clustered_split.train
    without_user_0 = train.take(train.user != 0)
    model = UserKNN(UserKNNConfig(n_neighbors=10, shrink=0.0)).fit(without_user_0)
    history = clustered_split.history("test")
    expected = naive_userknn(without_user_0, history, 10, 0.0, users=[0])[0]
    np.testing.assert_allclose(model.score(np.array([0]), history)[0], expected, rtol=1e-5)
    assert model.score(np.array([0]), history).max() > 0


# ---- EASE --------------------------------------------------------------------------------

def test_ease_hand_worked_two_items():
    # X = [[1, 1], [1, 0]], reg 1: G = [[3, 1], [1, 2]], P = [[2, -1], [-1, 3]] / 5
    # B_01 = -P_01 / P_11 = 1/3, B_10 = -P_10 / P_00 = 1/2
    train = Interactions.from_ids(np.array([0, 0, 1]), np.array([0, 1, 0]))
    model = EASE(EASEConfig(reg=1.0)).fit(train)
    np.testing.assert_allclose(model.weights_, [[0.0, 1 / 3], [1 / 2, 0.0]], rtol=1e-6)


def test_ease_equals_dense_closed_form_and_is_pinned(clustered_split, pop_ndcg):
    reg = 50.0
    x = dense(clustered_split.train)
    p = np.linalg.inv(x.T @ x + reg * np.eye(x.shape[1]))
    expected = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    model = EASE(EASEConfig(reg=reg)).fit(clustered_split.train)
    np.testing.assert_allclose(model.weights_, expected, rtol=1e-4, atol=1e-6)
    naive = ndcg10(DenseScorer(expected), clustered_split)
    assert ndcg10(model, clustered_split) == pytest.approx(naive, abs=2e-3)
    assert naive > pop_ndcg + 0.2


# ---- RP3beta -----------------------------------------------------------------------------

def naive_rp3beta(train: Interactions, alpha: float, beta: float, n_neighbors: int) -> np.ndarray:
    x = dense(train)
    user_degree, item_degree = x.sum(axis=1), x.sum(axis=0)
    user_to_item = x / np.maximum(user_degree, 1)[:, None]
    item_to_user = x.T / np.maximum(item_degree, 1)[:, None]
    walk = (item_to_user ** alpha) @ (user_to_item ** alpha)
    walk *= np.where(item_degree > 0, np.maximum(item_degree, 1) ** -beta, 0.0)[None, :]
    weights = np.zeros_like(walk)
    for i in range(walk.shape[0]):
        row = {j: walk[i, j] for j in range(walk.shape[1]) if j != i}
        for j, value in keep_top(row, n_neighbors).items():
            weights[i, j] = value
    return weights


def test_rp3beta_hand_worked():
    # users {a, b}, {a}: P_ui rows [1/2, 1/2], [1, 0]; P_iu rows a -> [1/2, 1/2], b -> [1, 0]
    # a -> b: 1/2 * 1/2 = 1/4, over pop(b)^beta = 1; b -> a: 1 * 1/2 = 1/2, over pop(a)^beta = 2^0.5
    train = Interactions.from_ids(np.array([0, 0, 1]), np.array(["a", "b", "a"]))
    model = RP3beta(RP3betaConfig(alpha=1.0, beta=0.5, n_neighbors=5, normalize_similarity=False)).fit(train)
    np.testing.assert_allclose(model.similarity_.toarray(), [[0.0, 0.25], [0.5 / np.sqrt(2), 0.0]], rtol=1e-6)


def test_rp3beta_equals_dense_random_walk_and_is_pinned(clustered_split, pop_ndcg):
    model = RP3beta(RP3betaConfig(alpha=0.8, beta=0.4, n_neighbors=20, normalize_similarity=False)).fit(clustered_split.train)
    expected = naive_rp3beta(clustered_split.train, 0.8, 0.4, 20)
    np.testing.assert_allclose(model.similarity_.toarray(), expected, rtol=1e-5, atol=1e-9)
    naive = ndcg10(DenseScorer(expected), clustered_split)
    assert ndcg10(model, clustered_split) == pytest.approx(naive, abs=2e-3)
    assert naive > pop_ndcg + 0.2


def test_rp3beta_normalize_similarity_rows_sum_to_one(clustered_split):
    model = RP3beta(RP3betaConfig(n_neighbors=10, normalize_similarity=True)).fit(clustered_split.train)
    sums = np.asarray(model.similarity_.sum(axis=1)).ravel()
    np.testing.assert_allclose(sums[sums > 0], 1.0, rtol=1e-5)
    assert np.diff(model.similarity_.indptr).max() <= 10


# ---- shared: new users are scored from history alone --------------------------------------

@pytest.mark.parametrize("cls", [ItemKNN, EASE, RP3beta])
def test_item_models_score_history_rows_only(cls, clustered_split):
    """Scores depend on the history row, not on whether the user was in training."""
    train = clustered_split.train
    model = cls().fit(train.take(train.user != 0))
    history = clustered_split.history("test")
    weights = model.weights_ if cls is EASE else model.similarity_.toarray()
    expected = dense(history)[[0]] @ weights
    np.testing.assert_allclose(model.score(np.array([0]), history), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module, cls", [("itemknn", ItemKNN), ("rp3beta", RP3beta)])
def test_blocked_fit_equals_one_block(module, cls, clustered_split, monkeypatch):
    whole = cls().fit(clustered_split.train).similarity_
    monkeypatch.setattr(f"recstack.models.neighborhood.{module}._BLOCK_CELLS", 7 * clustered_split.train.n_items)
    blocked = cls().fit(clustered_split.train).similarity_
    assert (whole != blocked).nnz == 0


def test_userknn_chunked_scoring_equals_one_chunk(clustered_split, monkeypatch):
    history = clustered_split.history("test")
    model = UserKNN(UserKNNConfig(n_neighbors=7, shrink=1.0)).fit(clustered_split.train)
    users = np.arange(history.n_users)
    whole = model.score(users, history)
    monkeypatch.setattr("recstack.models.neighborhood.userknn._BLOCK_CELLS", 3 * history.n_users)
    np.testing.assert_array_equal(model.score(users, history), whole)
