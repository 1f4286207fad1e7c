"""ANN recall@10 against exact top-10 and the speed-up per query: the server's faiss HNSW index
(`recstack.serve.ann.hnsw_index`, inner product) vs an exact numpy matmul + argpartition.

Catalogues: ml-100k's 1,682 items with BPR's item factors from a quick fit (64 factors, `--bpr-epochs`
epochs on all of ml-100k; its 943 users are the queries), then synthetic catalogues of 100k and 1M
items. The synthetic vectors are shaped like trained factors: 256 clusters, each item a noisy copy of
its cluster's centre, its norm log-normal with the spread of the fitted BPR's item norms (printed);
the same 1,000 synthetic query users (noisy centres too) serve every synthetic size. No history is
masked here: the index alone is measured.

Per catalogue: HNSW build seconds (M, efConstruction printed), then for each efSearch the recall@10
over all queries and the queries/s of one query at a time (a request's pattern), against the exact
queries/s measured the same way. Threads: everything at one (OMP_NUM_THREADS=1, BLAS held to 1).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ann_recall.py [--sizes 1682 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from machine import print_machine
from threadpoolctl import threadpool_limits

from recstack.serve.ann import HnswParams, hnsw_index

DIM, K, N_CLUSTERS = 64, 10, 256


def fitted_bpr(epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors of BPR fitted on all of ml-100k (the dataset's local copy)."""
    from recstack.data.datasets import load_dataset
    from recstack.models import build

    data = load_dataset("ml-100k").interactions
    model = build("bpr", {"epochs": epochs, "verbose": False, "embedding_size": DIM}).fit(data)
    return model.user_factors_, model.item_factors_


def clustered_vectors(n: int, centres: np.ndarray, log_norm_std: float, rng: np.random.Generator) -> np.ndarray:
    """`n` vectors near random cluster centres, with log-normal norms (popular items: long vectors)."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks: the float64 temporaries of 1M rows would take 1 GB
        m = min(100_000, n - start)
        v = centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, centres.shape[1]))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start:start + m] = v * rng.lognormal(0.0, log_norm_std, (m, 1))
    return out


def exact_top_k(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 64):
        scores = queries[start:start + 64] @ items.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start:start + 64] = np.take_along_axis(top, order, axis=1)
    return out


def per_query_rate(one_query, queries: np.ndarray, budget_s: float) -> float:
    """Queries/s of `one_query(q)` called one query at a time, for up to `budget_s` seconds."""
    tick = time.perf_counter()
    done = 0
    while done < len(queries) and (done < 20 or time.perf_counter() - tick < budget_s):
        one_query(queries[done:done + 1])
        done += 1
    return done / (time.perf_counter() - tick)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--bpr-epochs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget of each queries/s figure")
    parser.add_argument("--random-ml100k", action="store_true", help="random vectors instead of a BPR fit")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    params = HnswParams()
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        print_machine(f"threads: faiss {faiss.omp_get_max_threads()}, BLAS 1; faiss {faiss.__version__}; "
                      f"HNSW M={params.M}, efConstruction={params.ef_construction}; k={K}, d={DIM}")
        if args.random_ml100k:
            users, items_100k = rng.standard_normal((943, DIM)), rng.standard_normal((1682, DIM))
        else:
            tick = time.perf_counter()
            users, items_100k = fitted_bpr(args.bpr_epochs)
            print(f"ml-100k BPR fit ({args.bpr_epochs} epochs): {time.perf_counter() - tick:.1f} s")
        log_norms = np.log(np.linalg.norm(items_100k, axis=1))
        spread = float(log_norms.std()) if not args.random_ml100k else 0.5
        print(f"item norm spread (std of log norm) used for the synthetic catalogues: {spread:.3f}")
        centres = rng.standard_normal((N_CLUSTERS, DIM))
        synthetic_users = clustered_vectors(args.queries, centres, 0.3, rng)
        print(f"| items | queries | build s | efSearch | recall@{K} | ANN q/s | exact q/s | speed-up |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            if n == 1682:
                items, queries = np.asarray(items_100k, np.float32), np.asarray(users, np.float32)
            else:
                items, queries = clustered_vectors(n, centres, spread, rng), synthetic_users
            truth = exact_top_k(queries, items, K)
            exact_rate = per_query_rate(lambda q: exact_top_k(q, items, K), queries, args.seconds)
            tick = time.perf_counter()
            index = hnsw_index(items, params)
            build_s = time.perf_counter() - tick
            for ef in args.ef_search:
                search = faiss.SearchParametersHNSW(efSearch=max(ef, K))
                _, found = index.search(queries, K, params=search)
                rate = per_query_rate(lambda q: index.search(q, K, params=search), queries, args.seconds)
                print(f"| {n:,} | {len(queries):,} | {build_s:.1f} | {ef} | {recall(found, truth):.3f} | "
                      f"{rate:,.0f} | {exact_rate:,.0f} | {rate / exact_rate:.1f}x |", flush=True)
            index = items = None  # free the catalogue before the next one is generated


if __name__ == "__main__":
    main()
