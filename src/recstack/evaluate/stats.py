"""Paired significance tests over per-user metric values, multiple-comparison corrections,
effect sizes and bootstrap confidence intervals.

Two models evaluated on one split give one value per user each, so every comparison here is
*paired*: it works on the per-user differences d_u = x_u - y_u over the users both models have.

    paired t-test            scipy.stats.ttest_rel: is the mean of d zero?
    Wilcoxon signed-rank     scipy.stats.wilcoxon (zero differences dropped, scipy's default):
                             is d symmetric about zero?
    randomisation test       sign-flipping of d (under H0 each d_u is as likely to be -d_u);
                             statistic |mean d|; every one of the 2^n flips when 2^n <= n_resamples
                             (exact p), else n_resamples seeded random flips with
                             p = (1 + #{|mean d*| >= |mean d|}) / (n_resamples + 1)
    Holm-Bonferroni          step-down family-wise error control (any dependence)
    Benjamini-Hochberg       step-up false-discovery-rate control (independent or positively
                             dependent tests)
    Cohen's d (paired, d_z)  mean(d) / sd(d), sd with ddof=1
    rank-biserial r          (T+ - T-) / (T+ + T-) over the ranks of |d|, zeros dropped as in
                             the Wilcoxon test; in [-1, 1]
    bootstrap CI             percentile interval of the mean over resampled users; the values are
                             sorted first, so the same users in any order give the same interval

`compare_models` puts these together: every model against the best one (or a named baseline)
on one metric, one correction across the family of comparisons. See docs/significance.md.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from recstack.errors import RecstackError

Test = Literal["t", "wilcoxon", "permutation"]
Correction = Literal["holm", "bh"]
TESTS = ("t", "wilcoxon", "permutation")
CORRECTIONS = ("holm", "bh")
TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test",
              "permutation": "paired randomisation test"}
CORRECTION_NAMES = {"holm": "Holm-Bonferroni", "bh": "Benjamini-Hochberg", None: "none"}
EFFECT_NAMES = {"t": "Cohen's d", "wilcoxon": "rank-biserial r", "permutation": "Cohen's d"}
# metrics where smaller is better; every ranking metric is larger-is-better
_LOWER_IS_BETTER = ("RMSE", "MAE", "MSE", "LOGLOSS")
_BLOCK = 2_000_000  # resampled values held at once (16 MB of float64)
# the one bootstrap setting of every interval recstack prints (compare, report, slices), so one
# figure gets one interval wherever it is shown
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2_000
BOOTSTRAP_SEED = 0


# ---- tests --------------------------------------------------------------------------------------

def _paired(x: Any, y: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise RecstackError(f"paired values need equal lengths, got {len(x)} and {len(y)}; "
                            "align the users of both models first")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise RecstackError("paired values contain NaN or infinity; drop or fix those users first")
    return x - y


def paired_t_test(x: Any, y: Any) -> float:
    """Two-sided p of the paired t-test of mean(x - y) = 0 (NaN with fewer than two pairs).

    All differences zero gives p = 1; a constant non-zero difference gives p = 0.
    """
    d = _paired(x, y)
    if len(d) < 2:
        return math.nan
    if not d.any():
        return 1.0
    from scipy import stats

    with warnings.catch_warnings():  # identical-data precision warnings: the p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(x, y).pvalue)


def wilcoxon_test(x: Any, y: Any) -> float:
    """Two-sided p of the Wilcoxon signed-rank test (zero differences dropped; NaN with no pairs).

    scipy chooses the exact null distribution for small samples without ties and the normal
    approximation otherwise. All differences zero gives p = 1.
    """
    d = _paired(x, y)
    if len(d) == 0:
        return math.nan
    if not d.any():
        return 1.0
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def _sign_blocks(n: int, n_resamples: int, rng: np.random.Generator):
    rows = max(1, _BLOCK // max(n, 1))
    done = 0
    while done < n_resamples:
        size = min(rows, n_resamples - done)
        yield rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        done += size


def permutation_test(x: Any, y: Any, *, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p of the paired randomisation (sign-flip) test of mean(x - y) = 0.

    Exact when 2^n <= `n_resamples` (every sign vector, the observed one included, so no +1);
    otherwise `n_resamples` seeded random sign vectors and p = (1 + count) / (n_resamples + 1),
    which never reports p = 0 for a p-value that was estimated. NaN with no pairs.
    """
    d = _paired(x, y)
    n = len(d)
    if n_resamples < 1:
        raise RecstackError(f"n_resamples must be >= 1, got {n_resamples}")
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    # flipped means that equal the observed one up to rounding must count as "as extreme"
    threshold = observed * (1 - 1e-9)
    if n < 63 and 2 ** n <= n_resamples:
        bits = (np.arange(2 ** n, dtype=np.int64)[:, None] >> np.arange(n)) & 1
        means = ((1 - 2 * bits) @ d) / n
        return float(np.count_nonzero(np.abs(means) >= threshold) / 2 ** n)
    rng = np.random.default_rng(seed)
    count = 0
    for signs in _sign_blocks(n, n_resamples, rng):
        count += int(np.count_nonzero(np.abs(signs @ d) / n >= threshold))
    return (1 + count) / (n_resamples + 1)


def paired_test(x: Any, y: Any, test: Test = "t", *, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p of `test` ("t", "wilcoxon" or "permutation") on paired values x, y."""
    check_test(test)
    if test == "t":
        return paired_t_test(x, y)
    if test == "wilcoxon":
        return wilcoxon_test(x, y)
    return permutation_test(x, y, n_resamples=n_resamples, seed=seed)


# ---- corrections --------------------------------------------------------------------------------

def _pvalues(p: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).ravel()
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise RecstackError(f"p-values must lie in [0, 1], got {p[finite][(p[finite] < 0) | (p[finite] > 1)]}")
    return p, finite


def holm(p: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order (NaN stays NaN and is not counted).

    Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting where the
    adjusted p is below alpha controls the family-wise error rate at alpha.
    """
    p, finite = _pvalues(p)
    out = np.full(p.shape, np.nan)
    values = p[finite]
    m = len(values)
    if m:
        order = np.argsort(values, kind="stable")
        stepped = np.minimum(1.0, (m - np.arange(m)) * values[order])
        adjusted = np.empty(m)
        adjusted[order] = np.maximum.accumulate(stepped)
        out[finite] = adjusted
    return out


def benjamini_hochberg(p: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order (NaN stays NaN).

    Sorted ascending, p_(i) becomes min_{j >= i} min(1, m p_(j) / j); rejecting where the
    adjusted p is below alpha controls the false discovery rate at alpha.
    """
    p, finite = _pvalues(p)
    out = np.full(p.shape, np.nan)
    values = p[finite]
    m = len(values)
    if m:
        order = np.argsort(values, kind="stable")
        scaled = values[order] * m / np.arange(1, m + 1)
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
        out[finite] = adjusted
    return out


def adjust(p: Any, correction: Correction | None) -> np.ndarray:
    """Adjusted p-values: "holm", "bh" or None (the p-values unchanged)."""
    if correction is None:
        return _pvalues(p)[0].copy()
    if correction not in CORRECTIONS:
        raise RecstackError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)} or none")
    return holm(p) if correction == "holm" else benjamini_hochberg(p)


# ---- effect sizes and intervals -----------------------------------------------------------------

def cohens_d(x: Any, y: Any) -> float:
    """Paired Cohen's d (d_z): mean(x - y) / sd(x - y), sd with ddof = 1.

    0 when every difference is 0, +-inf when the difference is a non-zero constant, NaN with
    fewer than two pairs.
    """
    d = _paired(x, y)
    if len(d) < 2:
        return math.nan
    mean, sd = d.mean(), d.std(ddof=1)
    if sd == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return float(mean / sd)


def rank_biserial(x: Any, y: Any) -> float:
    """Matched-pairs rank-biserial correlation (T+ - T-) / (T+ + T-) of x - y.

    T+ and T- are the sums of the ranks of |d| (average ranks for ties) over the positive and
    the negative differences; zero differences are dropped, as the Wilcoxon test here does.
    1 means every non-zero difference favours x. 0 when every difference is zero.
    """
    d = _paired(x, y)
    d = d[d != 0]
    if len(d) == 0:
        return 0.0
    from scipy import stats

    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def bootstrap_ci(values: Any, *, confidence: float = BOOTSTRAP_CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample users with replacement, seeded.

    The interval depends on the values and the seed only, not on their order: the values are
    sorted before resampling (a run's files keep users in index order, `compare` in id order).
    (NaN, NaN) for no values; a single value gives a zero-width interval.
    """
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if not 0 < confidence < 1:
        raise RecstackError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise RecstackError(f"n_resamples must be >= 1, got {n_resamples}")
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        means[start:start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


# ---- comparing models ---------------------------------------------------------------------------

@dataclass
class ComparisonRow:
    """One model against the baseline. The baseline's own row has no test (`p` is None)."""

    model: str
    n_users: int  # users with a value for this model
    mean: float
    ci_low: float
    ci_high: float
    is_baseline: bool = False
    n_paired: int | None = None  # users both this model and the baseline have
    diff: float | None = None  # mean over paired users of (model - baseline)
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    effect_size: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    significant: bool | None = None


@dataclass
class Comparison:
    """The result of `compare_models`: rows best first (the baseline marked), and how to read them."""

    metric: str
    baseline: str
    test: str
    correction: str | None
    alpha: float
    confidence: float
    higher_is_better: bool
    effect_name: str
    rows: list[ComparisonRow] = field(default_factory=list)
    n_resamples: int = 10_000
    n_bootstrap: int = 2_000
    seed: int = 0
    unit: str = "user"  # what each paired value belongs to (a CTR comparison of log losses: "row")

    def row(self, model: str) -> ComparisonRow:
        for row in self.rows:
            if row.model == model:
                return row
        raise KeyError(model)

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (for a DataFrame or JSON)."""
        return [asdict(row) for row in self.rows]

    @property
    def description(self) -> str:
        """One sentence saying what was tested and how."""
        correction = CORRECTION_NAMES[self.correction]
        extra = f", {self.n_resamples:,} sign flips" if self.test == "permutation" else ""
        return (f"{TEST_NAMES[self.test]}{extra} of each model against {self.baseline!r} on per-{self.unit} "
                f"{self.metric}; correction across {max(len(self.rows) - 1, 0)} comparisons: {correction}; "
                f"alpha {self.alpha:g}; effect size {self.effect_name}; "
                f"{self.confidence:.0%} percentile bootstrap intervals ({self.n_bootstrap:,} resamples)")


def check_test(test: str) -> None:
    if test not in TESTS:
        raise RecstackError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")


def lower_is_better(metric: str) -> bool:
    """True for error metrics (RMSE, MAE, ...), False for every ranking metric."""
    return metric.split("@")[0].upper() in _LOWER_IS_BETTER


def _column(table: Any, name: str) -> np.ndarray | None:
    try:
        column = table[name]
    except Exception:  # noqa: BLE001 - pandas, polars and pyarrow each raise their own "no such column"
        return None
    return column.to_numpy() if hasattr(column, "to_numpy") else np.asarray(column)


def _by_model(per_user: Any, metric: str, part: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """model -> (user ids sorted, values) for one metric (and part, where the table has parts)."""
    columns = {name: _column(per_user, name) for name in ("model", "user_id", "value", "metric", "part")}
    missing = [name for name in ("model", "user_id", "value") if columns[name] is None]
    if missing:
        raise RecstackError(f"per-user values need the columns model, user_id and value (metric and part "
                            f"optional); missing: {', '.join(missing)}")
    keep = np.ones(len(columns["model"]), dtype=bool)
    if columns["metric"] is not None:
        available = sorted(set(columns["metric"].tolist()))
        if metric not in available:
            import difflib

            close = difflib.get_close_matches(metric, available, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecstackError(f"no per-user values of metric {metric!r}.{hint} "
                                f"Available: {', '.join(available) or 'none'}")
        keep &= columns["metric"] == metric
    if part is not None and columns["part"] is not None:
        parts = set(columns["part"].tolist())
        if part not in parts:
            raise RecstackError(f"no per-user values of part {part!r}; available: {', '.join(sorted(parts))}")
        keep &= columns["part"] == part
    models = columns["model"][keep].astype(str)
    users = columns["user_id"][keep]
    values = columns["value"][keep].astype(np.float64)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for model in dict.fromkeys(models.tolist()):  # first-appearance order
        mine = models == model
        ids, vals = users[mine], values[mine]
        order = np.argsort(ids, kind="stable")
        ids, vals = ids[order], vals[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            raise RecstackError(f"model {model!r} has more than one {metric} value for some users "
                                f"(e.g. {ids[1:][ids[1:] == ids[:-1]][0]!r}); give one value per user")
        if not np.isfinite(vals).all():
            raise RecstackError(f"model {model!r} has NaN or infinite {metric} values; drop those users first")
        out[model] = (ids, vals)
    return out


def mean_intervals(per_user: Any, metric: str, models: Any = None, *, part: str | None = "test",
                   confidence: float = BOOTSTRAP_CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> dict[str, tuple[float, float, int]]:
    """model -> (CI low, CI high, n users): `bootstrap_ci` of each model's per-user `metric`.

    Reads `per_user` exactly as `compare_models` does, so the report's leaderboard and
    `recstack compare` print the same interval for the same figure. `models` picks and orders
    the models (those without values are left out); None keeps them all.
    """
    for name, wanted in (("metric", metric), ("part", part)):
        column = _column(per_user, name)
        if wanted is not None and column is not None and wanted not in set(column.tolist()):
            return {}  # nothing to bootstrap; `compare_models` is the one that names what is missing
    groups = _by_model(per_user, metric, part)
    out = {}
    for model in groups if models is None else models:
        if model in groups:
            vals = groups[model][1]
            out[model] = (*bootstrap_ci(vals, confidence=confidence, n_resamples=n_resamples, seed=seed), len(vals))
    return out


def compare_models(
    per_user: Any,
    metric: str,
    baseline: str | None = None,
    test: Test = "t",
    correction: Correction | None = "holm",
    alpha: float = 0.05,
    *,
    part: str | None = "test",
    confidence: float = BOOTSTRAP_CONFIDENCE,
    n_resamples: int = 10_000,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    higher_is_better: bool | None = None,
) -> Comparison:
    """Compare every model with the best one (or `baseline`) on per-user values of `metric`.

    `per_user` is long-format per-user values, as in a run's `per_user.parquet`: a pandas or
    polars DataFrame, a pyarrow Table or a mapping of columns `model`, `user_id`, `value` and
    optionally `metric` and `part` (rows of other metrics / parts are ignored). Each pair is
    tested over the users both models have. One correction ("holm", "bh" or None) covers the
    family of comparisons; `significant` is adjusted p < alpha. Rows come best first.
    `higher_is_better` defaults from the metric name (RMSE/MAE lower, everything else higher).
    """
    check_test(test)
    if correction is not None and correction not in CORRECTIONS:
        raise RecstackError(f"unknown correction {correction!r}; choose one of {', '.join(CORRECTIONS)} or none")
    if not 0 < alpha < 1:
        raise RecstackError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    groups = _by_model(per_user, metric, part)
    if len(groups) < 2:
        raise RecstackError(f"comparing needs at least two models with {metric} values, got "
                            f"{', '.join(groups) or 'none'}")
    if higher_is_better is None:
        higher_is_better = not lower_is_better(metric)
    means = {model: float(vals.mean()) for model, (_, vals) in groups.items()}
    if baseline is None:
        pick = max if higher_is_better else min
        baseline = pick(means, key=means.__getitem__)
    elif baseline not in groups:
        import difflib

        close = difflib.get_close_matches(baseline, list(groups), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecstackError(f"baseline {baseline!r} is not among the models.{hint} "
                            f"Models: {', '.join(groups)}")

    rows: list[ComparisonRow] = []
    base_ids, base_vals = groups[baseline]
    for model, (ids, vals) in groups.items():
        low, high = bootstrap_ci(vals, confidence=confidence, n_resamples=n_bootstrap, seed=seed)
        row = ComparisonRow(model, len(vals), means[model], low, high, is_baseline=model == baseline)
        if model != baseline:
            _, mine, theirs = np.intersect1d(ids, base_ids, assume_unique=True, return_indices=True)
            x, y = vals[mine], base_vals[theirs]
            row.n_paired = len(x)
            if len(x):
                d = x - y
                row.diff = float(d.mean())
                row.diff_ci_low, row.diff_ci_high = bootstrap_ci(d, confidence=confidence, n_resamples=n_bootstrap,
                                                                 seed=seed)
                row.effect_size = rank_biserial(x, y) if test == "wilcoxon" else cohens_d(x, y)
            row.p = paired_test(x, y, test, n_resamples=n_resamples, seed=seed)
        rows.append(row)

    tested = [row for row in rows if not row.is_baseline]
    adjusted = adjust([row.p for row in tested], correction)
    for row, p_adj in zip(tested, adjusted):
        row.p_adjusted = float(p_adj)
        row.significant = bool(p_adj < alpha)  # NaN (too few pairs) compares False
    rows.sort(key=lambda row: -row.mean if higher_is_better else row.mean)
    return Comparison(metric=metric, baseline=baseline, test=test, correction=correction, alpha=alpha,
                      confidence=confidence, higher_is_better=higher_is_better, effect_name=EFFECT_NAMES[test],
                      rows=rows, n_resamples=n_resamples, n_bootstrap=n_bootstrap, seed=seed)

