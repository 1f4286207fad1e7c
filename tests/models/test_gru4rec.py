"""GRU4Rec: learning an order-dependent rule (and beating Pop), test-time input = train + valid,
BPR-max by hand, right alignment of left-padded sequences, tied and untied output tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import ConfigError, build, make_config
from recstack.models.sequential.gru4rec import GRU4Rec, GRU4RecConfig, _Net, _right_align, bpr_max_loss
from recstack.split import make_split


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def markov(n_users: int = 60, n_items: int = 25, length: int = 14, seed: int = 0) -> Interactions:
    """A Markov chain with one successor per item (a random cyclic order of the catalogue): the next item
    is a function of the last one only, and with length < n_items no user repeats an item."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    successor = np.empty(n_items, dtype=np.int64)
    successor[order] = np.roll(order, -1)
    walks = np.empty((n_users, length), dtype=np.int64)
    walks[:, 0] = rng.integers(0, n_items, n_users)
    for t in range(1, length):
        walks[:, t] = successor[walks[:, t - 1]]
    return Interactions(np.repeat(np.arange(n_users), length), walks.ravel(), Vocab(np.arange(n_users), "user"),
                        Vocab(np.arange(n_items), "item"), timestamp=np.tile(np.arange(length), n_users))


@pytest.fixture(scope="module")
def chain_split():
    return make_split(markov(), "leave_last", seed=0)


FAST = dict(embedding_size=16, max_seq_len=8, batch_size=32, learning_rate=1e-2, epochs=40, verbose=False)


@pytest.fixture(scope="module")
def chain_model(chain_split):
    return GRU4Rec(GRU4RecConfig(**FAST)).fit(chain_split.train, chain_split.valid)


def metric(model, history, truth, label="Hit@1") -> float:
    return evaluate(model, history, truth, metrics=[label])[label]


def test_learns_the_chain_beats_pop_and_reads_valid_at_test_time(chain_model, chain_split):
    test_history = chain_split.history("test")
    assert metric(chain_model, test_history, chain_split.test) > 0.9
    assert metric(chain_model, chain_split.history("valid"), chain_split.valid) > 0.9
    # with train only as input the newest item is the one before valid: the model predicts the valid item
    assert metric(chain_model, chain_split.history("valid"), chain_split.test) < 0.1
    pop = build("pop").fit(chain_split.train)
    assert metric(chain_model, test_history, chain_split.test, "NDCG@10") > \
        metric(pop, test_history, chain_split.test, "NDCG@10") + 0.5
    assert chain_model.best_epoch_ >= 1


def test_bpr_max_learns_the_chain(chain_split):
    model = GRU4Rec(GRU4RecConfig(**{**FAST, "loss": "bpr_max", "n_negatives": 8, "bpr_max_reg": 0.5}))
    model.fit(chain_split.train, chain_split.valid)
    assert metric(model, chain_split.history("test"), chain_split.test) > 0.8


def test_bpr_max_loss_by_hand():
    # one positive scored 1.0, negatives 0.0 and 2.0, reg 0.5
    e2 = math.exp(2.0)
    s = [1 / (1 + e2), e2 / (1 + e2)]  # softmax over the negative scores
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -math.log(s[0] * sig(1.0) + s[1] * sig(-1.0)) + 0.5 * (s[0] * 0.0 + s[1] * 4.0)
    got = bpr_max_loss(torch.tensor([1.0]), torch.tensor([[0.0, 2.0]]), reg=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # one negative and no regularisation: plain BPR, -log sigmoid(pos - neg); rows are averaged
    pos, neg = torch.tensor([0.3, -1.2]), torch.tensor([[0.8], [-2.0]])
    bpr = -torch.log(torch.sigmoid(pos - neg[:, 0])).mean()
    torch.testing.assert_close(bpr_max_loss(pos, neg, reg=0.0), bpr)
    # finite at huge margins
    assert torch.isfinite(bpr_max_loss(torch.tensor([-500.0]), torch.tensor([[500.0, 0.0]]), reg=0.0))


def test_right_alignment_moves_items_to_the_front_and_drops_empty_columns():
    left = np.array([[0, 0, 3, 4], [0, 5, 6, 7], [0, 0, 0, 0]])
    np.testing.assert_array_equal(_right_align(left), [[3, 4, 0], [5, 6, 7], [0, 0, 0]])
    np.testing.assert_array_equal(_right_align(np.zeros((2, 5), dtype=np.int64)), np.zeros((2, 1)))


def test_padding_after_the_newest_item_does_not_change_the_state():
    torch.manual_seed(0)
    net = _Net(12, GRU4RecConfig(embedding_size=8, n_layers=2)).eval()
    with torch.no_grad():
        short = net.last(torch.tensor([[4, 6, 1]]))
        padded = net.last(torch.tensor([[4, 6, 1, 0, 0], [2, 3, 4, 6, 1]]))
        reordered = net.last(torch.tensor([[6, 4, 1]]))
    torch.testing.assert_close(padded[0], short[0])
    assert not torch.allclose(short, reordered, atol=1e-5)  # order matters


@pytest.mark.parametrize("tied", [True, False])
def test_scores_are_the_state_against_the_output_table_plus_bias(chain_split, tied):
    model = GRU4Rec(GRU4RecConfig(**{**FAST, "epochs": 2, "tied_embedding": tied}))
    model.fit(chain_split.train)
    history = chain_split.history("test")
    users = np.array([3, 0, 7, 3])
    weights = model.weights_
    table = weights["item_embedding"][1:] if tied else weights["output_embedding"]
    assert ("output_embedding" in weights) is not tied
    expected = model.embed(users, history) @ table.T + weights["output_bias"]
    np.testing.assert_allclose(model.score(users, history), expected, rtol=1e-5, atol=1e-5)
    chunked = GRU4Rec(model.config.model_copy(update={"score_batch_size": 3}))
    for name, value in vars(model).items():
        if name.endswith("_"):
            setattr(chunked, name, value)
    np.testing.assert_allclose(chunked.score(users, history), expected, rtol=1e-5, atol=1e-5)


def test_history_with_another_catalogue_is_refused(chain_model):
    with pytest.raises(RecstackError, match="fitted on 25"):
        chain_model.score(np.array([0]), markov(n_items=30))


def test_config_checks():
    with pytest.raises(ConfigError, match="n_negatives applies to loss='bpr_max'"):
        make_config(GRU4RecConfig, {"n_negatives": 4})
    with pytest.raises(ConfigError, match="bpr_max_reg applies to loss='bpr_max'"):
        make_config(GRU4RecConfig, {"bpr_max_reg": 1.0})
    with pytest.raises(ConfigError, match="loss"):
        make_config(GRU4RecConfig, {"loss": "top1"})
    assert GRU4RecConfig().loss == "ce"
    with pytest.raises(RecstackError, match="two or more training events"):
        GRU4Rec(GRU4RecConfig(**FAST)).fit(markov(length=1))


def test_targets_follow_their_inputs_when_right_aligned():
    # a prefix row predicts only at its last slot: the target moves with its input, not to slot 0
    inputs = np.array([[0, 0, 3, 4], [0, 5, 6, 7]])
    targets = np.array([[0, 0, 0, 9], [0, 0, 0, 8]])
    np.testing.assert_array_equal(_right_align(targets, like=inputs), [[0, 9, 0], [0, 0, 8]])
    shifted = np.array([[0, 0, 4, 9], [0, 6, 7, 8]])  # shifted pairs: same padding as the inputs
    np.testing.assert_array_equal(_right_align(shifted, like=inputs), _right_align(shifted))


@pytest.mark.parametrize("windows", ["latest", "prefixes"])
def test_latest_and_prefix_windows_learn_the_chain_too(chain_split, windows):
    model = GRU4Rec(GRU4RecConfig(**{**FAST, "train_windows": windows}))
    model.fit(chain_split.train, chain_split.valid)
    assert metric(model, chain_split.history("test"), chain_split.test) > 0.9
