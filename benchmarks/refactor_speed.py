"""Training speed of one source tree against another, side by side in one run (issue 12: the torch
base must not slow BPR, LightGCN or SASRec down).

Each (model, tree) fit runs in its own subprocess with `PYTHONPATH=<tree>/src`, alternating the
trees, `--repeats` times; the figure per fit is the median seconds per epoch over its epochs
(validation included: the base changed how validation scores). Data: ml-100k, every rating a
positive, the default benchmark's split (per-user random 8:1:1, seed 2020) for BPR and LightGCN,
leave-last-one-out by time for SASRec; fixed epochs, no early stopping, one torch thread.

    .venv/bin/python benchmarks/refactor_speed.py --before /tmp/before_tree --after . [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from machine import print_machine

MODELS = {  # name -> (params, splitter)
    "bpr": ({"epochs": 15}, "random"),
    "lightgcn": ({"epochs": 10}, "random"),
    "sasrec": ({"epochs": 4}, "leave_last"),
}

CHILD = r"""
import json, statistics, sys, torch
torch.set_num_threads(1)
from recstack.experiment import parse_config
from recstack.experiment.run import prepare_data
name, params, splitter = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
split_config = {"method": "random", "ratios": [0.8, 0.1, 0.1]} if splitter == "random" else {"method": "leave_last", "k": 1}
config = parse_config({"data": {"dataset": "ml-100k"}, "preprocessing": {"threshold": None}, "split": split_config, "seed": 2020, "models": [{"name": name}]})
dataset, split = prepare_data(config)
from recstack.models import build
model = build(name, {**params, "early_stopping_patience": None, "verbose": False, "seed": 2020}).fit(split.train, split.valid)
seconds = [entry["seconds"] for entry in model.history_]
print(json.dumps({"epoch_s": statistics.median(seconds), "valid": model.history_[-1].get("NDCG@10")}))
"""


def fit(tree: Path, name: str) -> dict:
    params, splitter = MODELS[name]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, name, json.dumps(params), splitter], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    for side in ("before", "after"):  # a wrong path would silently measure the installed recstack instead
        if not (getattr(args, side) / "src" / "recstack").is_dir():
            parser.error(f"--{side} {getattr(args, side)}: not a recstack source tree (no src/recstack in it)")
    print_machine("settings: every fit in its own process with torch.set_num_threads(1) and OMP_NUM_THREADS=1 "
                  "(the counts above are this parent's)")
    for name in args.models:
        runs = {"before": [], "after": []}
        for _ in range(args.repeats):
            for side in ("before", "after"):
                runs[side].append(fit(getattr(args, side).resolve(), name))
        before = statistics.median(r["epoch_s"] for r in runs["before"])
        after = statistics.median(r["epoch_s"] for r in runs["after"])
        print(json.dumps({"model": name, "before_epoch_s": round(before, 3), "after_epoch_s": round(after, 3),
                          "after_over_before": round(after / before, 3),
                          "valid_ndcg10": {side: [r["valid"] for r in runs[side]] for side in runs}}), flush=True)


if __name__ == "__main__":
    main()
