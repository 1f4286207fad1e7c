"""Full-ranking evaluation: user blocks -> scores -> history mask -> top-k -> `Rankings` -> metrics.

`evaluate` knows nothing of models beyond the declared abilities in `recstack.abilities`
(`Scorer`, `ListRecommender`), so the trainer can call it for early stopping. Scores are computed
for blocks of users sized from the catalogue and a memory budget, never one user at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sp

from recstack.abilities import ListRecommender, Scorer, UserCoverage, implements  # noqa: F401  (Scorer re-exported)
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.evaluate.accuracy import METRICS, item_coverage
from recstack.evaluate.fused import GROUP_USERS, check_precision, fused_applies, rank_dot_product
from recstack.evaluate.rankings import Rankings
from recstack.topk import compiled_kernels, top_k_items  # top_k_items re-exported: callers import it from here

DEFAULT_METRICS = ("Recall", "Precision", "NDCG", "MRR", "Hit", "MAP")
DEFAULT_KS = (10, 20)
# the fixed item order that breaks ties when ranking an item pool (see `rank`)
POOL_TIE_SEED = 0
# bytes per scored (user, item) cell: two float32 blocks are alive at once, the one being ranked
# and the next one being scored (`rank` overlaps them)
_BYTES_PER_CELL = 8
_pipeline: tuple[int, ThreadPoolExecutor] | None = None  # (process id, executor): a forked child makes its own


COLD_POLICIES = ("include", "skip", "fallback")


@dataclass(frozen=True)
class ColdUsers:
    """What an evaluation does with evaluated users whose history is (nearly) empty.

    A user is *cold* when its history (the events the model sees when ranking for the part) holds
    fewer than `min_history` events (1: only users with no history). The policy acts on them:

    - `include`: ranked by the model like everyone else (the model decides what an empty history gives);
    - `skip`: left out of the metrics and counted as skipped;
    - `fallback`: their lists come from `fallback`, a fitted scorer (e.g. Pop), for every model alike.

    Every evaluation also counts the users with no history and those with fewer than `few_history`
    events (a report figure only; it changes nothing). The same object goes to the final
    evaluation (`evaluate(..., cold_users=)`) and to early stopping (`FitOptions(cold_users=)`).
    """

    policy: Literal["include", "skip", "fallback"] = "include"
    min_history: int = 1
    few_history: int = 5
    fallback: Any = field(default=None, compare=False, repr=False)  # fitted Scorer, with policy "fallback"
    fallback_name: str | None = None  # how reports name the fallback ("pop")

    def __post_init__(self) -> None:
        if self.policy not in COLD_POLICIES:
            raise RecstackError(f"unknown cold-user policy {self.policy!r}; choose one of {', '.join(COLD_POLICIES)}")
        for name in ("min_history", "few_history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise RecstackError(f"cold users: {name} must be an integer >= 1, got {value!r}")
        if self.policy == "fallback" and self.fallback is None:
            raise RecstackError("the cold-user policy 'fallback' needs a fitted fallback model (fallback=...)")
        if self.policy != "fallback" and self.fallback is not None:
            raise RecstackError(f"a fallback model is used by the policy 'fallback' only, not {self.policy!r}")
        if self.fallback is not None and not isinstance(self.fallback, (Scorer, ListRecommender)):
            raise RecstackError(f"the fallback {type(self.fallback).__name__} can neither score nor rank users")

    @property
    def fallback_label(self) -> str | None:
        if self.policy != "fallback":
            return None
        return self.fallback_name or type(self.fallback).__name__

    def cold(self, history: Interactions, users: np.ndarray) -> np.ndarray:
        """Which of `users` are cold: fewer than `min_history` events in `history`."""
        return history.user_counts()[np.asarray(users, dtype=np.int64)] < self.min_history

    def to_fallback(self, model: Any, history: Interactions, users: np.ndarray) -> np.ndarray:
        """Which of `users` the policy `fallback` hands to the fallback for `model`: the cold ones and
        those the model says it cannot score (`can_score`), whatever their history."""
        return self.cold(history, users) | unscorable(model, users, history)


def unscorable(model: Any, users: np.ndarray, history: Interactions) -> np.ndarray:
    """Which of `users` `model` says it cannot score (the `UserCoverage` ability); a model without
    the ability is taken at its word that it scores everyone."""
    users = np.asarray(users, dtype=np.int64)
    if not implements(model, UserCoverage) or len(users) == 0:
        return np.zeros(len(users), dtype=bool)
    return ~np.asarray(model.can_score(users, history), dtype=bool)


INCLUDE = ColdUsers()  # today's behaviour: every evaluated user is ranked by the model


@dataclass(frozen=True)
class HistoryCounts:
    """The evaluated users of one part by the length of the history they are ranked with.

    `n_users`: users with held-out events (before any policy); `n_no_history`: of them, with an
    empty history; `n_few_history`: with fewer than `few_history` events (those with none
    included); `n_cold`: with fewer than `min_history` (the policy's users); `n_skipped` and
    `n_fallback`: how many the policy left out or served with the fallback. Counted for one model
    (`count_history(..., model=)`): `n_unscorable`, the users left to the model that it says it
    cannot score (`can_score`; under the policy `fallback` they are served by the fallback and
    counted in `n_fallback` too); 0 without a model.
    """

    n_users: int
    n_no_history: int
    n_few_history: int
    n_cold: int
    n_skipped: int
    n_fallback: int
    policy: str
    min_history: int
    few_history: int
    fallback: str | None = None
    n_unscorable: int = 0

    def share(self, count: int) -> float:
        return count / self.n_users if self.n_users else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def count_history(history: Interactions, users: np.ndarray, cold_users: ColdUsers | None = None,
                  model: Any = None) -> HistoryCounts:
    """How many of `users` (the users with held-out events) have no, few or too little history; with
    `model`, also how many of those the policy leaves to it the model says it cannot score."""
    policy = cold_users or INCLUDE
    users = np.asarray(users, dtype=np.int64)
    lengths = history.user_counts()[users]
    cold = lengths < policy.min_history
    n_cold = int(np.count_nonzero(cold))
    kept = users[~cold] if policy.policy != "include" else users
    n_unscorable = int(np.count_nonzero(unscorable(model, kept, history))) if model is not None else 0
    return HistoryCounts(
        n_users=int(len(lengths)), n_no_history=int(np.count_nonzero(lengths == 0)),
        n_few_history=int(np.count_nonzero(lengths < policy.few_history)), n_cold=n_cold,
        n_skipped=n_cold if policy.policy == "skip" else 0,
        n_fallback=n_cold + n_unscorable if policy.policy == "fallback" else 0,
        policy=policy.policy, min_history=policy.min_history, few_history=policy.few_history,
        fallback=policy.fallback_label, n_unscorable=n_unscorable)


def serve_cold(model: Any, fallback: Any, cold: np.ndarray,
               rank_rows: Callable[[Any, np.ndarray], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The one place the fallback policy is applied: rows where `cold` is True are ranked by
    `fallback`, the others by `model`. `rank_rows(scorer, rows)` ranks the given row positions and
    returns arrays with one row per position; the results are put back in row order."""
    if fallback is None or not cold.any():
        return rank_rows(model, np.arange(len(cold)))
    warm_rows, cold_rows = np.flatnonzero(~cold), np.flatnonzero(cold)
    served = rank_rows(fallback, cold_rows)
    if len(warm_rows) == 0:
        return served
    ranked = rank_rows(model, warm_rows)
    out = []
    for warm_part, cold_part in zip(ranked, served):
        width = max(warm_part.shape[1], cold_part.shape[1])
        fill = -1 if np.issubdtype(warm_part.dtype, np.integer) else -np.inf
        merged = np.full((len(cold), width), fill, dtype=warm_part.dtype)
        merged[warm_rows, : warm_part.shape[1]] = warm_part
        merged[cold_rows, : cold_part.shape[1]] = cold_part
        out.append(merged)
    return tuple(out)


@dataclass
class EvalResult:
    """Mean metrics, per-user values (aligned with `users`) and the protocol that produced them.

    `history_counts` says how many evaluated users had no or little history and what the
    cold-user policy did with them (None for results made outside `evaluate`)."""

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    n_skipped_users: int
    protocol: dict[str, Any] = field(default_factory=dict)
    rankings: Rankings | None = None
    history_counts: HistoryCounts | None = None

    def __getitem__(self, label: str) -> float:
        return self.metrics[label]


def block_size_for(n_items: int, memory_budget_mb: float = 1024.0, max_block: int = 8192) -> int:
    """Users per scoring block so that one block of scores fits the memory budget; a whole number of
    the fused path's user groups when it is larger than one (so that blocks ranked elsewhere, e.g. as
    Ray tasks, multiply the same group shapes as one process does)."""
    cells = memory_budget_mb * 2**20 / _BYTES_PER_CELL
    block = int(max(1, min(max_block, cells // max(n_items, 1))))
    return block - block % GROUP_USERS if block >= GROUP_USERS else block


def parse_metric_labels(metrics: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int]]:
    """('NDCG', 'Recall'), (10, 20) -> [('NDCG', 10), ...]; labels like 'NDCG@5' are taken as they are."""
    known = {name.lower(): name for name in [*METRICS, "Coverage"]}
    pairs: list[tuple[str, int]] = []
    for metric in metrics:
        name, _, at = metric.partition("@")
        canonical = known.get(name.lower())
        if canonical is None:
            raise RecstackError(f"unknown metric {metric!r}; known: {', '.join(known.values())}")
        for k in ([int(at)] if at else ks):
            if int(k) < 1:
                raise RecstackError(f"metric cut-off must be >= 1, got {metric}@{k}")
            pairs.append((canonical, int(k)))
    return list(dict.fromkeys(pairs))


def rank(
    model: Scorer,
    users: np.ndarray,
    history: Interactions,
    k: int,
    *,
    mask_history: bool = True,
    memory_budget_mb: float = 1024.0,
    item_pool: np.ndarray | None = None,
    cold_users: ColdUsers | None = None,
    exclude: Interactions | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices (B, k) and scores for `users`, history items masked; -1 pads unscorable slots.

    A dot-product model (`DotProductScorer`) is ranked without a score matrix, tile by tile
    (`recstack.evaluate.fused`); with `precision="bf16"` its products are bfloat16 and its candidates
    re-scored in float32. Other models always score in float32 (`precision` does not apply to them).

    With `exclude` and `mask_history`, the items of those events are masked too although the model
    never reads them: a test history of train only still removes the validation items from the
    lists, as RecBole does (`test_history: train` in an experiment).

    With `cold_users` under the policy `fallback`, the cold users' lists (and scores) are the
    fallback's; `rank` ranks every user it is given, so the policy `skip` is `evaluate`'s business.

    With `item_pool`, only those items are ranked (a cold-item split's candidates); the others
    score -inf, so a list is shorter than k (padded with -1) when the pool is small. Ties inside a
    pool are broken by a fixed pseudo-random order of the items (`POOL_TIE_SEED`) instead of the
    lower index: models that cannot tell unseen items apart score them all alike, and the index
    order would hand them whatever it encodes (in ml-100k lower ids are the more popular films).
    """
    check_precision(precision)
    users = np.asarray(users, dtype=np.int32)
    n_items = history.n_items
    if k > n_items:
        raise RecstackError(f"k={k} is larger than the catalogue ({n_items} items); choose k <= {n_items}")
    if cold_users is not None and cold_users.policy == "fallback":
        same = {"mask_history": mask_history, "memory_budget_mb": memory_budget_mb, "item_pool": item_pool,
                "exclude": exclude, "precision": precision}
        return serve_cold(model, cold_users.fallback, cold_users.to_fallback(model, history, users),
                          lambda scorer, rows: rank(scorer, users[rows], history, k, **same))
    if exclude is not None and (exclude.users != history.users or exclude.items != history.items):
        raise ValueError("exclude and history must share vocabularies (use one Split)")
    excluded = exclude.matrix() if mask_history and exclude is not None and len(exclude) else None
    outside_pool = tie_order = None
    if item_pool is not None:
        outside_pool = np.ones(n_items, dtype=bool)
        outside_pool[np.asarray(item_pool, dtype=np.int64)] = False
        tie_order = np.random.default_rng(POOL_TIE_SEED).permutation(n_items)
    if implements(model, ListRecommender) and (outside_pool is None or not implements(model, Scorer)):
        if outside_pool is not None:
            raise RecstackError(f"{type(model).__name__} generates its own lists (top_k) and has no score(), so it "
                                f"cannot rank a restricted item pool; evaluate it on a split without item pools")
        # generative / search models produce their own lists, masking history as told
        if excluded is None:
            items, scores = model.top_k(users, history, k, mask_history=mask_history)
            return np.asarray(items), np.asarray(scores)
        extra = excluded[users]
        depth = min(n_items, k + int(np.diff(extra.indptr).max(initial=0)))  # room for the excluded items
        items, scores = model.top_k(users, history, depth, mask_history=mask_history)
        return _drop_excluded(np.asarray(items), np.asarray(scores), extra, k)
    hist = history.matrix()
    # sorted once here, not once per block inside the top-k
    hist, excluded = (m if m is None or m.has_sorted_indices else m.sorted_indices() for m in (hist, excluded))
    out_items = np.full((len(users), k), -1, dtype=np.int32)
    out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    if outside_pool is None and fused_applies(model, precision):
        idx, values = rank_dot_product(model, users, history, k, masks=(hist, excluded) if mask_history else (),
                                       precision=precision)
        idx = idx.astype(np.int32)
        idx[~np.isfinite(values) & (values < 0)] = -1  # -inf: the model cannot score it / masked
        out_items[:, : idx.shape[1]] = idx
        out_scores[:, : idx.shape[1]] = values
        return out_items, out_scores
    block = block_size_for(n_items, memory_budget_mb)

    def finish(start: int, batch: np.ndarray, scores: np.ndarray) -> None:
        masks = (hist, excluded) if mask_history else ()
        if outside_pool is not None:
            scores = scores if scores.flags.writeable and scores.flags.owndata else scores.copy()
            for masked in masks:
                if masked is not None:
                    rows = masked[batch]
                    scores[np.repeat(np.arange(len(batch)), np.diff(rows.indptr)), rows.indices] = -np.inf
            scores[:, outside_pool] = -np.inf
            scores = scores[:, tie_order]  # ties go to the earlier position of the fixed random order
            masks = ()
        # the history is masked inside the top-k pass, while each row is in cache (issue 19)
        idx, values = top_k_items(scores, k, masks=masks, rows=batch)
        if tie_order is not None:
            idx = tie_order[idx]
        idx = idx.astype(np.int32)
        idx[~np.isfinite(values) & (values < 0)] = -1  # -inf: the model cannot score it / masked
        out_items[start:start + len(batch), : idx.shape[1]] = idx
        out_scores[start:start + len(batch), : idx.shape[1]] = values

    if len(users) <= block:  # one block: nothing to overlap
        if len(users):
            finish(0, users, _scores_of(model, users, history, n_items))
        return out_items, out_scores
    # the next block's product overlaps this block's masking and top-k (issue 19): the product runs
    # in BLAS, the top-k in compiled code, both without the GIL
    pending = None
    for start in range(0, len(users), block):
        batch = users[start:start + block]
        scores = _scores_of(model, batch, history, n_items)
        if pending is not None:
            pending.result()
        pending = _rank_pipeline().submit(finish, start, batch, scores)
    pending.result()
    return out_items, out_scores


def _scores_of(model: Scorer, batch: np.ndarray, history: Interactions, n_items: int) -> np.ndarray:
    """The model's float32 score block for `batch`, checked (the top-k reads it and masks without writing)."""
    scores = np.asarray(model.score(batch, history), dtype=np.float32)
    if scores.shape != (len(batch), n_items):
        raise ValueError(f"{type(model).__name__}.score returned {scores.shape}, expected {(len(batch), n_items)}")
    return scores


def _rank_pipeline() -> ThreadPoolExecutor:
    """The one worker thread that ranks a score block while `rank` scores the next."""
    global _pipeline
    if _pipeline is None or _pipeline[0] != os.getpid():
        _pipeline = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="recstack-rank"))
    return _pipeline[1]


def _drop_excluded(items: np.ndarray, scores: np.ndarray, excluded: sp.csr_matrix, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A list recommender's lists without the items of `excluded` (one row per list), cut to `k`."""
    drop = (_hits(items, np.arange(len(items)), excluded) > 0) | (items < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept items first, in their order
    kept_items = np.take_along_axis(np.where(drop, -1, items), order, axis=1).astype(np.int32)
    kept_scores = np.take_along_axis(np.where(drop, -np.inf, scores), order, axis=1).astype(np.float32)
    return kept_items, kept_scores


def _hits(items: np.ndarray, users: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """Gain of each ranked item: truth[user, item] looked up by binary search on sorted CSR keys."""
    kernels = compiled_kernels()
    if kernels is not None:
        if not truth.has_sorted_indices:
            truth = truth.sorted_indices()
        gains = np.empty(items.shape, dtype=np.float32)
        kernels.lookup_gains(np.ascontiguousarray(items), np.ascontiguousarray(users, dtype=np.int64),
                             truth.indptr, truth.indices, truth.data, gains)
        return gains
    rows = truth[users]
    rows.sort_indices()
    n_items = truth.shape[1]
    keys = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(rows.indptr)) * n_items + rows.indices
    query = np.arange(len(users), dtype=np.int64)[:, None] * n_items + items
    pos = np.searchsorted(keys, query)
    pos_clipped = np.minimum(pos, max(len(keys) - 1, 0))
    found = (pos < len(keys)) & (items >= 0)
    if len(keys):
        found &= keys[pos_clipped] == query
    gains = np.zeros(items.shape, dtype=np.float32)
    if len(keys):
        gains[found] = rows.data[pos_clipped[found]]
    return gains


def evaluate(
    model: Scorer,
    history: Interactions,
    test: Interactions,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ks: Iterable[int] = DEFAULT_KS,
    graded: bool = False,
    mask_history: bool = True,
    users: np.ndarray | None = None,
    memory_budget_mb: float = 1024.0,
    keep_rankings: bool = False,
    item_pool: np.ndarray | None = None,
    cold_users: ColdUsers | None = None,
    exclude: Interactions | None = None,
    ranker: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
    precision: str = "fp32",
) -> EvalResult:
    """Full-ranking evaluation of `model` on `test`, seeing `history`.

    Users with no test events are skipped and counted. With `graded=True`, NDCG uses the test
    values as gains (the other metrics count any positive gain as a hit). `item_pool` restricts
    the ranked items; it defaults to `test.item_pool` (set on a cold-item split's parts), and
    None there ranks the whole catalogue. `cold_users` (default: include) counts the evaluated
    users with no or little history (`EvalResult.history_counts`) and applies its policy to the
    cold ones: skip leaves them out of every metric, fallback ranks them with its fallback model.
    `exclude` (with `mask_history`): events whose items are masked like the history's although the
    model does not read them (see `rank`); cold users are counted on `history`, what the model reads.
    `ranker` replaces `rank` (same signature) for the ranking step only, e.g. with Ray tasks that rank
    blocks of users elsewhere (`recstack.cluster.RayRanker`); everything after it is the same code.
    `precision="bf16"` ranks dot-product models from bfloat16 products (see `rank`; the protocol
    records it as `score_precision`).
    """
    check_precision(precision)
    if item_pool is None:
        item_pool = test.item_pool
    if history.users != test.users or history.items != test.items:
        raise ValueError("history and test must share vocabularies (use one Split)")
    pairs = parse_metric_labels(metrics, list(ks))
    depth = max(k for _, k in pairs)
    if depth > test.n_items:
        raise RecstackError(f"k={depth} is larger than the catalogue ({test.n_items} items); lower the cut-off")
    truth = test.matrix(binary=not graded)
    if graded and test.value is None:
        raise RecstackError("graded NDCG needs a value column (ratings) in the test data")
    n_relevant = np.diff(truth.indptr)
    candidates = np.flatnonzero(n_relevant > 0).astype(np.int32)
    if users is not None:
        candidates = np.intersect1d(candidates, np.asarray(users, dtype=np.int32))
    n_skipped = (test.n_users if users is None else len(np.unique(users))) - len(candidates)
    cold_users = cold_users or INCLUDE
    counts = count_history(history, candidates, cold_users, model)
    if cold_users.policy == "skip":
        candidates = candidates[~cold_users.cold(history, candidates)]

    items, _ = (ranker or rank)(model, candidates, history, depth, mask_history=mask_history,
                                memory_budget_mb=memory_budget_mb, item_pool=item_pool, cold_users=cold_users,
                                exclude=exclude, precision=precision)
    gains = _hits(items, candidates, truth)
    ideal = None
    if graded:
        ideal = np.zeros((len(candidates), depth), dtype=np.float32)
        rows = truth[candidates]
        for i in range(len(candidates)):  # per user only for the ideal ordering, O(|test_u| log)
            values = np.sort(rows.data[rows.indptr[i]:rows.indptr[i + 1]])[::-1][:depth]
            ideal[i, : len(values)] = values
    rankings = Rankings(candidates, items, gains, n_relevant[candidates].astype(np.int64), ideal)

    per_user: dict[str, np.ndarray] = {}
    summary: dict[str, float] = {}
    for name, k in pairs:
        label = f"{name}@{k}"
        if name == "Coverage":
            summary[label] = item_coverage(rankings, k, test.n_items if item_pool is None else len(item_pool))
            continue
        values = METRICS[name](rankings, k)
        per_user[label] = values
        summary[label] = float(values.mean()) if len(values) else float("nan")
    protocol = {
        "ranking": "full" if item_pool is None else "item_pool",
        "mask_history": mask_history,
        "graded": graded,
        "score_precision": precision,
        "n_users_evaluated": int(len(candidates)),
        "n_users_skipped": int(n_skipped),
        "n_items": int(test.n_items if item_pool is None else len(item_pool)),
        "cold_users": counts.to_dict(),
    }
    return EvalResult(summary, per_user, candidates, int(n_skipped), protocol, rankings if keep_rankings else None,
                      counts)
