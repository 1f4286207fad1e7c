"""The accuracy cost of bf16 scoring (issue 19): trained dot-product models evaluated in float32 and in
bfloat16 (`evaluate(..., precision="bf16")`: bf16 products choose k + 8 candidates, re-scored exactly)
on the same split, with the share of users whose top-k list changed and the relative change of
NDCG@10, and the evaluation time of each.

    .venv/bin/python benchmarks/bf16_accuracy.py [--dataset ml-100k] [--models bpr als lightgcn]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from machine import print_machine

from recstack.data.datasets import load_dataset
from recstack.evaluate import evaluate
from recstack.models import build
from recstack.split import make_split

FAST = {"lightgcn": {"epochs": 30}}  # capped the same for both precisions: only the scoring differs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", nargs="+", default=["bpr", "als", "lightgcn"])
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    print_machine(f"settings: {args.dataset}, random 8:1:1 split (seed {args.seed}), full ranking, test users "
                  "ranked from train + valid")
    split = make_split(load_dataset(args.dataset).interactions, "random", seed=args.seed, ratios=(0.8, 0.1, 0.1))
    history = split.history("test")
    print("| model | NDCG@10 fp32 | NDCG@10 bf16 | relative change | lists changed | eval s fp32 | eval s bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        model = build(name, FAST.get(name, {})).fit(split.train, split.valid)
        row = {"model": name}
        for precision in ("fp32", "bf16"):
            evaluate(model, history, split.test, ks=[10], precision=precision)  # warm (compiled kernels)
            start = time.perf_counter()
            result = evaluate(model, history, split.test, ks=[10], precision=precision, keep_rankings=True)
            row[f"seconds_{precision}"] = time.perf_counter() - start
            row[f"ndcg_{precision}"] = result.metrics["NDCG@10"]
            row[f"lists_{precision}"] = result.rankings.items[:, :10]
        changed = float(np.mean((row.pop("lists_fp32") != row.pop("lists_bf16")).any(axis=1)))
        relative = row["ndcg_bf16"] / row["ndcg_fp32"] - 1
        print(json.dumps({**row, "lists_changed": changed, "relative": relative}), flush=True)
        print(f"| {name} | {row['ndcg_fp32']:.4f} | {row['ndcg_bf16']:.4f} | {relative:+.3%} | {changed:.2%} | "
              f"{row['seconds_fp32']:.3f} | {row['seconds_bf16']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
