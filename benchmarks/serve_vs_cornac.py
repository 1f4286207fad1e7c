"""`recstack serve` vs Cornac's serving app (`cornac.serving.app`, Flask), side by side: the same kind
of model (BPR, 64 factors) on the same data (ml-100k), each answering a known user's top-10 with the
user's seen items removed, at 1, 8 and 32 concurrent clients over loopback.

Protocol. recstack: a run made by `recstack run`'s flow (random 80/10/10 split, BPR with
`--bpr-epochs`), served by `recstack.serve.app.serve` (uvicorn, access log off) with 1 and 2 worker
processes, POST /v1/recommend `{"user_id", "model": "bpr", "k": 10, "explain": false}` (seen items
masked by default; the answer carries titles, years, genres and counts). Cornac:
`cornac.models.BPR(k=64)` fitted on the run's events (history.npz: the items recstack masks as seen)
in its own virtual environment (`--cornac-python`; Cornac is never imported here), saved with its
train set, served as its docs say (`flask --app cornac.serving.app run`, Flask's threaded server,
MODEL_PATH / MODEL_CLASS) and, where its environment has gunicorn, under gunicorn with the same
process counts as recstack (the like-for-like rows), GET /recommend?uid=..&k=10&remove_seen=true
(ids only). Both rank all 1,682 items per request. The same users in the same order reach both
servers (seed 0); the servers run one at a time, `--seconds` per cell, load from wrk by default
(`--client`, as in serve_latency.py). Accuracy is not compared (different training). Needs a quiet
machine.

    python3 -m venv /tmp/cornacvenv && /tmp/cornacvenv/bin/pip install cornac flask gunicorn
    .venv/bin/python benchmarks/serve_vs_cornac.py --cornac-python /tmp/cornacvenv/bin/python   # or RECSTACK_CORNAC_PYTHON [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from machine import print_machine
from serve_latency import check_client, free_port, make_run, measure, start_server, wait_until_ready

CORNAC_FIT = """
import sys, glob
import cornac
from cornac.data import Reader, Dataset
data = Reader().read(sys.argv[1], fmt="UIR", sep="\\t")
train = Dataset.from_uir(data, seed=0)
model = cornac.models.BPR(k=64, max_iter=int(sys.argv[3]), learning_rate=0.01, lambda_reg=0.01, seed=0,
                          verbose=False)
model.fit(train)
print(model.save(sys.argv[2], save_trainset=True))
"""


def fit_cornac(python: str, events: Path, folder: Path, epochs: int) -> str:
    """Fit and save Cornac's BPR in its own environment; returns the saved model's path."""
    done = subprocess.run([python, "-c", CORNAC_FIT, str(events), str(folder), str(epochs)], check=True,
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def start_cornac(python: str, model_path: str, workdir: Path, log: Path, workers: int = 0
                 ) -> tuple[subprocess.Popen, str]:
    """Cornac's serving app: Flask's threaded development server as its docs serve it (`workers` 0), or
    under gunicorn with `workers` sync worker processes, the usual production server of a Flask app."""
    port = free_port()
    env = {**os.environ, "MODEL_PATH": model_path, "MODEL_CLASS": "cornac.models.BPR"}
    if workers:
        gunicorn = str(Path(python).with_name("gunicorn"))
        command = [gunicorn, "-w", str(workers), "-b", f"127.0.0.1:{port}", "cornac.serving.app:app"]
    else:
        command = [python, "-m", "flask", "--app", "cornac.serving.app", "run", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=workdir)  # cwd: its feedback CSV
    url = f"http://127.0.0.1:{port}"
    # any answer will do: /recommend without a uid is a 400
    wait_until_ready(proc, lambda: httpx.get(f"{url}/recommend", timeout=1) is not None, log, "Cornac's server")
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cornac-python", default=os.environ.get("RECSTACK_CORNAC_PYTHON"),
                        help="the Python of a virtual environment with cornac and flask (and gunicorn for the "
                             "multi-process rows; default: $RECSTACK_CORNAC_PYTHON)")
    parser.add_argument("--run-dir", type=Path, default=None, help="a run with a saved 'bpr' (default: make one)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="process counts: recstack's uvicorn workers, and Cornac under gunicorn with as many")
    parser.add_argument("--bpr-epochs", type=int, default=20)
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk",
                        help="load generator: wrk (C, one thread) or asyncio + httpx in this process")
    args = parser.parse_args()
    check_client(args.client)
    if not args.cornac_python or not Path(args.cornac_python).is_file():
        parser.exit(2, f"error: the Python of the Cornac environment is not set or not a file ({args.cornac_python!r}): "
                       "pass --cornac-python PATH or set RECSTACK_CORNAC_PYTHON\n")
    version = subprocess.run([args.cornac_python, "-c", "import cornac, flask, importlib.metadata as m; "
                              "print(cornac.__version__, m.version('flask'))"],
                             capture_output=True, text=True, check=True).stdout.split()
    has_gunicorn = Path(args.cornac_python).with_name("gunicorn").is_file()
    print_machine(f"recstack: uvicorn with {args.workers} worker processes; Cornac {version[0]}: Flask {version[1]} "
                  f"threaded dev server (as its docs serve it)"
                  + (f" and gunicorn with {args.workers} sync workers" if has_gunicorn else
                     " (no gunicorn in its environment: no multi-process Cornac rows)")
                  + f"; client {args.client}; {args.seconds:g} s per cell; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="recstack-vs-cornac-") as tmp:
        tmp = Path(tmp)
        run_dir = args.run_dir or make_run(tmp, args.bpr_epochs)
        from recstack.experiment.rundir import read_history

        history, _ = read_history(run_dir / "history.npz")
        events = tmp / "events.tsv"
        with open(events, "w") as out:
            for user, item in zip(history.users.ids[history.user], history.items.ids[history.item]):
                out.write(f"{user}\t{item}\t1\n")
        user_ids = history.users.ids[history.user_counts() > 0]
        tick = time.perf_counter()
        model_path = fit_cornac(args.cornac_python, events, tmp / "cornac", args.bpr_epochs)
        print(f"Cornac BPR fit ({args.bpr_epochs} epochs) and save: {time.perf_counter() - tick:.1f} s")

        requests = {
            "recstack": lambda rng: ("POST", "/v1/recommend", {"user_id": rng.choice(user_ids).item(), "model": "bpr",
                                                               "k": 10, "explain": False}),
            "cornac": lambda rng: ("GET", f"/recommend?uid={rng.choice(user_ids).item()}&k=10&remove_seen=true",
                                   None),
        }
        servers = [("recstack", f"uvicorn, {w} worker{'s' * (w > 1)}", w,
                    lambda w=w: start_server(run_dir, tmp / "events.sqlite", tmp / "recstack.log", labels=("bpr",),
                                             workers=w)) for w in args.workers]
        servers.append(("cornac", "Flask dev server, threaded", 1,
                        lambda: start_cornac(args.cornac_python, model_path, tmp, tmp / "cornac.log")))
        if has_gunicorn:
            servers += [("cornac", f"gunicorn, {w} sync worker{'s' * (w > 1)}", w,
                         lambda w=w: start_cornac(args.cornac_python, model_path, tmp, tmp / "cornac.log", w))
                        for w in args.workers]
        throughput: dict[tuple[str, str, int], float] = {}
        print("| server | serving | processes | clients | p50 ms | p95 ms | p99 ms | requests/s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, how, processes, starter in servers:
            proc, url = starter()
            try:
                for clients in args.concurrency:
                    row, errors, rate = measure(url, requests[name], clients, args.seconds, args.client)
                    throughput[name, how, clients] = rate
                    note = f" ({errors} errors)" if errors else ""
                    print(f"| {name}{note} | {how} | {processes} | {clients} | {row} |", flush=True)
            finally:
                stop(proc)
        print("\nrecstack's requests/s over Cornac's, per client count:")
        for name, how, processes, _ in servers:
            if name != "recstack":
                continue
            for peer_name, peer_how, peer_processes, _ in servers:
                if peer_name == "cornac":
                    ratios = ", ".join(f"{throughput[name, how, c] / throughput[peer_name, peer_how, c]:.2f}x at {c}"
                                       for c in args.concurrency)
                    print(f"- recstack ({how}) vs Cornac ({peer_how}): {ratios}")


if __name__ == "__main__":
    main()
