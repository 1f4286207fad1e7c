"""DNIS on ml-100k: embedding parameters kept against validation NDCG@10, next to full-dimension BPR-MF.

The default benchmark's data and split (`recstack/experiment/default.yaml`: all ratings as
positives, per-user random 8:1:1 split, seed 2020), full ranking, NDCG@10 on valid (train masked)
and on test (train + valid masked; for reference only, nothing is chosen on it). Each DNIS row is a
full fit (search, prune, retrain) at the model's defaults except the pruning rule in the first
column; `--budgets` adds rows pruned to a parameter budget instead of a threshold, and
`--search-on-valid` a row whose architecture step reads the validation part (its validation figure
is then not a held-out one). Prints one JSON line per fit, then a markdown table.

    .venv/bin/python benchmarks/dnis_tradeoff.py [--thresholds 0.1 0.5 0.9 0.99] [--budgets 0.5]
        [--search-on-valid] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from machine import print_machine

from recstack.evaluate import evaluate
from recstack.experiment.config import default_config
from recstack.experiment.run import prepare_data
from recstack.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.1, 0.5, 0.9, 0.99])
    parser.add_argument("--budgets", type=float, nargs="*", default=[])
    parser.add_argument("--search-on-valid", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch threads (set_num_threads)")
    _, split = prepare_data(default_config())

    runs: list[tuple[str, str, dict]] = [("BPR-MF (64 dims)", "bpr", {})]
    runs += [(f"DNIS, threshold {t:g}", "dnis", {"prune_threshold": t}) for t in args.thresholds]
    runs += [(f"DNIS, budget {b:g}", "dnis", {"target_parameters": b}) for b in args.budgets]
    if args.search_on_valid:
        runs.append(("DNIS, threshold 0.5, search on valid*", "dnis", {"search_data": "valid"}))

    rows = []
    for label, name, params in runs:
        started = time.perf_counter()
        model = build(name, {**params, "verbose": False}).fit(split.train, split.valid)
        seconds = time.perf_counter() - started
        valid = evaluate(model, history=split.train, test=split.valid, metrics=["NDCG@10"])["NDCG@10"]
        test = evaluate(model, history=split.history("test"), test=split.test, metrics=["NDCG@10"])["NDCG@10"]
        row = {"setting": label, "model": name, "params": params, "valid_ndcg10": valid, "test_ndcg10": test,
               "seconds": seconds, "parameters_kept": getattr(model, "parameters_kept_", 1.0)}
        if name == "dnis":
            row["user_block_dims"] = model.block_dimensions_[0].tolist()
            row["item_block_dims"] = model.block_dimensions_[1].tolist()
            row["search_best_epoch"] = model.search_best_epoch_
            row["best_epoch"] = model.best_epoch_
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| setting | params kept | user dims per block | item dims per block "
          "| valid NDCG@10 | test NDCG@10 | fit s |")
    print("|---|---:|---|---|---:|---:|---:|")
    for r in rows:
        dims = [" ".join(str(d) for d in r.get(k, [])) or "64 (all)" for k in ("user_block_dims", "item_block_dims")]
        print(f"| {r['setting']} | {r['parameters_kept']:.1%} | {dims[0]} | {dims[1]} "
              f"| {r['valid_ndcg10']:.4f} | {r['test_ndcg10']:.4f} | {r['seconds']:.0f} |")
    if args.search_on_valid:
        print("\n*its architecture step was fitted on the validation part, so its validation NDCG@10 is not held out.")


if __name__ == "__main__":
    main()
