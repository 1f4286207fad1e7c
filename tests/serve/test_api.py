"""The HTTP API on a tiny run directory, through FastAPI's TestClient: recommendations (known user,
unknown user, ad-hoc history, filters), look-ups, live events, bad input, metrics and admin."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recstack.experiment import parse_config, run_experiment
from recstack.experiment.rundir import read_history
from recstack.serve import state
from recstack.serve.app import create_app
from serve_run import N_ITEMS, genres_of, no_charts, tiny_run, year_of

TOKEN = "s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def run_dir():
    return tiny_run()


@pytest.fixture
def client(run_dir, tmp_path):
    with TestClient(create_app(run_dir, events=tmp_path / "events.sqlite", admin_token=TOKEN)) as c:
        yield c


def seen_by(run_dir, user_id) -> set[int]:
    history, _ = read_history(run_dir / "history.npz")
    idx = history.users.index(user_id)
    return set(history.items.ids[history.item[history.indptr[idx]:history.indptr[idx + 1]]].tolist())


def ids(response) -> list:
    return [item["item_id"] for item in response.json()["items"]]


def test_health_ready_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "run": None}
    assert client.get("/ready").json()["status"] == "ready"
    listed = client.get("/v1/models").json()
    assert {m["label"] for m in listed["models"]} == {"pop", "itemknn", "ease", "bpr", "sasrec"}
    assert sum(m["default"] for m in listed["models"]) == 1 and listed["fallback"] == "pop"
    assert "/v1/recommend" in client.get("/openapi.json").json()["paths"]


def test_known_user_gets_k_unseen_items_with_reasons(client, run_dir):
    response = client.post("/v1/recommend", json={"user_id": 1, "k": 5, "model": "ease"})
    body = response.json()
    assert response.status_code == 200 and body["model"] == "ease" and not body["fallback"]
    assert len(body["items"]) == 5 and [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    assert not set(ids(response)) & seen_by(run_dir, 1)
    assert all(i["title"].startswith("Movie ") for i in body["items"])
    assert any(i["because"] and i["because"]["item_id"] in seen_by(run_dir, 1) for i in body["items"])
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = client.post("/v1/recommend", json={"user_id": 1, "k": N_ITEMS, "model": "ease", "include_seen": True})
    assert set(ids(with_seen)) == set(range(1, N_ITEMS + 1))
    assert client.get("/v1/users/1/recommendations?k=5&model=ease").json()["items"] == body["items"]


def test_filters_and_exclusions(client):
    response = client.post("/v1/recommend", json={
        "user_id": 2, "k": 5, "model": "itemknn", "exclude": [1, 2, 3],
        "filters": {"genres": ["comedy"], "year_min": 1982, "year_max": 1995}})
    assert response.status_code == 200
    got = ids(response)
    assert got and not {1, 2, 3} & set(got)
    assert all("Comedy" in genres_of(i).split("|") and 1982 <= year_of(i) <= 1995 for i in got)
    popular = client.get("/v1/items/popular?k=3&genre=Horror").json()
    assert len(popular) == 3 and all("Horror" in p["genres"] for p in popular)
    counts = [p["n_interactions"] for p in popular]
    assert counts == sorted(counts, reverse=True)


def test_unknown_user_gets_the_fallback_flagged(client):
    response = client.post("/v1/recommend", json={"user_id": "nobody", "k": 4, "model": "ease"})
    body = response.json()
    assert response.status_code == 200 and body["fallback"] and body["fallback_model"] == "pop"
    assert "unknown user" in body["fallback_reason"] and len(body["items"]) == 4 and not body["known_user"]
    assert client.get("/v1/users/nobody/recommendations").json()["fallback"]


def test_adhoc_history_models_that_can_score_do_others_fall_back(client):
    history = [1, 7, 13, 19]
    for label in ("itemknn", "ease", "sasrec"):
        body = client.post("/v1/recommend/history", json={"items": history, "k": 5, "model": label}).json()
        assert not body["fallback"], (label, body["fallback_reason"])
        assert len(body["items"]) == 5 and not set(history) & {i["item_id"] for i in body["items"]}
    # BPR has no embedding for a user it never trained on: it says so, pop answers, flagged
    body = client.post("/v1/recommend/history", json={"items": history, "k": 5, "model": "bpr"}).json()
    assert body["fallback"] and body["fallback_model"] == "pop" and "bpr" in body["fallback_reason"]
    assert len(body["items"]) == 5
    empty = client.post("/v1/recommend/history", json={"items": [], "k": 3, "model": "ease"}).json()
    assert empty["fallback"] and len(empty["items"]) == 3


def test_lookups(client):
    item = client.get("/v1/items/5").json()
    assert item["title"] == "Movie 5" and item["year"] == year_of(5) and item["genres"] == genres_of(5)
    similar = client.get("/v1/items/5/similar?k=3").json()["items"]
    assert len(similar) == 3 and 5 not in [s["item_id"] for s in similar]
    assert [s["score"] for s in similar] == sorted((s["score"] for s in similar), reverse=True)
    assert client.get("/v1/items/999").status_code == 404
    assert client.get("/v1/items/999/similar").status_code == 404
    found = client.get("/v1/items?q=movie 1&limit=50").json()
    assert {f["item_id"] for f in found} == {1, *range(10, 20)}
    user = client.get("/v1/users/1").json()
    assert user["known_user"] and user["history_length"] == 12 and len(user["recent"]) == 10
    assert client.get("/v1/users/nobody").status_code == 404
    # Unicode digits are not ids of a numeric vocabulary (the fuzzer found "²" crashing int())
    for digits in ("%C2%B2", "%C2%B9/similar", "--5"):
        assert client.get(f"/v1/items/{digits}").status_code == 404
    assert client.get("/v1/users/%C2%B2").status_code == 404


def test_events_are_seen_at_the_next_request_and_ingest_is_idempotent(client, run_dir):
    before = client.post("/v1/recommend", json={"user_id": 3, "k": 3, "model": "itemknn"}).json()
    top = before["items"][0]["item_id"]
    events = [{"event_id": "a1", "user_id": 3, "item_id": top, "type": "click", "timestamp": 10**9 * 2}]
    assert client.post("/v1/events", json={"events": events}).json() == {"accepted": 1, "duplicates": 0}
    assert client.post("/v1/events", json={"events": events}).json() == {"accepted": 0, "duplicates": 1}
    after = client.post("/v1/recommend", json={"user_id": 3, "k": 3, "model": "itemknn"}).json()
    assert after["history_length"] == before["history_length"] + 1
    assert top not in ids_of(after)  # now seen: masked without retraining
    # a new user with posted events is scored by a history-based model, not the fallback
    client.post("/v1/events", json={"events": [{"event_id": f"n{i}", "user_id": "newbie", "item_id": item}
                                               for i, item in enumerate([2, 8, 14])]})
    fresh = client.post("/v1/recommend", json={"user_id": "newbie", "k": 3, "model": "itemknn"}).json()
    assert not fresh["fallback"] and fresh["history_length"] == 3 and not {2, 8, 14} & set(ids_of(fresh))
    assert client.get("/v1/users/newbie").json()["new_events"] == 3
    assert client.get("/v1/items/popular?k=40").json()  # counts include the posted events
    metrics = client.get("/metrics").text
    assert 'recstack_events_total{outcome="accepted"} 4.0' in metrics


def ids_of(body: dict) -> list:
    return [item["item_id"] for item in body["items"]]


@pytest.mark.parametrize("body, loc", [
    ({"user_id": 1, "k": 0}, ["body", "k"]),
    ({"user_id": 1, "k": "ten"}, ["body", "k"]),
    ({"user_id": 1, "k": 2.5}, ["body", "k"]),
    ({"user_id": 1, "k": N_ITEMS + 1}, ["body", "k"]),
    ({"user_id": 1, "model": "nope"}, ["body", "model"]),
    ({"user_id": 1, "exclude": [999]}, ["body", "exclude", 0]),
    ({"user_id": 1, "colour": "red"}, ["body", "colour"]),
    ({"k": 3}, ["body", "user_id"]),
])
def test_bad_recommend_requests_are_422_naming_the_field(client, body, loc):
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]], response.json()


@pytest.mark.parametrize("user_id", [2**63, -(2**63) - 1, 10**30])
def test_a_numeric_id_beyond_64_bits_is_422_not_500(client, user_id):
    # found by the schema fuzzer: such an id was accepted, and echoing it back broke the JSON encoder
    response = client.post("/v1/recommend", json={"user_id": user_id})
    assert response.status_code == 422
    assert all(error["loc"][:2] == ["body", "user_id"] for error in response.json()["detail"]), response.json()
    excluded = client.post("/v1/recommend", json={"user_id": 1, "exclude": [user_id]})
    assert excluded.status_code == 422 and excluded.json()["detail"][0]["loc"][:3] == ["body", "exclude", 0]


def test_the_largest_64_bit_id_is_an_unknown_user(client):
    response = client.post("/v1/recommend", json={"user_id": 2**63 - 1, "k": 3})
    assert response.status_code == 200 and response.json()["user_id"] == 2**63 - 1
    assert response.json()["known_user"] is False


def test_bad_bodies_are_422(client):
    malformed = client.post("/v1/recommend", content=b'{"user_id": 1,', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"
    huge = client.post("/v1/recommend/history", content=json.dumps({"items": [1] * 400_000}).encode(),
                       headers={"content-type": "application/json"})
    assert huge.status_code == 422 and huge.json()["detail"][0]["loc"] == ["body"]
    unknown = client.post("/v1/recommend/history", json={"items": [1, 999]})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "items", 1]


def test_a_rejected_event_batch_writes_nothing(client):
    batch = {"events": [{"event_id": "ok1", "user_id": 1, "item_id": 2},
                        {"event_id": "bad", "user_id": 1, "item_id": 999}]}
    response = client.post("/v1/events", json=batch)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "events", 1, "item_id"]
    for wrong in ({"event_id": "", "user_id": 1, "item_id": 2}, {"event_id": "x", "user_id": 1, "item_id": 2,
                                                                "value": "high"},
                  {"event_id": "x", "user_id": 1, "item_id": 2, "timestamp": -5}, {"event_id": "x", "user_id": 1}):
        assert client.post("/v1/events", json={"events": [wrong]}).status_code == 422
    assert client.post("/v1/events", json={"events": []}).status_code == 422
    assert client.app.state.server.store.count() == 0
    assert client.get("/v1/users/1").json()["new_events"] == 0


def test_admin_needs_the_token(client, run_dir):
    assert client.post("/v1/admin/reload", json={"run_dir": str(run_dir)}).status_code == 401
    assert client.post("/v1/admin/reload", json={"run_dir": str(run_dir)},
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    with TestClient(create_app(run_dir, events=client.app.state.server.store.path)) as closed:
        assert closed.get("/v1/admin/events/export", headers=ADMIN).status_code == 403


def test_reload_refuses_broken_and_unregistered_runs_and_swaps_a_good_one(client, run_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "config.yaml").write_text("models: [")
    unregistered = tmp_path / "unregistered"
    shutil.copytree(run_dir, unregistered)
    saved = unregistered / "models" / "ease" / "model.json"
    saved.write_text(saved.read_text().replace("recstack.models.neighborhood.ease:EASE", "evil_module:Evil"))
    for bad in (broken, unregistered, tmp_path / "missing"):
        response = client.post("/v1/admin/reload", json={"run_dir": str(bad)}, headers=ADMIN)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "run_dir"]
        assert "still serving" in response.json()["detail"][0]["msg"]
        assert client.post("/v1/recommend", json={"user_id": 1, "model": "bpr"}).status_code == 200
    client.post("/v1/events", json={"events": [{"event_id": "kept", "user_id": "u-new", "item_id": 4}]})
    done = client.post("/v1/admin/reload", json={"run_dir": str(run_dir), "models": ["ease"]}, headers=ADMIN)
    assert done.status_code == 200 and done.json()["models"] == ["ease"]
    assert [m["label"] for m in client.get("/v1/models").json()["models"]] == ["ease"]
    assert client.get("/v1/users/u-new").json()["new_events"] == 1  # posted events survive the swap
    metrics = client.get("/metrics").text
    assert 'label="ease"' in metrics and 'label="bpr"' not in metrics


def test_export_is_a_table_recstack_run_trains_on(client, tmp_path):
    client.post("/v1/events", json={"events": [{"event_id": f"x{i}", "user_id": "fresh", "item_id": i, "value": 4.0}
                                               for i in range(1, 6)]})
    response = client.get("/v1/admin/events/export", headers=ADMIN)
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names[:4] == ["user_id", "item_id", "rating", "timestamp"]
    posted = [e for e, kind in zip(table["event_id"].to_pylist(), table["type"].to_pylist()) if kind != "run"]
    assert sorted(posted) == [f"x{i}" for i in range(1, 6)]
    path = tmp_path / "collected.parquet"
    path.write_bytes(response.content)
    with no_charts():
        result = run_experiment(parse_config({"data": {"path": str(path)}, "models": [{"name": "pop"}],
                                              "output_dir": str(tmp_path / "runs")}), progress=False)
    assert "fresh" in result.split.train.users
    csv = client.get("/v1/admin/events/export?format=csv&include_run=false", headers=ADMIN).text
    assert csv.splitlines()[0].startswith('"user_id","item_id"') and len(csv.splitlines()) == 6


def test_metrics_count_requests_by_route(client):
    client.get("/v1/items/5")
    client.post("/v1/recommend", json={"user_id": 1, "k": 0})
    text = client.get("/metrics").text
    assert 'recstack_requests_total{method="GET",route="/v1/items/{item_id}",status="200"} 1.0' in text
    assert 'recstack_requests_total{method="POST",route="/v1/recommend",status="422"} 1.0' in text
    assert "recstack_request_seconds_bucket" in text and "recstack_model_info" in text
    assert np.isfinite(float(text.split("\nrecstack_run_load_seconds ")[1].split()[0]))


def test_requests_are_answered_while_a_reload_loads(client, run_dir, monkeypatch):
    loading, release = threading.Event(), threading.Event()
    real_load = state.load_served

    def slow_load(*args, **kwargs):
        loading.set()
        release.wait(timeout=10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(state, "load_served", slow_load)
    answers = {}
    reload = threading.Thread(target=lambda: answers.setdefault("reload", client.post(
        "/v1/admin/reload", json={"run_dir": str(run_dir), "models": ["ease"]}, headers=ADMIN)))
    reload.start()
    assert loading.wait(timeout=10)
    for _ in range(5):  # the old run answers while the new one loads
        response = client.post("/v1/recommend", json={"user_id": 1, "k": 3, "model": "bpr"})
        assert response.status_code == 200 and response.json()["model"] == "bpr"
        time.sleep(0.01)
    release.set()
    reload.join(timeout=30)
    assert answers["reload"].status_code == 200
    assert client.post("/v1/recommend", json={"user_id": 1, "model": "bpr"}).status_code == 422


def test_the_runs_cold_user_policy_decides_who_gets_which_fallback(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(config.replace("cold_users:\n  policy: include\n  min_history: 1",
                                                     "cold_users:\n  policy: fallback\n  fallback: random\n"
                                                     "  min_history: 3"))
    with TestClient(create_app(copy, events=tmp_path / "events.sqlite")) as client:
        assert client.get("/v1/models").json()["fallback"] == "random"
        short = client.post("/v1/recommend/history", json={"items": [1, 2], "model": "ease", "k": 3}).json()
        assert short["fallback"] and short["fallback_model"] == "random"
        assert "min_history (3)" in short["fallback_reason"]
        enough = client.post("/v1/recommend/history", json={"items": [1, 2, 3], "model": "ease", "k": 3}).json()
        assert not enough["fallback"]
