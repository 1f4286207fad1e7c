"""The faiss HNSW index for dot-product models (`serve.ann`): recall against the exact ranking on a
synthetic catalogue, history and filter masking, the catalogue-size threshold that switches it on,
the exact fallback, and the saved index reused (rebuilt when stale)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from recstack.data.interactions import Interactions, Vocab  # noqa: E402
from recstack.evaluate.evaluator import rank  # noqa: E402
from recstack.models.factorization.bpr import BPR  # noqa: E402
from recstack.serve import ann  # noqa: E402
from recstack.serve.app import create_app  # noqa: E402
from recstack.serve.ranking import recommend_one  # noqa: E402
from recstack.serve.state import load_served  # noqa: E402
from serve_run import N_ITEMS, tiny_run  # noqa: E402

N_USERS, CATALOGUE, DIM = 60, 3000, 32


def synthetic_bpr(item_bias: bool = False, seed: int = 0) -> tuple[BPR, Interactions]:
    """A BPR whose factors are random vectors with a log-normal norm spread (popular items have
    longer vectors, as trained MF gives), and a history of 20 random items per user."""
    rng = np.random.default_rng(seed)
    model = BPR(BPR.Config(item_bias=item_bias))
    model.user_factors_ = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    norms = rng.lognormal(0.0, 0.5, (CATALOGUE, 1))
    model.item_factors_ = (rng.standard_normal((CATALOGUE, DIM)) * norms / np.sqrt(DIM)).astype(np.float32)
    if item_bias:
        model.item_bias_ = rng.normal(0.0, 0.5, CATALOGUE).astype(np.float32)
    users = np.repeat(np.arange(N_USERS), 20)
    items = np.concatenate([rng.choice(CATALOGUE, 20, replace=False) for _ in range(N_USERS)])
    history = Interactions(users, items, Vocab(np.arange(N_USERS), "user"), Vocab(np.arange(CATALOGUE), "item"))
    return model, history


@pytest.mark.parametrize("item_bias", [False, True])
def test_recall_against_exact_and_history_masked(item_bias):
    model, history = synthetic_bpr(item_bias)
    view = ann.DotProduct(model)
    assert ann.agrees_with_model(view, history)
    index = ann.AnnIndex.build(view)
    users = np.arange(N_USERS, dtype=np.int32)
    exact, _ = rank(model, users, history, 10)
    found, scores = index.top_k(users, history, 10, mask_history=True, allowed=None)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.95, recall
    seen = history.matrix()
    assert not any(seen[u, found[u]].sum() for u in users)  # masked: over-fetched, then filtered
    # the scores are the model's own, in order
    np.testing.assert_allclose(scores, np.take_along_axis(model.score(users, history), found, axis=1), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_filters_include_seen_and_exact_fallback_when_too_much_is_blocked():
    model, history = synthetic_bpr()
    index = ann.AnnIndex.build(ann.DotProduct(model))
    users = np.arange(5, dtype=np.int32)
    allowed = np.ones(CATALOGUE, dtype=bool)
    allowed[:ann.MAX_DEPTH] = False  # more blocked items than the over-fetch allows: exact ranking
    assert index.top_k(users, history, 10, mask_history=True, allowed=allowed) is None
    allowed[:] = True
    allowed[:100] = False
    found, _ = index.top_k(users, history, 10, mask_history=True, allowed=allowed)
    assert (found >= 100).all()
    # include_seen: the user's own items can come back, and the list is the exact one's
    unmasked, _ = index.top_k(users, history, 10, mask_history=False, allowed=None)
    exact, _ = rank(model, users, history, 10, mask_history=False)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(unmasked, exact)]) >= 0.95


@pytest.fixture
def run_dir(tmp_path):
    """A private copy of the tiny run: the index is written into it."""
    return shutil.copytree(tiny_run(), tmp_path / "run")


def exact_list(served, label, user_id, k=10):
    user, history, _, _ = served.user_history(user_id)
    return rank(served.models[label], np.array([user]), history, k)[0][0]


def test_threshold_switches_the_index_on_and_the_api_agrees_with_exact(run_dir, tmp_path):
    below = load_served(run_dir, ["bpr", "ease"], ann_min_items=N_ITEMS + 1)
    assert below.ann == {} and not (run_dir / ann.ANN_FOLDER).exists()
    above = load_served(run_dir, ["bpr", "ease"], ann_min_items=N_ITEMS)
    assert set(above.ann) == {"bpr"}  # EASE is no dot product: always exact
    for served, expected in ((below, "exact"), (above, "ann")):
        user, history, _, _ = served.user_history(3)
        ranked = recommend_one(served.models["bpr"], served.fallback, "pop", "bpr", user, history, 10,
                               min_history=served.min_history, mask_history=True, allowed=None, cold_reason="")
        assert ranked.retrieval == expected and not ranked.fallback
        assert ranked.items.tolist() == exact_list(served, "bpr", 3).tolist()
    with TestClient(create_app(above, events=tmp_path / "events.sqlite")) as client:
        body = client.post("/v1/recommend", json={"user_id": 3, "k": 10, "model": "bpr"}).json()
        assert [i["item_id"] for i in body["items"]] == \
            above.base.items.ids[exact_list(above, "bpr", 3)].tolist()
        assert body["retrieval"] == "ann"  # the response says the index found the candidates
        assert client.post("/v1/recommend", json={"user_id": 3, "k": 10, "model": "ease"}).json()["retrieval"] == \
            "exact"
        assert client.post("/v1/recommend", json={"user_id": "nobody", "model": "bpr"}).json()["fallback"]


def test_saved_index_is_reused_and_rebuilt_when_stale(run_dir):
    first = load_served(run_dir, ["bpr"], ann_min_items=1)
    saved = run_dir / ann.ANN_FOLDER / "bpr.faiss"
    assert first.ann["bpr"].source == "built" and saved.is_file() and saved.with_suffix(".json").is_file()
    stamp = saved.stat().st_mtime_ns
    again = load_served(run_dir, ["bpr"], ann_min_items=1)
    assert again.ann["bpr"].source == "loaded" and saved.stat().st_mtime_ns == stamp
    # other factors (a retrained model) make the saved index stale: rebuilt, not trusted
    model = again.models["bpr"]
    model.item_factors_ = model.item_factors_[::-1].copy()
    rebuilt = ann.prepare({"bpr": model}, run_dir, again.base, min_items=1)
    assert rebuilt["bpr"].source == "built"
    saved.write_bytes(b"damaged")
    assert ann.prepare({"bpr": model}, run_dir, again.base, min_items=1)["bpr"].source == "built"


def test_a_failing_index_falls_back_to_exact(run_dir, monkeypatch):
    served = load_served(run_dir, ["bpr"], ann_min_items=1)

    def broken(*args, **kwargs):
        raise RuntimeError("index gone")

    monkeypatch.setattr(served.ann["bpr"], "search", broken)
    user, history, _, _ = served.user_history(3)
    ranked = recommend_one(served.models["bpr"], served.fallback, "pop", "bpr", user, history, 5,
                           min_history=served.min_history, mask_history=True, allowed=None, cold_reason="")
    assert ranked.retrieval == "exact" and not ranked.fallback
    assert ranked.items.tolist() == exact_list(served, "bpr", 3, 5).tolist()


def test_scores_that_are_not_the_factors_dot_product_get_no_index(run_dir):
    served = load_served(run_dir, ["bpr"], ann_min_items=N_ITEMS + 1)
    model = served.models["bpr"]
    model.score = lambda users, history, items=None: np.zeros((len(users), N_ITEMS), np.float32) + 1.0
    assert ann.prepare({"bpr": model}, None, served.base, min_items=1) == {}


def test_als_is_searched_with_its_fold_in_vector():
    pytest.importorskip("implicit")
    from recstack.models import build
    from recstack.testing import clustered_interactions

    history = clustered_interactions(n_users=120, n_items=300, per_user=15, seed=1)
    model = build("als", {"embedding_size": 16, "epochs": 5}).fit(history)
    view = ann.DotProduct(model)
    users = np.arange(20, dtype=np.int32)
    np.testing.assert_allclose(view.queries(users, history), model.fold_in(users, history))
    assert ann.agrees_with_model(view, history)
    found, _ = ann.AnnIndex.build(view).top_k(users, history, 10, mask_history=True, allowed=None)
    exact, _ = rank(model, users, history, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]) >= 0.95


def test_a_reload_keeps_the_servers_threshold(run_dir, tmp_path):
    from recstack.serve.events import EventStore
    from recstack.serve.state import Server

    other = shutil.copytree(tiny_run(), tmp_path / "other")
    for threshold, indexed in ((1, {"bpr"}), (N_ITEMS + 1, set())):
        server = Server(load_served(run_dir, ["bpr"], ann_min_items=threshold),
                        EventStore(tmp_path / f"events-{threshold}.sqlite"), ann_min_items=threshold)
        assert set(server.current.ann) == indexed
        reloaded = server.reload(other, ["bpr", "ease"])
        assert set(reloaded.ann) == indexed and server.current is reloaded
