"""AlphaRec: item texts -> language vectors -> MLP -> graph propagation, cosine scores, InfoNCE.

The contract suite (tests/contract) covers AlphaRec too: its data carries an item table, handed over
through `use_dataset`."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import make_clustered
from recstack.data.dataset import Dataset
from recstack.data.features import TfidfSVDEncoder, encode_texts
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import evaluate
from recstack.models import build
from recstack.models.content.alpharec import user_mean_inputs

FAST = {"encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 5, "learning_rate": 3e-3,
        "batch_size": 512, "n_negatives": 16, "mlp_hidden": 64, "embedding_size": 32, "verbose": False}
N_ITEMS, N_CLUSTERS = 120, 6
WORDS = ["comedy", "horror", "western", "musical", "romance", "documentary"]


def item_table(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Texts that name each item's cluster (make_clustered: item id i belongs to cluster i % 6)."""
    titles = np.array([f"Film {int(i)}" for i in ids], dtype=object)
    genres = np.array([WORDS[int(i) % N_CLUSTERS] for i in ids], dtype=object)
    return {"title": titles, "genres": genres}


@pytest.fixture(scope="module")
def item_vectors():
    ids = np.arange(N_ITEMS)
    table = item_table(ids)
    texts = [f"{t}. Genres: {g}." for t, g in zip(table["title"], table["genres"])]
    return ids, encode_texts(texts, TfidfSVDEncoder(dim=32), cache=False, progress=False)


@pytest.fixture(scope="module")
def dataset(clustered):
    return Dataset(clustered, item_table=item_table(clustered.items.ids))


@pytest.fixture(scope="module")
def fitted(dataset, clustered_split):
    return build("alpharec", FAST).use_dataset(dataset).fit(clustered_split.train, clustered_split.valid)


def ndcg(model, split) -> float:
    return evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]


PINNED_NDCG = 0.576  # measured with FAST (tfidf vectors of the cluster texts), seed 0


# ---- quality and mechanics ----------------------------------------------------------------------
def test_pinned_ndcg_on_clustered_data_beats_pop(fitted, clustered_split):
    pop = build("pop").fit(clustered_split.train)
    value = ndcg(fitted, clustered_split)
    assert value > ndcg(pop, clustered_split) + 0.03
    assert value == pytest.approx(PINNED_NDCG, abs=0.03)


def test_scores_are_cosines(fitted, clustered_split):
    np.testing.assert_allclose(np.linalg.norm(fitted.item_factors_, axis=1), 1.0, rtol=1e-5)
    active = clustered_split.train.user_counts() > 0
    np.testing.assert_allclose(np.linalg.norm(fitted.user_factors_[active], axis=1), 1.0, rtol=1e-5)
    scores = fitted.score(np.arange(20), clustered_split.train)
    assert scores.max() <= 1.0 + 1e-5 and scores.min() >= -1.0 - 1e-5


def test_user_input_is_the_mean_of_its_item_vectors():
    import scipy.sparse as sp

    matrix = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0], [0, 2, 0]], dtype=np.float32))
    vectors = np.array([[1.0, 0.0], [0.0, 4.0], [3.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(user_mean_inputs(matrix, vectors), [[2.0, 1.0], [0.0, 0.0], [0.0, 4.0]])


def test_vectors_are_matched_by_item_id_not_by_row(item_vectors, clustered_split):
    ids, vectors = item_vectors
    order = np.random.default_rng(1).permutation(len(ids))
    a = build("alpharec", FAST).set_item_embeddings(ids, vectors).fit(clustered_split.train)
    b = build("alpharec", FAST).set_item_embeddings(ids[order], vectors[order]).fit(clustered_split.train)
    np.testing.assert_allclose(a.score(np.arange(10), clustered_split.train),
                               b.score(np.arange(10), clustered_split.train), rtol=1e-5, atol=1e-6)


def test_item_vectors_given_before_fit_survive_fit(item_vectors, clustered_split):
    """fit drops only the training-only state it adds; the side data stays for the next fit."""
    ids, vectors = item_vectors
    small = {**FAST, "epochs": 1}
    model = build("alpharec", small).set_item_embeddings(ids, vectors).fit(clustered_split.train)
    assert model._item_vectors is not None and not hasattr(model, "_pairs") and not hasattr(model, "_untrained_users")
    first = model.user_factors_.copy()
    model.fit(clustered_split.train)  # again, without handing the vectors over a second time
    np.testing.assert_array_equal(model.user_factors_, first)


def test_an_item_without_training_events_is_placed_by_its_text(item_vectors):
    data = make_clustered(n_users=80, n_items=N_ITEMS, per_user=12, seed=4)
    cold = data.items.index(int(data.items.ids[0]))
    train = data.take(data.item != cold)  # the item stays in the vocabulary, without edges
    ids, vectors = item_vectors
    model = build("alpharec", FAST).set_item_embeddings(ids, vectors).fit(train)
    factors = model.item_factors_
    assert np.isfinite(factors[cold]).all() and np.linalg.norm(factors[cold]) == pytest.approx(1.0, rel=1e-5)
    # its nearest item among the others shares its genre word
    cluster = int(data.items.ids[cold]) % N_CLUSTERS
    similarity = factors @ factors[cold]
    similarity[cold] = -np.inf
    assert int(data.items.ids[int(np.argmax(similarity))]) % N_CLUSTERS == cluster


def test_fit_without_item_vectors_names_the_fix(clustered_split):
    with pytest.raises(RecstackError, match="use_dataset"):
        build("alpharec", FAST).fit(clustered_split.train)


def test_dataset_without_item_table_is_rejected(clustered):
    with pytest.raises(RecstackError, match="item side table"):
        build("alpharec", FAST).use_dataset(Dataset(clustered))


def test_missing_vector_for_a_training_item_is_rejected(item_vectors, clustered_split):
    ids, vectors = item_vectors
    with pytest.raises(RecstackError, match="no language embedding"):
        build("alpharec", FAST).set_item_embeddings(ids[1:], vectors[1:]).fit(clustered_split.train)
    with pytest.raises(RecstackError, match="one row per id"):
        build("alpharec", FAST).set_item_embeddings(ids, vectors[:5])
