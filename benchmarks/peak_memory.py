"""Peak memory of each model's training on a large synthetic interaction set (default 10M events).

Each model trains in its own process at its default parameters (one epoch for neural models, no
validation). Once the data is built, the child resets its peak resident set size (writing 5 to
/proc/self/clear_refs), so the generator's temporaries do not count; this script then polls the
child's peak (`VmHWM` in /proc/PID/status) until training ends or a time limit stops it. The
difference from the resident size at the reset is what training added on top of the data. A model whose first epoch
outlasts `--limit-s` is stopped there; its peak is then a lower bound, flagged `stopped`, with how
far it got (memory of these models is allocated in the first steps and stays flat after).

    .venv/bin/python benchmarks/peak_memory.py [--nnz 10000000] [--limit-s 600] [--models ease bpr ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import print_machine

DEFAULT_MODELS = ["pop", "itemknn", "userknn", "rp3beta", "ease", "als", "bpr", "neumf", "cml", "naivemf",
                  "relmf", "nbpo", "multvae", "multdae", "lightgcn", "ngcf", "simgcl", "dccf", "dnis", "dsl"]


def hwm_mb(pid: int) -> float | None:
    """Peak resident set size of a live process, in MiB (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def child(name: str, nnz: int, threads: int) -> None:
    """Runs in the child: build the data, say so, train one epoch."""
    import torch

    from recstack.data.synthetic import power_law_interactions
    from recstack.models import build, resolve

    torch.set_num_threads(threads)
    data = power_law_interactions(nnz, seed=0)
    data.matrix()  # the cached CSR is part of the data, not of the model
    gc.collect()
    # reset this process's peak RSS to its current RSS (Linux >= 4.0), so the peak read later is the
    # training's, not the data generator's temporaries
    Path("/proc/self/clear_refs").write_text("5")
    print(json.dumps({"ready": True, "n_users": data.n_users, "n_items": data.n_items}), flush=True)
    fields = resolve(name).Config.model_fields
    wanted = {"epochs": 1, "search_epochs": 1, "early_stopping_patience": None, "verbose": False, "n_threads": threads}
    params = {k: v for k, v in wanted.items() if k in fields}
    started = time.perf_counter()
    build(name, params).fit(data)
    print(json.dumps({"done": True, "fit_s": time.perf_counter() - started}), flush=True)


def measure(name: str, nnz: int, threads: int, limit_s: float) -> dict:
    row: dict = {"model": name, "nnz": nnz, "threads": threads}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, __file__, "--child", name, "--nnz", str(nnz),
                                    "--threads", str(threads)], stdout=out, stderr=err, text=True)
        data_mb, started, peak = None, None, 0.0
        while process.poll() is None:
            time.sleep(0.25)
            peak = max(peak, hwm_mb(process.pid) or 0.0)
            if data_mb is None:
                out.seek(0)
                first = out.readline()
                if '"ready"' in first:
                    data_mb, started = hwm_mb(process.pid) or peak, time.perf_counter()
                    row.update({k: v for k, v in json.loads(first).items() if k != "ready"})
            if started is not None and time.perf_counter() - started > limit_s:
                row["stopped"] = f"stopped after {limit_s:.0f} s, first epoch unfinished"
                process.kill()
                process.wait()
                break
        out.seek(0)
        err.seek(0)
        lines, errors = out.read().splitlines(), err.read().strip().splitlines()
    if process.returncode != 0 and "stopped" not in row:
        row["error"] = errors[-1] if errors else f"exit code {process.returncode}"
    for line in lines:
        if '"done"' in line:
            row["fit_s"] = round(json.loads(line)["fit_s"], 1)
            row.pop("stopped", None)  # it finished while the limit was being checked
    row["data_peak_mb"] = round(data_mb or 0.0)
    row["peak_mb"] = round(peak)
    row["training_added_mb"] = round(peak - (data_mb or 0.0))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnz", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-s", type=float, default=600)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.nnz, args.threads)
        return
    print_machine(f"settings: every fit in its own process with {args.threads} torch threads (the counts above are "
                  "this parent's)")
    rows = []
    for name in args.models:
        row = measure(name, args.nnz, args.threads, args.limit_s)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| model | peak RSS MiB | of which data | training added | fit s | note |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        note = r.get("stopped") or r.get("error", "")
        print(f"| {r['model']} | {r['peak_mb']:,} | {r['data_peak_mb']:,} | {r['training_added_mb']:,} "
              f"| {r.get('fit_s', '-')} | {note} |")


if __name__ == "__main__":
    main()
