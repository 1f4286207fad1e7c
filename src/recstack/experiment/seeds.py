"""Multi-seed runs: the statistics over seeds that metrics.json, the leaderboard, the report and
`compare` share.

A metric's spread over n seeds is its mean, its sample standard deviation (ddof 1) and the 95%
Student-t interval of the mean, mean +- t(0.975, n - 1) * sd / sqrt(n) (none with n < 2). The
interval describes what a training seed (and, under `split_per_seed`, the split) moves, not the
choice of test users; two leaderboard rows whose intervals overlap are not ordered by the run.
Two models are compared over seeds with the paired t-test of their per-seed means (a seed's
figures pair up: same seed, same split) and a sign count; with fewer than `MIN_POWERED_SEEDS`
seeds the test has little power, and the comparison says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.95
# below this many seeds a paired t-test over seeds rarely detects a real difference (n = 3: only a mean
# gap larger than about 2.5 times the sd of the per-seed gaps, since t(0.975, 2) / sqrt(3) = 2.48)
MIN_POWERED_SEEDS = 5
INTERVAL_NOTE = (f"{CONFIDENCE:.0%} interval over seeds: mean +- t({(1 + CONFIDENCE) / 2:g}, n-1) * sd / sqrt(n), "
                 "sd the sample standard deviation of the per-seed values (Student's t; none with one seed)")


@dataclass(frozen=True)
class Spread:
    """One metric over seeds: mean, sample sd, n and the t interval of the mean (None with n < 2)."""

    mean: float
    sd: float | None
    n: int
    low: float | None
    high: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "low": self.low, "high": self.high}

    def shown(self, digits: int = 4) -> str:
        """'0.1234 ± 0.0056' ('0.1234' alone with one seed)."""
        return f"{self.mean:.{digits}f}" + ("" if self.sd is None else f" ± {self.sd:.{digits}f}")


def _finite(values: Sequence[Any]) -> np.ndarray:
    kept = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return np.asarray(kept, dtype=np.float64)


def spread(values: Sequence[Any], confidence: float = CONFIDENCE) -> Spread | None:
    """The spread of the finite values among `values` (None and NaN are not computed: left out), or None."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return None
    mean = float(x.mean())
    if n < 2:
        return Spread(mean, None, 1, None, None)
    from scipy import stats

    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Spread(mean, sd, n, mean - half, mean + half)


def spread_of(entry: dict[str, Any], part: str, metric: str) -> Spread | None:
    """The spread metrics.json records for one model, part and metric (None: single-seed or not computed)."""
    cell = entry.get("across_seeds", {}).get(part, {}).get(metric)
    return Spread(**cell) if isinstance(cell, dict) and cell.get("mean") is not None else None


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One model's metrics.json record of a multi-seed run from its single-seed records (seed -> record).

    `valid` and `test` hold the means (every reader of a single-seed record reads them unchanged),
    `across_seeds` the spread of every metric, `per_seed` each seed's full record. The analysis
    entries (`beyond`, `slices`, `sampled`) and `best_epoch` are the first seed's (`analysis_seed`):
    the models saved as models/<label>/.
    """
    seeds = list(per_seed)
    records = [per_seed[seed] for seed in seeds]
    first = records[0]
    record: dict[str, Any] = {"model": first.get("model"), "seeds": seeds, "n_seeds": len(seeds)}
    across: dict[str, dict[str, Any]] = {}
    for part in ("valid", "test"):
        metrics = dict.fromkeys(metric for r in records for metric in r.get(part, {}))
        across[part] = {}
        for metric in metrics:
            cell = spread([r.get(part, {}).get(metric) for r in records])
            across[part][metric] = None if cell is None else cell.to_dict()
        record[part] = {metric: None if cell is None else cell["mean"] for metric, cell in across[part].items()}
    record["across_seeds"] = across
    fit = spread([r.get("fit_seconds") for r in records])
    record["fit_seconds"] = None if fit is None else fit.mean  # mean per seed
    record["eval_seconds"] = {part: _mean([r.get("eval_seconds", {}).get(part) for r in records])
                              for part in first.get("eval_seconds", {})}
    for key in ("n_users", "n_skipped_users", "beyond", "slices", "sampled", "best_epoch"):
        if key in first:
            record[key] = first[key]
    record["analysis_seed"] = seeds[0]
    record["per_seed"] = {str(seed): per_seed[seed] for seed in seeds}
    return record


def _mean(values: Sequence[Any]) -> float | None:
    x = _finite(values)
    return float(x.mean()) if len(x) else None


def per_seed_values(entry: dict[str, Any], part: str, metric: str) -> list[tuple[int, float | None]]:
    """(seed, value) of one model's metric, in the run's seed order."""
    return [(int(seed), record.get(part, {}).get(metric)) for seed, record in entry.get("per_seed", {}).items()]


def overlaps_next(intervals: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """For rows in rank order, whether each row's interval overlaps the next row's (the last row: False).

    A row without an interval (one seed) overlaps: nothing separates it from its neighbour.
    """
    marks = []
    for (low, high), (next_low, next_high) in zip(intervals, intervals[1:]):
        if None in (low, high, next_low, next_high):
            marks.append(True)
        else:
            marks.append(max(low, next_low) <= min(high, next_high))  # type: ignore[type-var]
    return marks + [False] if intervals else []


@dataclass
class SeedTest:
    """One model against the baseline over seeds: per-seed means paired by seed."""

    model: str
    baseline: str
    seeds: list[int]
    model_means: list[float]
    baseline_means: list[float]
    p: float
    p_adjusted: float = math.nan
    significant: bool = False

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def diff(self) -> float:
        return float(np.mean(np.subtract(self.model_means, self.baseline_means)))

    @property
    def signs(self) -> tuple[int, int, int]:
        """(seeds where the model is higher, lower, equal) than the baseline."""
        d = np.subtract(self.model_means, self.baseline_means)
        return int((d > 0).sum()), int((d < 0).sum()), int((d == 0).sum())


def seed_test(model: str, baseline: str, seeds: Sequence[int], model_means: Sequence[float],
              baseline_means: Sequence[float]) -> SeedTest:
    """The paired t-test over seeds (NaN with fewer than two seeds; see `stats.paired_t_test`)."""
    from recstack.evaluate.stats import paired_t_test

    return SeedTest(model, baseline, list(seeds), [float(v) for v in model_means],
                    [float(v) for v in baseline_means], paired_t_test(model_means, baseline_means))


def verdict(test: SeedTest, metric: str, alpha: float, higher_is_better: bool = True,
            per_user_significant: int | None = None) -> str:
    """The sentence `compare` prints for one pair: a claim only when the test over seeds holds
    (`per_user_significant`: in how many seeds the per-user test was significant, said alongside)."""
    text = _verdict(test, metric, alpha, higher_is_better)
    if per_user_significant is None:
        return text
    return text[:-1] + f"; per-user tests significant in {per_user_significant} of {test.n} seeds)"


def _verdict(test: SeedTest, metric: str, alpha: float, higher_is_better: bool) -> str:
    higher, lower, ties = test.signs
    ahead = higher if higher_is_better else lower  # seeds where the model does better than the baseline
    behind = lower if higher_is_better else higher
    if test.n < 2:
        return f"{test.model} vs {test.baseline}: one seed, no test over seeds (no claim)"
    p = f"adjusted p {_p(test.p_adjusted)}"
    if test.significant and ahead != behind:
        winner, loser, wins = (test.model, test.baseline, ahead) if ahead > behind else \
            (test.baseline, test.model, behind)
        return (f"{winner} beats {loser} across seeds ({p}, alpha {alpha:g}; better {metric} on {wins} of {test.n} "
                "seeds)")
    return (f"{test.model} vs {test.baseline}: no difference established across seeds ({p}; {test.model} better on "
            f"{ahead}, worse on {behind}" + (f", equal on {ties}" if ties else "") + f" of {test.n} seeds)")


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.3g}" if value >= 1e-4 else "< 0.0001"


def power_note(n: int) -> str | None:
    """A warning line for fewer than `MIN_POWERED_SEEDS` seeds, else None."""
    if n >= MIN_POWERED_SEEDS:
        return None
    return (f"only {n} seed{'s' * (n != 1)}: the test over seeds has little power (a real difference may not be "
            f"detected); use {MIN_POWERED_SEEDS} or more seeds before claiming or denying an order")
