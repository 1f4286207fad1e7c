"""BPR-MF training throughput (training triples per second): recstack vs `implicit`'s BPR.

Both train 64 factors on the same synthetic power-law interactions with the same threads.
recstack's BPR-MF runs with each `--solvers` entry: "learnbpr" (the default: LearnBPR triple by
triple in numba-compiled code, the next epoch's triples prepared on a second thread when there are
two), "adam" (mini-batch Adam through the Trainer), "sgd" (LearnBPR's closed-form updates applied a
mini-batch at a time in torch) and "sgd-compiled" (the same step fused by torch.compile into
one-thread loops; compiling happens in fit before the first epoch and is not timed). One uniform negative per positive, the
default batch size (4,096) unless --batch-size. implicit runs its multi-threaded SGD (Hogwild) in Cython, sampling as many triples
per iteration as there are interactions. Throughput is triples / second of training (negative
sampling included, validation excluded); best epoch of `--epochs`. implicit is timed right after
each recstack fit, so every ratio compares two measurements taken under the same load.

    .venv/bin/python benchmarks/bpr_throughput.py [--nnz 1000000 10000000] [--threads 2] [--solvers learnbpr adam sgd sgd-compiled]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from implicit.cpu.bpr import BayesianPersonalizedRanking
from machine import print_machine

from recstack.data.synthetic import power_law_interactions
from recstack.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnz", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--solvers", nargs="+", choices=["adam", "sgd", "sgd-compiled", "learnbpr"],
                        default=["learnbpr", "adam", "sgd", "sgd-compiled"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(f"settings: recstack {args.threads} torch threads (set_num_threads); implicit num_threads="
                  f"{args.threads}; the compiled step (sgd-compiled) runs one-thread loops")
    print("compared: training triples per second only, no accuracy figure of either side. Both sides: 64 "
          "factors, one uniform negative per positive, the same interactions and threads", flush=True)
    rows = []
    for nnz in args.nnz:
        data = power_law_interactions(nnz, seed=0)
        matrix = data.matrix()
        for solver in args.solvers:
            params = {"solver": solver.split("-")[0], "epochs": args.epochs, "verbose": False,
                      "early_stopping_patience": None}
            if solver == "sgd-compiled":
                params["compile_step"] = True  # compiled in fit before the first epoch's clock starts
            if args.batch_size:
                params["batch_size"] = args.batch_size
            model = build("bpr", params).fit(data)
            ours = len(data) / min(h["seconds"] for h in model.history_)

            reference = BayesianPersonalizedRanking(factors=64, iterations=1, num_threads=args.threads, random_state=0)
            best = float("inf")
            for _ in range(args.epochs):
                start = time.perf_counter()
                reference.fit(matrix, show_progress=False)
                best = min(best, time.perf_counter() - start)
            theirs = len(data) / best
            row = {"nnz": nnz, "n_users": data.n_users, "n_items": data.n_items, "solver": solver,
                   "batch_size": model.config.batch_size, "recstack_triples_per_s": ours,
                   "implicit_triples_per_s": theirs, "ratio": ours / theirs,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| nnz | users | items | solver | batch | recstack triples/s | implicit triples/s | ratio |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nnz']:,} | {r['n_users']:,} | {r['n_items']:,} | {r['solver']} | {r['batch_size']:,} "
              f"| {r['recstack_triples_per_s']:,.0f} | {r['implicit_triples_per_s']:,.0f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
