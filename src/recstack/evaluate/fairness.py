"""Exposure-based individual item fairness over a run's top-k lists, original and corrected forms.

The measures are the ones gathered and analysed by Rampisela, Maistro, Ruotsalo and Lioma,
"Evaluation Measures of Individual Item Fairness for Recommender Systems: A Critical Study",
ACM Transactions on Recommender Systems 3(2), 2024 (doi:10.1145/3631943, arXiv:2311.01013).
They look only at how exposure is spread over the n catalogue items, never at relevance.

Notation: m lists (users), n items, k slots a list, S = total filled slots (= k*m for full lists),
c_i = number of lists that hold item i. The paper's corrected forms rescale a measure so that the
unfairest lists (the same k items for every user) score 0 and the fairest achievable lists
(every item shown floor(S/n) or floor(S/n) + 1 times: S mod n items get the extra slot) score 1
for "higher is fairer" measures; Gini and Gini-w are rescaled the other way (0 fairest, 1 unfairest).
With -1 padding the unfairest lists become "every user gets the same items in the same order,
truncated to their own length", which reduces to the paper's case when every list is full.

Every function returns a float; NaN where the measure is undefined (no exposure at all, fewer than
two exposed items for VoCD, or a correction whose fairest and unfairest values coincide, e.g. k = n).
Definitions, ranges, edge cases and the limitations the paper leaves open: docs/beyond_accuracy.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recstack.errors import RecstackError
from recstack.evaluate.beyond import check_lists, gini_index, shannon_entropy
from recstack.evaluate.rankings import Rankings

__all__ = [
    "LOWER_IS_FAIRER",
    "ai_d",
    "entropy",
    "fsat",
    "gini",
    "gini_w",
    "ii_d",
    "item_fairness",
    "jain_index",
    "qualification_fairness",
    "vocd",
]

#: measure labels (keys of `item_fairness`) for which a smaller value means a fairer run
LOWER_IS_FAIRER = frozenset({"Gini", "Gini_corrected", "Gini-w", "Gini-w_corrected", "VoCD", "II-D", "AI-D"})

_NAN = float("nan")


@dataclass(frozen=True)
class _Exposure:
    lists: np.ndarray      # (m, k) validated, -1 padded at the end
    n_items: int
    counts: np.ndarray     # (n,) c_i
    lengths: np.ndarray    # (m,) filled slots per list
    slots: int             # S

    @staticmethod
    def of(lists: np.ndarray | Rankings | _Exposure, n_items: int) -> _Exposure:
        if isinstance(lists, _Exposure):
            return lists
        arr = check_lists(lists, n_items)
        valid = arr >= 0
        counts = np.bincount(arr[valid], minlength=n_items).astype(np.float64)
        return _Exposure(arr, n_items, counts, valid.sum(axis=1), int(valid.sum()))

    def best_counts(self) -> np.ndarray:
        """The most even exposure S slots allow: S mod n items at floor(S/n) + 1, the rest at floor(S/n)."""
        f, r = divmod(self.slots, self.n_items)
        return np.concatenate([np.full(r, f + 1.0), np.full(self.n_items - r, float(f))])

    def worst_counts(self) -> np.ndarray:
        """Everyone gets the same items: the item at position j is shown to every list with >= j items."""
        k_max = int(self.lengths.max(initial=0))
        per_position = (self.lengths[:, None] > np.arange(k_max)[None, :]).sum(axis=0)
        out = np.zeros(self.n_items)
        out[:k_max] = per_position
        return out


def _rescale(value: float, zero_at: float, one_at: float) -> float:
    """Map zero_at -> 0 and one_at -> 1; NaN when they coincide (the measure cannot vary)."""
    if not np.isfinite(value) or np.isclose(zero_at, one_at, rtol=0.0, atol=1e-12):
        return _NAN
    out = (value - zero_at) / (one_at - zero_at)
    # float noise at the ends of the range should read as the end itself
    if abs(out) < 1e-12:
        return 0.0
    if abs(out - 1.0) < 1e-12:
        return 1.0
    return float(out)


# ---------------------------------------------------------------------------------------------
# count-based measures
# ---------------------------------------------------------------------------------------------

def _jain(counts: np.ndarray) -> float:
    sq = float((counts ** 2).sum())
    return counts.sum() ** 2 / (len(counts) * sq) if sq > 0 else _NAN


def jain_index(lists: np.ndarray | Rankings, n_items: int, corrected: bool = False) -> float:
    """Jain's index (Jain, Chiu and Hawe 1984) of item exposure; higher is fairer.

    Original: (sum_i c_i)^2 / (n sum_i c_i^2), in [1/n, 1]; reachable by top-k lists: [k/n, J_best],
    J_best = S^2 / (n (n f^2 + r (2f + 1))), f = floor(S/n), r = S mod n (J_best < 1 when r > 0).
    Corrected: (J - k/n) / (J_best - k/n), in [0, 1].
    """
    e = _Exposure.of(lists, n_items)
    if e.slots == 0:
        return _NAN
    value = _jain(e.counts)
    return _rescale(value, _jain(e.worst_counts()), _jain(e.best_counts())) if corrected else value


def _qf(counts: np.ndarray) -> float:
    return float(np.count_nonzero(counts)) / len(counts)


def qualification_fairness(lists: np.ndarray | Rankings, n_items: int, corrected: bool = False) -> float:
    """Qualification Fairness (QF): share of items recommended at least once; higher is fairer.

    Original: |{i : c_i > 0}| / n, in [0, 1]; reachable: [k/n, min(n, S)/n].
    Corrected: (|{i : c_i > 0}| - k) / (min(n, S) - k), in [0, 1].
    """
    e = _Exposure.of(lists, n_items)
    if e.slots == 0:
        return _NAN
    value = _qf(e.counts)
    return _rescale(value, _qf(e.worst_counts()), _qf(e.best_counts())) if corrected else value


def _entropy(counts: np.ndarray) -> float:
    n = len(counts)
    return shannon_entropy(counts) / np.log(n) if n > 1 else _NAN


def entropy(lists: np.ndarray | Rankings, n_items: int, corrected: bool = False) -> float:
    """Shannon entropy of the exposure shares p_i = c_i / S, in base n (0 log 0 = 0); higher is fairer.

    Original: -sum_i p_i log_n p_i, in [0, 1]; reachable: [log_n k, H_best], H_best = log_n S when
    S <= n, else the entropy of the most even counts. Corrected: (H - log_n k) / (H_best - log_n k).
    """
    e = _Exposure.of(lists, n_items)
    if e.slots == 0:
        return _NAN
    value = _entropy(e.counts)
    return _rescale(value, _entropy(e.worst_counts()), _entropy(e.best_counts())) if corrected else value


def gini(lists: np.ndarray | Rankings, n_items: int, corrected: bool = False) -> float:
    """Gini index of item exposure over all n items (unexposed items count 0); lower is fairer.

    Original: sum_j (2j - n - 1) c_(j) / (n S), c ascending, in [0, (n-1)/n]; reachable:
    [G_best, 1 - k/n], G_best = r (n - r) / (n S), r = S mod n. Corrected: (G - G_best) / (1 - k/n - G_best).
    """
    e = _Exposure.of(lists, n_items)
    if e.slots == 0:
        return _NAN
    value = gini_index(e.counts)
    return _rescale(value, gini_index(e.best_counts()), gini_index(e.worst_counts())) if corrected else value


def _fsat(counts: np.ndarray, share: int) -> float:
    return float(np.count_nonzero(counts >= share)) / len(counts)


def fsat(lists: np.ndarray | Rankings, n_items: int, corrected: bool = False) -> float:
    """Fraction of satisfied items (FSat, after Patro et al.'s FairRec, WWW 2020); higher is fairer.

    An item is satisfied when c_i >= floor(S/n), its maximin share of exposure.
    Original: |{i : c_i >= floor(S/n)}| / n, in [0, 1]. When S < n the share is 0, every item is
    satisfied and FSat = 1 whatever the lists (a limitation no rescaling can fix: the corrected form
    is NaN then). Corrected: (FSat - k/n) / (1 - k/n), which maps the same-k-items-for-everyone lists
    to 0; it is not a lower bound: lists that pile exposure on fewer than k items can score below 0.
    """
    e = _Exposure.of(lists, n_items)
    if e.slots == 0:
        return _NAN
    share = e.slots // e.n_items
    value = _fsat(e.counts, share)
    if not corrected:
        return value
    return _rescale(value, _fsat(e.worst_counts(), share), _fsat(e.best_counts(), share))


# ---------------------------------------------------------------------------------------------
# rank-weighted Gini
# ---------------------------------------------------------------------------------------------

def _log_weights(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k) + 2.0)


def gini_w(lists: np.ndarray | Rankings, n_items: int, corrected: bool = False) -> float:
    """Rank-weighted Gini: the Gini index of e_i = sum over slots holding i of 1/log2(rank + 1); lower is fairer.

    Original: as `gini` with e_i in place of c_i. Corrected: (G_w - G_w,best) / (G_w,worst - G_w,best),
    where the worst is every user getting the same list in the same order and, when S <= n, the best
    is every slot holding a different item. When S > n the exact minimum is a combinatorial problem
    the paper does not solve in closed form; like the authors' code we use 0 as the lower end, so the
    corrected value stays in [0, 1] but the fairest achievable lists may score above 0.
    """
    e = _Exposure.of(lists, n_items)
    if e.slots == 0:
        return _NAN
    w = _log_weights(e.lists.shape[1])
    valid = e.lists >= 0
    exposure = np.bincount(e.lists[valid], weights=np.broadcast_to(w, e.lists.shape)[valid], minlength=n_items)
    value = gini_index(exposure)
    if not corrected:
        return value
    worst = np.zeros(n_items)
    per_position = valid.sum(axis=0) * w
    worst[:len(per_position)] = per_position
    if e.slots <= n_items:
        best = np.zeros(n_items)
        best[:e.slots] = np.broadcast_to(w, e.lists.shape)[valid]
        best_value = gini_index(best)
    else:
        best_value = 0.0
    return _rescale(value, best_value, gini_index(worst))


# ---------------------------------------------------------------------------------------------
# pairwise disparity
# ---------------------------------------------------------------------------------------------

def vocd(lists: np.ndarray | Rankings, n_items: int) -> float:
    """VoCD: mean over all pairs of exposed items of |c_i - c_j| / max(c_i, c_j); lower is fairer.

    In [0, 1). Follows the authors' released code: every pair of items counts as similar and only
    items recommended at least once take part (a pair of unexposed items would be 0/0). Never
    corrected (see the docs): the unfairest lists in the paper's sense (the same k items for everyone)
    score 0, as fair as it gets. NaN when fewer than two items are exposed.
    Computed in O(N log N) over the N exposed items from the sorted counts.
    """
    e = _Exposure.of(lists, n_items)
    x = np.sort(e.counts[e.counts > 0])
    n = len(x)
    if n < 2:
        return _NAN
    # sum_{i<j} (x_j - x_i) / x_j over ascending x = sum_j [(j - 1) - (x_1 + ... + x_{j-1}) / x_j]
    before = np.concatenate([[0.0], np.cumsum(x)[:-1]])
    total = float((np.arange(n) - before / x).sum())
    return total / (n * (n - 1) / 2)


# ---------------------------------------------------------------------------------------------
# expected-exposure disparities (Diaz et al., CIKM 2020)
# ---------------------------------------------------------------------------------------------

def _rbp(lists: np.ndarray | Rankings | _Exposure, n_items: int, gamma: float) -> tuple[_Exposure, np.ndarray, float]:
    if not 0.0 < gamma <= 1.0:
        raise RecstackError(f"gamma (RBP patience) must be in (0, 1], got {gamma}")
    e = _Exposure.of(lists, n_items)
    w = gamma ** np.arange(e.lists.shape[1], dtype=np.float64)
    return e, w, float(w.sum()) / n_items


def ii_d(lists: np.ndarray | Rankings, n_items: int, gamma: float = 0.8) -> float:
    """Individual-item disparity II-D = 1/(m n) sum_u sum_i (E_ui - E*)^2; lower is fairer.

    E_ui = gamma^(rank - 1) if item i is at that rank in u's list, else 0 (RBP browsing model with
    patience gamma); E* = sum_{r<=k} gamma^(r-1) / n, the uniform target exposure. For deterministic
    full top-k lists II-D always equals (1/n) sum_{r<=k} gamma^(2(r-1)) - E*^2 whichever items are
    chosen: it is meant for stochastic rankings and cannot rank deterministic ones (not corrected).
    """
    e, w, target = _rbp(lists, n_items, gamma)
    if e.slots == 0:
        return _NAN
    valid = e.lists >= 0
    shown = float(np.where(valid, (w - target) ** 2, 0.0).sum())
    unshown = float((n_items - e.lengths).sum()) * target ** 2
    return (shown + unshown) / (len(e.lengths) * n_items)


def ai_d(lists: np.ndarray | Rankings, n_items: int, gamma: float = 0.8) -> float:
    """All-users item disparity AI-D = 1/n sum_i (mean_u E_ui - E*)^2; lower is fairer.

    Same exposure model as `ii_d`. In [0, II-D]: the upper end is reached when every user gets the
    same list; 0 needs every item's mean exposure to equal E*, which a finite set of deterministic
    lists often cannot reach (no closed-form minimum, so not corrected).
    """
    e, w, target = _rbp(lists, n_items, gamma)
    if e.slots == 0:
        return _NAN
    valid = e.lists >= 0
    mean_exposure = np.bincount(e.lists[valid], weights=np.broadcast_to(w, e.lists.shape)[valid],
                                minlength=n_items) / len(e.lengths)
    return float(((mean_exposure - target) ** 2).mean())


# ---------------------------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------------------------

def item_fairness(lists: np.ndarray | Rankings, n_items: int, gamma: float = 0.8) -> dict[str, float]:
    """Every measure of this module for one run, keyed by label; `_corrected` marks the paper's corrections.

    See `LOWER_IS_FAIRER` for the direction of each label.
    """
    e = _Exposure.of(lists, n_items)
    out: dict[str, float] = {}
    for label, fn in (("Jain", jain_index), ("QF", qualification_fairness), ("Ent", entropy),
                      ("Gini", gini), ("Gini-w", gini_w), ("FSat", fsat)):
        out[label] = fn(e, n_items)
        out[f"{label}_corrected"] = fn(e, n_items, corrected=True)
    out["VoCD"] = vocd(e, n_items)
    out["II-D"] = ii_d(e, n_items, gamma)
    out["AI-D"] = ai_d(e, n_items, gamma)
    return out
