"""DGVAE: the bag of words, the factor attention and mutual-information term by hand, learning and
interpretation on the clustered fixture (titles "Film i", genres naming each item's cluster).

The contract suite (tests/contract) covers DGVAE too, with the same modalities."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models import build
from recstack.models.content.dgvae import cross_attention, factor_mi_loss, user_word_rows, word_vocabulary
from recstack.testing import CLUSTER_WORDS, held_out_ndcg as ndcg

FAST = {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 10,
        "learning_rate": 1e-2, "batch_size": 64, "anneal_steps": 100, "text_anneal_steps": 100, "verbose": False}
PINNED_NDCG = 0.582  # measured with FAST, seed 0 (best epoch 8 of 10)


@pytest.fixture(scope="module")
def data(clustered_with_items):
    return clustered_with_items


@pytest.fixture(scope="module")
def fitted(data):
    dataset, split = data
    return build("dgvae", FAST).use_dataset(dataset).fit(split.train, split.valid)


# ---- the bag of words --------------------------------------------------------------------------------
def test_vocabulary_keeps_words_by_item_frequency_without_stop_words_or_numbers():
    texts = ["The Cat (1995). Genres: Comedy.", "A cat and a dog (1996). Genres: Comedy, Drama.",
             "Dog days (1995). Genres: Drama.", "Birds (1990). Genres: Comedy."]
    words, counts = word_vocabulary(texts, min_df=2, max_df=0.9, stop_words=True)
    # "genres" is in every text (over max_df), "the"/"and" are stop words, years are not words
    assert words == ["cat", "comedy", "dog", "drama"]
    assert counts.shape == (4, 4) and counts.dtype == np.float32
    assert counts.toarray()[1].tolist() == [1, 1, 1, 1]
    with pytest.raises(RecstackError, match="lower word_min_df"):
        word_vocabulary(texts, min_df=5, max_df=0.9, stop_words=True)


def test_user_documents_are_l2_normalised_tfidf_of_their_items_words():
    item_words = sp.csr_matrix(np.array([[1, 0, 2], [1, 1, 0], [0, 0, 1]], dtype=np.float32))
    idf = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    rows = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0]], dtype=np.float32))
    out = user_word_rows(rows, item_words, idf)
    expected = np.array([2.0, 2.0, 1.0]) / 3.0  # counts (2, 1, 2) times idf, unit length
    assert np.allclose(out[0], expected) and np.allclose(out[1], 0.0)  # an empty history stays zero


# ---- the factor fusion and the mutual-information term ------------------------------------------------
def test_cross_attention_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    out = cross_attention(q, k, v)
    for b in range(2):
        for i in range(3):
            relevance = torch.tanh(torch.stack([q[b, i] @ k[b, j] for j in range(3)]))
            distance = -torch.stack([(q[b, i] - k[b, j]).abs().sum() for j in range(3)])
            gate = torch.sigmoid(distance - distance.mean())
            assert torch.allclose(out[b, i], ((relevance * gate)[:, None] * v[b]).sum(0), atol=1e-6)


def test_mutual_information_term_matches_a_loop_and_rewards_aligned_factors():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    expected = 0.0
    for i in range(3):
        negative = torch.stack([F.softplus((a[:, i] * b[:, j]).sum(-1)) for j in range(3) if j != i]).mean(0)
        expected += (negative + F.softplus(-(a[:, i] * b[:, i]).sum(-1))).mean() / 3
    assert torch.allclose(factor_mi_loss(a, b), expected, atol=1e-6)
    unit = F.normalize(torch.eye(3).repeat(5, 1, 1) * 4, dim=2) * 3  # factor i of both views equal, others orthogonal
    assert factor_mi_loss(unit, unit) < factor_mi_loss(unit, unit.roll(1, dims=1))
    assert torch.isfinite(factor_mi_loss(a[:, :1], b[:, :1]))  # one factor: no negatives, still defined


# ---- learning and interpretation ----------------------------------------------------------------------
def test_learns_on_the_clustered_fixture(data, fitted):
    _, split = data
    value = ndcg(fitted, split)
    assert value > 3 * ndcg(build("pop").fit(split.train), split)
    assert value > ndcg(build("random").fit(split.train), split) + 0.3
    assert value == pytest.approx(PINNED_NDCG, abs=0.03)


def test_factor_words_are_words_of_the_item_texts(fitted):
    genres = {w.lower() for w in CLUSTER_WORDS} | {"drama"}
    # "film" (every title) and "genres" (every text) are cut by word_max_df; numbers are no words
    assert fitted.vocabulary_ == sorted(genres)
    lists = fitted.factor_words(4)
    assert len(lists) == fitted.config.n_factors
    for words in lists:
        assert len(words) == 4 and len(set(words)) == 4 and set(words) <= genres
    assert len({words[0] for words in lists}) >= 2  # the factors do not all lead with one word
    assert fitted.factor_words(100)[0] == fitted.factor_words(len(genres))[0]  # n beyond the vocabulary: all
    with pytest.raises(RecstackError, match="n >= 1"):
        fitted.factor_words(0)
    # by usage: each word listed under its strongest factor only, the whole vocabulary over all factors
    members = fitted.factor_words(100, by="usage")
    listed = [w for words in members for w in words]
    assert sorted(listed) == fitted.vocabulary_
    with pytest.raises(RecstackError, match="'assignment' or 'usage'"):
        fitted.factor_words(3, by="cosine")


def test_user_words_name_the_genre_a_user_watches(data, fitted):
    _, split = data
    history = split.history("test")
    users = np.arange(history.n_users)
    top = [words[0] for words in fitted.user_words(users, history, 1)]
    genre = np.array([CLUSTER_WORDS[int(i) % 6].lower() for i in history.items.ids])
    matrix = history.matrix()
    dominant = []
    for u in users:
        names, counts = np.unique(genre[matrix[u].indices], return_counts=True)
        dominant.append(names[np.argmax(counts)])
    assert np.mean(np.array(top) == np.array(dominant)) > 0.8  # measured 0.94
    per_factor = fitted.user_factor_words(users[:4], history, 2)
    assert [len(user) for user in per_factor] == [fitted.config.n_factors] * 4
    assert all(len(words) == 2 and set(words) <= set(fitted.vocabulary_) for user in per_factor for words in user)


def test_without_modalities_it_fits_saves_and_loads(data, tmp_path):
    from recstack.models.protocol import load_model

    dataset, split = data
    model = build("dgvae", {**FAST, "modalities": [], "epochs": 2}).use_dataset(dataset).fit(split.train)
    assert model.item_graph_.nnz == 0  # the ablation without the item graph
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m", trust=True)
    history = split.history("test")
    np.testing.assert_allclose(loaded.score(np.arange(5), history), model.score(np.arange(5), history), rtol=1e-5)
    assert loaded.factor_words(3) == model.factor_words(3)


# ---- side data errors ------------------------------------------------------------------------------
def test_texts_are_needed_and_must_cover_the_items(data):
    dataset, split = data
    with pytest.raises(RecstackError, match="needs the item texts before fit"):
        build("dgvae", {**FAST, "modalities": []}).fit(split.train)
    with pytest.raises(RecstackError, match="has no item table"):
        build("dgvae", FAST).use_dataset(Dataset(dataset.interactions))
    with pytest.raises(RecstackError, match="one text per item id"):
        build("dgvae", FAST).set_item_texts([1, 2], ["a"])
    few = build("dgvae", {**FAST, "modalities": []}).set_item_texts(split.train.items.ids[:5], ["comedy"] * 5)
    with pytest.raises(RecstackError, match="no item texts for"):
        few.fit(split.train)


def test_score_refuses_another_item_vocabulary(data, fitted):
    _, split = data
    other = split.train.take(split.train.item < 10)
    smaller = Interactions.from_ids(other.users.ids[other.user], other.items.ids[other.item])
    assert smaller.n_items < split.train.n_items
    with pytest.raises(RecstackError, match="share the training item vocabulary"):
        fitted.score(np.array([0]), smaller)
