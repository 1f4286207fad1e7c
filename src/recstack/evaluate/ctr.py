"""Pointwise (CTR) metrics over labelled rows: AUC, LogLoss, gAUC, calibration.

Pinned definitions (each has a hand-worked test and a scikit-learn cross-check):

- AUC: the Mann-Whitney statistic, P(score of a random positive > score of a random negative),
  ties counted one half (average ranks); undefined (NaN) unless both classes are present.
- LogLoss: -mean(y log p + (1 - y) log(1 - p)), p clipped to [1e-7, 1 - 1e-7].
- gAUC: AUC per user over the users whose rows hold both classes, averaged with weights equal to
  each user's number of rows (impressions), as in the DIN paper and FuxiCTR; `weighting="users"`
  gives every such user weight 1. The users with one class only are counted, not scored.
- calibration: mean predicted probability / observed positive rate (1.0 = calibrated in the large;
  > 1 over-predicts), with `reliability` giving the per-bin table behind it.

The per-user AUCs (`per_user_auc`) feed the same paired tests the ranking metrics use
(`recstack.evaluate.stats.paired_test`); `gauc_interval` is the users-resampled bootstrap interval of
gAUC, with the settings of `stats.bootstrap_ci` (95%, 2,000 resamples, seed 0).

AUC itself gets DeLong's variance (DeLong, DeLong and Clarke-Pearson, Biometrics 1988), computed from
mid-ranks as in Sun and Xu (IEEE SPL 2014), O(n log n): `auc_interval` is the normal interval
AUC +- z * se, and `delong_test` the paired test of two models' AUCs on the same rows (their
covariance enters the variance of the difference). AUC is a statistic of pairs, not of rows, so
DeLong's U-statistic variance is its standard interval; a row bootstrap would re-sort the rows
thousands of times for the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

EPS = 1e-7
CTR_METRICS = ("AUC", "LogLoss", "gAUC", "Calibration")


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.shape[0]}) and scores ({scores.shape[0]}) differ in length")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return labels, scores


def _grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group (dense ids 0..G-1): AUC (NaN without both classes), n_pos, n_neg, rows."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    rows = np.bincount(g, minlength=n_groups)
    start = np.concatenate([[0], np.cumsum(rows)[:-1]])
    position = np.arange(len(g)) - start[g] + 1.0  # 1-based rank within the group
    # tied scores within a group share their average rank
    new_run = np.ones(len(g), dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run = np.cumsum(new_run) - 1
    run_mean = np.bincount(run, weights=position) / np.bincount(run)
    rank = run_mean[run]
    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_neg = rows - n_pos
    rank_sum = np.bincount(g, weights=rank * y, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc, n_pos, n_neg, rows


def auc(labels, scores) -> float:
    """ROC AUC (ties one half); NaN when one class is missing."""
    labels, scores = _check(labels, scores)
    if len(labels) == 0:
        return float("nan")
    return float(_grouped_auc(labels, scores, np.zeros(len(labels), dtype=np.int64))[0][0])


def row_log_loss(labels, probabilities) -> np.ndarray:
    """Binary cross-entropy of each row's probability (clipped to [EPS, 1 - EPS])."""
    labels, p = _check(labels, probabilities)
    p = np.clip(p, EPS, 1 - EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def log_loss(labels, probabilities) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [EPS, 1 - EPS])."""
    losses = row_log_loss(labels, probabilities)
    return float(losses.mean()) if len(losses) else float("nan")


@dataclass(frozen=True)
class PerUserAUC:
    users: np.ndarray  # user indices with both classes
    auc: np.ndarray
    rows: np.ndarray  # their numbers of rows
    n_single_class: int  # users with rows of one class only (not scored)


def per_user_auc(labels, scores, users) -> PerUserAUC:
    """AUC of each user whose rows hold both classes."""
    labels, scores = _check(labels, scores)
    users = np.asarray(users).ravel()
    ids, dense = np.unique(users, return_inverse=True)
    values, _, _, rows = _grouped_auc(labels, scores, dense.astype(np.int64))
    keep = np.isfinite(values)
    return PerUserAUC(ids[keep], values[keep], rows[keep], int((~keep).sum()))


def gauc(labels, scores, users, *, weighting: Literal["rows", "users"] = "rows") -> float:
    """Per-user AUC averaged over users with both classes, weighted by their rows (or uniformly)."""
    per_user = per_user_auc(labels, scores, users)
    if len(per_user.auc) == 0:
        return float("nan")
    weights = per_user.rows.astype(np.float64) if weighting == "rows" else np.ones(len(per_user.auc))
    return float(np.sum(weights * per_user.auc) / weights.sum())


def gauc_interval(per_user: PerUserAUC, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                  weighting: Literal["rows", "users"] = "rows") -> tuple[float, float]:
    """Percentile bootstrap interval of gAUC: users resampled with replacement (seeded), each resample's
    weighted mean of per-user AUCs; the users are put in id order first, so the interval does not
    depend on row order. The settings match `recstack.evaluate.stats.bootstrap_ci`."""
    n = len(per_user.auc)
    if n == 0:
        return float("nan"), float("nan")
    order = np.argsort(per_user.users, kind="stable")
    values = per_user.auc[order]
    weights = per_user.rows[order].astype(np.float64) if weighting == "rows" else np.ones(n)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    block = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, block):
        draw = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        means[start:start + len(draw)] = (weights[draw] * values[draw]).sum(1) / weights[draw].sum(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    new_run = np.ones(len(x), dtype=bool)
    new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run = np.cumsum(new_run) - 1
    positions = np.arange(1, len(x) + 1, dtype=np.float64)
    mean = np.bincount(run, weights=positions) / np.bincount(run)
    ranks = np.empty(len(x))
    ranks[order] = mean[run]
    return ranks


def delong(labels, *scores) -> tuple[np.ndarray, np.ndarray]:
    """The AUCs of each score vector on the same rows and DeLong's covariance matrix of them.

    With m positives X and n negatives Y, the structural components are V10_i = (R(X_i) - R_X(X_i)) / n
    and V01_j = 1 - (R(Y_j) - R_Y(Y_j)) / m (R: mid-rank among all rows, R_X / R_Y: among the
    positives / negatives alone); AUC = mean V10 and cov = cov(V10) / m + cov(V01) / n."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    columns = [_check(labels, score)[1] for score in scores]
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's variance needs at least two rows of each class; got {m} positives, {n} negatives")
    v10, v01 = np.empty((len(columns), m)), np.empty((len(columns), n))
    for k, score in enumerate(columns):
        everything = _midranks(score)
        v10[k] = (everything[positive] - _midranks(score[positive])) / n
        v01[k] = 1.0 - (everything[~positive] - _midranks(score[~positive])) / m
    aucs = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def auc_interval(labels, scores, *, confidence: float = 0.95) -> tuple[float, float]:
    """DeLong's normal interval of AUC, clipped to [0, 1]; NaNs with fewer than two rows of a class."""
    from scipy.stats import norm

    try:
        aucs, covariance = delong(labels, scores)
    except ValueError:
        return float("nan"), float("nan")
    half = norm.ppf((1 + confidence) / 2) * np.sqrt(max(covariance[0, 0], 0.0))
    return float(max(0.0, aucs[0] - half)), float(min(1.0, aucs[0] + half))


def delong_test(labels, scores_a, scores_b) -> float:
    """Two-sided p-value of DeLong's paired test that two models' AUCs on the same rows are equal
    (1.0 when their difference has no variance: the two rankings agree on every pair)."""
    from scipy.stats import norm

    aucs, covariance = delong(labels, scores_a, scores_b)
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if variance <= 1e-15:
        return 1.0 if abs(aucs[0] - aucs[1]) < 1e-12 else 0.0
    z = (aucs[0] - aucs[1]) / np.sqrt(variance)
    return float(2 * norm.sf(abs(z)))


def calibration(labels, probabilities) -> float:
    """Mean predicted probability / observed positive rate (1.0 = calibrated in the large)."""
    labels, p = _check(labels, probabilities)
    observed = labels.mean() if len(labels) else float("nan")
    return float(p.mean() / observed) if observed > 0 else float("nan")


def reliability(labels, probabilities, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-width probability bins: rows, mean predicted and observed rate per non-empty bin."""
    labels, p = _check(labels, probabilities)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    out = []
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            out.append({"bin": b, "low": b / n_bins, "high": (b + 1) / n_bins, "rows": int(inside.sum()),
                        "predicted": float(p[inside].mean()), "observed": float(labels[inside].mean())})
    return out


def ctr_metrics(labels, probabilities, users) -> dict[str, float]:
    """AUC, LogLoss, gAUC (row-weighted) and Calibration of one set of rows."""
    return {"AUC": auc(labels, probabilities), "LogLoss": log_loss(labels, probabilities),
            "gAUC": gauc(labels, probabilities, users), "Calibration": calibration(labels, probabilities)}
