"""What a run adds to accuracy: beyond-accuracy and fairness measures, slices, sampled metrics.

`RunAnalysis` is built once per run, before any model trains (so a misspelt slice column fails
in milliseconds), and then called once per model with that model's test `EvalResult`, whose
kept `Rankings` are the very top-k lists the accuracy metrics were computed from: nothing is
scored twice for the beyond-accuracy measures or the slices.

- **beyond** (`beyond: true`, the default): per k in `ks`, from the test top-k lists: catalogue
  coverage, exposure Gini and normalised entropy, novelty, intra-list diversity and
  miscalibration (over item genres, when the item table has them), unexpectedness and
  serendipity against the most-popular list of the same user (history masked the same way),
  ARP/APLT/ACLT (long tail: the items outside the short head that holds 80% of train
  interactions) and every individual item fairness measure of `fairness.item_fairness`.
  Per-list measures are the mean over lists where they are defined (docs/beyond_accuracy.md).
- **slices**: test metrics for groups of users or of held-out items (see `docs/protocol.md`),
  always including the users' history length (0 = cold, no history) next to their activity.
- **sampled** (only when the config asks): `evaluate.sampled`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recstack.data.dataset import Dataset
from recstack.errors import RecstackError
from recstack.evaluate import beyond as B
from recstack.evaluate.accuracy import METRICS
from recstack.evaluate.evaluator import ColdUsers, EvalResult, rank
from recstack.evaluate.fairness import item_fairness
from recstack.evaluate.rankings import Rankings
from recstack.experiment.config import ModelEntry
from recstack.experiment.steps import fit_entry, history, masked_besides
from recstack.split.base import Split

HEAD_SHARE = 0.8
# MovieLens-1M's age groups (README of ml-1m): the standard bucketing of MovieLens ages
AGE_BINS = ((0, 17, "<18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"), (45, 49, "45-49"),
            (50, 55, "50-55"), (56, 10**9, "56+"))
_MAX_CATEGORIES = 30  # more distinct numeric values than this: the column is cut into terciles


def _genre_matrix(dataset: Dataset) -> tuple[sp.csr_matrix | None, list[str]]:
    """Binary (n_items, n_genres) from a 'genres' column ('A|B') or one 0/1 column per genre."""
    table = dataset.item_table
    for name in ("genres", "genre"):
        column = table.get(name)
        if column is not None and column.dtype == object:
            values = [str(v).split("|") if isinstance(v, str) and v else [] for v in column]
            names = sorted({g for row in values for g in row if g and g != "(no genres listed)"})
            if not names:
                return None, []
            index = {g: j for j, g in enumerate(names)}
            rows = [i for i, row in enumerate(values) for g in row if g in index]
            cols = [index[g] for row in values for g in row if g in index]
            m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(column), len(names)))
            m.data[:] = 1.0
            return m, names
    flags = [c for c, v in table.items() if c.lower().startswith("genre") and v.dtype != object
             and set(np.unique(v).tolist()) <= {0, 1}]
    if flags:
        return sp.csr_matrix(np.column_stack([table[c] for c in flags]).astype(np.float64)), flags
    return None, []


def _find_column(table: dict[str, np.ndarray], name: str, what: str) -> tuple[str, np.ndarray]:
    for candidate in (name, name + "s", name.removesuffix("s")):
        if candidate in table:
            return candidate, table[candidate]
    known = ", ".join(sorted(table)) or f"none (this data has no {what} table)"
    raise RecstackError(f"slices.{what}: the data has no {what} column {name!r}; {what} columns: {known}")


def _groups_of(name: str, column: np.ndarray) -> tuple[list[str], list[np.ndarray], dict[str, Any]]:
    """Group labels, a boolean membership mask per group, and how the groups were made."""
    if name.lower() == "age" and column.dtype.kind in "iuf":
        labels, masks = [], []
        for low, high, label in AGE_BINS:
            mask = (column >= low) & (column <= high)
            if mask.any():
                labels.append(label)
                masks.append(mask)
        return labels, masks, {"bucketing": "MovieLens-1M age groups"}
    if column.dtype == object and any(isinstance(v, str) and "|" in v for v in column):
        split = [set(str(v).split("|")) if isinstance(v, str) else set() for v in column]
        labels = sorted({g for row in split for g in row if g})
        return labels, [np.array([g in row for row in split]) for g in labels], {"multi_valued": True}
    if column.dtype.kind in "iuf" and len(np.unique(column)) > _MAX_CATEGORIES:
        cuts = np.quantile(column, [1 / 3, 2 / 3]).tolist()
        masks = [column <= cuts[0], (column > cuts[0]) & (column <= cuts[1]), column > cuts[1]]
        return (["low", "mid", "high"], masks, {"bucketing": "terciles", "cut_points": cuts})
    values = np.asarray(column).astype(str)
    labels = sorted(set(values.tolist()))
    return labels, [values == label for label in labels], {}


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _interval(values: np.ndarray) -> list[float] | None:
    """The shared bootstrap interval of a group's mean (the report's slice error bars)."""
    from recstack.evaluate.stats import bootstrap_ci

    values = values[np.isfinite(values)]
    return list(bootstrap_ci(values)) if len(values) else None


class RunAnalysis:
    """Data-level inputs computed once per run; `for_model` returns the additions to metrics.json."""

    def __init__(self, config: Any, dataset: Dataset, split: Split) -> None:
        self.config, self.dataset, self.split = config, dataset, split
        # what each test user is ranked with (`test_history`), and the events masked besides it
        self.history, self.masked = history(config, split, "test"), masked_besides(config, split, "test")
        self.n_items = split.train.n_items
        self.popularity = np.asarray(split.train.matrix().sum(axis=0)).ravel().astype(np.float64)
        self.long_tail = B.long_tail_mask(self.popularity, HEAD_SHARE)
        self.genres, self.genre_names = _genre_matrix(dataset) if dataset.item_table else (None, [])
        truth = split.test.matrix()
        self.users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int32)
        # the slice definitions are checked here, before anything trains
        self.user_slices = [(name, *_find_column(dataset.user_table, name, "user")) for name in config.slices.user]
        self.item_slices = [(name, *_find_column(dataset.item_table, name, "item")) for name in config.slices.item]
        self._pop_lists: np.ndarray | None = None
        self._negatives: np.ndarray | None = None
        # the metric the report draws per slice, with its bootstrap interval
        self.slice_metric = f"NDCG@{10 if 10 in config.ks else min(config.ks)}"
        # the run's cold-user policy (`steps.cold_users`); the sampled metrics apply it as the full ranking does
        self.cold_users: ColdUsers | None = None

    # ---- beyond accuracy --------------------------------------------------------------------
    def _reference(self, users: np.ndarray, depth: int) -> np.ndarray:
        if self._pop_lists is None:
            # fitted as every model of the run is (one step), then ranked for the reference lists
            pop = fit_entry(self.config, ModelEntry(name="pop"), self.dataset, self.split,
                            cold_users=self.cold_users).model
            items, _ = rank(pop, self.users, self.history, depth, mask_history=self.config.mask_history,
                            memory_budget_mb=self.config.memory_budget_mb, exclude=self.masked)
            self._pop_lists = items
        row = np.searchsorted(self.users, users)
        return self._pop_lists[row]

    def beyond(self, rankings: Rankings) -> dict[str, Any]:
        users, ks = rankings.users, sorted(self.config.ks)
        history = self.history.matrix()[users]
        relevant = self.split.test.matrix()[users]
        reference = self._reference(users, max(ks))
        out: dict[str, Any] = {"k": max(ks), "ks": ks, "head_share": HEAD_SHARE,
                               "n_long_tail_items": int(self.long_tail.sum()), "notes": []}
        if self.genres is None:
            out["notes"].append("ILD and miscalibration not computed: the data has no item genres.")
        n_train_users = self.split.train.n_users
        for k in ks:
            lists = rankings.items[:, :k]
            per_list = {
                "Novelty": B.novelty(lists, self.popularity, n_train_users),
                "Unexpectedness": B.unexpectedness(lists, reference[:, :k], self.n_items),
                "Serendipity": B.serendipity(lists, reference[:, :k], relevant),
                "ARP": B.arp(lists, self.popularity),
                "APLT": B.aplt(lists, self.long_tail),
                "ACLT": B.aclt(lists, self.long_tail),
            }
            if self.genres is not None:
                per_list["ILD"] = B.intra_list_diversity(lists, self.genres)
                per_list["Miscalibration"] = B.miscalibration(lists, history, self.genres)
            out[f"Coverage@{k}"] = B.catalogue_coverage(lists, self.n_items)
            out[f"ExposureGini@{k}"] = B.exposure_gini(lists, self.n_items)
            out[f"ExposureEntropy@{k}"] = B.exposure_entropy(lists, self.n_items, normalised=True)
            for name, values in per_list.items():
                out[f"{name}@{k}"] = _mean(values)
                undefined = int(np.count_nonzero(~np.isfinite(values)))
                if undefined:
                    out.setdefault("n_undefined", {})[f"{name}@{k}"] = undefined
            for name, value in item_fairness(lists, self.n_items).items():
                out[f"{name}@{k}"] = value
        from recstack.experiment.charts import popularity_bias  # the report's popularity-bias chart

        main = 10 if 10 in ks else min(ks)
        out["popularity_bias"] = popularity_bias(rankings.items[:, :main], history, self.popularity)
        return out

    # ---- slices -------------------------------------------------------------------------------
    def _user_groups(self, result: EvalResult, labels: list[str], masks: list[np.ndarray],
                     info: dict[str, Any]) -> dict[str, Any]:
        groups = {}
        for label, mask in zip(labels, masks):
            chosen = mask[result.users]
            groups[label] = {"n_users": int(chosen.sum()),
                             **{m: _mean(v[chosen]) if chosen.any() else float("nan")
                                for m, v in result.per_user.items()}}
            if self.slice_metric in result.per_user:
                groups[label]["ci"] = {self.slice_metric: _interval(result.per_user[self.slice_metric][chosen])}
        return {**info, "kind": "user", "groups": groups}

    def _item_groups(self, result: EvalResult, labels: list[str], masks: list[np.ndarray],
                     info: dict[str, Any]) -> dict[str, Any]:
        """Metrics with the held-out set of each user cut to the items of one group (ranking unchanged)."""
        rankings = result.rankings
        truth = self.split.test.matrix()[rankings.users]
        labels_k = [m for m in result.per_user]
        groups = {}
        for label, mask in zip(labels, masks):
            kept = truth @ sp.diags(mask.astype(np.float64))
            n_relevant = np.asarray((kept > 0).sum(axis=1)).ravel().astype(np.int64)
            hits = (rankings.hits > 0) & (rankings.items >= 0) & mask[np.maximum(rankings.items, 0)]
            chosen = n_relevant > 0
            sub = Rankings(rankings.users[chosen], rankings.items[chosen], hits[chosen].astype(np.float32),
                           n_relevant[chosen])
            entry: dict[str, Any] = {"n_users": int(chosen.sum()), "n_items": int(mask.sum()),
                                     "n_held_out": int(n_relevant.sum())}
            for m in labels_k:
                name, _, k = m.partition("@")
                values = METRICS[name](sub, int(k)) if len(sub) else np.empty(0)
                entry[m] = _mean(values) if len(sub) else float("nan")
                if m == self.slice_metric:
                    entry["ci"] = {m: _interval(values)}
            groups[label] = entry
        return {**info, "kind": "item", "groups": groups}

    def history_length(self) -> tuple[list[str], list[np.ndarray], dict[str, Any]]:
        """Warm vs cold: buckets of the test history's length (the events the model reads), 0 first, with edges
        at 1, the policy's `min_history`, `few_history` and 4 x `few_history` (0 | 1-4 | 5-19 | 20+)."""
        c = self.config.cold_users
        lengths = self.history.user_counts()
        edges = sorted({0, 1, c.min_history, c.few_history, 4 * c.few_history})
        labels, masks = [], []
        for low, high in zip(edges, [*edges[1:], None]):
            if high is None:
                labels.append(f"{low}+")
                masks.append(lengths >= low)
            else:
                labels.append(str(low) if high == low + 1 else f"{low}-{high - 1}")
                masks.append((lengths >= low) & (lengths < high))
        who = "no history" if c.min_history == 1 else f"fewer than {c.min_history} history events"
        skipped = " (skipped by the policy, so absent here)" if c.policy == "skip" else \
            f" (ranked by the fallback {c.fallback!r} for every model)" if c.policy == "fallback" else ""
        return labels, masks, {
            "definition": f"events in the history each test user is ranked with "
                          f"({'train + valid' if self.masked is None else 'train only: test_history train'}, "
                          f"as Split.history('test', test_history)); users with "
                          f"{who} are the cold users{skipped}; every bucket is listed, empty or not",
            "edges": edges, "policy": c.policy}

    def slices(self, result: EvalResult) -> dict[str, Any]:
        counts = self.split.train.user_counts()
        lengths = counts[result.users]
        cuts = np.quantile(lengths, [1 / 3, 2 / 3]).tolist() if len(lengths) else [0.0, 0.0]
        activity = [counts <= cuts[0], (counts > cuts[0]) & (counts <= cuts[1]), counts > cuts[1]]
        out = {"user_activity": self._user_groups(
            result, ["light", "medium", "heavy"], activity,  # not "cold": that word is the cold-user policy's
            {"definition": "training events per user; light <= first tercile < medium <= second tercile < heavy "
                           "(terciles over the evaluated users)", "cut_points": cuts})}
        out["history_length"] = self._user_groups(result, *self.history_length())
        if result.rankings is not None:
            head = ~self.long_tail
            out["item_popularity"] = self._item_groups(
                result, ["head", "tail"], [head, self.long_tail],
                {"definition": f"held-out items cut to the short head (most popular items holding "
                               f"{HEAD_SHARE:.0%} of train interactions) or the long tail; the full ranking "
                               "is unchanged, users without held-out items in the group are left out"})
        for name, column_name, column in self.user_slices:
            labels, masks, info = _groups_of(column_name, column)
            out[f"user:{name}"] = self._user_groups(result, labels, masks, {"column": column_name, **info})
        for name, column_name, column in self.item_slices:
            if result.rankings is None:
                continue
            labels, masks, info = _groups_of(column_name, column)
            out[f"item:{name}"] = self._item_groups(result, labels, masks, {"column": column_name, **info})
        return out

    # ---- sampled ------------------------------------------------------------------------------
    def sampled(self, model: Any) -> dict[str, float]:
        from recstack.evaluate.sampled import evaluate_sampled, sample_negatives

        settings = self.config.sampled
        if self._negatives is None:
            # every event before the test part, whichever history the model reads
            interacted = self.split.history("test").concat(self.split.test).matrix()
            self._negatives = sample_negatives(interacted, self.users, settings.n_negatives,
                                               strategy=settings.strategy, popularity=self.popularity,
                                               seed=self.config.seed)
        result = evaluate_sampled(model, self.history, self.split.test, self.users, self._negatives,
                                  metrics=self.config.metrics, ks=self.config.ks,
                                  mask_history=self.config.mask_history,
                                  memory_budget_mb=self.config.memory_budget_mb, cold_users=self.cold_users,
                                  exclude=self.masked)
        return result.metrics

    def for_model(self, model: Any, test: EvalResult) -> dict[str, Any]:
        """The `beyond`, `slices` and (when asked) `sampled` entries of one model's metrics.json record."""
        out: dict[str, Any] = {}
        if self.config.beyond and test.rankings is not None:
            out["beyond"] = self.beyond(test.rankings)
        out["slices"] = self.slices(test)
        if self.config.sampled is not None:
            out["sampled"] = self.sampled(model)
        return out
