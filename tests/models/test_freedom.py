"""FREEDOM: the frozen multimodal kNN item graph, degree-sensitive pruning of the user-item graph,
and learning on the clustered fixture (text via TF-IDF and structure from its item table).

The contract suite (tests/contract) covers FREEDOM too, with the same modalities."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data.modalities import ItemModality, ModalityError, read_mmrec
from recstack.errors import RecstackError
from recstack.models import build
from recstack.models.content.freedom import knn_graph, modality_graph, prune_edges
from recstack.split.base import Split
from recstack.testing import held_out_ndcg as ndcg

FAST = {"modalities": ["text", "structure"], "tfidf_dim": 32, "cache_embeddings": False, "epochs": 10,
        "learning_rate": 1e-2, "batch_size": 512, "embedding_size": 32, "edge_prune_ratio": 0.5, "verbose": False}
PINNED_NDCG = {"text+structure": 0.546, "none": 0.540}  # measured with FAST, seed 0 (still rising at epoch 10)


@pytest.fixture(scope="module")
def data(clustered_with_items):
    return clustered_with_items


# ---- the frozen item-item graph -------------------------------------------------------------------
def test_knn_graph_keeps_k_neighbours_with_symmetric_normalisation():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6))
    graph = knn_graph(features, 5)
    assert graph.shape == (40, 40)
    assert np.all(np.diff(graph.indptr) == 5)  # every item keeps k neighbours
    assert np.all(graph.diagonal() > 0)  # itself among them (cosine 1), as the reference
    # D^-1/2 A D^-1/2 with D the row degrees (= k): every value 1/k
    assert np.allclose(graph.data, 1 / 5)
    # the neighbours are the k most cosine-similar items
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    for i in (0, 17, 39):
        assert set(graph[i].indices) == set(np.argsort(-similarity[i])[:5])


def test_modality_graph_is_the_weighted_sum_of_frozen_graphs():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 3))
    mixed = modality_graph({"image": a, "text": b}, 4)  # MMRec's default weights: image 0.1, text 0.9
    assert np.allclose(mixed.toarray(), 0.1 * knn_graph(a, 4).toarray() + 0.9 * knn_graph(b, 4).toarray())
    equal = modality_graph({"text": b, "structure": a}, 4, {"text": 3.0, "structure": 1.0})
    assert np.allclose(equal.toarray(), 0.75 * knn_graph(b, 4).toarray() + 0.25 * knn_graph(a, 4).toarray())
    assert modality_graph({}, 4) is None
    with pytest.raises(RecstackError, match="not structure"):
        modality_graph({"text": b, "structure": a}, 4, {"text": 1.0})


# ---- degree-sensitive pruning ----------------------------------------------------------------------
def test_pruning_keeps_the_share_and_prunes_hub_edges_first():
    # user 0 is a hub (60 items); users 1..60 have 2 items each among items 60..89 (low degree)
    hub_users, hub_items = np.zeros(60, dtype=np.int64), np.arange(60)
    low_users = np.repeat(np.arange(1, 61), 2)
    low_items = 60 + (np.arange(120) % 30)
    users, items = np.concatenate([hub_users, low_users]), np.concatenate([hub_items, low_items])
    rng = np.random.default_rng(0)
    kept_hub, kept_low, rounds = 0, 0, 200
    for _ in range(rounds):
        kept = prune_edges(users, items, 0.8, rng)
        assert len(kept) == 36 and len(np.unique(kept)) == len(kept)
        kept_hub += np.count_nonzero(kept < 60)
        kept_low += np.count_nonzero(kept >= 60)
    # hub edges weigh 1/sqrt(60 * 1) ~ 0.13, the others 1/sqrt(2 * 8) = 0.25: a hub edge survives less often
    assert kept_hub / (60 * rounds) < 0.6 * kept_low / (120 * rounds)
    assert np.array_equal(prune_edges(users, items, 0.0, rng), np.arange(len(users)))


# ---- learning ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("modalities, label", [(["text", "structure"], "text+structure"), ([], "none")])
def test_learns_on_the_clustered_fixture(data, modalities, label):
    dataset, split = data
    model = build("freedom", {**FAST, "modalities": modalities}).use_dataset(dataset).fit(split.train, split.valid)
    value = ndcg(model, split)
    pop = ndcg(build("pop").fit(split.train), split)
    assert value > 3 * pop
    assert value == pytest.approx(PINNED_NDCG[label], abs=0.03)


def test_modalities_are_needed_before_fit_and_must_cover_the_items(data):
    dataset, split = data
    with pytest.raises(RecstackError, match="needs the item modalities text, structure before fit"):
        build("freedom", FAST).fit(split.train, split.valid)
    few = ItemModality("text", split.train.items.ids[:10], np.ones((10, 3)))
    with pytest.raises(ModalityError, match="has no row for"):
        build("freedom", {**FAST, "modalities": ["text"]}).set_modalities({"text": few}).fit(split.train)


def write_mmrec(folder, n_users=30, n_items=20, seed=0):
    """MMRec's layout: .inter with x_label (4 train, 1 valid, 1 test event per user), features by item id."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    lines = ["userID\titemID\tx_label"]
    for u in range(n_users):
        chosen = rng.choice(n_items - 1, 6, replace=False) if u else np.array([n_items - 1, 0, 1, 2, 3, 4])
        lines += [f"{u}\t{i}\t{0 if n < 4 else n - 3}" for n, i in enumerate(chosen)]
    (folder / f"{folder.name}.inter").write_text("\n".join(lines) + "\n")
    np.save(folder / "image_feat.npy", rng.normal(size=(n_items, 8)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.normal(size=(n_items, 5)).astype(np.float32))
    return folder


def test_runs_unchanged_on_mmrec_files(tmp_path):
    mmrec = read_mmrec(write_mmrec(tmp_path / "baby"))
    split = Split(*mmrec.parts, method="mmrec")
    params = {**FAST, "modalities": ["image", "text"], "epochs": 2, "knn_k": 3}
    model = build("freedom", params).use_dataset(mmrec.dataset).fit(split.train, split.valid)
    scores = model.score(np.arange(5), split.history("test"))
    assert scores.shape == (5, split.train.n_items) and np.isfinite(scores).all()
