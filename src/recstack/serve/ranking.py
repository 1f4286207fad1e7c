"""One model's top-k for one user as the server answers it: the evaluation's ranking (`rank`) and its
cold-user rule (`serve_cold`), item filters, and a "because you liked X" reason per item.

A user is cold, and gets the run's fallback, when its history holds fewer than the run's
`cold_users.min_history` events or when the model says it cannot score it (`UserCoverage`). A
model that cannot score the user for another reason (it raises, or it gives every candidate the
same score: nothing to rank by) is answered by the fallback too, and the response says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from recstack.abilities import ListRecommender, Scorer, UserCoverage, implements
from recstack.data.interactions import Interactions
from recstack.evaluate.evaluator import rank, serve_cold
from recstack.serve import ann

log = logging.getLogger("recstack.serve")

REASON_HISTORY = 50  # the most recent history items a reason is looked for among


@dataclass
class Ranked:
    items: np.ndarray  # item indices, best first (no padding)
    scores: np.ndarray
    fallback: bool
    reason: str | None  # why the fallback answered
    retrieval: str = "exact"  # "ann": the model's HNSW index found the candidates (scores still exact)


def cold_rows(model: object, users: np.ndarray, history: Interactions, min_history: int) -> np.ndarray:
    """The users the run's cold-user rule hands to the fallback: too short a history, or a model that
    declares it cannot score them."""
    ends = history.indptr  # the users' own counts: user_counts() is O(all users) per request
    cold = (ends[users + 1] - ends[users]) < min_history
    if implements(model, UserCoverage):
        try:
            cold |= ~np.asarray(model.can_score(users, history), dtype=bool)
        except Exception:  # noqa: BLE001  a model saved before it could tell (no coverage state): history rule only
            pass
    return cold


def rank_filtered(scorer: object, users: np.ndarray, history: Interactions, k: int, *, mask_history: bool,
                  allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """`rank`, keeping only the `allowed` items (all when None); -1 pads."""
    if allowed is None:
        return rank(scorer, users, history, k, mask_history=mask_history)
    pool = np.flatnonzero(allowed)
    if implements(scorer, Scorer):
        return rank(scorer, users, history, min(k, history.n_items), mask_history=mask_history, item_pool=pool)
    # a list recommender ranks the whole catalogue: ask for enough to fill k after the filter
    depth = min(history.n_items, k + int((~allowed).sum()))
    items, scores = rank(scorer, users, history, depth, mask_history=mask_history)
    keep = (items >= 0) & allowed[np.maximum(items, 0)]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(np.where(keep, items, -1), order, axis=1),
            np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1))


def recommend_one(model: object, fallback: object, fallback_name: str, label: str, user: int,
                  history: Interactions, k: int, *, min_history: int, mask_history: bool,
                  allowed: np.ndarray | None, cold_reason: str) -> Ranked:
    """Top-k for one user by `model`, or by `fallback` under the cold-user rule (flagged, with why)."""
    users = np.array([user], dtype=np.int32)
    cold = cold_rows(model, users, history, min_history)
    index = ann.index_for(model)  # only dot-product models over a large catalogue have one
    retrieval = "exact"

    def rank_rows(scorer: object, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal retrieval
        if index is not None and scorer is model:
            try:
                found = index.top_k(users[rows], history, k, mask_history=mask_history, allowed=allowed)
            except Exception as exc:  # noqa: BLE001  a failing index must not fail the request: rank exactly
                log.warning("ann search failed for %s (%s: %s); ranking exactly", type(model).__name__,
                            type(exc).__name__, exc)
                found = None
            if found is not None:  # None: too much blocked or too few found, the exact ranking decides
                retrieval = "ann"
                return found
        return rank_filtered(scorer, users[rows], history, k, mask_history=mask_history, allowed=allowed)

    reason = None
    if cold[0]:
        reason = (cold_reason if history.indptr[user + 1] - history.indptr[user] < min_history
                  else f"{label} cannot score this user (it says so: UserCoverage)")
    else:
        try:
            items, scores = serve_cold(model, fallback, cold, rank_rows)
        except Exception as exc:  # a model that breaks on a user it never saw must not take the request down
            reason = f"{label} failed to score this user ({type(exc).__name__}: {exc})"
        else:
            finite = scores[0][items[0] >= 0]
            if len(finite) > 1 and np.all(finite == finite[0]) and not implements(model, ListRecommender):
                reason = f"{label} gives every candidate the same score for this user: nothing to rank by"
            else:
                return _trim(items, scores, False, None, retrieval)
    items, scores = rank_rows(fallback, np.arange(1))
    return _trim(items, scores, True, f"{reason}; served by the fallback {fallback_name}")


def _trim(items: np.ndarray, scores: np.ndarray, fallback: bool, reason: str | None,
          retrieval: str = "exact") -> Ranked:
    keep = items[0] >= 0
    return Ranked(items[0][keep].astype(np.int64), scores[0][keep].astype(np.float64), fallback, reason, retrieval)


def reasons(similarity: np.ndarray, history_items: np.ndarray) -> list[tuple[int, float] | None]:
    """For each candidate column of `similarity` (history items x candidates), the history item most
    like it and how much, or None when no history item shares a user with it."""
    if similarity.size == 0:
        return [None] * similarity.shape[1]
    best = similarity.argmax(axis=0)
    values = similarity[best, np.arange(similarity.shape[1])]
    return [(int(history_items[b]), float(v)) if v > 0 else None for b, v in zip(best, values)]
