"""Serving latency: per-request p50/p95/p99 and requests/s of `recstack serve` over loopback at 1, 8
and 32 concurrent clients, for EASE and BPR on ml-100k, a known user and an ad-hoc history; beside
them the in-process ranking alone (`serve.ranking.recommend_one`, no HTTP) and the round trip of an
endpoint that does nothing (`GET /health`), which bound what HTTP and FastAPI add.

The server runs in its own process (`recstack.serve.app.serve`, uvicorn, access log off, `--workers`
processes) on a run directory: `--run-dir`, or one made here by `recstack run`'s flow on ml-100k
(random 80/10/10 split, EASE and BPR with `--bpr-epochs`). Load comes from wrk (`--client wrk`, the
default: C, one thread, keep-alive connections) or from asyncio tasks on one httpx.AsyncClient
(`--client python`); either way each client sends its next request when the last one answered, for
`--seconds` per cell; users and histories are drawn at random (seed 0), k=10, no explanations
(`explain: false`). Needs a quiet machine: client and server share the CPUs, so a loaded machine
measures the load.

    .venv/bin/python benchmarks/serve_latency.py [--run-dir RUN] [--seconds 10] [--concurrency 1 8 32] [--workers 1] [--client wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
from machine import print_machine

MODELS = ("ease", "bpr")
HISTORY_ITEMS = 10  # items in an ad-hoc history request


def make_run(root: Path, bpr_epochs: int) -> Path:
    """A finished ml-100k run with EASE and BPR saved (charts off: serving never reads them)."""
    from recstack.experiment import parse_config, run_experiment

    config = parse_config({"data": {"dataset": "ml-100k"}, "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
                           "models": [{"name": "ease"},
                                      {"name": "bpr", "params": {"epochs": bpr_epochs, "verbose": False}}],
                           "output_dir": str(root / "runs")})
    with mock.patch("recstack.experiment.charts.plotting_backends", lambda: {"plotly": False, "matplotlib": False}):
        return run_experiment(config, progress=False).run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, events: Path, log: Path, labels: tuple[str, ...] = MODELS, workers: int = 1
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    code = ("import sys; from recstack.serve.app import serve; "
            "serve(sys.argv[1], labels=sys.argv[2].split(','), port=int(sys.argv[3]), events=sys.argv[4], "
            "log_level='warning', workers=int(sys.argv[5]))")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir), ",".join(labels), str(port), str(events),
                                 str(workers)], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, lambda: httpx.get(f"{url}/ready", timeout=1).status_code == 200, log, "the server")
    return proc, url


def wait_until_ready(proc: subprocess.Popen, ready: Any, log: Path, who: str, timeout_s: float = 120) -> None:
    """Poll `ready()` (an HTTP error counts as not yet) until it is true; stop with the server's log if
    the process exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{who} exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{who} did not become ready:\n{log.read_text()}")


def summary(latencies: list[float], seconds: float) -> str:
    ms = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (np.nan,) * 3
    return f"{p50:.2f} | {p95:.2f} | {p99:.2f} | {len(ms) / seconds:,.0f}"


def measure(url: str, make_request, clients: int, seconds: float, client: str) -> tuple[str, int, float]:
    """One cell: ("p50 | p95 | p99 | requests/s", errors, requests/s) with the chosen load generator."""
    if client == "wrk":
        return wrk_load(url, make_request, clients, seconds)
    latencies, errors, elapsed = asyncio.run(load(url, make_request, clients, seconds))
    return summary(latencies, elapsed), errors, len(latencies) / elapsed


def wrk_load(url: str, make_request, clients: int, seconds: float, n_requests: int = 2000
             ) -> tuple[str, int, float]:
    """`clients` keep-alive connections of wrk (one thread, C, closed loop: each connection sends its
    next request when the last one answered), cycling through `n_requests` requests drawn here (seed
    0). wrk costs the shared CPUs a fraction of what a Python client does, so the server, not the
    client, is what is measured. Latency percentiles are wrk's (microsecond resolution)."""
    rng = np.random.default_rng(0)
    lines = ["local requests = {"]
    for method, path, body in (make_request(rng) for _ in range(n_requests)):
        if body is None:
            lines.append(f'  wrk.format("{method}", "{path}"),')
        else:  # a Lua long string: the JSON needs no escaping
            lines.append(f'  wrk.format("{method}", "{path}", {{["Content-Type"] = "application/json"}}, '
                         f'[==[{json.dumps(body)}]==]),')
    lines += ["}", "local i = 0",
              "request = function() i = i % #requests + 1; return requests[i] end",
              "done = function(summary, latency, _)",
              "  io.write(string.format('WRK %d %f %d %d %f %f %f\\n', summary.requests, summary.duration / 1e6,",
              "    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write",
              "    + summary.errors.timeout, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,",
              "    latency:percentile(99) / 1e3))",
              "end"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write("\n".join(lines) + "\n")
        script.flush()
        done = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", script.name,
                               url], capture_output=True, text=True, check=True)
    fields = next(line for line in done.stdout.splitlines() if line.startswith("WRK ")).split()[1:]
    n, elapsed, bad_status, socket_errors = int(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])
    p50, p95, p99 = map(float, fields[4:7])
    return f"{p50:.2f} | {p95:.2f} | {p99:.2f} | {n / elapsed:,.0f}", bad_status + socket_errors, n / elapsed


async def load(url: str, make_request, concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    """`concurrency` clients, each one request at a time, for `seconds`: (latencies, errors, elapsed)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await client.get("/health")  # open a connection before the clock starts
        stop = time.perf_counter() + seconds

        async def one_client(seed: int) -> None:
            nonlocal errors
            rng = np.random.default_rng(seed)
            while time.perf_counter() < stop:
                method, path, body = make_request(rng)
                tick = time.perf_counter()
                response = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - tick)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one_client(seed) for seed in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


def check_client(client: str) -> None:
    if client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("error: wrk is not on PATH: install it (Debian/Ubuntu: apt-get install wrk) or pass "
                         "--client python")


def in_process(run_dir: Path, label: str, kind: str, user_ids: np.ndarray, item_ids: np.ndarray,
               seconds: float) -> str:
    """The ranking a request runs, called directly: no HTTP, no JSON, no item records."""
    from recstack.serve.ranking import recommend_one
    from recstack.serve.state import load_served

    served = load_served(run_dir, [label])
    model = served.models[label]
    rng = np.random.default_rng(0)
    latencies = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        tick = time.perf_counter()
        if kind == "known user":
            user, history, _, _ = served.user_history(rng.choice(user_ids).item())
        else:
            items = np.array([served.item_index(i) for i in rng.choice(item_ids, HISTORY_ITEMS, replace=False)])
            user, history = served.adhoc_history(items)
        recommend_one(model, served.fallback, served.fallback_name, label, user, history, 10,
                      min_history=served.min_history, mask_history=True, allowed=None, cold_reason="")
        latencies.append(time.perf_counter() - tick)
    return summary(latencies, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bpr-epochs", type=int, default=20)
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk",
                        help="load generator: wrk (C, one thread) or asyncio + httpx in this process")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the server")
    args = parser.parse_args()
    check_client(args.client)
    clients = "wrk, one thread" if args.client == "wrk" else "asyncio + httpx in this process"
    print_machine(f"server: uvicorn, {args.workers} worker process(es); clients: {clients}; {args.seconds:g} s per "
                  f"cell; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="recstack-latency-") as tmp:
        tmp = Path(tmp)
        run_dir = args.run_dir or make_run(tmp, args.bpr_epochs)
        from recstack.experiment.rundir import read_history

        history, _ = read_history(run_dir / "history.npz")
        user_ids = history.users.ids[history.user_counts() > 0]
        item_ids = history.items.ids

        def known_user(label):
            return lambda rng: ("POST", "/v1/recommend",
                                {"user_id": rng.choice(user_ids).item(), "model": label, "k": 10, "explain": False})

        def adhoc(label):
            return lambda rng: ("POST", "/v1/recommend/history",
                                {"items": rng.choice(item_ids, HISTORY_ITEMS, replace=False).tolist(), "model": label,
                                 "k": 10, "explain": False})

        print(f"run {run_dir}")
        print("| what | model | request | clients | p50 ms | p95 ms | p99 ms | requests/s |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for label in MODELS:
            for kind in ("known user", "ad-hoc history"):
                row = in_process(run_dir, label, kind, user_ids, item_ids, args.seconds)
                print(f"| in-process ranking | {label} | {kind} | 1 | {row} |", flush=True)
        proc, url = start_server(run_dir, tmp / "events.sqlite", tmp / "server.log", workers=args.workers)
        try:
            cells = [("empty endpoint", "-", "GET /health", lambda rng: ("GET", "/health", None))]
            cells += [("HTTP", label, kind, make(label)) for label in MODELS
                      for kind, make in (("known user", known_user), ("ad-hoc history", adhoc))]
            for what, label, kind, make_request in cells:
                for clients in args.concurrency:
                    row, errors, _ = measure(url, make_request, clients, args.seconds, args.client)
                    note = f" ({errors} errors)" if errors else ""
                    print(f"| {what}{note} | {label} | {kind} | {clients} | {row} |", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
