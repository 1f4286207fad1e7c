"""Preprocessing: implicit threshold, de-duplication, k-core, compaction, and summary statistics.

Every step takes and returns a `Dataset`. Steps that drop events compact the vocabularies to
the surviving users and items (keeping their relative order), re-index the side tables and
the knowledge graph's item links, and raise a `RecstackError` naming the step, its settings
and the knob to lower when nothing is left. All steps are vectorised (bincount, lexsort,
unique); none loops over interactions in Python.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError

DedupPolicy = Literal["keep", "first", "last", "max"]
_DEDUP_POLICIES = ("keep", "first", "last", "max")


def _empty_error(step: str, settings: str, knob: str) -> RecstackError:
    return RecstackError(f"no interactions left after {step} ({settings}); lower {knob}")


def _still_used(codes: np.ndarray, vocab: Vocab) -> tuple[np.ndarray, np.ndarray, Vocab]:
    """The indices of `vocab` that `codes` still use, the old -> new index map (-1: dropped), the new vocab.

    The map is increasing, so the (user, time, original order) sort of the events survives it.
    """
    kept = np.flatnonzero(np.bincount(codes, minlength=len(vocab)) > 0)
    new_index = np.full(len(vocab), -1, dtype=np.int32)
    new_index[kept] = np.arange(len(kept), dtype=np.int32)
    return kept, new_index, vocab if len(kept) == len(vocab) else Vocab(vocab.ids[kept], name=vocab.name)


def _subset(dataset: Dataset, keep: np.ndarray) -> Dataset:
    """Events where `keep` is true, with users/items that lost every event removed everywhere."""
    data = dataset.interactions
    user, item = data.user[keep], data.item[keep]
    kept_users, user_map, users = _still_used(user, data.users)
    kept_items, item_map, items = _still_used(item, data.items)
    interactions = Interactions(
        user_map[user], item_map[item], users, items,
        value=None if data.value is None else data.value[keep],
        timestamp=None if data.timestamp is None else data.timestamp[keep],
        presorted=True,
    )
    kg = dataset.kg
    if kg is not None and len(kept_items) != data.n_items:
        kg = KnowledgeGraph(kg.head, kg.relation, kg.tail, kg.entities, kg.relations, kg.item_entity[kept_items])
    return Dataset(
        interactions,
        {name: column[kept_items] for name, column in dataset.item_table.items()},
        {name: column[kept_users] for name, column in dataset.user_table.items()},
        kg,
        dict(dataset.provenance),
    )


def to_implicit(dataset: Dataset, threshold: float | None) -> Dataset:
    """Keep events with value >= threshold (values are kept); `None` keeps every event."""
    data = dataset.interactions
    if threshold is None:
        return dataset
    if data.value is None:
        raise RecstackError(f"to_implicit(threshold={threshold}) needs a value column, but the data has none; "
                            "pass threshold=None")
    keep = data.value >= threshold
    if not keep.any():
        raise _empty_error("to_implicit", f"threshold={threshold}, largest value {float(data.value.max()):g}"
                           if len(data) else f"threshold={threshold}", "threshold")
    return _subset(dataset, keep)


def deduplicate(dataset: Dataset, policy: DedupPolicy = "keep") -> Dataset:
    """Resolve repeated (user, item) pairs.

    keep: leave every event; first / last: keep the earliest / latest event of the pair (in
    the log's (time, original order)); max: keep the event with the largest value, the latest
    of those on ties. The kept event brings its own value and timestamp.
    """
    if policy not in _DEDUP_POLICIES:
        raise RecstackError(f"unknown dedup policy {policy!r}; choose one of {list(_DEDUP_POLICIES)}")
    data = dataset.interactions
    if policy == "keep" or len(data) == 0:
        return dataset
    if policy == "max" and data.value is None:
        raise RecstackError("dedup='max' needs a value column, but the data has none; use 'first' or 'last'")
    pair = data.user.astype(np.int64) * data.n_items + data.item
    position = np.arange(len(data))
    if policy == "first":
        _, rows = np.unique(pair, return_index=True)
    else:
        # Sort by pair, then (value,) position; the last row of each pair group wins.
        keys = (position, pair) if policy == "last" else (position, data.value, pair)
        order = np.lexsort(keys)
        sorted_pair = pair[order]
        group_end = np.flatnonzero(np.r_[sorted_pair[1:] != sorted_pair[:-1], True])
        rows = order[group_end]
    keep = np.zeros(len(data), dtype=bool)
    keep[rows] = True
    return _subset(dataset, keep)


def k_core(dataset: Dataset, user_k: int = 0, item_k: int = 0) -> Dataset:
    """Largest sub-log where every user has >= user_k events and every item >= item_k.

    Iterates to a fixed point: dropping items can push users below user_k and vice versa.
    Counts are events (run `deduplicate` first to count distinct pairs).
    """
    if user_k < 0 or item_k < 0:
        raise RecstackError(f"k_core needs non-negative thresholds, got user_k={user_k}, item_k={item_k}")
    data = dataset.interactions
    keep = np.ones(len(data), dtype=bool)
    if user_k <= 1 and item_k <= 1:
        return _subset(dataset, keep) if len(data) else dataset
    rounds = 0
    while True:
        rounds += 1
        user_count = np.bincount(data.user[keep], minlength=data.n_users)
        item_count = np.bincount(data.item[keep], minlength=data.n_items)
        new_keep = keep & (user_count[data.user] >= user_k) & (item_count[data.item] >= item_k)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
        if not keep.any():
            break
    if not keep.any():
        raise _empty_error("k_core", f"user_k={user_k}, item_k={item_k}, {rounds} rounds", "user_k / item_k")
    return _subset(dataset, keep)


def compact(dataset: Dataset) -> Dataset:
    """Drop users and items that have no events (vocabularies, side tables and KG links follow)."""
    data = dataset.interactions
    if len(data) == 0:
        raise RecstackError("compact: the data has no interactions, so every user and item would be dropped")
    return _subset(dataset, np.ones(len(data), dtype=bool))


def preprocess(
    dataset: Dataset,
    *,
    threshold: float | None = None,
    dedup: DedupPolicy = "keep",
    user_core: int = 0,
    item_core: int = 0,
) -> Dataset:
    """threshold -> dedup -> k-core -> compact, each recorded in provenance["preprocessing"]."""
    steps: list[dict[str, Any]] = list(dataset.provenance.get("preprocessing", []))

    def record(step: str, result: Dataset, **settings) -> Dataset:
        steps.append({"step": step, **settings, "n_interactions": len(result.interactions),
                      "n_users": result.interactions.n_users, "n_items": result.interactions.n_items})
        return result

    if threshold is not None:
        dataset = record("to_implicit", to_implicit(dataset, threshold), threshold=threshold)
    if dedup != "keep":
        dataset = record("deduplicate", deduplicate(dataset, dedup), policy=dedup)
    if user_core > 1 or item_core > 1:
        dataset = record("k_core", k_core(dataset, user_core, item_core), user_k=user_core, item_k=item_core)
    dataset = record("compact", compact(dataset))
    provenance = {**dataset.provenance, "preprocessing": steps}
    return Dataset(dataset.interactions, dataset.item_table, dataset.user_table, dataset.kg, provenance)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient G = sum_ij |x_i - x_j| / (2 n^2 mean(x)), without an n/(n-1) correction.

    Computed as G = 2 * sum_i i * x_(i) / (n * sum(x)) - (n + 1) / n over ascending x_(i), i = 1..n.
    0 means equal counts; one item holding every event gives (n - 1) / n, e.g. [0, 0, 0, 10] -> 0.75.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(ranks, x) / (n * total) - (n + 1) / n)


def summarize(interactions: Interactions | Dataset) -> dict[str, Any]:
    """Size, density, popularity concentration and sequence lengths of an event log.

    density = distinct (user, item) pairs / (n_users * n_items); item_gini = `gini` of the item
    event counts over every item of the vocabulary (zeros included); sequence lengths are
    events per user over users with at least one event (percentiles linearly interpolated);
    time span appears when timestamps exist (seconds, and days).
    """
    data = interactions.interactions if isinstance(interactions, Dataset) else interactions
    n_users, n_items, n = data.n_users, data.n_items, len(data)
    n_pairs = int(data.matrix().nnz) if n else 0
    lengths = data.user_counts()
    lengths = lengths[lengths > 0]
    summary: dict[str, Any] = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n,
        "n_pairs": n_pairs,
        "density": n_pairs / (n_users * n_items) if n_users and n_items else 0.0,
        "item_gini": gini(data.item_counts()),
    }
    if len(lengths):
        p25, median, p75, p90 = np.percentile(lengths, [25, 50, 75, 90])
        summary["sequence_length"] = {
            "min": int(lengths.min()), "p25": float(p25), "median": float(median), "mean": float(lengths.mean()),
            "p75": float(p75), "p90": float(p90), "max": int(lengths.max()),
        }
    if data.value is not None and n:
        summary["value"] = {"min": float(data.value.min()), "max": float(data.value.max()),
                            "mean": float(data.value.mean())}
    if data.timestamp is not None and n:
        first, last = int(data.timestamp.min()), int(data.timestamp.max())
        summary["time_span"] = {"first": first, "last": last, "days": (last - first) / 86400.0}
    return summary
