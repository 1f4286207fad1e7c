"""Full ranking of dot-product models without a score matrix (issue 19).

For a `DotProductScorer` (MF, ALS, the graph family) the evaluator multiplies itself: a group of
users' queries times one tile of item vectors at a time, each tile ranked by the heap pass of
`recstack._compiled` (history masks fused) while it is still in cache. The (users x items) score
block never goes to memory: writing it and reading it back, 8 bytes per cell, is what bounded the
blocked path on large catalogues. Groups are a fixed number of users from the start of the list,
so the products have the same shapes whatever the thread count (the same floats on one CPU).

`precision="bf16"`: queries and item vectors are rounded to bfloat16 and multiplied by torch (AMX or
AVX-512 BF16 where the CPU has them). The bf16 scores only choose `k + BF16_MARGIN` candidates per
user; those are scored again exactly (`recstack._compiled.rescore_top_k`) and ranked (score, then
the lower index). A list then differs from the float32 one only where a true top-k item's bf16
score falls below the (k + margin)-th. On the AMX CPU of BENCHMARKS.md bf16 evaluates about 2x as
fast as float32 with d=256 and 50k+ items, but slower with d=64 or 1.7k items, where the heap pass,
not the product, bounds the ranking: an option, not the default.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from recstack.abilities import DotProductScorer, implements
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.topk import _threads, compiled_kernels, top_k_items

PRECISIONS = ("fp32", "bf16")
GROUP_USERS = 256  # users multiplied together: their queries stay in cache while the item tiles pass
TILE_CELLS = 1 << 17  # cells of one product tile (512 KB in float32): ranked while it is in L2
BF16_MARGIN = 8  # candidates beyond k that the bf16 scores choose for the exact float32 re-scoring
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool): a forked child makes its own


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise RecstackError(f"unknown score precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def fused_applies(model: Any, precision: str = "fp32") -> bool:
    """Whether `rank` ranks `model` here: it is a dot-product scorer and the compiled kernels are
    installed (RECSTACK_FUSED=0 turns the path off, for comparisons). bf16 also needs torch."""
    if os.environ.get("RECSTACK_FUSED") == "0" or not implements(model, DotProductScorer):
        return False
    if compiled_kernels() is None:
        return False
    if precision == "bf16" and importlib.util.find_spec("torch") is None:
        raise RecstackError("score_precision bf16 multiplies with torch; install the torch extra "
                            "(pip install 'recstack[torch]') or score in fp32")
    return True


def rank_dot_product(model: Any, users: np.ndarray, history: Interactions, k: int, *, masks: Sequence[Any] = (),
                     precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """`top_k_items(model.score(users, history), k, masks=masks, rows=users)` without the score matrix."""
    queries = np.ascontiguousarray(model.user_queries(users, history), dtype=np.float32)
    vectors, bias = model.item_vectors()
    if queries.shape != (len(users), vectors.shape[1]) or vectors.shape[0] != history.n_items:
        raise ValueError(f"{type(model).__name__}: user_queries {queries.shape} and item_vectors {vectors.shape} "
                         f"do not make ({len(users)}, {history.n_items}) scores")
    return fused_top_k(queries, vectors, bias, k, masks=masks, rows=users, precision=precision)


def fused_top_k(queries: np.ndarray, vectors: np.ndarray, bias: np.ndarray | None, k: int, *,
                masks: Sequence[Any] = (), rows: np.ndarray | None = None, precision: str = "fp32"
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k best items of `queries @ vectors.T (+ bias)` per row, best first, ties to the lower index,
    with the items of mask row `rows[r]` left out of row r (see `recstack.topk.top_k_items`)."""
    check_precision(precision)
    kernels = compiled_kernels()
    masks = [m if m.has_sorted_indices else m.sorted_indices() for m in masks if m is not None]
    n_users, n_items = queries.shape[0], vectors.shape[0]
    k = min(k, n_items)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    if precision == "bf16" and not (np.isfinite(vectors).all() and np.isfinite(queries).all()
                                    and (bias is None or np.isfinite(bias).all())):
        precision = "fp32"  # bf16 keys cannot say NaN: the float32 pass finds and handles it
    width = k if precision == "fp32" else min(n_items, k + BF16_MARGIN)
    if n_users == 0 or k == 0:
        return np.zeros((n_users, k), dtype=np.int64), np.zeros((n_users, k), dtype=np.float32)
    none = np.zeros(1, dtype=np.int64)
    csr = [(m.indptr, m.indices) for m in masks] + [(none, none)] * (2 - len(masks))
    users = np.ascontiguousarray(rows, dtype=np.int64) if masks else np.zeros(0, dtype=np.int64)
    items = np.empty((n_users, width), dtype=np.int64)
    values = np.empty((n_users, width), dtype=np.float32)
    at_a, at_b = np.empty(n_users, dtype=np.int64), np.empty(n_users, dtype=np.int64)
    has_nan = np.zeros(n_users, dtype=np.bool_)
    if precision == "bf16":  # the heaps hold candidates; the exact k best go here
        best_items, best_values = np.empty((n_users, k), dtype=np.int64), np.empty((n_users, k), dtype=np.float32)
        no_bias = np.zeros(0, dtype=np.float32)
    kernels.heaps_start(users, csr[0][0], csr[1][0], 0, n_users, at_a, at_b)
    product = _Bf16Product(queries, vectors, bias) if precision == "bf16" else _Fp32Product(queries, vectors, bias)
    tile = max(width, TILE_CELLS // GROUP_USERS)
    starts = list(range(0, n_users, GROUP_USERS))

    def run(worker: int, workers: int) -> None:
        buffer = product.buffer(min(GROUP_USERS, n_users) * tile)
        for g0 in starts[worker::workers]:
            g1 = min(g0 + GROUP_USERS, n_users)
            for c0 in range(0, n_items, tile):
                scores = product.tile(buffer, g0, g1, c0, min(c0 + tile, n_items))
                kernels.heaps_scan(scores, c0, g0, width, users, *csr[0], *csr[1], g0, g1, items, values,
                                   at_a, at_b, has_nan)
            if precision == "bf16":
                kernels.rescore_top_k(queries, vectors, no_bias if bias is None else bias, items, values, g0, g1,
                                      best_items, best_values)
            else:
                kernels.heaps_finish(g0, g1, items, values)

    workers = min(_threads(), len(starts))
    if workers == 1:
        run(0, 1)
    else:  # groups run in parallel (BLAS and the kernel release the GIL), each product on one thread
        with threadpool_limits(1, "blas"), product.single_threaded():
            list(_workers(workers).map(run, range(workers), [workers] * workers))
    if precision == "bf16":
        return best_items, best_values
    if has_nan.any():  # NaN scores: the scored rows go through top_k_items, whose sorting path handles them
        redo = np.flatnonzero(has_nan)
        scores = queries[redo] @ vectors.T + (0 if bias is None else bias)
        items[redo], values[redo] = top_k_items(scores.astype(np.float32), k, masks=masks,
                                                rows=users[redo] if masks else None)
    return items, values


class _Fp32Product:
    """Tiles of queries @ vectors.T (+ bias) in float32 with the BLAS numpy uses."""

    def __init__(self, queries: np.ndarray, vectors: np.ndarray, bias: np.ndarray | None) -> None:
        self.queries, self.vectors, self.bias = queries, vectors, bias

    def buffer(self, cells: int) -> np.ndarray:
        return np.empty(cells, dtype=np.float32)

    def tile(self, buffer: np.ndarray, g0: int, g1: int, c0: int, c1: int) -> np.ndarray:
        out = buffer[: (g1 - g0) * (c1 - c0)].reshape(g1 - g0, c1 - c0)  # contiguous, so BLAS writes it directly
        np.matmul(self.queries[g0:g1], self.vectors[c0:c1].T, out=out)
        if self.bias is not None:
            out += self.bias[c0:c1]
        return out

    def single_threaded(self):
        return nullcontext()  # numpy's BLAS is held to one thread by threadpool_limits already


class _Bf16Product:
    """Tiles of queries @ vectors.T in bfloat16 by torch (the bias folded in as a last column), widened
    to float32 for the heap pass."""

    def __init__(self, queries: np.ndarray, vectors: np.ndarray, bias: np.ndarray | None) -> None:
        import torch

        self.torch = torch
        if bias is not None:
            queries = np.hstack([queries, np.ones((len(queries), 1), np.float32)])
            vectors = np.hstack([vectors, bias[:, None]])
        self.queries = torch.from_numpy(np.ascontiguousarray(queries)).to(torch.bfloat16)
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors)).to(torch.bfloat16)

    def buffer(self, cells: int):
        return self.torch.empty(cells, dtype=self.torch.bfloat16), self.torch.empty(cells, dtype=self.torch.float32)

    def tile(self, buffer, g0: int, g1: int, c0: int, c1: int) -> np.ndarray:
        shape = (g1 - g0, c1 - c0)
        out, wide = buffer[0][: shape[0] * shape[1]].view(shape), buffer[1][: shape[0] * shape[1]].view(shape)
        self.torch.mm(self.queries[g0:g1], self.vectors[c0:c1].T, out=out)
        wide.copy_(out)  # widened exactly while in cache: the heap pass compares float32 fastest
        return wide.numpy()

    def single_threaded(self):
        return _TorchThreads(self.torch, 1)


class _TorchThreads:
    """torch's intra-op threads set to `n` while the groups run in parallel (each product on one thread)."""

    def __init__(self, torch: Any, n: int) -> None:
        self.torch, self.n = torch, n

    def __enter__(self) -> None:
        self.before = self.torch.get_num_threads()
        self.torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        self.torch.set_num_threads(self.before)


def _workers(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
        _pool = (os.getpid(), workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recstack-fused"))
    return _pool[2]
