"""ColaRec: users as the content of their items -> encoder-decoder -> the collaborative GID of the
next item, decoded by beam search constrained to the GID trie.

The contract suite (tests/contract) covers ColaRec too: its data carries an item table, whose texts
reach the model through `use_dataset`.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from recstack.data import Interactions
from recstack.data.dataset import Dataset
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import evaluate
from recstack.models import build
from recstack.models.generative.colarec import (
    HierarchicalKMeansConfig,
    HierarchicalKMeansTokenizer,
    _beam_search,
    _encode_users,
    _recent_items,
)
from recstack.models.generative.semantic_ids import PrefixTrie

FAST = {"cf_params": {"epochs": 3, "learning_rate": 0.01, "batch_size": 1024}, "n_clusters": 4,
        "embedding_size": 16, "ffn_size": 32, "n_layers": 1, "dropout": 0.0, "n_user_items": 5, "max_items": 10,
        "epochs": 3, "batch_size": 512, "learning_rate": 5e-3, "n_beams": 20, "verbose": False}
N_ITEMS, N_CLUSTERS = 120, 6
WORDS = ["comedy", "horror", "western", "musical", "romance", "documentary"]


def texts_for(ids: np.ndarray) -> list[str]:
    """Texts that name each item's cluster (make_clustered: item id i belongs to cluster i % 6)."""
    return [f"Film {int(i)}. Genres: {WORDS[int(i) % N_CLUSTERS]}." for i in ids]


ITEM_IDS = np.arange(N_ITEMS)
ITEM_TEXTS = texts_for(ITEM_IDS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small transformer steps are slower with several threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted(one_thread, clustered_split):
    return build("colarec", FAST).set_item_texts(ITEM_IDS, ITEM_TEXTS).fit(clustered_split.train, clustered_split.valid)


def ndcg(model, split) -> float:
    return evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]


PINNED_NDCG = 0.508  # measured with FAST (word vocabulary of the cluster texts), seed 0


# ---- quality --------------------------------------------------------------------------------------
def test_pinned_ndcg_on_clustered_data_beats_pop(fitted, clustered_split):
    pop = build("pop").fit(clustered_split.train)
    value = ndcg(fitted, clustered_split)
    assert value > ndcg(pop, clustered_split) + 0.1
    assert value == pytest.approx(PINNED_NDCG, abs=0.03)


# ---- GIDs -----------------------------------------------------------------------------------------
def test_gids_are_collaborative_paths_of_fixed_length(fitted, clustered_split):
    codes = fitted.codes_
    assert codes.shape == (clustered_split.train.n_items, 3)  # 2 cluster levels + the number in the leaf
    assert len(np.unique(codes, axis=0)) == len(codes)
    assert fitted.level_sizes_[:2] == [4, 4] and codes[:, :2].max() < 4


def test_hierarchical_kmeans_splits_separated_groups_first():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [-10.0, 0.0]])
    x = np.concatenate([centres[g] + rng.normal(size=(30, 2)) for g in (0, 1)]).astype(np.float32)
    tokenizer = HierarchicalKMeansTokenizer(HierarchicalKMeansConfig(n_clusters=2, n_levels=2)).fit(x)
    first = tokenizer.codes_[:, 0]
    assert len(set(first[:30])) == 1 and len(set(first[30:])) == 1 and first[0] != first[30]
    assert tokenizer.codes_.shape == (60, 3)
    assert tokenizer.trie.n_items == 60  # unique and prefix-free, or the trie would refuse them


# ---- constrained decoding -------------------------------------------------------------------------
def test_constrained_beam_search_emits_only_codes_in_the_trie(fitted, clustered_split):
    """A trie over a third of the catalogue: every decoded sequence is one of those codes, although
    the network's free choice would often lie outside it."""
    net, _ = fitted._fitted()
    allowed = np.arange(0, N_ITEMS, 3)
    trie = PrefixTrie(fitted.codes_[allowed])
    users = np.arange(40)
    with torch.no_grad():
        memory, mask = _encode_users(net, fitted.item_words_, _recent_items(clustered_split.train, users, 20), "cpu")
        items, scores = _beam_search(net, trie, memory, mask, fitted.level_sizes_, width=15)
    assert items.shape == (40, 15) and (items >= 0).all() and (items < len(allowed)).all()
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    for row in items:
        assert len(set(row.tolist())) == 15  # each code once
    free = fitted.top_k(users, clustered_split.train, 10, mask_history=True)[0]
    assert not np.isin(free, allowed).all()  # the constraint changed what was decoded


def test_top_k_is_valid_unseen_and_matches_exact_scores_with_a_full_beam(fitted, clustered_split):
    history = clustered_split.history("test")
    users = np.arange(30)
    items, scores = fitted.top_k(users, history, 10, mask_history=True)
    assert items.shape == (30, 10) and (items >= 0).all() and (items < N_ITEMS).all()
    seen = history.matrix()[users].toarray() > 0
    assert not np.take_along_axis(seen, items, axis=1).any()
    assert all(len(set(row)) == 10 for row in items.tolist())
    # with a beam as wide as the catalogue the search is exhaustive: it must equal exact scoring
    exhaustive = build("colarec", {**FAST, "n_beams": N_ITEMS})
    exhaustive._replace_fitted({k: v for k, v in vars(fitted).items() if k.endswith("_") and not k.startswith("_")})
    top, top_scores = exhaustive.top_k(users, history, 10, mask_history=True)
    exact = fitted.score(users, history)
    exact[seen] = -np.inf
    np.testing.assert_allclose(top_scores, -np.sort(-exact, axis=1)[:, :10], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(exact, top, axis=1), top_scores, rtol=1e-4, atol=1e-4)
    # without history masking the exhaustive search ranks every item, history included
    unmasked, unmasked_scores = exhaustive.top_k(users, history, 10, mask_history=False)
    everything = fitted.score(users, history)
    np.testing.assert_allclose(unmasked_scores, -np.sort(-everything, axis=1)[:, :10], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(everything, unmasked, axis=1), unmasked_scores, rtol=1e-4, atol=1e-4)


def test_over_generated_beams_leave_k_unseen_items_for_heavy_users(fitted, clustered_split):
    train = clustered_split.train
    keep_out = np.arange(100, 110)  # user 0 has seen every item but these ten
    heavy = Interactions(np.zeros(N_ITEMS - 10, dtype=np.int32), np.setdiff1d(np.arange(N_ITEMS), keep_out),
                         train.users, train.items)
    items, scores = fitted.top_k(np.array([0]), heavy, 10, mask_history=True)
    assert sorted(items[0].tolist()) == keep_out.tolist() and np.isfinite(scores).all()


def test_user_input_is_the_most_recent_items_newest_first(clustered_split):
    train = clustered_split.train
    recent = _recent_items(train, np.array([3]), 4)[0]
    sequence = train.sequences()[3]
    np.testing.assert_array_equal(recent, sequence[::-1][:4])


# ---- losses ---------------------------------------------------------------------------------------
def test_alignment_and_contrastive_losses_are_active_and_decrease(fitted, clustered_split):
    terms = fitted.loss_terms_
    assert len(terms) == len(fitted.history_) == FAST["epochs"]
    for name in ("rec", "index", "bpr", "cl"):
        assert terms[0][name] > 0 and terms[-1][name] < terms[0][name], name
    # each weighted term reaches the gradient: switching it off changes the learned weights
    short = {**FAST, "epochs": 1, "cf_params": {**FAST["cf_params"], "epochs": 1}}

    def weights(**change):
        model = build("colarec", {**short, **change}).set_item_texts(ITEM_IDS, ITEM_TEXTS)
        fitted_weights = model.fit(clustered_split.train).weights_
        return np.concatenate([fitted_weights[key].ravel() for key in sorted(fitted_weights)])

    base = weights()
    np.testing.assert_array_equal(weights(), base)  # so any difference below is the switched-off term
    for name in ("gen_weight", "cl_weight", "bpr_weight"):
        assert not np.allclose(weights(**{name: 0.0}), base, rtol=1e-4, atol=1e-6), name


# ---- errors ---------------------------------------------------------------------------------------
def test_fit_without_item_texts_names_the_fix(clustered_split):
    with pytest.raises(RecstackError, match="use_dataset"):
        build("colarec", FAST).fit(clustered_split.train)


def test_dataset_without_item_table_is_rejected(clustered):
    with pytest.raises(RecstackError, match="item side table"):
        build("colarec", FAST).use_dataset(Dataset(clustered))


def test_missing_text_for_a_training_item_is_rejected(clustered_split):
    with pytest.raises(RecstackError, match="no text"):
        build("colarec", FAST).set_item_texts(ITEM_IDS[1:], ITEM_TEXTS[1:]).fit(clustered_split.train)


def test_use_dataset_reads_the_item_table(clustered, clustered_split):
    table = {"title": np.array([f"Film {int(i)}" for i in clustered.items.ids], dtype=object),
             "genres": np.array([WORDS[int(i) % N_CLUSTERS] for i in clustered.items.ids], dtype=object)}
    model = build("colarec", {**FAST, "epochs": 1}).use_dataset(Dataset(clustered, item_table=table))
    assert model.fit(clustered_split.train).item_words_.shape[0] == clustered.n_items
