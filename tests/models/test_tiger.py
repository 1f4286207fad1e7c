"""TIGER: learns a Markov-chain next-item rule through generated codes; trie-constrained beam search
only emits real, unconsumed items and, wide enough, equals the exact log-probability ranking;
beam and projection decoding agree; side data for semantic indexing comes through use_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.data.dataset import Dataset
from recstack.abilities import ListRecommender
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import ConfigError, build, make_config
from recstack.models.generative.semantic_ids import PAD, ItemTokenizer
from recstack.models.generative.tiger import TIGER, TIGERConfig
from recstack.split import make_split
from recstack.topk import top_k_items


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


N_ITEMS = 25


def markov(n_users: int = 60, n_items: int = N_ITEMS, length: int = 12, seed: int = 0) -> Interactions:
    """A deterministic Markov chain: every user walks item -> (item + 1) mod n_items from a random start."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    user = np.repeat(np.arange(n_users), length)
    item = (starts[:, None] + np.arange(length)[None, :]).ravel() % n_items
    return Interactions(user, item, Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item"),
                        timestamp=np.tile(np.arange(length), n_users))


FAST = dict(embedding_size=32, n_heads=2, ffn_size=64, n_layers=1, max_seq_len=3, dropout=0.0, n_user_buckets=0,
            samples_per_user=None, batch_size=64, learning_rate=5e-3, epochs=25, eval_every=25, verbose=False,
            indexing="random", tokenizer={"base": 3})  # 25 items as 3 base-3 digits: 2 of 27 codes unused


@pytest.fixture(scope="module")
def chain_split():
    return make_split(markov(), "leave_last", seed=0)


@pytest.fixture(scope="module")
def beam_model(chain_split):
    return TIGER(TIGERConfig(**FAST)).fit(chain_split.train, chain_split.valid)


@pytest.fixture(scope="module")
def projection_model(chain_split):
    return TIGER(TIGERConfig(**FAST, decoding="projection")).fit(chain_split.train, chain_split.valid)


def test_learns_the_chain_pinned_metric(beam_model, chain_split):
    assert beam_model.codes_.shape == (N_ITEMS, 3)
    result = evaluate(beam_model, chain_split.history("test"), chain_split.test, metrics=["Hit@1", "NDCG@10"])
    # every target is the successor of the newest input item (the valid item at test time)
    assert result["Hit@1"] > 0.9
    assert result["NDCG@10"] > 0.9


def test_beam_search_emits_only_valid_unseen_items(beam_model, chain_split):
    history = chain_split.history("test")
    users = np.arange(history.n_users)
    items, scores = beam_model.top_k(users, history, 10, mask_history=True)
    assert items.shape == scores.shape == (len(users), 10)
    assert ((items >= 0) & (items < N_ITEMS)).all()  # never one of the two unused codes, never padding
    assert all(len(set(row)) == 10 for row in items.tolist())
    assert (np.diff(scores, axis=1) <= 1e-6).all() and (scores <= 0).all()  # log-probabilities, best first
    seen = history.matrix().toarray().astype(bool)
    assert not np.take_along_axis(seen[users], items, axis=1).any()  # history items are excluded
    for user, row in zip(users[:5], items[:5]):
        for item in row:
            code = beam_model.codes_[item]
            assert beam_model.trie.find(code.tolist()) >= 0 and beam_model.trie.items_of_prefix(code)[0] == item
    # without masking, history items may come back (the newest input item is a likely one here)
    unmasked, _ = beam_model.beam_search(users, history, 10, mask_history=False)
    assert np.take_along_axis(seen[users], unmasked, axis=1).any()


def test_exhaustive_beam_equals_exact_log_probabilities(beam_model, chain_split):
    history = chain_split.history("valid")
    users = np.arange(12)
    exact = beam_model.score(users, history)
    exact[history.matrix()[users].nonzero()] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :8]
    items, scores = beam_model.beam_search(users, history, 8, beam_size=27)  # width >= every trie level
    np.testing.assert_array_equal(items, order)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, axis=1), rtol=1e-4, atol=1e-4)
    # sums of per-level log-probabilities: a distribution over all codes, less the two unused ones
    assert 0.5 < np.exp(beam_model.score(users[:1], history)).sum() <= 1.0 + 1e-5


def test_beam_and_projection_agree_on_the_top_item(beam_model, projection_model, chain_split):
    history = chain_split.history("test")
    users = np.arange(history.n_users)
    beam_top = beam_model.top_k(users, history, 1, mask_history=True)[0][:, 0]
    scores = projection_model.score(users, history)
    scores[history.matrix()[users].nonzero()] = -np.inf
    projection_top = scores.argmax(axis=1)
    assert np.mean(beam_top == projection_top) > 0.9
    # the projection model is still generative: its own beam search finds the same items
    assert np.mean(projection_model.beam_search(users, history, 1)[0][:, 0] == projection_top) > 0.9


def test_projection_top_k_ranks_every_item_by_score_as_the_evaluator_would(projection_model, beam_model,
                                                                          chain_split):
    assert isinstance(projection_model, ListRecommender) and isinstance(beam_model, ListRecommender)
    history = chain_split.history("test")
    users = np.arange(history.n_users)
    for mask_history in (True, False):
        scores = projection_model.score(users, history)
        if mask_history:
            scores[history.matrix()[users].nonzero()] = -np.inf
        expected, expected_scores = top_k_items(scores, 10)
        expected[~np.isfinite(expected_scores)] = -1
        items, values = projection_model.top_k(users, history, 10, mask_history=mask_history)
        np.testing.assert_array_equal(items, expected)
        np.testing.assert_allclose(values, expected_scores, rtol=1e-5)  # -inf pads compare equal


class MixedLengthCodes(ItemTokenizer):
    """Items i % 3 == 0 get 2 tokens, the others 3 (padded): prefix-free codes of different lengths."""

    def fit(self, embeddings=None, *, interactions=None, item_table=None, options=None):
        i = np.arange(interactions.n_items)
        codes = np.stack([i % 3, (i // 3) // 2, (i // 3) % 2], axis=1)
        codes[i % 3 == 0, 1:] = [(j, PAD) for j in i[i % 3 == 0] // 3]
        self._set_codes(codes, [3, int(codes[:, 1].max()) + 1, 2])
        return self


def test_variable_length_codes_decode_exactly(chain_split):
    name = f"{MixedLengthCodes.__module__}:MixedLengthCodes"
    model = TIGER(TIGERConfig(**{**FAST, "epochs": 3, "indexing": name, "tokenizer": {}})).fit(chain_split.train)
    lengths = (model.codes_ >= 0).sum(axis=1)
    assert set(lengths.tolist()) == {2, 3}
    history = chain_split.history("test")
    users = np.arange(10)
    exact = model.score(users, history)
    assert 0.5 < np.exp(exact[0]).sum() <= 1.0 + 1e-5  # a distribution over codes, less its unused ones
    exact[history.matrix()[users].nonzero()] = -np.inf
    items, scores = model.beam_search(users, history, 6, beam_size=N_ITEMS)
    np.testing.assert_array_equal(items, np.argsort(-exact, axis=1, kind="stable")[:, :6])
    assert set(model.top_k(users, history, 6, mask_history=True)[0].ravel().tolist()) <= set(range(N_ITEMS))


def test_semantic_indexing_reads_the_item_table_through_use_dataset(chain_split):
    genres = np.array(["A|B", "B", "C|A", "C", "B|C"] * 5, dtype=object)
    config = {**FAST, "epochs": 2, "indexing": "semantic", "tokenizer": {"depth": 2}}
    with pytest.raises(RecstackError, match="use_dataset"):
        TIGER(TIGERConfig(**config)).fit(chain_split.train)
    data = markov()
    dataset = Dataset(data, item_table={"genres": genres, "title": np.array([f"film {i}" for i in range(N_ITEMS)])})
    model = TIGER(TIGERConfig(**config)).use_dataset(dataset).fit(chain_split.train)
    assert model.codes_.shape == (N_ITEMS, 3)  # two genre levels + collision token
    assert model.codes_[0, 0] == model.codes_[1, 0]  # items 0 and 1 share their most frequent genre "B"
    text = TIGER(TIGERConfig(**{**FAST, "epochs": 2, "indexing": "rkmeans", "item_embeddings": "text",
                                "embedding_dim": 8, "tokenizer": {"codebook_size": 4, "n_levels": 2}}))
    with pytest.raises(RecstackError, match="use_dataset"):
        text.fit(chain_split.train)
    assert text.use_dataset(dataset).fit(chain_split.train).codes_.shape[1] == 3


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="projection_weight"):
        make_config(TIGERConfig, {"decoding": "projection", "projection_weight": 0.0})
    with pytest.raises(ConfigError, match="n_heads"):
        make_config(TIGERConfig, {"embedding_size": 30, "n_heads": 4})
    with pytest.raises(ConfigError, match="unknown item tokenizer"):
        build("tiger", {"indexing": "nope", "verbose": False}).fit(markov())
