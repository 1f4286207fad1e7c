"""MQSA-TED: the L-query windows (pooling, padding, which slots a query reads, reduction to SASRec),
the transition graph, teacher labels and distillation loss, and a pinned next-item metric on a
Markov-chain fixture read with train + valid at test time."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.data import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import ConfigError, build, make_config
from recstack.models.sequential import sasrec
from recstack.models.sequential.mqsated import (MQSATED, MQSATEDConfig, _forward, _initial_params,
                                                distillation_loss, teacher_labels, transition_graph,
                                                window_mean)
from recstack.split import make_split


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def log(sequences: list[list[int]], n_items: int) -> Interactions:
    user = np.concatenate([np.full(len(s), u) for u, s in enumerate(sequences)])
    item = np.concatenate([np.asarray(s) for s in sequences])
    time = np.concatenate([np.arange(len(s)) for s in sequences])
    return Interactions(user, item, Vocab(np.arange(len(sequences)), "user"), Vocab(np.arange(n_items), "item"),
                        timestamp=time)


def cyclic(n_users: int = 60, n_items: int = 25, length: int = 14, seed: int = 0) -> Interactions:
    """A deterministic Markov chain: each user walks the items from a random start, next = (last + 1) mod n."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    return log([list((s + np.arange(length)) % n_items) for s in starts], n_items)


FAST = dict(embedding_size=16, max_seq_len=8, batch_size=32, learning_rate=5e-3, epochs=40, verbose=False)


@pytest.fixture(scope="module")
def cycle_split():
    return make_split(cyclic(), "leave_last", seed=0)


@pytest.fixture(scope="module")
def cycle_model(cycle_split):
    return MQSATED(MQSATEDConfig(**FAST)).fit(cycle_split.train, cycle_split.valid)


def hit_at_1(model, history, truth) -> float:
    return evaluate(model, history, truth, metrics=["Hit@1"])["Hit@1"]


def test_learns_the_chain_and_reads_valid_at_test_time(cycle_model, cycle_split):
    assert hit_at_1(cycle_model, cycle_split.history("test"), cycle_split.test) > 0.95
    assert hit_at_1(cycle_model, cycle_split.history("valid"), cycle_split.valid) > 0.95
    # with train only as input the newest item is the one before valid: the model predicts valid, not test
    assert hit_at_1(cycle_model, cycle_split.history("valid"), cycle_split.test) < 0.1
    assert 1 <= cycle_model.best_epoch_ <= len(cycle_model.history_)
    assert build("mqsated", FAST).config.long_query_len == 2


# ---- L-query windows ----------------------------------------------------------------------------

def test_window_mean_averages_the_real_slots_of_each_window():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 3)
    keep = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)[..., None]
    for window in (1, 2, 3, 6, 9):
        expected = torch.zeros_like(h)
        for b in range(2):
            for t in range(6):
                if keep[b, t]:
                    slots = [s for s in range(max(0, t - window + 1), t + 1) if keep[b, s]]
                    expected[b, t] = h[b, slots].mean(0)
        torch.testing.assert_close(window_mean(h, keep, window), expected)


def params(n_items: int = 12, **config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return _initial_params(n_items, MQSATEDConfig(**{"embedding_size": 8, "n_heads": 2, "max_seq_len": 6, **config}))


def run(p, tokens, short=1, long=3, alpha=0.5, **kw):
    return _forward(p, torch.as_tensor(tokens), 2, short, long, alpha, **kw)


def test_equals_sasrec_when_the_long_branch_is_off_or_equal():
    p = params(n_layers=2)
    tokens = torch.tensor([[0, 0, 5, 2, 7, 1], [9, 8, 7, 6, 5, 4]])
    reference = sasrec._forward(p, tokens, n_heads=2)
    torch.testing.assert_close(run(p, tokens, alpha=1.0), reference)
    torch.testing.assert_close(run(p, tokens, long=1, alpha=0.3), reference)
    assert not torch.allclose(run(p, tokens, alpha=0.5), reference, atol=1e-4)
    assert not torch.allclose(run(p, tokens, alpha=0.0), run(p, tokens, alpha=0.5), atol=1e-4)


def test_the_long_query_reads_exactly_its_window():
    # one block, no positions: keys/values are a set, so the last slot's output depends on the order
    # only through the query, the mean of the last L slots
    p = params(n_layers=1)
    p["position_embedding"] = torch.zeros_like(p["position_embedding"])
    base = [3, 5, 7, 2, 9, 4]

    def last(seq, long):
        return run(p, [seq], long=long, alpha=0.0, last_only=True)

    swap_inside = [3, 5, 7, 2, 4, 9]  # the last two slots swapped: same window of 2
    swap_across = [3, 5, 7, 4, 9, 2]  # slot 3 (outside a window of 2) traded with the last slot
    torch.testing.assert_close(last(base, 2), last(swap_inside, 2))
    assert not torch.allclose(last(base, 2), last(swap_across, 2), atol=1e-4)
    torch.testing.assert_close(last(base, 3), last(swap_across, 3))  # now inside the window of 3
    torch.testing.assert_close(last(base, 6), last(list(reversed(base)), 6))  # whole sequence: a set
    assert not torch.allclose(last(base, 1), last(swap_inside, 1), atol=1e-4)  # SASRec's query: the last item


def test_causal_and_blind_to_left_padding():
    p = params(n_layers=2)
    tokens = torch.tensor([[3, 5, 7, 2, 9, 4]])
    changed = tokens.clone()
    changed[0, 4] = 11
    a, b = run(p, tokens), run(p, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    full = run(p, [[0, 0, 0, 4, 6, 1]])[:, -1]
    torch.testing.assert_close(full, run(p, [[4, 6, 1]])[:, -1])
    torch.testing.assert_close(full, run(p, [[0, 0, 0, 4, 6, 1]], last_only=True))
    assert torch.isfinite(run(p, torch.zeros(1, 3, dtype=torch.long))).all()


# ---- transition-aware embedding distillation ----------------------------------------------------

def test_transition_graph_counts_next_items_within_the_span_and_user():
    data = log([[0, 1, 2, 1], [1, 2, 2, 3]], n_items=4)
    one = transition_graph(data, 1).toarray()
    expected = np.zeros((4, 4))
    for i, j in [(0, 1), (1, 2), (2, 1), (1, 2), (2, 3)]:  # 2 -> 2 is a repeat and is dropped
        expected[i, j] += 1
    np.testing.assert_array_equal(one, expected)  # user 0's last item never links to user 1's first
    two = transition_graph(data, 2).toarray()
    for i, j in [(0, 2), (1, 1), (1, 2), (2, 3)]:  # (1, 1) is a self-pair: dropped below
        if i != j:
            expected[i, j] += 1
    np.testing.assert_array_equal(two, expected)
    with pytest.raises(RecstackError, match="span"):
        transition_graph(data, 0)


def test_teacher_labels_are_a_tempered_softmax_over_successors():
    graph = sp.csr_matrix(np.array([[0, 3, 1, 0], [0, 0, 0, 0], [2, 0, 0, 0], [1, 1, 1, 1]], dtype=np.float32))
    y = teacher_labels(graph, 0.5).toarray()
    share = np.array([0.75, 0.25])
    np.testing.assert_allclose(y[0, [1, 2]], np.exp(share / 0.5) / np.exp(share / 0.5).sum(), rtol=1e-6)
    np.testing.assert_array_equal(y[1], 0)  # no successors: no label
    np.testing.assert_allclose(y[2], [1, 0, 0, 0])
    np.testing.assert_allclose(y[3], 0.25)
    np.testing.assert_allclose(y[[0, 2, 3]].sum(1), 1, rtol=1e-6)
    assert teacher_labels(graph, 0.01).toarray()[0, 1] > 0.999  # a low temperature: a hard label
    assert teacher_labels(graph, 100.0).toarray()[0, 1] == pytest.approx(0.5, abs=0.01)


def test_distillation_loss_is_the_cross_entropy_of_the_item_factorisation():
    torch.manual_seed(0)
    table = torch.randn(6, 4, requires_grad=True)  # 5 items + padding row
    teacher = teacher_labels(sp.csr_matrix(np.array(
        [[0, 2, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 3], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0]], np.float32)), 0.5)
    sources = np.array([0, 2, 4])
    block = teacher[sources].tocoo()
    loss = distillation_loss(table, torch.from_numpy(sources), torch.from_numpy(block.row.astype(np.int64)),
                             torch.from_numpy(block.col.astype(np.int64)), torch.from_numpy(block.data))
    items = table[1:].detach().numpy().astype(np.float64)
    expected = 0.0
    for i in sources:
        logits = items[i] @ items.T
        logits[i] = -np.inf
        log_p = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        expected -= (teacher[i].toarray()[0] * np.where(np.isfinite(log_p), log_p, 0)).sum()
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    loss.backward()
    assert table.grad[0].abs().sum() == 0  # the padding row is never a student item


def transition_loss(model: MQSATED, train: Interactions) -> float:
    teacher = teacher_labels(transition_graph(train, 1), model.config.kd_temperature)
    sources = np.flatnonzero(np.diff(teacher.indptr))
    block = teacher[sources].tocoo()
    return distillation_loss(torch.from_numpy(model.weights_["item_embedding"]), torch.from_numpy(sources),
                             torch.from_numpy(block.row.astype(np.int64)), torch.from_numpy(block.col.astype(np.int64)),
                             torch.from_numpy(block.data)).item()


def test_distillation_writes_the_transitions_into_the_item_table(cycle_split):
    # the student is a symmetric factorisation, <E_i, E_j> = <E_j, E_i>, so on the chain i -> i + 1 the
    # best it can do is to put i's successor and predecessor on top (then L_kd = log 2)
    settings = {**FAST, "dropout": 0.0, "learning_rate": 1e-2}
    with_ted = MQSATED(MQSATEDConfig(**settings, kd_weight=1.0)).fit(cycle_split.train)
    without = MQSATED(MQSATEDConfig(**settings, kd_weight=0.0)).fit(cycle_split.train)
    assert transition_loss(with_ted, cycle_split.train) < 0.5 * transition_loss(without, cycle_split.train)

    def successor_in_top_2(model: MQSATED) -> float:
        items = model.weights_["item_embedding"][1:]
        products = items @ items.T
        np.fill_diagonal(products, -np.inf)
        successor = (np.arange(len(items)) + 1) % len(items)
        return (np.argsort(-products, axis=1)[:, :2] == successor[:, None]).any(1).mean()

    assert successor_in_top_2(with_ted) > 0.9 > successor_in_top_2(without) + 0.2


def test_config_checks():
    with pytest.raises(ConfigError, match="short_query_len"):
        make_config(MQSATEDConfig, {"short_query_len": 4, "long_query_len": 2})
    with pytest.raises(ConfigError, match="max_seq_len"):
        make_config(MQSATEDConfig, {"long_query_len": 60})
    with pytest.raises(ConfigError, match="alpha"):
        make_config(MQSATEDConfig, {"alpha": 1.5})
    with pytest.raises(ConfigError, match="n_heads"):
        make_config(MQSATEDConfig, {"embedding_size": 10, "n_heads": 3})
    with pytest.raises(RecstackError, match="two or more training events"):
        MQSATED(MQSATEDConfig(**FAST)).fit(cyclic(length=1))


@pytest.mark.parametrize("windows", ["latest", "prefixes"])
def test_latest_and_prefix_windows_learn_the_chain_too(cycle_split, windows):
    model = MQSATED(MQSATEDConfig(**{**FAST, "train_windows": windows}))
    model.fit(cycle_split.train, cycle_split.valid)
    assert hit_at_1(model, cycle_split.history("test"), cycle_split.test) > 0.95
