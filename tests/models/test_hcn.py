"""HCN: score = max over the interest vectors, the extractor reads only the past and its windows, the
hard-routed loss trains the target's interest only, two-topic users get their topics on different
interests, and a pinned accuracy on that fixture."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.evaluate.evaluator import block_size_for
from recstack.models import ConfigError, build, make_config
from recstack.models.sequential.hcn import (HCN, HCNConfig, _forward, _initial_params, _next_item_loss, _route,
                                           _route_prefixes)
from recstack.split import make_split


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


N_TOPICS, TOPIC_SIZE = 4, 12


def two_topics(n_users: int = 120, length: int = 16, seed: int = 0) -> tuple[Interactions, np.ndarray]:
    """Each user has two of four item topics (topic t = items t*12 .. t*12+11) and consumes, in random
    order, 8 distinct items of each: a single taste vector has to sit between the two topics."""
    rng = np.random.default_rng(seed)
    topics = np.stack([rng.choice(N_TOPICS, 2, replace=False) for _ in range(n_users)])
    half = length // 2
    rows = []
    for u in range(n_users):
        picks = np.concatenate([t * TOPIC_SIZE + rng.choice(TOPIC_SIZE, half, replace=False) for t in topics[u]])
        rows.append(rng.permutation(picks))
    item = np.concatenate(rows)
    user = np.repeat(np.arange(n_users), length)
    data = Interactions(user, item, Vocab(np.arange(n_users), "user"), Vocab(np.arange(N_TOPICS * TOPIC_SIZE), "item"),
                        timestamp=np.tile(np.arange(length), n_users))
    return data, topics


FAST = dict(embedding_size=16, n_interests=2, max_seq_len=16, short_seq_len=4, batch_size=32,
            learning_rate=1e-2, epochs=30, early_stopping_patience=None, verbose=False)


@pytest.fixture(scope="module")
def topics_fit():
    data, topics = two_topics()
    split = make_split(data, "leave_last", seed=0)
    return HCN(HCNConfig(**FAST)).fit(split.train, split.valid), split, topics


def test_pinned_accuracy_on_two_topic_users(topics_fit):
    model, split, _ = topics_fit
    # 8 of a user's 24 topic items remain unseen at test time; Pop ranks them at chance (about 0.2)
    ndcg = evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop", {}).fit(split.train), split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > 0.30 and ndcg > pop + 0.1, (ndcg, pop)


def test_the_interests_separate_a_users_two_topics(topics_fit):
    model, split, topics = topics_fit
    users = np.arange(len(topics))
    interests = model.interests(users, split.history("test"))  # (B, 2, d)
    table = model.weights_["params.item_embedding"][1:]
    by_topic = table.reshape(N_TOPICS, TOPIC_SIZE, -1)
    separated = 0
    for u, (a, b) in enumerate(topics):
        # which interest scores each topic's items best, by majority over the topic's items
        best_a = np.bincount((interests[u] @ by_topic[a].T).argmax(0), minlength=2).argmax()
        best_b = np.bincount((interests[u] @ by_topic[b].T).argmax(0), minlength=2).argmax()
        separated += best_a != best_b
    assert separated / len(topics) > 0.8, separated


def test_score_is_the_max_over_interest_scores(topics_fit):
    model, split, _ = topics_fit
    history = split.history("test")
    users = np.array([3, 0, 7, 3, 11])
    per_interest = model.interests(users, history) @ model.weights_["params.item_embedding"][1:].T  # (B, K, n_items)
    scores = model.score(users, history)
    np.testing.assert_allclose(scores, per_interest.max(axis=1), rtol=1e-5, atol=1e-5)
    # the max is not the mean or one fixed interest: both interests win somewhere
    assert len(np.unique(per_interest.argmax(axis=1))) == 2
    candidates = np.array([5, 40, 2])
    np.testing.assert_allclose(model.score(users, history, candidates), scores[:, candidates], rtol=1e-5, atol=1e-5)
    per_user = np.tile(np.array([[1, 30, 47]]), (len(users), 1))
    np.testing.assert_allclose(model.score(users, history, per_user), scores[:, [1, 30, 47]], rtol=1e-5, atol=1e-5)
    chunked = HCN(model.config.model_copy(update={"score_batch_size": 2}))
    for name, value in vars(model).items():
        if name.endswith("_"):
            setattr(chunked, name, value)
    np.testing.assert_allclose(chunked.score(users, history), scores, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(topics_fit, tmp_path):
    model, split, _ = topics_fit
    model.save(tmp_path / "hcn")
    loaded = HCN.load(tmp_path / "hcn")
    users = np.arange(10)
    np.testing.assert_array_equal(loaded.score(users, split.history("test")), model.score(users, split.history("test")))


def net_params(n_items: int = 12, **config):
    torch.manual_seed(0)
    return _initial_params(n_items, HCNConfig(**{"embedding_size": 8, "n_interests": 3, "max_seq_len": 6,
                                                 "short_seq_len": 2, **config}))


def test_interests_read_only_the_past_and_ignore_padding():
    p = net_params()
    tokens = torch.tensor([[3, 5, 7, 2, 9, 4]])
    changed = tokens.clone()
    changed[0, 4] = 11
    a, b = _forward(p, tokens, 2), _forward(p, changed, 2)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    torch.testing.assert_close(_forward(p, tokens, 2, last_only=True), a[:, -1])
    padded = _forward(p, torch.tensor([[0, 0, 7, 2, 9, 4]]), 2, last_only=True)
    torch.testing.assert_close(padded, _forward(p, torch.tensor([[7, 2, 9, 4]]), 2, last_only=True))
    assert torch.isfinite(_forward(p, torch.zeros(2, 3, dtype=torch.long), 2)).all()


def test_the_prefix_shortcut_and_the_gathered_windows_equal_the_masked_extractor():
    p = net_params()
    tokens = torch.tensor([[0, 0, 3, 5, 7, 2], [4, 1, 8, 8, 6, 2]])
    valid = tokens != 0
    h = torch.randn(2, 6, 8) * valid.unsqueeze(-1)
    slots = torch.arange(6)
    prefix = (slots[:, None] >= slots[None, :]).unsqueeze(0) & valid.unsqueeze(1)  # (B, Tq, T)
    torch.testing.assert_close(_route_prefixes(p, 0, h, valid, slots), _route(p, 0, 0, None, h, prefix))
    # the short-term window: slot q reads events q-1 and q only
    rows = slots[:, None] - 1 + torch.arange(2)[None, :]
    gathered = (rows >= 0).unsqueeze(0) & valid[:, rows.clamp_min(0)]
    masked = prefix & (slots[:, None] - slots[None, :] < 2).unsqueeze(0)
    torch.testing.assert_close(_route(p, 1, 0, None, h, gathered, rows.clamp_min(0)), _route(p, 1, 0, None, h, masked))
    # and it depends on nothing older: the last slot reading all of h equals reading only its last two
    torch.testing.assert_close(_route(p, 1, 0, None, h, masked)[:, -1:],
                               _route(p, 1, 0, None, h[:, -2:], valid[:, None, -2:]))
    assert not torch.allclose(_route(p, 0, 0, None, h, prefix)[:, -1:],
                              _route(p, 0, 0, None, h[:, -2:], valid[:, None, -2:]))


def test_hard_routing_trains_only_the_targets_closest_interest():
    torch.manual_seed(0)
    table = torch.randn(10, 4)
    v = torch.randn(5, 3, 4, requires_grad=True)
    positives = torch.tensor([1, 4, 4, 9, 2])
    _next_item_loss(v, positives, table, HCNConfig(n_interests=3, target_interest="argmax")).backward()
    chosen = torch.einsum("mkd,md->mk", v.detach(), table[positives]).argmax(-1)
    touched = v.grad.abs().sum(-1) > 0
    assert touched.sum(1).eq(1).all() and touched[torch.arange(5), chosen].all()
    # "max" scores every item by its best interest, the serving score
    loss = _next_item_loss(v, positives, table, HCNConfig(n_interests=3, target_interest="max"))
    logits = torch.einsum("mkd,nd->mkn", v, table[1:]).amax(1)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, positives - 1))


def test_sampled_softmax_and_argmax_routing_learn_too():
    data, _ = two_topics(n_users=80)
    split = make_split(data, "leave_last", seed=0)
    model = HCN(HCNConfig(**{**FAST, "epochs": 15, "loss": "sampled_softmax", "n_negatives": 8,
                              "target_interest": "argmax", "diversity_reg": 0.1}))
    model.fit(split.train, split.valid)
    pop = build("pop", {}).fit(split.train)
    ndcg = {m: evaluate(m, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"] for m in (model, pop)}
    assert ndcg[model] > ndcg[pop] + 0.05, ndcg


def test_config_and_input_checks(topics_fit):
    with pytest.raises(ConfigError, match="short_seq_len"):
        make_config(HCNConfig, {"max_seq_len": 5, "short_seq_len": 8})
    with pytest.raises(ConfigError, match="n_negatives applies"):
        make_config(HCNConfig, {"n_negatives": 4})
    with pytest.raises(ConfigError, match="target_interest"):
        make_config(HCNConfig, {"target_interest": "mean"})
    with pytest.raises(RecstackError, match="two or more training events"):
        one_each = Interactions(np.arange(3), np.arange(3), Vocab(np.arange(3), "user"), Vocab(np.arange(5), "item"))
        HCN(HCNConfig(**FAST)).fit(one_each)
    model = topics_fit[0]
    with pytest.raises(RecstackError, match="fitted on 48"):
        model.score(np.array([0]), Interactions(np.array([0]), np.array([0]), Vocab(np.arange(1), "user"),
                                                Vocab(np.arange(50), "item")))


def test_a_million_item_catalogue_is_scored_in_bounded_blocks():
    n_items, n_users, d = 1_000_000, 24, 8
    config = HCNConfig(embedding_size=d, n_interests=3, n_levels=1, max_seq_len=4, short_seq_len=2, score_batch_size=2)
    model = HCN(config)
    torch.manual_seed(0)
    model.weights_ = {f"params.{name}": value.numpy() for name, value in _initial_params(n_items, config).items()}
    rng = np.random.default_rng(0)
    history = Interactions(np.repeat(np.arange(n_users), 3), rng.integers(0, n_items, 3 * n_users),
                           Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item"))
    test = Interactions(np.arange(n_users), rng.integers(0, n_items, n_users), history.users, history.items)
    blocks = []

    class Recording:
        def score(self, users, history, items=None):
            blocks.append(len(users))
            return model.score(users, history, items)

    budget_mb = 32.0  # 4 users x 1M items x 8 bytes
    tracemalloc.start()
    try:
        result = evaluate(Recording(), history, test, metrics=["Hit@10"], memory_budget_mb=budget_mb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.protocol["n_users_evaluated"] == n_users
    assert max(blocks) <= block_size_for(n_items, budget_mb) == 4
    # far below one (users x items) matrix, and below one (block x K x items) product too
    assert peak < min(n_users * n_items * 4 / 2, 4 * 3 * n_items * 4)


def test_sliding_windows_cover_the_whole_history_and_learn():
    data, _ = two_topics()
    split = make_split(data, "leave_last", seed=0)
    settings = {**FAST, "max_seq_len": 6, "short_seq_len": 3, "train_windows": "sliding", "epochs": 12}
    model = HCN(HCNConfig(**settings))
    model.build_module(split.train, np.random.default_rng(0))
    assert len(model._sequences.window_users) == 3 * split.train.n_users  # 13 targets a user: 6 + 6 + 1
    del model._sequences, model._sampler
    model.fit(split.train, split.valid)
    ndcg = evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop", {}).fit(split.train), split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > pop + 0.1, (ndcg, pop)
