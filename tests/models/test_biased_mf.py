"""Explicit biased MF (the rating-prediction baseline): hand-worked bias solution, low-rank recovery, errors."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.models.rating import BiasedMF


def _log(users, items, ratings, n_users, n_items):
    return Interactions(np.asarray(users), np.asarray(items), Vocab(list(range(n_users))), Vocab(list(range(n_items))),
                        value=np.asarray(ratings, dtype=np.float32))


def test_bias_only_model_solves_the_ridge_equations_by_hand():
    # two users, two items, three ratings; mu = 3. With factors 0 the user step solves
    # b_u = sum(r - mu - b_i) / (n_u + reg * n_u) and the item step likewise.
    data = _log([0, 0, 1], [0, 1, 0], [5, 3, 1], 2, 2)
    model = BiasedMF(factors=0, reg=0.5, iterations=1).fit(data)
    mu = 3.0
    b_user = np.array([((5 - mu) + (3 - mu)) / (2 + 0.5 * 2), (1 - mu) / (1 + 0.5)])
    b_item = np.array([((5 - mu - b_user[0]) + (1 - mu - b_user[1])) / (2 + 0.5 * 2), (3 - mu - b_user[0]) / 1.5])
    expected = mu + b_user[[0, 0, 1, 1]] + b_item[[0, 1, 0, 1]]
    np.testing.assert_allclose(model.predict([0, 0, 1, 1], [0, 1, 0, 1]), np.clip(expected, 1, 5), rtol=1e-10)


def test_low_rank_ratings_are_recovered_better_than_the_biases_alone():
    rng = np.random.default_rng(0)
    n_users, n_items, rank = 120, 80, 3
    truth = 3 + rng.normal(0, 0.6, (n_users, rank)) @ rng.normal(0, 0.6, (rank, n_items))
    cells = rng.random((n_users, n_items)) < 0.5
    users, items = np.nonzero(cells)
    held = rng.random(len(users)) < 0.2
    train = _log(users[~held], items[~held], truth[users[~held], items[~held]], n_users, n_items)
    mf = BiasedMF(factors=8, reg=0.02, iterations=20, seed=1).fit(train)
    bias = BiasedMF(factors=0, reg=0.02, iterations=20).fit(train)

    def rmse(model):
        return float(np.sqrt(np.mean((model.predict(users[held], items[held]) - truth[users[held], items[held]]) ** 2)))

    assert rmse(mf) < 0.6 * rmse(bias)
    assert mf.loss_history_[-1] <= mf.loss_history_[0]  # ALS does not increase the training error


def test_needs_ratings_and_a_fit():
    data = Interactions(np.array([0]), np.array([0]), Vocab([0]), Vocab([0]))
    with pytest.raises(RecstackError, match="needs ratings"):
        BiasedMF().fit(data)
    with pytest.raises(RecstackError, match="not fitted"):
        BiasedMF().predict([0], [0])
