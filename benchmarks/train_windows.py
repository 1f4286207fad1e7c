"""Time to validation accuracy of the sequential training windows (`train_windows`), issue 13.

Fits one sequential model per (windows, seed) on ml-100k leave-last-one-out by time (every rating a
positive, full ranking, history masked; the split of examples/sequential_ml100k.yaml), each fit in
its own subprocess with one torch thread and OMP_NUM_THREADS=1, early stopping on VALIDATION
NDCG@10 with the model's default patience. Every epoch records the process CPU seconds since the
fit began (validation included): CPU time, unlike wall time, is not inflated by other work on the
machine. The summary is, per windows choice, the mean over seeds of the best validation NDCG@10
reached within each CPU budget. Test data is never read.

    .venv/bin/python benchmarks/train_windows.py --model sasrec --windows latest sliding sliding/10 \
        --seeds 1 2 3 2020 --out /tmp/windows
    .venv/bin/python benchmarks/train_windows.py --summarise /tmp/windows

`--cpu-limit S` stops each fit after its first epoch past S CPU seconds (the table then reads
budgets up to S only): a small stride's epochs are long and its early stopping comes late.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import print_machine

BUDGETS = (40, 60, 80, 100, 120, 150, 200, 300)

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from recstack.experiment import parse_config
from recstack.experiment.run import prepare_data
from recstack.models import build
from recstack.train import trainer as T
name, windows, seed, out, cpu_limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
config = parse_config({"data": {"dataset": "ml-100k"}, "preprocessing": {"threshold": None},
                       "split": {"method": "leave_last", "k": 1}, "seed": 2020, "models": [{"name": name}]})
dataset, split = prepare_data(config)
_fit, _log = T.Trainer.fit, T.Trainer._log_epoch
class OutOfBudget(Exception):
    pass
def fit(self, *args, **kwargs):
    self._cpu0 = time.process_time()
    return _fit(self, *args, **kwargs)
def log_epoch(self, entry):
    entry["cpu_since_fit"] = round(time.process_time() - self._cpu0, 3)
    with open(out, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    _log(self, entry)
    if cpu_limit and entry["cpu_since_fit"] >= cpu_limit:
        raise OutOfBudget  # the table reads budgets up to --cpu-limit only
T.Trainer.fit, T.Trainer._log_epoch = fit, log_epoch
# "sliding/10": sliding windows with train_stride 10
windows, _, stride = windows.partition("/")
settings = {"train_windows": windows, "seed": seed, "verbose": False}
if stride:
    settings["train_stride"] = int(stride)
try:
    build(name, settings).fit(split.train, split.valid)
except OutOfBudget:
    pass
"""


def run(model: str, windows: list[str], seeds: list[int], out: Path, cpu_limit: float = 0.0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for seed in seeds:  # seeds outermost: an interrupted run leaves every windows choice equally covered
        for choice in windows:
            log = out / f"{model}-{choice.replace('/', '_stride')}-seed{seed}.jsonl"
            log.unlink(missing_ok=True)
            subprocess.run([sys.executable, "-c", CHILD, model, choice, str(seed), str(log), str(cpu_limit)], env=env,
                           check=True)


def summarise(out: Path) -> None:
    runs: dict[str, dict[int, list[dict]]] = {}
    for log in sorted(out.glob("*.jsonl")):
        stem, seed = log.stem.rsplit("-seed", 1)
        choice = stem.split("-", 1)[1]
        runs.setdefault(choice, {})[int(seed)] = [json.loads(line) for line in log.read_text().splitlines()]
    print("CPU s budget " + " ".join(f"{b:>7d}" for b in BUDGETS))
    for choice, by_seed in runs.items():
        cells = []
        for budget in BUDGETS:
            best = [max([e["NDCG@10"] for e in epochs if e["cpu_since_fit"] <= budget] or [0.0]) for epochs in by_seed.values()]
            cells.append(f"{np.mean(best):7.4f}")
        print(f"{choice:12s} " + " ".join(cells) + f"   seeds {sorted(by_seed)}")
        for seed, epochs in sorted(by_seed.items()):
            top = max(epochs, key=lambda e: e["NDCG@10"])
            print(f"    seed {seed}: best {top['NDCG@10']:.4f} at epoch {top['epoch']}, {top['cpu_since_fit']:.0f} CPU s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--windows", nargs="+", default=["latest", "sliding"],
                        help="choices of train_windows; 'sliding/S' is sliding windows with train_stride S")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 2020])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "windows")
    parser.add_argument("--summarise", type=Path, help="print the table of an earlier --out folder and stop")
    parser.add_argument("--cpu-limit", type=float, default=0.0,
                        help="stop a fit after the first epoch past this many CPU seconds (0: train to early stopping)")
    args = parser.parse_args()
    if args.summarise is None:
        print_machine("settings: every fit in its own process with torch.set_num_threads(1), OMP_NUM_THREADS=1 and "
                      "MKL_NUM_THREADS=1 (the counts above are this parent's); times are CPU seconds")
        run(args.model, args.windows, args.seeds, args.out, args.cpu_limit)
    summarise(args.summarise or args.out)


if __name__ == "__main__":
    main()
