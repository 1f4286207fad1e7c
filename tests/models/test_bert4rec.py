"""BERT4Rec: Cloze masking (never padding, the asked-for rate), learning an order-dependent rule and
beating Pop, the appended [MASK] after train + valid at test time, bidirectional attention with
padding invariance, and scores = head output against the tied item table plus the output bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import ConfigError, build, make_config
from recstack.models.sequential.bert4rec import (
    BERT4Rec, BERT4RecConfig, _forward, _head, _initial_params, cloze_mask,
)
from recstack.split import make_split
from recstack.train.sequences import last_items
from test_gru4rec import markov


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chain_split():
    return make_split(markov(), "leave_last", seed=0)


FAST = dict(embedding_size=16, max_seq_len=8, batch_size=32, learning_rate=1e-2, dropout=0.0, mask_prob=0.5,
            epochs=80, early_stopping_patience=20, verbose=False)


@pytest.fixture(scope="module")
def chain_model(chain_split):
    return BERT4Rec(BERT4RecConfig(**FAST)).fit(chain_split.train, chain_split.valid)


def metric(model, history, truth, label="Hit@1") -> float:
    return evaluate(model, history, truth, metrics=[label])[label]


def test_learns_the_chain_beats_pop_and_reads_valid_at_test_time(chain_model, chain_split):
    test_history = chain_split.history("test")
    assert metric(chain_model, test_history, chain_split.test) > 0.9
    assert metric(chain_model, chain_split.history("valid"), chain_split.valid) > 0.9
    assert metric(chain_model, chain_split.history("valid"), chain_split.test) < 0.1
    pop = build("pop").fit(chain_split.train)
    assert metric(chain_model, test_history, chain_split.test, "NDCG@10") > \
        metric(pop, test_history, chain_split.test, "NDCG@10") + 0.5


def test_cloze_masking_never_masks_padding_and_keeps_the_rate():
    rng = np.random.default_rng(0)
    n_rows, length, mask_token = 4000, 50, 99
    lengths = rng.integers(20, length + 1, n_rows)
    tokens = np.where(np.arange(length)[None, :] >= length - lengths[:, None], rng.integers(1, 99, (n_rows, length)), 0)
    inputs, labels = cloze_mask(tokens, 0.2, mask_token, np.random.default_rng(1))
    masked = inputs == mask_token
    assert not masked[tokens == 0].any()  # padding is never masked
    np.testing.assert_array_equal(inputs[tokens == 0], 0)
    np.testing.assert_array_equal(labels[masked], tokens[masked])  # the label is the hidden item
    np.testing.assert_array_equal(labels[~masked], 0)
    np.testing.assert_array_equal(inputs[~masked], tokens[~masked])  # the rest is untouched
    assert masked.sum() / (tokens != 0).sum() == pytest.approx(0.2, abs=0.005)
    # a row that drew no mask gets its newest item masked; an all-padding row stays empty
    few = np.array([[0, 0, 5, 6], [0, 0, 0, 0]])
    inputs, labels = cloze_mask(few, 1e-9, mask_token, np.random.default_rng(0))
    np.testing.assert_array_equal(inputs, [[0, 0, 5, mask_token], [0, 0, 0, 0]])
    np.testing.assert_array_equal(labels, [[0, 0, 0, 6], [0, 0, 0, 0]])


def test_inference_appends_mask_after_train_plus_valid(chain_model, chain_split):
    users = np.array([0, 4, 9])
    n_items = chain_split.train.n_items
    tokens = chain_model.input_sequences(users, chain_split.history("test"))
    assert tokens.shape[1] <= chain_model.config.max_seq_len
    np.testing.assert_array_equal(tokens[:, -1], n_items + 1)  # [MASK]
    valid_items = {int(u): int(i) for u, i in zip(chain_split.valid.user, chain_split.valid.item)}
    np.testing.assert_array_equal(tokens[:, -2], [valid_items[u] + 1 for u in users])  # newest item = valid


def net_params(n_items: int = 12, **config):
    torch.manual_seed(0)
    return _initial_params(n_items, BERT4RecConfig(**{"embedding_size": 8, "n_heads": 2, "max_seq_len": 6, **config}))


def test_attention_is_bidirectional_and_ignores_padding():
    p = net_params()
    tokens = torch.tensor([[3, 5, 7, 2, 9, 13]])
    changed = tokens.clone()
    changed[0, 4] = 11  # a later slot changes: earlier slots see it (unlike SASRec)
    assert not torch.allclose(_forward(p, tokens, 2)[:, :4], _forward(p, changed, 2)[:, :4], atol=1e-5)
    full = _forward(p, torch.tensor([[0, 0, 0, 4, 6, 13]]), 2)[:, -1]
    short = _forward(p, torch.tensor([[0, 4, 6, 13]]), 2)[:, -1]
    torch.testing.assert_close(full, short)
    torch.testing.assert_close(_forward(p, torch.tensor([[0, 0, 0, 4, 6, 13]]), 2, last_only=True), full)


def test_scores_are_the_head_against_the_tied_table_plus_bias(chain_model, chain_split):
    history = chain_split.history("test")
    users = np.array([3, 0, 7, 3])
    n_items = chain_split.train.n_items
    scores = chain_model.score(users, history)
    table = chain_model.weights_["item_embedding"][1:n_items + 1]  # without padding and [MASK]
    expected = chain_model.embed(users, history) @ table.T + chain_model.weights_["output_bias"]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    p = {k: torch.from_numpy(v) for k, v in chain_model.weights_.items()}
    tokens = torch.from_numpy(chain_model.input_sequences(users, history))
    with torch.no_grad():
        direct = _head(p, _forward(p, tokens, chain_model.config.n_heads)[:, -1]).numpy()
    np.testing.assert_allclose(chain_model.embed(users, history), direct, rtol=1e-5, atol=1e-5)


def test_history_with_another_catalogue_is_refused(chain_model):
    with pytest.raises(RecstackError, match="fitted on 25"):
        chain_model.score(np.array([0]), markov(n_items=30))


def test_config_checks():
    with pytest.raises(ConfigError, match="n_heads"):
        make_config(BERT4RecConfig, {"embedding_size": 10, "n_heads": 3})
    with pytest.raises(ConfigError, match="max_seq_len must be >= 2"):
        make_config(BERT4RecConfig, {"max_seq_len": 1})
    with pytest.raises(ConfigError, match="mask_prob"):
        make_config(BERT4RecConfig, {"mask_prob": 0.0})
    assert BERT4RecConfig().mask_prob == 0.2
    with pytest.raises(RecstackError, match="two or more training events"):
        BERT4Rec(BERT4RecConfig(**FAST)).fit(markov(length=1))


def test_cloze_trains_on_latest_windows_too_and_refuses_prefixes(chain_split):
    # the chain_model fixture trains on the default "sliding" windows
    assert BERT4RecConfig().train_windows == "sliding"
    model = BERT4Rec(BERT4RecConfig(**{**FAST, "train_windows": "latest"}))
    model.fit(chain_split.train, chain_split.valid)
    assert metric(model, chain_split.history("test"), chain_split.test) > 0.9
    with pytest.raises(ConfigError, match="train_windows='prefixes' does not apply to BERT4Rec"):
        make_config(BERT4RecConfig, {"train_windows": "prefixes"})
    with pytest.raises(ConfigError, match="train_stride does not apply to BERT4Rec"):
        make_config(BERT4RecConfig, {"train_stride": 5})


def test_latest_cloze_windows_are_the_last_items():
    # the batches mask each trainable user's last max_seq_len items (what the model always trained on)
    data = markov(n_users=7, length=11)
    model = BERT4Rec(BERT4RecConfig(**{**FAST, "batch_size": 4, "train_windows": "latest"}))
    model.build_module(data, np.random.default_rng(0))
    rows = [(users, tokens) for users, tokens, _ in model._sequences]
    users = np.concatenate([u for u, _ in rows])
    np.testing.assert_array_equal(np.concatenate([t for _, t in rows]), last_items(data, users, 8))
