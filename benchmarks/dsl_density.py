"""Accuracy against density for Dynamic Sparse Learning (DSL) on ml-100k, MF and LightGCN backbones.

The default benchmark's data and split (`src/recstack/experiment/default.yaml`: MovieLens-100K,
every rating a positive, per-user random 8:1:1, seed 2020); each (backbone, density) pair is one
DSL fit at its defaults (density 1.0 is the dense backbone), early-stopped on validation NDCG@10.
Prints one JSON line per fit, then a markdown table: validation NDCG@10 (what the defaults were
chosen on) and test NDCG@10 / Recall@10 (reference only), the actual non-zero share and fit time.

    .venv/bin/python benchmarks/dsl_density.py [--backbones mf lightgcn] [--densities 1.0 0.5 0.2 0.1]
        [--param update_every=100 ...] [--threads 1]
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


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["mf", "lightgcn"])
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.5, 0.2, 0.1])
    parser.add_argument("--param", nargs="*", default=[], help="extra DSL parameters as key=value")
    parser.add_argument("--seed", type=int, default=0, help="the model seed (the split's seed is 2020)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(f"settings: {args.threads} torch threads (set_num_threads)")
    extra = {key: _value(value) for key, value in (p.split("=", 1) for p in args.param)}
    _, split = prepare_data(default_config())
    rows = []
    for backbone in args.backbones:
        for density in args.densities:
            params = {"backbone": backbone, "density": density, "seed": args.seed, "verbose": False, **extra}
            started = time.perf_counter()
            model = build("dsl", params).fit(split.train, split.valid)
            seconds = time.perf_counter() - started
            valid = evaluate(model, history=split.history("valid"), test=split.valid, metrics=["NDCG@10"])
            test = evaluate(model, history=split.history("test"), test=split.test, metrics=["NDCG@10", "Recall@10"])
            row = {"backbone": backbone, "density": density, "density_": model.density_,
                   "valid_ndcg10": valid["NDCG@10"], "test_ndcg10": test["NDCG@10"], "test_recall10": test["Recall@10"],
                   "best_epoch": model.best_epoch_, "epochs_run": len(model.history_),
                   "mask_updates": len(model.mask_updates_), "seconds": round(seconds, 1), "params": extra}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| backbone | density | non-zero share | valid NDCG@10 | test NDCG@10 | test Recall@10 | best epoch | fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backbone']} | {r['density']:.2f} | {r['density_']:.3f} | {r['valid_ndcg10']:.4f} "
              f"| {r['test_ndcg10']:.4f} | {r['test_recall10']:.4f} | {r['best_epoch']} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
