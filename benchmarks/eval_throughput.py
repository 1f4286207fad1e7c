"""Full-ranking evaluation throughput of an MF-shaped model vs the same library's raw matmul + top-k.

For each catalogue size, both sides score the same users against the same float32 factors (d=64)
in the same user blocks and take the top k=10. The reference multiplies with the library the
model under test scores with (`--library`: numpy, as recstack's MF models do, or torch), so both
sides run the same BLAS on the same dtype, and takes the top k with the library's own top-k
(torch.topk, unsorted, when torch is installed; else numpy's argpartition). recstack's `evaluate`
takes its top k with its own kernel (a compiled heap pass with the history masks fused into it,
`recstack/_compiled.py`, when numba is installed; else the same library top-k plus a tie fix-up),
and also masks each user's history, breaks ties at the cut-off, looks up hits and computes six
metrics, overlapping the next block's product with the current block's ranking. Reported: users/s of each and the ratio recstack /
reference (goal >= 1.0, issue 19), after the machine (CPU, BLAS, threads) and each library's raw
GEMM speed on the benchmark's shapes, so a reader sees which BLAS is faster on this CPU.

    .venv/bin/python benchmarks/eval_throughput.py [--threads 2] [--repeats 3] [--library numpy]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import numpy as np
from machine import print_machine
from threadpoolctl import threadpool_limits

from recstack.data.interactions import Interactions, Vocab
from recstack.evaluate import evaluate
from recstack.evaluate.evaluator import block_size_for

SHAPES = [(1_682, 20_000), (50_000, 5_000), (1_000_000, 1_000)]  # (n_items, n_users scored)
LIBRARIES = ("numpy", "torch")


class MatrixFactorization:
    """The scoring half of any MF model, s(u, i) = <p_u, q_i>, multiplied with `library`."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray, library: str = "numpy") -> None:
        self.user_factors, self.item_factors, self.library = user_factors, item_factors, library
        if library == "torch":
            import torch

            self._user_t, self._item_t = torch.from_numpy(user_factors), torch.from_numpy(item_factors).T

    def score(self, users, history, items=None):
        if self.library == "torch":
            import torch

            return torch.mm(self._user_t[torch.from_numpy(np.asarray(users, dtype=np.int64))], self._item_t)
        return self.user_factors[users] @ self.item_factors.T


class DotProductMF(MatrixFactorization):
    """With the `DotProductScorer` ability, as recstack's MF, ALS and graph models have it: `evaluate`
    multiplies the factors itself with numpy, tile by tile (recstack.evaluate.fused; RECSTACK_FUSED=0
    measures the score-matrix path instead). Used for `--library numpy`: `--library torch` measures a
    model that scores with torch, which only the score-matrix path can do."""

    def user_queries(self, users, history):
        return self.user_factors[np.asarray(users)]

    def item_vectors(self):
        return self.item_factors, None


def library_of(array) -> str:
    """Which library made `array`: 'torch' for a torch tensor, 'numpy' for anything else."""
    return "torch" if type(array).__module__.split(".")[0] == "torch" else "numpy"


def scoring_library(model: MatrixFactorization) -> str:
    """The library the model under test multiplies with, read off what its `score` returns."""
    return library_of(model.score(np.arange(1), None))


def topk_library() -> str:
    """The library top-k the reference uses: torch.topk when torch is installed, else numpy's argpartition."""
    return "torch" if importlib.util.find_spec("torch") is not None else "numpy"


def recstack_topk() -> str:
    """What recstack's evaluation takes its top k with on this install."""
    from recstack.topk import compiled_kernels

    if compiled_kernels() is not None:
        return "a compiled heap pass with fused masks (numba, recstack._compiled)"
    return f"{topk_library()} top-k + tie fix-up (no numba)"


def gemm(library: str):
    """(users (B, d) float32, items (n, d) float32) -> block product function of `library`, and its inputs."""
    if library == "torch":
        import torch

        return lambda a, b_t: torch.mm(a, b_t), (lambda a, b: (torch.from_numpy(a), torch.from_numpy(b).T))
    return lambda a, b_t: a @ b_t, (lambda a, b: (a, b.T))


def raw_topk(library: str):
    """The library top-k of the reference, on a block of scores of either library."""
    if library == "torch":
        import torch

        def top(scores, k):
            scores = scores if library_of(scores) == "torch" else torch.from_numpy(np.ascontiguousarray(scores))
            return torch.topk(scores, k, dim=1, sorted=False)
        return top

    def top_np(scores, k):
        scores = np.asarray(scores)
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return idx, np.take_along_axis(scores, idx, axis=1)
    return top_np


def path_under_test(model: MatrixFactorization, precision: str) -> str:
    """How `evaluate` ranks `model` on this install."""
    from recstack.evaluate.fused import fused_applies

    if fused_applies(model, precision):
        return f"fused {precision} tiles (recstack.evaluate.fused, numpy BLAS; bf16 by torch)"
    return f"score blocks ({scoring_library(model)} matmul)"


def installed_libraries() -> list[str]:
    """The libraries of `LIBRARIES` this Python has (numpy always; torch when installed)."""
    return [library for library in LIBRARIES if importlib.util.find_spec(library) is not None]


def reference_libraries(model: MatrixFactorization) -> dict[str, str]:
    """The libraries the reference uses: the model's for the product, the library top-k (`topk_library`)."""
    return {"gemm": scoring_library(model), "topk": topk_library()}


def reference(model: MatrixFactorization, n_users: int, block: int, k: int) -> float:
    """Seconds for the raw product + top-k of every block, in the libraries of `reference_libraries`."""
    libraries = reference_libraries(model)
    product, prepare = gemm(libraries["gemm"])
    top = raw_topk(libraries["topk"])
    users, items_t = prepare(model.user_factors, model.item_factors)
    start = time.perf_counter()
    for lo in range(0, n_users, block):
        top(product(users[lo:lo + block], items_t), k)
    return time.perf_counter() - start


def gemm_gflops(library: str, user_factors: np.ndarray, item_factors: np.ndarray, n_users: int, block: int,
                repeats: int) -> float:
    """Raw GEMM speed of `library` (GFLOP/s, best of `repeats`) on the benchmark's blocks of this shape."""
    product, prepare = gemm(library)
    users, items_t = prepare(user_factors, item_factors)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for lo in range(0, n_users, block):
            product(users[lo:lo + block], items_t)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n_users * user_factors.shape[1] * item_factors.shape[0] / best / 1e9


def make_case(n_items: int, n_users: int, dim: int, rng: np.random.Generator, library: str = "numpy"):
    users, items = Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item")
    # 20 history events and 1-5 test events per user, uniform over the catalogue
    hist_user = np.repeat(np.arange(n_users), 20)
    history = Interactions(hist_user, rng.integers(0, n_items, len(hist_user)), users, items)
    n_test = rng.integers(1, 6, n_users)
    test_user = np.repeat(np.arange(n_users), n_test)
    test = Interactions(test_user, rng.integers(0, n_items, len(test_user)), users, items)
    model = (DotProductMF if library == "numpy" else MatrixFactorization)(
        rng.standard_normal((n_users, dim), dtype=np.float32), rng.standard_normal((n_items, dim), dtype=np.float32),
        library)
    return model, history, test


def parse_shape(text: str) -> tuple[int, int]:
    items, _, users = text.partition(":")
    return int(items), int(users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads of both BLAS (numpy's via threadpoolctl, "
                        "torch.set_num_threads) and of torch.topk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--library", choices=LIBRARIES, default="numpy",
                        help="what the model under test (and so the reference) multiplies with; numpy is what "
                             "recstack's MF models do (models/kernels/scoring.py)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="evaluate(precision=...): bf16 multiplies dot-product models in bfloat16 and re-scores "
                             "the candidates in float32 (recstack.evaluate.fused)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, metavar="ITEMS:USERS",
                        default=SHAPES, help="catalogue sizes and users scored (default: 1682:20000 "
                                             "50000:5000 1000000:1000)")
    args = parser.parse_args()
    if "torch" in installed_libraries():
        import torch

        torch.set_num_threads(args.threads)
    elif args.library == "torch":
        parser.error("--library torch: torch is not installed")
    with threadpool_limits(args.threads, "blas"):
        run(args)


def run(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    probe = make_case(10, 2, args.dim, rng, args.library)[0]
    libraries = reference_libraries(probe)
    print_machine(f"settings: {args.threads} threads for numpy's BLAS (threadpool_limits), torch "
                  f"(set_num_threads) and torch.topk; float32; d={args.dim}, k={args.k}, best of {args.repeats}",
                  f"path under test: {path_under_test(probe, args.precision)}, top-k with {recstack_topk()}; "
                  f"reference: {libraries['gemm']} matmul + {libraries['topk']} top-k")
    rows, gemm_rows = [], []
    for n_items, n_users in args.shapes:
        model, history, test = make_case(n_items, n_users, args.dim, rng, args.library)
        block = block_size_for(n_items)
        gemm_rows.append({"n_items": n_items, "block_users": block, **{
            f"{library}_gflops": gemm_gflops(library, model.user_factors, model.item_factors, n_users, block,
                                             args.repeats) for library in installed_libraries()}})
        print(json.dumps(gemm_rows[-1]), flush=True)
        ours, ref = [], []
        for _ in range(args.repeats):  # interleave so both see the same machine state
            start = time.perf_counter()
            result = evaluate(model, history, test, ks=[args.k], precision=args.precision)
            ours.append(time.perf_counter() - start)
            ref.append(reference(model, n_users, block, args.k))
        row = {
            "n_items": n_items, "n_users": n_users, "block_users": block, "library": args.library,
            "reference": f"{libraries['gemm']} matmul + {libraries['topk']} topk",
            "recstack_users_per_s": n_users / min(ours), "reference_users_per_s": n_users / min(ref),
            "ratio": min(ref) / min(ours), "evaluated": result.protocol["n_users_evaluated"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\nraw GEMM speed of each library on the benchmark's blocks (float32, "
          f"{args.threads} threads; the table below uses {libraries['gemm']})")
    print("| items | block | numpy GFLOP/s | torch GFLOP/s |")
    print("|---:|---:|---:|---:|")
    for g in gemm_rows:
        torch_gflops = f"{g['torch_gflops']:.1f}" if "torch_gflops" in g else "-"
        print(f"| {g['n_items']:,} | {g['block_users']} | {g['numpy_gflops']:.1f} | {torch_gflops} |")
    print(f"\n| items | users | block | recstack users/s | {libraries['gemm']} matmul + {libraries['topk']} topk "
          "users/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_items']:,} | {r['n_users']:,} | {r['block_users']} | {r['recstack_users_per_s']:,.0f} "
              f"| {r['reference_users_per_s']:,.0f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
