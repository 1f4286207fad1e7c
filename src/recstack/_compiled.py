"""Compiled kernels of the evaluation's hot loop (numba; imported only when installed, the `fast` extra).

`rows_top_k` is the kernel behind `recstack.topk.top_k_items`:
one pass per row keeps a k-entry min-heap of (score, item), worst at the root: an item enters only
when it beats the root. Scanning items in index order and ranking equal scores by the lower index
makes the result the exact "best first, ties to the lower index" order with no tie fix-up pass,
and on random scores only O(k log(n / k)) items ever enter, so the pass is one compare per item.
The history masks are applied inside the same pass, by scanning only the stretches between a user's
masked items (issue 19: the evaluator's extra work fused with the top-k instead of added to it).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _worse(value_a, item_a, value_b, item_b):
    """Whether (value_a, item_a) ranks below (value_b, item_b): lower score, or equal and higher index."""
    return value_a < value_b or (value_a == value_b and item_a > item_b)


@numba.njit(inline="always")
def _sift_down(values, items, pos, size):
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        if child + 1 < size and _worse(values[child + 1], items[child + 1], values[child], items[child]):
            child += 1
        if not _worse(values[child], items[child], values[pos], items[pos]):
            return
        values[pos], values[child] = values[child], values[pos]
        items[pos], items[child] = items[child], items[pos]
        pos = child


_CHUNK = 128  # cells checked at once, branch-free, before any is looked at one by one


@numba.njit(inline="always")
def _none_above(cells, threshold):
    """Whether no cell is above `threshold` (or NaN): a count over a slice from 0, which LLVM vectorises
    (indexing the row between two bounds instead was not vectorised: 0.45 against 0.15 ns per cell)."""
    above = 0
    for i in range(cells.shape[0]):
        above += not cells[i] <= threshold
    return above == 0


@numba.njit(inline="always")
def _skip_below(indices, pos, end, item):
    """The first position in indices[pos:end] (sorted) whose item is >= `item`."""
    while pos < end and indices[pos] < item:
        pos += 1
    return pos


@numba.njit(nogil=True, cache=True)
def rows_top_k(scores, k, users, indptr_a, indices_a, indptr_b, indices_b, lo, hi, out_items, out_values,
               has_nan):
    """Rows lo..hi of `scores`: the top k of row r, best first, with the items of row users[r] of the two
    CSR masks (sorted indices; a (1,) indptr means no mask) scored -inf. `scores` is only read: the scan
    runs over the stretches between masked items, so masking costs nothing per scored cell.

    has_nan[r] is set when row r holds a NaN; its result is then not defined (the caller redoes it).
    """
    at_a = np.empty(hi, dtype=np.int64)
    at_b = np.empty(hi, dtype=np.int64)
    heaps_start(users, indptr_a, indptr_b, lo, hi, at_a, at_b)
    heaps_scan(scores, 0, 0, k, users, indptr_a, indices_a, indptr_b, indices_b, lo, hi, out_items, out_values,
               at_a, at_b, has_nan)
    heaps_finish(lo, hi, out_items, out_values)


# The heap pass in parts, for a score matrix that arrives in column tiles (`recstack.evaluate.fused`:
# the product of one tile of items is ranked while it is in cache): `heaps_start` sets each row's place
# in its mask rows, `heaps_scan` continues the rows' heaps over the next tile, left to right, and
# `heaps_finish` sorts them. Tiles in item order keep the exact "ties to the lower index" order.

@numba.njit(nogil=True, cache=True)
def heaps_start(users, indptr_a, indptr_b, lo, hi, at_a, at_b):
    """at_a[r], at_b[r]: where row users[r] of each mask starts (0 without masks)."""
    for r in range(lo, hi):
        at_a[r] = at_b[r] = 0
        if users.shape[0]:
            if indptr_a.shape[0] > 1:
                at_a[r] = indptr_a[users[r]]
            if indptr_b.shape[0] > 1:
                at_b[r] = indptr_b[users[r]]


@numba.njit(nogil=True, cache=True)
def heaps_scan(tile, col0, row0, k, users, indptr_a, indices_a, indptr_b, indices_b, lo, hi, out_items,
               out_values, at_a, at_b, has_nan):
    """Continue the k-heaps of rows lo..hi over items col0 .. col0 + tile.shape[1]; row r's scores are
    tile[r - row0]. The tile starting at item 0 must hold at least k items: they fill the heaps."""
    width = tile.shape[1]
    end_col = col0 + width
    for r in range(lo, hi):
        row = tile[r - row0]
        a = at_a[r]
        b = at_b[r]
        a_end = b_end = 0
        if users.shape[0]:
            if indptr_a.shape[0] > 1:
                a_end = indptr_a[users[r] + 1]
            if indptr_b.shape[0] > 1:
                b_end = indptr_b[users[r] + 1]
        values = out_values[r]
        items = out_items[r]
        j = col0
        if col0 == 0:  # the first k items fill the heap, masked ones as -inf
            for j in range(k):
                a = _skip_below(indices_a, a, a_end, j)
                b = _skip_below(indices_b, b, b_end, j)
                masked = (a < a_end and indices_a[a] == j) or (b < b_end and indices_b[b] == j)
                values[j] = -np.inf if masked else row[j]
                items[j] = j
                if values[j] != values[j]:
                    has_nan[r] = True
            for pos in range(k // 2 - 1, -1, -1):
                _sift_down(values, items, pos, k)
            j = k
        threshold = values[0]
        while j < end_col:  # a masked item after the first k never enters (-inf ties lose to the root)
            a = _skip_below(indices_a, a, a_end, j)
            b = _skip_below(indices_b, b, b_end, j)
            stop = end_col
            if a < a_end:
                stop = min(stop, indices_a[a])
            if b < b_end:
                stop = min(stop, indices_b[b])
            for chunk in range(j, stop, _CHUNK):
                chunk_end = min(chunk + _CHUNK, stop)
                if _none_above(row[chunk - col0:chunk_end - col0], threshold):
                    continue  # the common case once the heap is warm: no cell of the chunk enters
                for col in range(chunk, chunk_end):
                    score = row[col - col0]
                    if not score <= threshold:  # beats the root (a tie keeps the root's lower index), or NaN
                        if score != score:
                            has_nan[r] = True
                            continue
                        values[0] = score
                        items[0] = col
                        _sift_down(values, items, 0, k)
                        threshold = values[0]
            j = stop + 1  # past the masked item
        at_a[r] = a
        at_b[r] = b


@numba.njit(nogil=True, cache=True)
def heaps_finish(lo, hi, out_items, out_values):
    """Heap sort rows lo..hi: the worst goes last, so each row ends best first."""
    k = out_items.shape[1]
    for r in range(lo, hi):
        values = out_values[r]
        items = out_items[r]
        for end in range(k - 1, 0, -1):
            values[0], values[end] = values[end], values[0]
            items[0], items[end] = items[end], items[0]
            _sift_down(values, items, 0, end)


@numba.njit(nogil=True, cache=True)
def rescore_top_k(queries, vectors, bias, candidates, keys, lo, hi, out_items, out_values):
    """Rows lo..hi: the candidates chosen from bfloat16 scores (keys[r, j] -inf where masked) scored
    again as <queries[r], vectors[item]> (+ bias[item]; a bias of length 0 is none), summed in float64,
    and the best out_items.shape[1] of them kept, best first, ties to the lower index."""
    k = out_items.shape[1]
    width = candidates.shape[1]
    exact = np.empty(width, dtype=np.float32)
    for r in range(lo, hi):
        for j in range(width):
            item = candidates[r, j]
            if keys[r, j] == -np.inf:
                exact[j] = -np.inf
                continue
            total = 0.0
            for t in range(queries.shape[1]):
                total += np.float64(queries[r, t]) * np.float64(vectors[item, t])
            if bias.shape[0]:
                total += bias[item]
            exact[j] = total
        values = out_values[r]
        items = out_items[r]
        for j in range(k):
            values[j] = exact[j]
            items[j] = candidates[r, j]
        for pos in range(k // 2 - 1, -1, -1):
            _sift_down(values, items, pos, k)
        for j in range(k, width):  # candidates come in no item order: compare with the index tie rule
            if _worse(values[0], items[0], exact[j], candidates[r, j]):
                values[0] = exact[j]
                items[0] = candidates[r, j]
                _sift_down(values, items, 0, k)
        for end in range(k - 1, 0, -1):
            values[0], values[end] = values[end], values[0]
            items[0], items[end] = items[end], items[0]
            _sift_down(values, items, 0, end)


@numba.njit(nogil=True, cache=True)
def lookup_gains(items, users, indptr, indices, data, out):
    """out[r, j] = truth[users[r], items[r, j]] (0 where absent or items < 0), by binary search in the
    user's sorted truth row: the evaluator's hit look-up in one compiled pass."""
    for r in range(items.shape[0]):
        lo = indptr[users[r]]
        hi = indptr[users[r] + 1]
        for j in range(items.shape[1]):
            item = items[r, j]
            out[r, j] = 0.0
            if item < 0:
                continue
            a, b = lo, hi
            while a < b:
                mid = (a + b) >> 1
                if indices[mid] < item:
                    a = mid + 1
                else:
                    b = mid
            if a < hi and indices[a] == item:
                out[r, j] = data[a]
