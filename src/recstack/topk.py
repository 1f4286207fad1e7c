"""The one top-k helper: the k best columns of each row of a score block, best first, ties broken
towards the lower index so that rankings never depend on thread counts or library versions.

It sits on the ground floor (numpy only; numba or torch when installed, for speed) so that
`evaluate/` and `models/` share it without either importing the other. With numba (the `fast`
extra) a compiled heap pass finds the exact order in one scan and applies history masks on the way
(`_compiled`); without it torch.topk or numpy's argpartition finds the k best and the ties at the
cut are fixed afterwards. Both give identical lists (tests/evaluate/test_topk.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# below this many cells a block is ranked on the calling thread: a pool costs more than it saves
_CELLS_PER_THREAD = 1 << 18
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool): a forked child makes its own


def _largest(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of k largest scores per row, in no guaranteed order among ties."""
    try:
        import torch
    except ImportError:  # numpy fallback: partition, the k survivors are ordered by the caller
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return idx, np.take_along_axis(scores, idx, axis=1)
    # torch.topk is multi-threaded and avoids numpy's full argpartition copy
    values, idx = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1, sorted=False)
    return idx.numpy(), values.numpy()


def top_k_items(scores: np.ndarray, k: int, *, masks: Sequence[Any] = (), rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest scores per row, best first (ties: lower index first).

    With `masks` (CSR matrices, e.g. the users' histories) and `rows`, the items of row `rows[r]` of
    each mask score -inf in row r; `scores` itself is never written. Results do not depend on thread
    counts, library versions or which path ran. Slots whose score is -inf come last (the evaluator
    turns them into -1 padding).
    """
    masks = [m for m in masks if m is not None]
    if masks and rows is None:
        raise ValueError("top_k_items: masks need `rows`, the mask row of each score row")
    k = min(k, scores.shape[1])
    if k == 0 or scores.shape[0] == 0:
        return np.zeros((scores.shape[0], k), dtype=np.int64), np.zeros((scores.shape[0], k), dtype=scores.dtype)
    kernel = compiled_kernels()
    if kernel is not None and len(masks) <= 2 and scores.dtype in (np.float32, np.float64):
        return _heap_top_k(kernel, scores, k, masks, rows)
    if masks:
        scores = np.array(scores)  # the sorting path masks by writing -inf: into its own copy
    for mask in masks:
        block = mask[rows]
        scores[np.repeat(np.arange(len(rows)), np.diff(block.indptr)), block.indices] = -np.inf
    return _sorted_top_k(scores, k)


def compiled_kernels():
    """The numba kernels (`recstack._compiled`), or None without numba or with RECSTACK_TOPK=sort (the
    variable lets a test or a benchmark compare the two paths)."""
    if os.environ.get("RECSTACK_TOPK") == "sort":
        return None
    try:
        from . import _compiled
    except ImportError:
        return None
    return _compiled


def _threads() -> int:
    """Threads for a block: torch's setting (it honours OMP_NUM_THREADS) when torch is loaded, else the CPUs."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _heap_top_k(kernel, scores: np.ndarray, k: int, masks: list, rows: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
    global _pool
    scores = np.ascontiguousarray(scores)
    n_rows = scores.shape[0]
    none = np.zeros(1, dtype=np.int64)
    # the kernel walks each mask row in item order (a matrix built by Interactions.matrix is already sorted)
    sorted_masks = [m if m.has_sorted_indices else m.sorted_indices() for m in masks]
    csr = [(m.indptr, m.indices) for m in sorted_masks] + [(none, none)] * (2 - len(masks))
    users = np.ascontiguousarray(rows, dtype=np.int64) if masks else np.zeros(0, dtype=np.int64)
    items = np.empty((n_rows, k), dtype=np.int64)
    values = np.empty((n_rows, k), dtype=scores.dtype)
    has_nan = np.zeros(n_rows, dtype=np.bool_)

    def run(lo: int, hi: int) -> None:
        kernel.rows_top_k(scores, k, users, *csr[0], *csr[1], lo, hi, items, values, has_nan)

    threads = min(_threads(), max(1, scores.size // _CELLS_PER_THREAD), n_rows)
    if threads == 1:
        run(0, n_rows)
    else:  # the kernel releases the GIL: row ranges run in parallel on a shared pool
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < threads:
            _pool = (os.getpid(), threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recstack-topk"))
        bounds = np.linspace(0, n_rows, threads + 1).astype(int)
        list(_pool[2].map(run, bounds[:-1], bounds[1:]))
    if has_nan.any():  # NaN scores keep the sorting path's behaviour (torch.topk ranks NaN first)
        redo = np.flatnonzero(has_nan)
        items[redo], values[redo] = _sorted_top_k(scores[redo], k)
    return items, values


def _sorted_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """top_k_items without numba: the k best by torch.topk or argpartition, then ties at the cut fixed."""
    idx, values = _largest(scores, k)
    order = np.lexsort((idx, -values), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    threshold = values[:, -1:]
    tied_at_cut = np.count_nonzero(scores == threshold, axis=1) > np.count_nonzero(values == threshold, axis=1)
    rows = np.flatnonzero(tied_at_cut & (threshold[:, 0] > -np.inf))
    if len(rows):
        _prefer_lower_index_at_cut(scores, idx, values, rows, k)
    return idx, values


def _prefer_lower_index_at_cut(scores, idx, values, rows, k) -> None:
    """In `rows`, refill the slots that tie with the k-th score with the lowest-indexed tied items."""
    n_items = scores.shape[1]
    # -index as a float key: exact while indices fit the mantissa
    positions = -np.arange(n_items, dtype=np.float32 if n_items <= 2**24 else np.float64)
    chunk = max(1, 2**22 // n_items)  # bounds the temporary key matrix to ~16-32 MB
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        threshold = values[part, -1:]
        n_above = (values[part] > threshold).sum(axis=1)
        key = np.where(scores[part] == threshold, positions, -np.inf)
        lowest, key_values = _largest(key, k)
        lowest = np.take_along_axis(lowest, np.argsort(-key_values, axis=1, kind="stable"), axis=1)
        slot = np.arange(k) - n_above[:, None]  # slot j of the list takes the (j - n_above)-th tied item
        refill = slot >= 0
        block = idx[part]
        block[refill] = np.take_along_axis(lowest, np.maximum(slot, 0), axis=1)[refill]
        idx[part] = block
