"""Sampled evaluation (only on request): rank the held-out items against a few sampled negatives.

Krichene & Rendle ("On Sampled Metrics for Item Recommendation", KDD 2020) show that metrics over
sampled candidates can disagree with full-ranking metrics, even about which model is best; this
module exists so that a run can show by how much, never to replace the full ranking.

Protocol: for each evaluated user u, `n_negatives` items are drawn once (the same draw for every
model) without replacement from the items u never interacted with in the whole split (history and
held-out part), uniformly or proportionally to train popularity. The candidates of u are its
held-out items plus those negatives (history items stay masked when masking is on). The model's
scores over the candidates are ranked with the evaluator's tie rule (equal scores: lower item index
first), and the pinned metrics are computed on that ranking. Because the candidates are a subset of
the full-ranking candidates and the order is the same, every held-out item sits at least as high as
in the full ranking, so sampled Recall/NDCG/Hit/MRR/MAP are never below their full values.
Every label carries the prefix `sampled_` (e.g. `sampled_NDCG@10`).
"""

from __future__ import annotations

from typing import Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sp

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.evaluate.accuracy import METRICS
from recstack.evaluate.evaluator import (DEFAULT_KS, DEFAULT_METRICS, INCLUDE, ColdUsers, EvalResult, Scorer, _hits,
                                         block_size_for, count_history, parse_metric_labels, serve_cold,
                                         top_k_items)
from recstack.evaluate.rankings import Rankings

PREFIX = "sampled_"
Strategy = Literal["uniform", "popularity"]


def sample_negatives(interacted: sp.csr_matrix, users: np.ndarray, n_negatives: int, *,
                     strategy: Strategy = "uniform", popularity: np.ndarray | None = None,
                     seed: int = 0) -> np.ndarray:
    """(len(users), n_negatives) item indices each user never interacted with; -1 pads when too few exist.

    `interacted` is the (n_users, n_items) matrix of everything known about each user. "uniform"
    draws every eligible item with the same probability; "popularity" draws without replacement
    with probability proportional to `popularity` (items of popularity 0 are never drawn), by the
    exponential-keys method of Efraimidis & Spirakis (2006).
    """
    if n_negatives < 1:
        raise RecstackError(f"n_negatives must be >= 1, got {n_negatives}")
    if strategy not in ("uniform", "popularity"):
        raise RecstackError(f"sampled strategy must be 'uniform' or 'popularity', got {strategy!r}")
    n_items = interacted.shape[1]
    if strategy == "popularity":
        if popularity is None or len(popularity) != n_items:
            raise RecstackError("popularity sampling needs one train popularity count per item")
        weights = np.asarray(popularity, dtype=np.float64)
    rng = np.random.default_rng(seed)
    users = np.asarray(users, dtype=np.int64)
    take = min(n_negatives, n_items)
    out = np.full((len(users), n_negatives), -1, dtype=np.int32)
    block = max(1, 2**22 // max(n_items, 1))
    for start in range(0, len(users), block):
        batch = users[start:start + block]
        u = rng.random((len(batch), n_items))
        if strategy == "uniform":
            keys = u
        else:  # smallest -log(U)/w first; w = 0 gives +inf (never drawn)
            with np.errstate(divide="ignore"):
                keys = -np.log(u) / weights
        rows = interacted[batch]
        keys[np.repeat(np.arange(len(batch)), np.diff(rows.indptr)), rows.indices] = np.inf
        idx = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < n_items else \
            np.broadcast_to(np.arange(n_items), (len(batch), n_items)).copy()
        chosen = np.take_along_axis(keys, idx, axis=1)
        order = np.argsort(chosen, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
        idx[~np.isfinite(np.take_along_axis(chosen, order, axis=1))] = -1
        out[start:start + len(batch), :take] = idx
    return out


def evaluate_sampled(
    model: Scorer,
    history: Interactions,
    test: Interactions,
    users: np.ndarray,
    negatives: np.ndarray,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ks: Iterable[int] = DEFAULT_KS,
    mask_history: bool = True,
    memory_budget_mb: float = 1024.0,
    cold_users: ColdUsers | None = None,
    exclude: Interactions | None = None,
) -> EvalResult:
    """Metrics of `model` with each user's candidates = held-out items + `negatives` row (see module doc).

    `users` are the evaluated users (rows of `negatives`); metric labels are prefixed `sampled_`.
    Coverage is not computed (a sampled candidate set says nothing about the catalogue).
    `cold_users` applies the cold-user policy as `evaluate` does: skip drops the cold users' rows,
    fallback ranks their candidates by the fallback's scores. `exclude` (with `mask_history`): events
    whose items are masked like the history's although the model does not read them (as `evaluate`).
    """
    users = np.asarray(users, dtype=np.int32)
    if negatives.shape[0] != len(users):
        raise RecstackError(f"negatives has {negatives.shape[0]} rows for {len(users)} users")
    cold_users = cold_users or INCLUDE
    counts = count_history(history, users, cold_users, model)
    cold = cold_users.cold(history, users)
    if cold_users.policy == "skip":
        users, negatives, cold = users[~cold], negatives[~cold], cold[~cold]
    if cold_users.policy == "fallback":  # and the users the model says it cannot score, as `rank` does
        cold = cold_users.to_fallback(model, history, users)
    pairs = [(name, k) for name, k in parse_metric_labels(metrics, list(ks)) if name != "Coverage"]
    if not pairs:
        raise RecstackError("sampled evaluation needs at least one accuracy metric besides Coverage")
    depth = max(k for _, k in pairs)
    truth = test.matrix()
    masked = [history.matrix()] + ([exclude.matrix()] if exclude is not None and len(exclude) else [])
    n_items = test.n_items
    block = block_size_for(n_items, memory_budget_mb)

    def ranked(scorer: Scorer, positions: np.ndarray) -> tuple[np.ndarray]:
        chosen, chosen_negatives = users[positions], negatives[positions]
        out = np.full((len(chosen), depth), -1, dtype=np.int32)
        for start in range(0, len(chosen), block):
            batch = chosen[start:start + block]
            scores = np.array(scorer.score(batch, history), dtype=np.float32)  # a copy: masked in place
            allowed = np.zeros(scores.shape, dtype=bool)
            rel = truth[batch]
            allowed[np.repeat(np.arange(len(batch)), np.diff(rel.indptr)), rel.indices] = True
            neg = chosen_negatives[start:start + len(batch)]
            rows = np.broadcast_to(np.arange(len(batch))[:, None], neg.shape)
            allowed[rows[neg >= 0], neg[neg >= 0]] = True
            if mask_history:
                for matrix in masked:
                    h = matrix[batch]
                    allowed[np.repeat(np.arange(len(batch)), np.diff(h.indptr)), h.indices] = False
            scores[~allowed] = -np.inf
            idx, values = top_k_items(scores, depth)
            idx = idx.astype(np.int32)
            idx[~np.isfinite(values) & (values < 0)] = -1
            out[start:start + len(batch), : idx.shape[1]] = idx
        return (out,)

    fallback = cold_users.fallback if cold_users.policy == "fallback" else None
    (out_items,) = serve_cold(model, fallback, cold, ranked)
    gains = _hits(out_items, users, truth)
    rankings = Rankings(users, out_items, gains, np.diff(truth.indptr)[users].astype(np.int64))
    per_user, summary = {}, {}
    for name, k in pairs:
        label = f"{PREFIX}{name}@{k}"
        values = METRICS[name](rankings, k)
        per_user[label] = values
        summary[label] = float(values.mean()) if len(values) else float("nan")
    protocol = {"ranking": "sampled", "n_negatives": int(negatives.shape[1]), "mask_history": mask_history,
                "n_users_evaluated": int(len(users)), "cold_users": counts.to_dict()}
    return EvalResult(summary, per_user, users, 0, protocol, rankings, counts)
