"""ALS fit wall time: recstack's ALS (which wraps `implicit`) vs calling `implicit` directly.

Both fit the same user x item CSR with the same factors, regularisation, alpha, iterations
and threads; runs are interleaved and the best of `--repeats` is kept. Goal: ratio <= 1.1.

Thread settings, the same on both sides and printed before the table: implicit's own worker threads
`num_threads` = `--threads` (recstack's `n_threads`), and the BLAS held to one thread
(`threadpool_limits(1, "blas")`) while the model is built and fitted, as recstack's wrapper does
(implicit parallelises over users itself and slows down when BLAS threads compete with it).

    .venv/bin/python benchmarks/als_vs_implicit.py [--nnz 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from machine import print_machine, thread_pools
from threadpoolctl import threadpool_limits

from recstack.data.synthetic import power_law_interactions
from recstack.models import build

# recstack's ALS wrapper holds every BLAS to this many threads while it builds and fits implicit's model
# (src/recstack/models/factorization/als.py); the direct call below runs under the same limit
BLAS_THREADS = 1


def blas_threads_now() -> str:
    """The BLAS thread counts in force right now, as 'owner library: threads' (what the fit runs under)."""
    return ", ".join(f"{p['owner']} {p['library']}: {p['threads']}" for p in thread_pools() if p["api"] == "blas")


def implicit_direct(matrix, cfg, threads: int) -> float:
    """Seconds to build and fit implicit's ALS directly, under the wrapper's BLAS limit and threads."""
    start = time.perf_counter()
    with threadpool_limits(BLAS_THREADS, "blas"):
        reference = AlternatingLeastSquares(
            factors=cfg.embedding_size, regularization=cfg.reg, alpha=1.0, dtype=np.float32, iterations=cfg.epochs,
            num_threads=threads, random_state=0,
        )
        reference.fit(matrix, show_progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnz", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with threadpool_limits(BLAS_THREADS, "blas"):
        under_limit = blas_threads_now()
    print_machine(f"settings, both sides: implicit num_threads={args.threads} (recstack n_threads={args.threads}); "
                  f"BLAS limited to {BLAS_THREADS} thread by threadpool_limits while building and fitting "
                  f"({under_limit}); float32 factors")
    print("compared: fit wall time only, no accuracy figure of either side. Both sides fit the same confidence "
          "matrix (1 + alpha r) with the same factors, reg, iterations, threads and seed", flush=True)
    rows = []
    for nnz in args.nnz:
        data = power_law_interactions(nnz, seed=0)
        params = {"n_threads": args.threads, "seed": 0}
        model = build("als", params)
        cfg = model.config
        # the same confidence matrix recstack hands to implicit: c_ui = 1 + alpha r_ui on observed
        # entries (implicit reads each stored value as the full confidence)
        matrix = data.matrix().astype(np.float32).tocsr()
        matrix.data = 1.0 + cfg.alpha * matrix.data
        ours, direct = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            build("als", params).fit(data)
            ours.append(time.perf_counter() - start)
            direct.append(implicit_direct(matrix, cfg, args.threads))
        row = {"nnz": nnz, "n_users": data.n_users, "n_items": data.n_items, "factors": cfg.embedding_size,
               "iterations": cfg.epochs, "threads": args.threads,
               "blas_threads": BLAS_THREADS, "recstack_s": min(ours), "implicit_s": min(direct),
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
