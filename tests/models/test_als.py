"""ALS: the wrapper hands implicit Hu et al.'s confidences, and fold-in solves the paper's normal equations."""

from __future__ import annotations

import numpy as np
import pytest
from implicit.cpu.als import AlternatingLeastSquares

from recstack.evaluate.evaluator import evaluate
from recstack.models.baseline.pop import Pop
from recstack.models.factorization.als import ALS, ALSConfig

CONFIG = ALSConfig(embedding_size=16, reg=5.0, alpha=5.0, epochs=8, n_threads=1, seed=3)


def ndcg10(model, split) -> float:
    return evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]


def naive_fold_in(item_factors: np.ndarray, items: np.ndarray, reg: float, alpha: float) -> np.ndarray:
    """x_u = (Y^T C_u Y + reg I)^-1 Y^T C_u p_u with c_ui = 1 + alpha on the user's items, 1 elsewhere."""
    y = item_factors.astype(np.float64)
    confidence = np.ones(len(y))
    confidence[items] = 1.0 + alpha
    preference = np.zeros(len(y))
    preference[items] = 1.0
    lhs = y.T @ (confidence[:, None] * y) + reg * np.eye(y.shape[1])
    return np.linalg.solve(lhs, y.T @ (confidence * preference))


class NaiveFoldIn:
    """Scores from item factors alone, one user at a time, with numpy's solver."""

    def __init__(self, item_factors: np.ndarray, reg: float, alpha: float) -> None:
        self.y, self.reg, self.alpha = item_factors, reg, alpha

    def score(self, users, history, items=None):
        seqs = history.sequences()
        out = np.stack([naive_fold_in(self.y, seqs[u], self.reg, self.alpha) for u in users]) @ self.y.T.astype(np.float64)
        return out.astype(np.float32)


@pytest.fixture(scope="module")
def model(clustered_split):
    return ALS(CONFIG).fit(clustered_split.train)


def test_fit_is_implicit_on_one_plus_alpha_confidences(model, clustered_split):
    confidence = clustered_split.train.matrix().astype(np.float32) * CONFIG.alpha
    confidence.data += 1.0
    reference = AlternatingLeastSquares(factors=16, regularization=5.0, alpha=1.0, iterations=8,
                                        num_threads=1, random_state=3)
    reference.fit(confidence.tocsr(), show_progress=False)
    np.testing.assert_allclose(model.item_factors_, reference.item_factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.user_factors_, reference.user_factors, rtol=1e-5, atol=1e-6)
    assert model.item_factors_.dtype == np.float32 and model.item_factors_.shape == (120, 16)
    assert model.user_factors_.shape == (300, 16)


def test_fold_in_solves_the_normal_equations(model, clustered_split):
    history = clustered_split.history("test")
    users = np.array([0, 7, 123, 299])
    factors = model.fold_in(users, history)
    seqs = history.sequences()
    for row, u in enumerate(users):
        expected = naive_fold_in(model.item_factors_, seqs[u], CONFIG.reg, CONFIG.alpha)
        np.testing.assert_allclose(factors[row], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.score(users, history), factors @ model.item_factors_.T, rtol=1e-5, atol=1e-6)


def test_scores_follow_history_not_training_factors(model, clustered_split):
    """Folding in the training rows reproduces (nearly) the fitted factors; a longer history moves them."""
    train = clustered_split.train
    users = np.arange(train.n_users)
    from_train = model.fold_in(users, train)
    # ALS ends on an item half-step, so re-solving users moves them only a little
    assert np.linalg.norm(from_train - model.user_factors_) < 0.2 * np.linalg.norm(model.user_factors_)
    from_test_history = model.fold_in(users, clustered_split.history("test"))
    assert not np.allclose(from_train, from_test_history)


def test_user_unseen_at_fit_is_scored_from_history(clustered_split):
    train = clustered_split.train
    model = ALS(CONFIG).fit(train.take(train.user != 0))
    history = clustered_split.history("test")
    expected = naive_fold_in(model.item_factors_, history.sequences()[0], CONFIG.reg, CONFIG.alpha)
    np.testing.assert_allclose(model.fold_in(np.array([0]), history)[0], expected, rtol=1e-4, atol=1e-5)
    empty = train.take(train.user != 0)
    np.testing.assert_array_equal(model.score(np.array([0]), empty), 0.0)  # no history: no preference


def test_metric_pinned_by_naive_fold_in_and_beats_pop(model, clustered_split):
    naive = ndcg10(NaiveFoldIn(model.item_factors_, CONFIG.reg, CONFIG.alpha), clustered_split)
    assert ndcg10(model, clustered_split) == pytest.approx(naive, abs=2e-3)
    assert naive > ndcg10(Pop().fit(clustered_split.train), clustered_split) + 0.1


def test_loaded_model_rebuilds_the_solver(model, clustered_split, tmp_path):
    model.save(tmp_path / "als")
    loaded = ALS.load(tmp_path / "als")
    history = clustered_split.history("test")
    np.testing.assert_array_equal(loaded.score(np.array([4, 2]), history), model.score(np.array([4, 2]), history))
