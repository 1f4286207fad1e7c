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
    n_items = scores.shape[1]
    for r in range(lo, hi):
        row = scores[r]
        a = a_end = b = b_end = 0
        if users.shape[0]:
            if indptr_a.shape[0] > 1:
                a, a_end = indptr_a[users[r]], indptr_a[users[r] + 1]
            if indptr_b.shape[0] > 1:
                b, b_end = indptr_b[users[r]], indptr_b[users[r] + 1]
        values = out_values[r]
        items = out_items[r]
        for j in range(k):  # the first k items fill the heap, masked ones as -inf
            a = _skip_below(indices_a, a, a_end, j)
            b = _skip_below(indices_b, b, b_end, j)
            masked = (a < a_end and indices_a[a] == j) or (b < b_end and indices_b[b] == j)
            values[j] = -np.inf if masked else row[j]
            items[j] = j
            if values[j] != values[j]:
                has_nan[r] = True
        for pos in range(k // 2 - 1, -1, -1):
            _sift_down(values, items, pos, k)
        threshold = values[0]
        j = k
        while j < n_items:  # a masked item after the first k never enters (-inf ties lose to the root)
            a = _skip_below(indices_a, a, a_end, j)
            b = _skip_below(indices_b, b, b_end, j)
            stop = n_items
            if a < a_end:
                stop = min(stop, indices_a[a])
            if b < b_end:
                stop = min(stop, indices_b[b])
            for col in range(j, stop):
                score = row[col]
                if not score <= threshold:  # rare: beats the root (a tie keeps the root's lower index), or NaN
                    if score != score:
                        has_nan[r] = True
                        continue
                    values[0] = score
                    items[0] = col
                    _sift_down(values, items, 0, k)
                    threshold = values[0]
            j = stop + 1  # past the masked item
        for end in range(k - 1, 0, -1):  # heap sort: the worst goes last, so the row ends best first
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
