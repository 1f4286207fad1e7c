"""Serving at speed and across worker processes (issue 14): the plain-ASGI fast path answers exactly as
the FastAPI routes do, and workers sharing one event store see each other's events and reloads, in
process (two `Server`s on one store) and for real (`recstack serve --workers 2`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from recstack.serve import app as app_module
from recstack.serve import schemas as s
from recstack.serve.app import create_app
from recstack.serve.events import Event, EventStore
from recstack.serve.state import Server, load_served
from serve_run import light_run, tiny_run

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


REQUESTS = [
    ("/v1/recommend", {"user_id": 1, "k": 5, "explain": True}),
    ("/v1/recommend", {"user_id": 2, "k": 7, "explain": False, "include_seen": True}),
    ("/v1/recommend", {"user_id": 3, "k": 4, "filters": {"genres": ["Drama"], "year_min": 1985}, "exclude": [2, 5]}),
    ("/v1/recommend", {"user_id": "never-seen", "k": 3}),
    ("/v1/recommend/history", {"items": [3, 1, 4], "k": 5}),
    ("/v1/recommend/history", {"items": [], "k": 2, "explain": False}),
]


@pytest.fixture(scope="module")
def run_dir():
    return tiny_run()


def test_fast_path_answers_exactly_as_the_routes_do(run_dir, tmp_path, monkeypatch):
    parsed = []
    route_parse = app_module._parse

    async def counted(raw, model):  # only the FastAPI routes call it
        parsed.append(model)
        return await route_parse(raw, model)

    monkeypatch.setattr(app_module, "_parse", counted)
    with TestClient(create_app(run_dir, events=tmp_path / "events.sqlite")) as client:
        server = client.app.state.server
        inline = server.current.inline
        assert inline["ease"] and inline["bpr"] and inline["pop"]  # fast models are answered on the loop
        for label in inline:
            for path, body in REQUESTS:
                server.current.inline = inline
                fast = client.post(path, json={**body, "model": label})
                assert not parsed or not inline[label]  # the fast path answered (or the route, for slow models)
                server.current.inline = {}  # every model to the thread pool: the FastAPI route answers
                routed = client.post(path, json={**body, "model": label})
                assert parsed, "the route did not answer"
                parsed.clear()
                assert fast.status_code == routed.status_code == 200
                assert fast.json() == routed.json(), (label, path, body)
                # the answer is exactly the documented schema: nothing missing, nothing extra
                assert s.Recommendations.model_validate(fast.json()).model_dump(mode="json") == fast.json()
        server.current.inline = inline
        # errors are the routes' 422s, naming the field
        bad = client.post("/v1/recommend", json={"user_id": 1, "k": 0})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "k"]
        unknown = client.post("/v1/recommend", json={"user_id": 1, "model": "nope"})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "model"]
        metrics = client.get("/metrics").text
        assert 'recstack_requests_total{method="POST",route="/v1/recommend",status="200"}' in metrics
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/v1/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/UserRequest"}
        assert {"UserRequest", "HistoryRequest", "Filters"} <= set(schema["components"]["schemas"])


def test_two_servers_on_one_store_follow_each_others_events_and_reloads(tmp_path):
    run_dir, other_run = light_run(), tiny_run()
    path = tmp_path / "events.sqlite"
    first = Server(load_served(run_dir), EventStore(path))
    second = Server(load_served(run_dir), EventStore(path))  # another worker: its own connection

    def post(server: Server, event_id: str, user: str, item: int) -> None:
        server.ingest([Event(event_id, user, str(item), "interaction", 100)], lambda run, events: None)

    post(first, "a1", "new", 3)
    post(second, "b1", "new", 5)  # stored after a1: the second server applies a1 first
    assert second.current.user_history("new")[3] == 2
    first.refresh()
    _, history, _, new = first.current.user_history("new")
    assert new == 2 and history.item.tolist() == [first.current.item_index(3), first.current.item_index(5)]
    changes = first.store.changes.value()
    first.refresh()  # nothing new: one counter read
    assert first.store.changes.value() == changes
    first.reload(other_run, ["ease", "pop"])
    assert second.current.run_dir != first.current.run_dir
    second.refresh()
    assert second.current.run_dir == first.current.run_dir and set(second.current.models) == {"ease", "pop"}
    assert second.current.user_history("new")[3] == 2  # the posted events follow the run
    # a later server on the same store starts with the run it is given, not the last reload
    third = Server(load_served(run_dir), EventStore(path))
    third.refresh()
    assert third.current.run_dir == load_served(run_dir).run_dir


def test_two_worker_processes_serve_one_event_log(tmp_path):
    run_dir, port = light_run(), free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "recstack.cli", "serve", str(run_dir), "--workers", "2",
                                 "--port", str(port), "--events", str(tmp_path / "events.sqlite")],
                                stdout=out, stderr=out, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        pids: set[str] = set()
        while time.monotonic() < deadline and len(pids) < 2:
            assert proc.poll() is None, log.read_text()
            try:  # a fresh connection each time: the kernel hands them to either worker
                response = httpx.get(f"{url}/metrics", timeout=2, headers={"Connection": "close"})
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            pids |= {line.split('pid="')[1].split('"')[0] for line in response.text.splitlines()
                     if line.startswith("recstack_model_info{")}
        assert len(pids) == 2, f"two workers did not both start:\n{log.read_text()}"
        posted = httpx.post(f"{url}/v1/events", json={"events": [
            {"event_id": f"w{i}", "user_id": "walker", "item_id": 1 + i} for i in range(3)]}, timeout=10)
        assert posted.json() == {"accepted": 3, "duplicates": 0}
        for _ in range(12):  # whichever worker answers has the events
            user = httpx.get(f"{url}/v1/users/walker", timeout=10, headers={"Connection": "close"}).json()
            assert user["new_events"] == 3 and user["history_length"] == 3
            recs = httpx.post(f"{url}/v1/recommend", json={"user_id": "walker", "k": 5, "model": "ease"},
                              timeout=10, headers={"Connection": "close"}).json()
            assert recs["known_user"] and not recs["fallback"] and recs["history_length"] == 3
            assert not {1, 2, 3} & {item["item_id"] for item in recs["items"]}
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        # counters are summed over both workers: 24 recommend/user requests at least
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("recstack_requests_total{") and 'status="200"' in line
                      and ('"/v1/recommend"' in line or '"/v1/users/{user_id}"' in line))
        assert counted >= 24
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
