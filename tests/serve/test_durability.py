"""The real server in a subprocess (`recstack serve`): SIGKILL it in the middle of a stream of events,
restart it on the same event store, and every acknowledged event is there exactly once."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from serve_run import light_run

TOKEN = "durable"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run_dir: Path, events: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RECSTACK_ADMIN_TOKEN": TOKEN}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "recstack.cli", "serve", str(run_dir), "--model", "ease",
                                 "--port", str(port), "--events", str(events)], stdout=out, stderr=out, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not become ready:\n{log.read_text()}")


def test_sigkill_mid_stream_loses_no_acknowledged_event_and_duplicates_none(tmp_path):
    run_dir, events, log = light_run(), tmp_path / "events.sqlite", tmp_path / "server.log"
    proc, url = start(run_dir, events, log)
    acknowledged: list[str] = []
    sent: list[str] = []
    try:
        def stream() -> None:
            with httpx.Client(base_url=url, timeout=5) as client:
                for i in range(100_000):
                    batch = [{"event_id": f"e{i}-{j}", "user_id": f"u{i % 7}", "item_id": 1 + (i + j) % 40}
                             for j in range(3)]
                    sent.extend(e["event_id"] for e in batch)
                    try:
                        response = client.post("/v1/events", json={"events": batch})
                    except httpx.HTTPError:
                        return  # the server died under this request: not acknowledged
                    assert response.status_code == 200, response.text
                    acknowledged.extend(e["event_id"] for e in batch)

        poster = threading.Thread(target=stream)
        poster.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 90 and time.monotonic() < deadline and poster.is_alive():
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the poster is sending at this moment
        proc.wait(timeout=10)
        poster.join(timeout=30)
        assert len(acknowledged) >= 90 and not poster.is_alive()

        proc, url = start(run_dir, events, log)
        response = httpx.get(f"{url}/v1/admin/events/export", params={"include_run": "false"},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert response.status_code == 200
        stored = pq.read_table(io.BytesIO(response.content))["event_id"].to_pylist()
        assert len(stored) == len(set(stored))  # none twice
        assert set(acknowledged) <= set(stored)  # every acknowledged one is there
        assert set(stored) <= set(sent)
        again = [{"event_id": e, "user_id": "u0", "item_id": 1} for e in acknowledged[:3]]
        replay = httpx.post(f"{url}/v1/events", json={"events": again}, timeout=10).json()
        assert replay == {"accepted": 0, "duplicates": 3}
        user = httpx.get(f"{url}/v1/users/u1", timeout=10).json()
        assert user["new_events"] == sum(1 for e in stored if int(e[1:].split("-")[0]) % 7 == 1)
    finally:
        proc.kill()
        proc.wait(timeout=10)
