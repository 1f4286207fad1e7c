"""End to end on large synthetic logs (issue 18): read partitioned Parquet, split, fit ALS, BPR-MF
and ItemKNN, evaluate a sample of users with full ranking; wall seconds and peak memory per stage.

    .venv/bin/python benchmarks/scale_run.py --nnz 1000000 10000000 50000000 [--data-dir DIR]
                                             [--stages load split als bpr itemknn evaluate] [--limit-s 1800]
                                             [--without-timestamps]

For each size the power-law generator (`recstack.data.synthetic`, n_users = nnz / 100, n_items =
nnz / 500) writes the log as 8 Parquet parts (cached in --data-dir; not timed). A fresh process
then runs the stages in order, each one measured on its own: wall seconds and the peak resident
set size during the stage (the kernel's high-water mark, reset before each stage through
/proc/self/clear_refs). Stages:

- load: `load_table(folder)`: the parts read batch by batch into preallocated columns -> `Interactions`
  (user, item and timestamp; user and item only with --without-timestamps);
- split: random 8:1:1 (seed 2020), then the train CSR built; "CSR bytes" is that matrix's
  indptr + indices + data;
- als: implicit's ALS, 64 factors, 15 iterations, one thread (recstack's defaults);
- bpr: BPR-MF's default LearnBPR solver, one epoch (as many triples as training events);
- itemknn: cosine, 50 neighbours per item, blockwise with top-n sparsification;
- evaluate: `evaluate(als, train, test, users=...)` over a seeded sample of `--eval-users` test
  users, full ranking of every item, history masked.

Before the first stage the process imports what the stages use (torch, implicit, numba's LearnBPR
kernel) and reports its resident size, the baseline that does not grow with the data; the table
gives the highest peak both whole and above that baseline, each as a multiple of the train CSR.

A stage that outlasts --limit-s stops the process: its time is then a lower bound, marked.
The exponent of each stage is the slope of log(seconds) on log(nnz) over the sizes that finished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import print_machine

STAGES = ["load", "split", "als", "bpr", "itemknn", "evaluate"]


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        pass


def child(folder: Path, stages: list[str], eval_users: int, timestamps: bool = True) -> None:
    """Run the stages in this process; one JSON line per finished stage on stdout."""
    from recstack.data.load import load_table
    from recstack.evaluate import evaluate
    from recstack.models import build
    from recstack.split import make_split

    # the libraries every stage loads, imported up front: the process's resident size after them is the
    # baseline that does not grow with the data, reported so the data's own peak can be read off
    import importlib

    for module in ("implicit.cpu.als", "torch", "recstack.models.kernels.learnbpr"):
        importlib.import_module(module)
    print(json.dumps({"stage": "baseline", "rss_mb": _rss_mb("VmRSS")}), flush=True)
    state: dict = {}

    def emit(stage: str, seconds: float, **extra) -> None:
        print(json.dumps({"stage": stage, "seconds": seconds, "peak_mb": _rss_mb("VmHWM"),
                          "rss_mb": _rss_mb("VmRSS"), **extra}), flush=True)

    for stage in stages:
        _reset_peak()
        tick = time.perf_counter()
        extra: dict = {}
        if stage == "load":
            # a random split needs no time: without timestamps the log is 8 bytes an event, not 16
            state["log"] = load_table(folder, columns=None if timestamps else {"timestamp": None}).interactions
            extra = {"n_events": len(state["log"]), "n_users": state["log"].n_users, "n_items": state["log"].n_items}
        elif stage == "split":
            state["split"] = make_split(state.pop("log"), "random", seed=2020, ratios=(0.8, 0.1, 0.1))
            csr = state["split"].train.matrix()
            extra = {"csr_mb": (csr.indptr.nbytes + csr.indices.nbytes + csr.data.nbytes) / 2**20,
                     "n_train": int(csr.nnz)}
        elif stage in ("als", "bpr", "itemknn"):
            params = {"als": {"seed": 0, "n_threads": 1}, "bpr": {"seed": 0, "epochs": 1},
                      "itemknn": {"n_neighbors": 50}}[stage]
            state[stage] = build(stage, params).fit(state["split"].train)
        elif stage == "evaluate":
            split = state["split"]
            test_users = np.flatnonzero(np.diff(split.test.indptr) > 0)
            sample = np.random.default_rng(0).choice(test_users, size=min(eval_users, len(test_users)),
                                                     replace=False)
            result = evaluate(state["als"], split.train, split.test, users=sample, ks=[10, 20])
            extra = {"users": len(sample), "NDCG@10": result.metrics["NDCG@10"]}
        emit(stage, time.perf_counter() - tick, **extra)
    print(json.dumps({"stage": "end", "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)


def measure(folder: Path, stages: list[str], eval_users: int, limit_s: float, timestamps: bool = True) -> list[dict]:
    """The stages in a fresh process, stopped when one outlasts `limit_s`."""
    command = [sys.executable, __file__, "--child", str(folder), "--stages", *stages, "--eval-users", str(eval_users)]
    if not timestamps:
        command.append("--without-timestamps")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ})
    rows: list[dict] = []
    started = time.perf_counter()
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    while True:
        if not selector.select(timeout=5):
            if time.perf_counter() - started > limit_s:
                process.kill()
                done = {row["stage"] for row in rows}
                stopped = next(stage for stage in stages if stage not in done)
                rows.append({"stage": stopped, "seconds": time.perf_counter() - started, "stopped": True})
                break
            continue
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            rows.append(json.loads(line))
            started = time.perf_counter()  # the limit is per stage
    process.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnz", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the generated Parquet folders are cached (default: recstack-scale in the temp folder)")
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--limit-s", type=float, default=1800.0)
    parser.add_argument("--without-timestamps", action="store_true",
                        help="load user and item ids only (the random split needs no time)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.stages, args.eval_users, timestamps=not args.without_timestamps)
        return
    print_machine("settings: one thread everywhere (OMP_NUM_THREADS=1 expected); each size in a fresh process")
    from recstack.data.synthetic import write_power_law_parquet

    data_dir = args.data_dir or Path(tempfile.gettempdir()) / "recstack-scale"
    results: dict[int, list[dict]] = {}
    for nnz in args.nnz:
        folder = data_dir / f"power-law-{nnz}"
        if not folder.exists():
            tick = time.perf_counter()
            write_power_law_parquet(folder, nnz, parts=8, seed=0)
            print(f"wrote {folder} in {time.perf_counter() - tick:.0f} s", flush=True)
        rows = measure(folder, args.stages, args.eval_users, args.limit_s, timestamps=not args.without_timestamps)
        results[nnz] = rows
        print(f"nnz {nnz:,}: " + json.dumps(rows), flush=True)
    print()
    print("| events | stage | seconds | peak RSS MiB during the stage | RSS after MiB | notes |")
    print("|---:|---|---:|---:|---:|---|")
    for nnz, rows in results.items():
        csr = next((row["csr_mb"] for row in rows if "csr_mb" in row), None)
        baseline = next((row["rss_mb"] for row in rows if row["stage"] == "baseline"), 0.0)
        for row in rows:
            if row["stage"] == "baseline":
                print(f"| {nnz:,} | baseline: Python and the libraries imported, no data | | | {baseline:.0f} | |")
                continue
            if row["stage"] == "end":
                # the stages' peaks only: getrusage's maximum also holds the parent's resident size at
                # the fork (the kernel folds the old image's high-water mark in at exec), gigabytes
                # when this process has just generated the log
                peak = max(r["peak_mb"] for r in rows if "peak_mb" in r)
                ratio = (f"{peak / csr:.1f}x the train CSR ({csr:.0f} MiB); above the baseline "
                         f"{(peak - baseline) / csr:.1f}x" if csr else "")
                print(f"| {nnz:,} | whole process (highest stage peak) | | {peak:.0f} | | {ratio} |")
                continue
            notes = "stopped at the limit (lower bound)" if row.get("stopped") else ", ".join(
                f"{key} {value:,.4g}" if isinstance(value, float) else f"{key} {value:,}"
                for key, value in row.items() if key not in ("stage", "seconds", "peak_mb", "rss_mb"))
            print(f"| {nnz:,} | {row['stage']} | {row['seconds']:.1f}{'+' if row.get('stopped') else ''} | "
                  f"{row.get('peak_mb', float('nan')):.0f} | {row.get('rss_mb', float('nan')):.0f} | {notes} |")
    if len(results) >= 2:
        print()
        print("| stage | exponent (seconds ~ nnz^b) over | b |")
        print("|---|---|---:|")
        for stage in args.stages:
            points = [(nnz, row["seconds"]) for nnz, rows in results.items() for row in rows
                      if row["stage"] == stage and not row.get("stopped")]
            if len(points) >= 2:
                x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
                slope = np.polyfit(x, y, 1)[0]
                print(f"| {stage} | {', '.join(f'{n:,}' for n, _ in points)} | {slope:.2f} |")


if __name__ == "__main__":
    main()
