import json

import numpy as np
import pytest
import torch

from recstack.evaluate import evaluate
from recstack.models import build, load_model
from recstack.models.factorization.bpr import BPR, BPRConfig
from recstack.models.protocol import NotFittedError
from recstack.testing import assert_scores_equivalent

FAST = dict(solver="adam", epochs=15, batch_size=512, learning_rate=0.01, verbose=False)  # the Adam path's tests


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # tiny tensors: a second thread only adds synchronisation, and on a busy shared machine a lot of it
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(clustered_split):
    return BPR(BPRConfig(**FAST)).fit(clustered_split.train, clustered_split.valid)


def _ndcg_at_10_by_hand(scores: np.ndarray, history, test) -> float:
    """Mean binary NDCG@10 over users with test items; history items excluded; ties to the lower index."""
    seen, truth = history.matrix().toarray() > 0, test.matrix().toarray() > 0
    values = []
    for u in np.flatnonzero(truth.any(axis=1)):
        row = np.where(seen[u], -np.inf, scores[u])
        top = np.lexsort((np.arange(len(row)), -row))[:10]
        dcg = sum(1 / np.log2(r + 2) for r, i in enumerate(top) if truth[u, i])
        ideal = sum(1 / np.log2(r + 2) for r in range(min(truth[u].sum(), 10)))
        values.append(dcg / ideal)
    return float(np.mean(values))


def test_bpr_beats_popularity_on_clustered_data(fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    bpr = evaluate(fitted, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert bpr > 0.4 and bpr > 3 * pop


def test_score_is_p_times_q_transpose_and_the_ndcg_matches_a_hand_count(fitted, clustered_split):
    split = clustered_split
    users = np.arange(split.train.n_users)
    expected = fitted.user_factors_ @ fitted.item_factors_.T
    scores = fitted.score(users, split.train)
    assert scores.dtype == np.float32 and scores.shape == (split.train.n_users, split.train.n_items)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    # candidate items, shared (C,) and per user (B, C)
    np.testing.assert_allclose(fitted.score(users[:4], split.train, np.array([5, 1])), expected[:4][:, [5, 1]], rtol=1e-5)
    per_user = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    np.testing.assert_allclose(fitted.score(users[:4], split.train, per_user),
                               np.take_along_axis(expected[:4], per_user, axis=1), rtol=1e-5)
    history = split.history("test")
    library = evaluate(fitted, history=history, test=split.test, metrics=["NDCG@10"])["NDCG@10"]
    assert library == pytest.approx(_ndcg_at_10_by_hand(expected, history, split.test), abs=1e-6)


def test_best_epoch_is_restored_and_history_is_a_json_log(fitted, clustered_split):
    history = fitted.history_
    json.dumps(history)
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert set(history[0]) == {"epoch", "loss", "NDCG@10", "learning_rate", "seconds"}
    assert history[-1]["loss"] < history[0]["loss"] < np.log(2) + 1e-3  # starts near log 2 (random scores)
    best = max(h["NDCG@10"] for h in history)
    assert fitted.best_epoch_ == 1 + int(np.argmax([h["NDCG@10"] for h in history]))
    # the kept factors are the best epoch's: re-scoring the validation part gives the best value
    valid = evaluate(fitted, history=clustered_split.train, test=clustered_split.valid, metrics=["NDCG@10"])
    assert valid["NDCG@10"] == pytest.approx(best, abs=1e-6)


def test_same_seed_same_model_other_seed_other_model(clustered_split):
    def fit(seed):
        return BPR(BPRConfig(**{**FAST, "epochs": 3, "seed": seed})).fit(clustered_split.train, clustered_split.valid)

    first, again, other = fit(0), fit(0), fit(1)
    assert np.array_equal(again.user_factors_, first.user_factors_)
    assert np.array_equal(again.item_factors_, first.item_factors_)
    assert again.history_[-1]["loss"] == first.history_[-1]["loss"]
    assert not np.allclose(other.item_factors_, first.item_factors_)


def test_save_load_round_trip(fitted, clustered_split, tmp_path):
    fitted.save(tmp_path / "bpr")
    loaded = load_model(tmp_path / "bpr")
    assert isinstance(loaded, BPR) and loaded.config == fitted.config
    users = np.arange(10)
    np.testing.assert_array_equal(loaded.score(users, clustered_split.train), fitted.score(users, clustered_split.train))
    assert loaded.history_ == fitted.history_ and loaded.best_epoch_ == fitted.best_epoch_


def test_item_bias_and_several_negatives(clustered_split):
    model = build("bpr", {**FAST, "epochs": 3, "item_bias": True, "n_negatives": 3}).fit(clustered_split.train)
    assert model.item_bias_.shape == (clustered_split.train.n_items,) and np.abs(model.item_bias_).max() > 0
    expected = model.user_factors_[:5] @ model.item_factors_.T + model.item_bias_
    np.testing.assert_allclose(model.score(np.arange(5), clustered_split.train), expected, rtol=1e-5, atol=1e-6)
    assert len(model.history_) == 3 and model.history_[0]["NDCG@10"] is None  # no valid data: all epochs


def test_refit_without_biases_validates_and_scores_without_the_old_fits(clustered_split):
    # validation scores a copy of the model holding this fit's arrays: an earlier fit's item_bias_
    # is still on the model then and must not leak into the new fit's validation or its scores
    split = clustered_split
    model = build("bpr", {**FAST, "epochs": 3, "item_bias": True}).fit(split.train, split.valid)
    model.config = BPRConfig(**{**FAST, "epochs": 3})
    model.fit(split.train, split.valid)
    fresh = BPR(BPRConfig(**{**FAST, "epochs": 3})).fit(split.train, split.valid)
    assert not hasattr(model, "item_bias_")
    assert [e["NDCG@10"] for e in model.history_] == [e["NDCG@10"] for e in fresh.history_]
    users = np.arange(10)
    assert_scores_equivalent(model.score(users, split.train), fresh.score(users, split.train))


def test_users_without_training_events_get_zero_factors(clustered_split):
    train = clustered_split.train
    without_user_0 = train.take(train.user != 0)
    model = BPR(BPRConfig(**{**FAST, "epochs": 2})).fit(without_user_0)
    assert not model.user_factors_[0].any()
    assert not model.score(np.array([0]), train).any()  # its history does not help: no fold-in
    # a user beyond the trained vocabulary scores like an untrained one instead of failing
    assert not model.score(np.array([train.n_users + 3]), train).any()


def test_not_fitted_and_empty_data_errors(clustered_split):
    with pytest.raises(NotFittedError):
        BPR().score(np.array([0]), clustered_split.train)
    with pytest.raises(Exception, match="empty training data"):
        BPR(BPRConfig(**FAST)).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), bool)))


@pytest.mark.parametrize("n_negatives", [1, 3])
def test_hand_written_bpr_gradient_matches_autograd(n_negatives):
    import torch

    from recstack.models.factorization.bpr import bpr_mf_loss
    from recstack.train.losses import bpr_loss, l2_penalty

    gen = torch.Generator().manual_seed(0)
    users_w = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    items_w = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    # repeated users and items in one batch: their gradients must add up
    users = torch.tensor([0, 3, 3, 6, 1])
    pos = torch.tensor([2, 2, 8, 0, 5])
    neg = torch.randint(0, 9, (5, n_negatives), generator=gen)
    reg = 0.1

    def reference(uw, iw):
        p_u, q_i, q_j = uw[users], iw[pos], iw[neg]
        return bpr_loss((p_u * q_i).sum(-1), (p_u.unsqueeze(1) * q_j).sum(-1)) + reg * l2_penalty(p_u, q_i, q_j)

    ours = bpr_mf_loss(users_w, items_w, users, pos, neg, reg)
    theirs = reference(users_w, items_w)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(ours, [users_w, items_w]), torch.autograd.grad(theirs, [users_w, items_w])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda uw, iw: bpr_mf_loss(uw, iw, users, pos, neg, reg), (users_w, items_w))


def _learnbpr_by_hand(P, Q, b, triples, lr, reg):
    """LearnBPR's per-triple update, one Python step per triple, every triple reading the weights as
    they were before the batch and the updates summed (the mini-batch form `bpr_sgd_step` runs)."""
    P_new, Q_new, b_new = P.copy(), Q.copy(), None if b is None else b.copy()
    losses = []
    for u, i, j in triples:
        x = P[u] @ (Q[i] - Q[j]) + (0.0 if b is None else b[i] - b[j])
        losses.append(np.log1p(np.exp(-x)))
        s = lr / (1.0 + np.exp(x))  # lr * sigmoid(-x)
        P_new[u] += s * (Q[i] - Q[j]) - lr * reg * P[u]
        Q_new[i] += s * P[u] - lr * reg * Q[i]
        Q_new[j] += -s * P[u] - lr * reg * Q[j]
        if b is not None:
            b_new[i] += s - lr * reg * b[i]
            b_new[j] += -s - lr * reg * b[j]
    return P_new, Q_new, b_new, float(np.mean(losses))


@pytest.mark.parametrize("with_bias", [False, True])
def test_sgd_step_is_learnbpr_per_triple_summed_over_the_batch(with_bias):
    from recstack.models.factorization.bpr import bpr_sgd_step

    rng = np.random.default_rng(3)
    P, Q = rng.normal(size=(6, 4)), rng.normal(size=(8, 4))
    b = rng.normal(size=8) if with_bias else None
    users = np.array([0, 3, 3, 5])  # user 3 twice; item 2 is a positive and a negative in one batch
    pos = np.array([2, 2, 7, 1])
    neg = np.array([[4, 5], [6, 0], [2, 3], [7, 6]])  # two negatives each: two triples per positive
    lr, reg = 0.1, 0.05
    triples = [(u, i, j) for u, i, row in zip(users, pos, neg) for j in row]
    P_hand, Q_hand, b_hand, loss_hand = _learnbpr_by_hand(P, Q, b, triples, lr, reg)

    user_w, item_w = torch.tensor(P), torch.tensor(Q)
    bias_w = None if b is None else torch.tensor(b)
    with torch.no_grad():
        loss = bpr_sgd_step(user_w, item_w, bias_w, torch.tensor(users), torch.tensor(pos), torch.tensor(neg), lr, reg)
    assert loss.item() == pytest.approx(loss_hand, rel=1e-12)
    np.testing.assert_allclose(user_w.numpy(), P_hand, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(item_w.numpy(), Q_hand, rtol=1e-12, atol=1e-12)
    if with_bias:
        np.testing.assert_allclose(bias_w.numpy(), b_hand, rtol=1e-12, atol=1e-12)


def test_sgd_solver_learns_repeats_per_seed_and_round_trips(clustered_split, tmp_path):
    params = {"solver": "sgd", "epochs": 15, "verbose": False}
    model = build("bpr", params).fit(clustered_split.train, clustered_split.valid)
    history, test = clustered_split.history("test"), clustered_split.test
    ndcg = evaluate(model, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > 0.4 and ndcg > 3 * pop
    assert model.config.step_size == 0.05 and model.config.weight_decay == 0.01
    assert all(entry["learning_rate"] == 0.05 for entry in model.history_)
    again = build("bpr", params).fit(clustered_split.train, clustered_split.valid)
    np.testing.assert_array_equal(again.user_factors_, model.user_factors_)
    model.save(tmp_path / "sgd")
    np.testing.assert_array_equal(load_model(tmp_path / "sgd").item_factors_, model.item_factors_)


def test_sgd_solver_with_item_bias_and_explicit_settings(clustered_split):
    model = build("bpr", {"solver": "sgd", "epochs": 2, "item_bias": True, "learning_rate": 0.02, "reg": 0.0,
                          "batch_size": 64, "verbose": False}).fit(clustered_split.train)
    assert np.abs(model.item_bias_).max() > 0 and len(model.history_) == 2
    assert model.config.step_size == 0.02 and model.config.weight_decay == 0.0


@pytest.mark.parametrize("with_bias", [False, True])
def test_compiled_sgd_step_matches_the_eager_one(clustered_split, with_bias):
    params = {"solver": "sgd", "epochs": 3, "batch_size": 256, "item_bias": with_bias, "verbose": False}
    eager = build("bpr", params).fit(clustered_split.train)
    compiled = build("bpr", {**params, "compile_step": True}).fit(clustered_split.train)
    # the same triples in the same order; fused loops may only round differently
    np.testing.assert_allclose(compiled.user_factors_, eager.user_factors_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(compiled.item_factors_, eager.item_factors_, rtol=1e-4, atol=1e-6)
    assert [h["loss"] for h in compiled.history_] == pytest.approx([h["loss"] for h in eager.history_], rel=1e-5)


def test_compile_step_without_the_sgd_solver_is_refused():
    from recstack.models import ConfigError, make_config

    with pytest.raises(ConfigError, match="compile_step.*solver='sgd'"):
        make_config(BPRConfig, {"compile_step": True})


def _learnbpr_sequential(P, Q, b, triples, lr, reg):
    """LearnBPR as the paper's Algorithm 1 runs it: each triple reads the weights its predecessors left."""
    P, Q, b = P.astype(np.float64), Q.astype(np.float64), None if b is None else b.astype(np.float64)
    losses = []
    for u, i, j in triples:
        x = P[u] @ (Q[i] - Q[j]) + (0.0 if b is None else b[i] - b[j])
        losses.append(np.log1p(np.exp(-x)))
        s = lr / (1.0 + np.exp(x))
        p_u, q_i, q_j = P[u].copy(), Q[i].copy(), Q[j].copy()
        P[u] = p_u + s * (q_i - q_j) - lr * reg * p_u
        Q[i] = q_i + s * p_u - lr * reg * q_i
        Q[j] = q_j - s * p_u - lr * reg * q_j
        if b is not None:
            b_i, b_j = b[i], b[j]
            b[i], b[j] = b_i + s - lr * reg * b_i, b_j - s - lr * reg * b_j
    return P, Q, b, float(np.mean(losses))


@pytest.mark.parametrize("with_bias", [False, True])
def test_learnbpr_kernel_is_the_papers_sequential_algorithm(with_bias):
    from recstack.models.kernels.learnbpr import learnbpr_triples

    rng = np.random.default_rng(4)
    P, Q = rng.normal(size=(6, 16)).astype(np.float32), rng.normal(size=(8, 16)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32) if with_bias else np.zeros(0, np.float32)
    users, pos = np.array([0, 3, 3, 5]), np.array([2, 2, 7, 1])
    neg = np.array([[4, 5], [6, 0], [2, 3], [7, 6]])  # item 2: positive of pair 1, negative of pair 2
    P[0] *= 40.0  # user 0's margins beyond +-30: the kernel's no-step and linear-loss branches
    triples = [(users[t], pos[t], j) for t in range(4) for j in neg[t]]
    P_hand, Q_hand, b_hand, loss_hand = _learnbpr_sequential(P, Q, b if with_bias else None, triples, 0.1, 0.05)
    total = learnbpr_triples(P, Q, b, users, pos, neg, 0.1, 0.05)
    assert total / len(triples) == pytest.approx(loss_hand, rel=1e-5)
    np.testing.assert_allclose(P, P_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Q, Q_hand, rtol=1e-5, atol=1e-6)
    if with_bias:
        np.testing.assert_allclose(b, b_hand, rtol=1e-5, atol=1e-6)


def test_the_default_solver_is_learnbpr_with_its_own_defaults():
    c = BPRConfig()
    assert (c.solver, c.step_size, c.weight_decay, c.initial_std, c.step_decay) == ("learnbpr", 0.1, 0.02, 0.1, 0.95)
    adam = BPRConfig(solver="adam")
    assert (adam.step_size, adam.weight_decay, adam.initial_std, adam.step_decay) == (2e-3, 3e-3, 0.01, 1.0)


def test_lr_decay_with_adam_is_refused():
    from recstack.models import ConfigError, make_config

    with pytest.raises(ConfigError, match="lr_decay is the step decay of the learnbpr and sgd solvers"):
        make_config(BPRConfig, {"solver": "adam", "lr_decay": 0.9})


def test_learnbpr_solver_learns_repeats_per_seed_decays_and_round_trips(clustered_split, tmp_path):
    params = {"solver": "learnbpr", "epochs": 15, "learning_rate": 0.05, "lr_decay": 0.9, "verbose": False}
    model = build("bpr", params).fit(clustered_split.train, clustered_split.valid)
    history, test = clustered_split.history("test"), clustered_split.test
    ndcg = evaluate(model, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > 0.4 and ndcg > 3 * pop
    # the log shows the step each epoch used
    assert [h["learning_rate"] for h in model.history_[:3]] == pytest.approx([0.05, 0.045, 0.0405])
    again = build("bpr", params).fit(clustered_split.train, clustered_split.valid)
    np.testing.assert_array_equal(again.user_factors_, model.user_factors_)
    model.save(tmp_path / "learnbpr")
    np.testing.assert_array_equal(load_model(tmp_path / "learnbpr").item_factors_, model.item_factors_)
    biased = build("bpr", {**params, "epochs": 2, "item_bias": True, "n_negatives": 3}).fit(clustered_split.train)
    assert np.abs(biased.item_bias_).max() > 0 and len(biased.history_) == 2


def test_learnbpr_runs_on_the_cpu_only(clustered_split):
    from recstack.errors import RecstackError
    from recstack.models.factorization.bpr import _learnbpr_step

    with pytest.raises(RecstackError, match="solver 'learnbpr' runs on the CPU.*use solver 'adam' or 'sgd'"):
        _learnbpr_step(torch.device("meta"))


def test_learnbpr_gives_the_same_model_with_one_thread_or_two(clustered_split):
    """With two threads the next epoch's triples are drawn on a second thread: the draws keep their order."""
    params = {"solver": "learnbpr", "epochs": 4, "verbose": False}
    one = build("bpr", params).fit(clustered_split.train, clustered_split.valid)
    torch.set_num_threads(2)
    try:
        two = build("bpr", params).fit(clustered_split.train, clustered_split.valid)
    finally:
        torch.set_num_threads(1)
    np.testing.assert_array_equal(one.user_factors_, two.user_factors_)
    np.testing.assert_array_equal(one.item_factors_, two.item_factors_)
    assert not hasattr(two, "_prefetch")
