"""ALS fit wall time: recstack's ALS (which wraps `implicit`) vs calling `implicit` directly.

Both fit the same user x item CSR with the same factors, regularisation, alpha, iterations
and threads; runs are interleaved and the best of `--repeats` is kept. Goal: ratio <= 1.1.

    .venv/bin/python benchmarks/als_vs_implicit.py [--nnz 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares

from recstack.data.synthetic import power_law_interactions
from recstack.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnz", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("compared: fit wall time only, no accuracy figure of either side. Both sides fit the same confidence "
          "matrix (1 + alpha r) with the same factors, reg, iterations, threads and seed", flush=True)
    rows = []
    for nnz in args.nnz:
        data = power_law_interactions(nnz, seed=0)
        model = build("als", {"threads": args.threads, "seed": 0})
        cfg = model.config
        # the same confidence matrix recstack hands to implicit: c_ui = 1 + alpha r_ui on observed
        # entries (implicit reads each stored value as the full confidence)
        matrix = data.matrix().astype(np.float32).tocsr()
        matrix.data = 1.0 + cfg.alpha * matrix.data
        ours, direct = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            build("als", {"threads": args.threads, "seed": 0}).fit(data)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            reference = AlternatingLeastSquares(
                factors=cfg.embedding_size, regularization=cfg.reg, alpha=1.0, iterations=cfg.epochs,
                num_threads=args.threads, random_state=0,
            )
            reference.fit(matrix, show_progress=False)
            direct.append(time.perf_counter() - start)
        row = {"nnz": nnz, "n_users": data.n_users, "n_items": data.n_items, "factors": cfg.embedding_size,
               "iterations": cfg.epochs, "recstack_s": min(ours), "implicit_s": min(direct),
               "ratio": min(ours) / min(direct)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| nnz | users | items | recstack ALS s | implicit s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nnz']:,} | {r['n_users']:,} | {r['n_items']:,} | {r['recstack_s']:.2f} "
              f"| {r['implicit_s']:.2f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
