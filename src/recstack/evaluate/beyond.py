"""Beyond-accuracy measures over top-k lists, as pure numpy functions.

Every function takes `lists`: an int array (n_lists, k) of item indices, best first, where -1 pads
the end of a list that has fewer than k items (a `Rankings` is accepted too and means its `items`).
Row b of every per-user input (history CSR, held-out CSR, reference lists) belongs to the same user
as row b of `lists`; slice with the users of the run (`matrix[rankings.users]`) before calling.

Two kinds of result:
- per run (a float): catalogue coverage, Gini index and Shannon entropy of exposure;
- per list (a float64 array, one value per row; NaN where the measure is undefined for that list):
  novelty, intra-list diversity, unexpectedness, serendipity, ARP, APLT, ACLT, miscalibration.
  The per-run figure is the mean over lists where it is defined: `np.nanmean(values)`.

Definitions, ranges, edge cases and references: docs/beyond_accuracy.md.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from recstack.errors import RecstackError
from recstack.evaluate.rankings import Rankings

__all__ = [
    "aclt",
    "aplt",
    "arp",
    "catalogue_coverage",
    "check_lists",
    "exposure_entropy",
    "exposure_gini",
    "gini_index",
    "intra_list_diversity",
    "item_exposure",
    "long_tail_mask",
    "miscalibration",
    "novelty",
    "serendipity",
    "shannon_entropy",
    "unexpectedness",
]


# ---------------------------------------------------------------------------------------------
# input checks and shared primitives
# ---------------------------------------------------------------------------------------------

def check_lists(lists: np.ndarray | Rankings, n_items: int | None = None) -> np.ndarray:
    """Validate top-k lists and return them as an int64 (n_lists, k) array.

    Rules: 2-D integer array; entries are item indices in [0, n_items) or -1; -1 only pads the end of
    a list; no item twice in one list. Violations raise RecstackError naming the fix.
    """
    if isinstance(lists, Rankings):
        lists = lists.items
    arr = np.asarray(lists)
    if arr.ndim != 2:
        raise RecstackError(f"lists must be a 2-D array (n_users, k) of item indices, got shape {arr.shape}; "
                            "wrap a single list as lists[None, :]")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise RecstackError(f"lists must hold integer item indices (-1 for padding), got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size == 0:
        return arr.reshape(arr.shape)
    if arr.min() < -1:
        raise RecstackError("lists may hold item indices >= 0 and -1 for padding only; "
                            f"found {int(arr.min())}")
    if n_items is not None:
        if n_items < 1:
            raise RecstackError(f"n_items must be >= 1, got {n_items}")
        if arr.max() >= n_items:
            raise RecstackError(f"lists hold item index {int(arr.max())} but n_items={n_items}; "
                                "pass the catalogue size of the vocabulary the lists were made with")
    valid = arr >= 0
    if arr.shape[1] > 1 and np.any(~valid[:, :-1] & valid[:, 1:]):
        raise RecstackError("-1 may only pad the end of a list (an item follows a -1 somewhere); "
                            "move padding to the end of each row")
    ordered = np.sort(arr, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        row = int(np.nonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))[0][0])
        raise RecstackError(f"list {row} recommends the same item twice; a top-k list holds distinct items")
    return arr


def _popularity(popularity: np.ndarray, n_items: int | None = None) -> np.ndarray:
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.ndim != 1:
        raise RecstackError(f"popularity must be a 1-D array with one count per item, got shape {pop.shape}")
    if n_items is not None and len(pop) != n_items:
        raise RecstackError(f"popularity has {len(pop)} entries but the catalogue has {n_items} items")
    if np.any(pop < 0) or not np.all(np.isfinite(pop)):
        raise RecstackError("popularity counts must be finite and >= 0 (train interactions per item)")
    return pop


def item_exposure(lists: np.ndarray | Rankings, n_items: int,
                  rank_weights: np.ndarray | None = None) -> np.ndarray:
    """Exposure of every item over all lists, float64 (n_items,).

    Without `rank_weights` an item's exposure is the number of lists it appears in; with them, the
    sum of `rank_weights[r]` over the 0-based ranks r it holds (e.g. 1/log2(r + 2)).
    """
    arr = check_lists(lists, n_items)
    valid = arr >= 0
    if rank_weights is None:
        return np.bincount(arr[valid], minlength=n_items).astype(np.float64)
    w = np.asarray(rank_weights, dtype=np.float64)
    if w.shape != (arr.shape[1],):
        raise RecstackError(f"rank_weights needs one weight per list position ({arr.shape[1]}), got {w.shape}")
    weights = np.broadcast_to(w, arr.shape)[valid]
    return np.bincount(arr[valid], weights=weights, minlength=n_items)


def gini_index(values: np.ndarray) -> float:
    """Gini index of a non-negative vector: sum_j (2j - n - 1) x_(j) / (n sum x), x ascending, j 1-based.

    Equal to the mean absolute difference over all ordered pairs divided by twice the mean.
    0 for equal values, (n - 1)/n when one entry holds everything; NaN when all values are 0.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    total = x.sum()
    if n == 0 or total <= 0:
        return float("nan")
    j = np.arange(1, n + 1)
    return float(((2 * j - n - 1) * x).sum() / (n * total))


def shannon_entropy(values: np.ndarray, base: float | None = None) -> float:
    """Shannon entropy of the distribution proportional to `values` (0 log 0 = 0); nats by default."""
    x = np.asarray(values, dtype=np.float64)
    total = x.sum()
    if total <= 0:
        return float("nan")
    p = x[x > 0] / total
    h = float(-(p * np.log(p)).sum())
    return h / np.log(base) if base is not None else h


# ---------------------------------------------------------------------------------------------
# per-run measures over the exposure distribution
# ---------------------------------------------------------------------------------------------

def catalogue_coverage(lists: np.ndarray | Rankings, n_items: int) -> float:
    """Share of the catalogue recommended at least once: |union of lists| / n_items, in [0, 1]."""
    counts = item_exposure(lists, n_items)
    return float(np.count_nonzero(counts)) / n_items


def exposure_gini(lists: np.ndarray | Rankings, n_items: int) -> float:
    """Gini index of how often each of the n_items items is recommended (unrecommended items count 0).

    0 = every item recommended equally often, (n - 1)/n = one item takes every slot; lower is more
    even. NaN when the lists hold no item.
    """
    return gini_index(item_exposure(lists, n_items))


def exposure_entropy(lists: np.ndarray | Rankings, n_items: int, normalised: bool = False) -> float:
    """Shannon entropy (nats) of the share of recommendation slots each item receives.

    In [0, ln n_items]; `normalised=True` divides by ln n_items to give [0, 1]. Higher is more even.
    NaN when the lists hold no item (and, normalised, when n_items == 1).
    """
    h = shannon_entropy(item_exposure(lists, n_items))
    if normalised:
        return h / np.log(n_items) if n_items > 1 else float("nan")
    return h


# ---------------------------------------------------------------------------------------------
# per-list measures
# ---------------------------------------------------------------------------------------------

def _row_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    n = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    out = np.full(len(n), np.nan)
    np.divide(total, n, out=out, where=n > 0)
    return out


def novelty(lists: np.ndarray | Rankings, popularity: np.ndarray, n_users: int) -> np.ndarray:
    """Mean self-information of a list's items (Zhou et al., PNAS 2010), in bits.

    novelty(L) = mean_{i in L} log2(n_users / pop_i), pop_i = number of train users who interacted
    with i (`train.matrix().sum(axis=0)`). Items never seen in train are given pop_i = 1 (the most
    informative finite value) instead of an infinite one. Range [0, log2 n_users]; NaN for empty lists.
    """
    pop = _popularity(popularity)
    arr = check_lists(lists, len(pop))
    if n_users < 1:
        raise RecstackError(f"n_users must be >= 1, got {n_users}")
    if np.any(pop > n_users):
        raise RecstackError(f"popularity exceeds n_users={n_users} for some item; novelty needs the number of "
                            "distinct train users per item (column sums of the binary matrix)")
    info = np.log2(n_users / np.maximum(pop, 1.0))
    valid = arr >= 0
    return _row_mean(info[np.where(valid, arr, 0)], valid)


Metric = Literal["cosine", "jaccard"]


def _pair_similarity(a: np.ndarray | sp.spmatrix, b: np.ndarray | sp.spmatrix, metric: Metric,
                     norm_a: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
    if sp.issparse(a):
        dot = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    else:
        dot = np.einsum("ij,ij->i", a, b)
    if metric == "cosine":
        denom = norm_a * norm_b
    else:  # jaccard on binary features: |A & B| / |A | B|
        denom = norm_a + norm_b - dot
    out = np.zeros_like(dot, dtype=np.float64)
    np.divide(dot, denom, out=out, where=denom > 0)
    return out


def intra_list_diversity(lists: np.ndarray | Rankings, features: np.ndarray | sp.spmatrix,
                         metric: Metric = "cosine") -> np.ndarray:
    """Mean pairwise distance between the items of each list (Ziegler et al. 2005; Vargas & Castells 2011).

    ILD(L) = 2 / (|L| (|L| - 1)) * sum_{i < j in L} (1 - sim(i, j)). `features` is (n_items, d): item
    features (e.g. a genre one-hot, dense or sparse) or any item embedding. `metric`: "cosine" (any
    features) or "jaccard" (binary features). An item whose feature row is all zeros has similarity 0
    to every item. Cosine: in [0, 2] ([0, 1] for non-negative features); Jaccard: [0, 1]. NaN for
    lists with fewer than two items.
    """
    if metric not in ("cosine", "jaccard"):
        raise RecstackError(f"metric must be 'cosine' or 'jaccard', got {metric!r}")
    if sp.issparse(features):
        feats = sp.csr_matrix(features, dtype=np.float64)
    else:
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2:
            raise RecstackError(f"features must be a 2-D (n_items, d) array, got shape {feats.shape}")
    arr = check_lists(lists, feats.shape[0])
    if metric == "jaccard":
        data = feats.data if sp.issparse(feats) else feats
        if np.any((data != 0) & (data != 1)):
            raise RecstackError("jaccard distance needs binary (0/1) features; use metric='cosine' otherwise")
        size = np.asarray(feats.sum(axis=1)).ravel()
    else:
        sq = feats.multiply(feats).sum(axis=1) if sp.issparse(feats) else (feats * feats).sum(axis=1)
        size = np.sqrt(np.asarray(sq).ravel())
    n_lists, k = arr.shape
    valid = arr >= 0
    safe = np.where(valid, arr, 0)
    total = np.zeros(n_lists)
    # one pass per pair of positions keeps memory at O(n_lists * d) whatever k and d are
    for a in range(k - 1):
        fa = feats[safe[:, a]]
        for b in range(a + 1, k):
            both = valid[:, a] & valid[:, b]
            if not both.any():
                continue
            sim = _pair_similarity(fa, feats[safe[:, b]], metric, size[safe[:, a]], size[safe[:, b]])
            total += np.where(both, 1.0 - sim, 0.0)
    n = valid.sum(axis=1)
    pairs = n * (n - 1) / 2
    out = np.full(n_lists, np.nan)
    np.divide(total, pairs, out=out, where=pairs > 0)
    return out


def _reference_keys(reference: np.ndarray, n_lists: int, n_items: int) -> np.ndarray:
    ref = np.asarray(reference)
    if ref.ndim == 1:
        ref = np.broadcast_to(ref, (n_lists, len(ref)))
    if ref.ndim != 2 or ref.shape[0] != n_lists:
        raise RecstackError(f"reference must be one list (k',) shared by all users or one per user "
                            f"({n_lists}, k'), got shape {np.shape(reference)}")
    if ref.size and not np.issubdtype(ref.dtype, np.integer):
        raise RecstackError(f"reference must hold integer item indices, got dtype {ref.dtype}")
    ref = ref.astype(np.int64)
    if ref.size and (ref.min() < -1 or ref.max() >= n_items):
        raise RecstackError(f"reference holds indices outside [-1, {n_items}); it must use the same item indices")
    rows = np.broadcast_to(np.arange(n_lists)[:, None], ref.shape)
    keep = ref >= 0
    return rows[keep] * n_items + ref[keep]


def _unexpected_mask(arr: np.ndarray, reference: np.ndarray, n_items: int) -> np.ndarray:
    keys = np.arange(arr.shape[0])[:, None] * n_items + arr
    return (arr >= 0) & ~np.isin(keys, _reference_keys(reference, arr.shape[0], n_items))


def unexpectedness(lists: np.ndarray | Rankings, reference: np.ndarray, n_items: int) -> np.ndarray:
    """Share of a list's items that a primitive recommender would not show (Murakami et al. 2008).

    |L \\ PM| / |L| with PM the reference list of the same user (e.g. the most-popular list after
    masking history), or one shared list (k',). In [0, 1]; NaN for empty lists.
    """
    arr = check_lists(lists, n_items)
    valid = arr >= 0
    return _row_mean(_unexpected_mask(arr, reference, n_items).astype(np.float64), valid)


def _relevant_mask(arr: np.ndarray, relevant: sp.spmatrix) -> np.ndarray:
    rel = sp.csr_matrix(relevant, copy=True)
    if rel.shape[0] != arr.shape[0]:
        raise RecstackError(f"relevant has {rel.shape[0]} rows but there are {arr.shape[0]} lists; "
                            "pass the held-out matrix sliced to the same users (matrix[users])")
    n_items = rel.shape[1]
    rel.eliminate_zeros()
    rel.sort_indices()
    rows = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr))
    rel_keys = rows * n_items + rel.indices
    keys = np.arange(arr.shape[0])[:, None] * n_items + arr
    return (arr >= 0) & np.isin(keys, rel_keys)


def serendipity(lists: np.ndarray | Rankings, reference: np.ndarray, relevant: sp.spmatrix,
                denominator: Literal["list", "unexpected"] = "list") -> np.ndarray:
    """Share of a list's items that are both unexpected (not in the reference list) and relevant.

    Ge et al. (RecSys 2010): UNEXP = L \\ PM, SRDP = |UNEXP & USEFUL| / N. `relevant` is the held-out
    CSR (n_lists, n_items) whose row b belongs to list b. `denominator="list"` (default) divides by
    the number of items in the list; "unexpected" divides by |UNEXP| (NaN when nothing is
    unexpected). In [0, 1]; NaN for empty lists.
    """
    if denominator not in ("list", "unexpected"):
        raise RecstackError(f"denominator must be 'list' or 'unexpected', got {denominator!r}")
    if not sp.issparse(relevant):
        raise RecstackError("relevant must be a scipy sparse (n_lists, n_items) matrix of held-out items")
    n_items = relevant.shape[1]
    arr = check_lists(lists, n_items)
    unexp = _unexpected_mask(arr, reference, n_items)
    hits = (unexp & _relevant_mask(arr, relevant)).sum(axis=1).astype(np.float64)
    denom = (arr >= 0).sum(axis=1) if denominator == "list" else unexp.sum(axis=1)
    out = np.full(arr.shape[0], np.nan)
    np.divide(hits, denom, out=out, where=denom > 0)
    return out


def arp(lists: np.ndarray | Rankings, popularity: np.ndarray) -> np.ndarray:
    """Average recommendation popularity (Abdollahpouri et al. 2019): mean train popularity of a list's items.

    ARP(L) = sum_{i in L} pop_i / |L|, in [0, max pop]; NaN for empty lists.
    """
    pop = _popularity(popularity)
    arr = check_lists(lists, len(pop))
    valid = arr >= 0
    return _row_mean(pop[np.where(valid, arr, 0)], valid)


def long_tail_mask(popularity: np.ndarray, head_share: float = 0.8) -> np.ndarray:
    """Boolean (n_items,) mask of long-tail items.

    The short head is the smallest set of most popular items that together hold at least
    `head_share` of all train interactions (ties in popularity go to the lower index, as in the
    evaluator); every other item, including items never seen in train, is long tail.
    """
    pop = _popularity(popularity)
    if not 0.0 < head_share <= 1.0:
        raise RecstackError(f"head_share must be in (0, 1], got {head_share}")
    total = pop.sum()
    tail = np.ones(len(pop), dtype=bool)
    if total <= 0:
        return tail
    order = np.argsort(-pop, kind="stable")
    cumulative = np.cumsum(pop[order])
    # a tiny tolerance so that a share reached exactly (e.g. 8/10) is not missed by rounding
    n_head = int(np.searchsorted(cumulative, head_share * total * (1 - 1e-12), side="left")) + 1
    tail[order[:min(n_head, len(pop))]] = False
    return tail


def _tail(long_tail: np.ndarray) -> np.ndarray:
    mask = np.asarray(long_tail)
    if mask.ndim != 1 or mask.dtype != bool:
        raise RecstackError("long_tail must be a boolean (n_items,) mask; build it with long_tail_mask(popularity)")
    return mask


def aplt(lists: np.ndarray | Rankings, long_tail: np.ndarray) -> np.ndarray:
    """Average percentage of long-tail items (Abdollahpouri et al. 2017): |L & tail| / |L| per list, in [0, 1]."""
    mask = _tail(long_tail)
    arr = check_lists(lists, len(mask))
    valid = arr >= 0
    return _row_mean(mask[np.where(valid, arr, 0)].astype(np.float64), valid)


def aclt(lists: np.ndarray | Rankings, long_tail: np.ndarray) -> np.ndarray:
    """Average coverage of long-tail items (Abdollahpouri et al. 2019): |L & tail| per list, in [0, k]."""
    mask = _tail(long_tail)
    arr = check_lists(lists, len(mask))
    valid = arr >= 0
    return (mask[np.where(valid, arr, 0)] & valid).sum(axis=1).astype(np.float64)


def _dense(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def miscalibration(lists: np.ndarray | Rankings, history: sp.spmatrix, item_genres: np.ndarray | sp.spmatrix,
                   alpha: float = 0.01, rank_weights: np.ndarray | None = None) -> np.ndarray:
    """Steck's (RecSys 2018) miscalibration C_KL(p, q) per list, in nats.

    p(g|i) = the item's genre row normalised to sum 1; p(g|u) = sum_{i in H_u} w_ui p(g|i) / sum w_ui
    over the user's history H_u (`history` CSR (n_lists, n_items), row b for list b; its stored
    values are the weights w_ui, so a binary matrix gives Steck's uniform weights);
    q(g|u) = sum_{i in L} w_r(i) p(g|i) / sum w_r(i) with `rank_weights` (uniform by default);
    C_KL = sum_g p(g|u) log(p(g|u) / q~(g|u)), q~ = (1 - alpha) q + alpha p.
    Items without any genre are left out of both sums. In [0, -ln alpha] (0 = perfectly calibrated);
    a list none of whose items has a genre scores -ln alpha; NaN for users whose history has no genre.
    """
    if not 0.0 <= alpha <= 1.0:
        raise RecstackError(f"alpha must be in [0, 1], got {alpha}")
    genres = sp.csr_matrix(item_genres, dtype=np.float64) if sp.issparse(item_genres) else \
        np.asarray(item_genres, dtype=np.float64)
    if genres.ndim != 2:
        raise RecstackError(f"item_genres must be (n_items, n_genres), got shape {genres.shape}")
    if (genres.data if sp.issparse(genres) else genres).min(initial=0.0) < 0:
        raise RecstackError("item_genres must be non-negative")
    n_items = genres.shape[0]
    arr = check_lists(lists, n_items)
    hist = sp.csr_matrix(history, dtype=np.float64)
    if hist.shape != (arr.shape[0], n_items):
        raise RecstackError(f"history must be ({arr.shape[0]}, {n_items}) (one row per list, one column per item), "
                            f"got {hist.shape}; slice the history matrix to the users of the lists")
    row_sum = np.asarray(genres.sum(axis=1)).ravel()
    scale = np.divide(1.0, row_sum, out=np.zeros_like(row_sum), where=row_sum > 0)
    p_item = sp.diags(scale) @ genres if sp.issparse(genres) else genres * scale[:, None]
    has_genre = (row_sum > 0).astype(np.float64)

    p_user = _dense(hist @ p_item)
    p_mass = hist @ has_genre
    p_user = np.divide(p_user, p_mass[:, None], out=np.zeros_like(p_user), where=p_mass[:, None] > 0)

    n_lists, k = arr.shape
    w = np.ones(k) if rank_weights is None else np.asarray(rank_weights, dtype=np.float64)
    if w.shape != (k,) or np.any(w < 0):
        raise RecstackError(f"rank_weights needs {k} non-negative weights, one per list position")
    valid = arr >= 0
    rows = np.broadcast_to(np.arange(n_lists)[:, None], arr.shape)[valid]
    weights = np.broadcast_to(w, arr.shape)[valid] * has_genre[arr[valid]]
    slot = sp.csr_matrix((weights, (rows, arr[valid])), shape=(n_lists, n_items))
    q_user = _dense(slot @ p_item)
    q_mass = np.asarray(slot.sum(axis=1)).ravel()
    q_user = np.divide(q_user, q_mass[:, None], out=np.zeros_like(q_user), where=q_mass[:, None] > 0)

    q_smooth = (1.0 - alpha) * q_user + alpha * p_user
    positive = p_user > 0
    with np.errstate(divide="ignore"):
        terms = np.where(positive, p_user * (np.log(np.where(positive, p_user, 1.0))
                                            - np.log(np.where(positive, q_smooth, 1.0))), 0.0)
    out = terms.sum(axis=1)
    out[p_mass <= 0] = np.nan
    return out
