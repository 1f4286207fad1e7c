"""`recstack compare` for CTR runs: paired tests on the test rows' predictions that each run keeps.

A CTR run writes every model's test-row probabilities (`predictions.parquet`). Runs of one row split
(equal `rows_fingerprint`: the same rows and labels in each part, whatever fields each model read)
pair up row by row, so a leaderboard trained one model per process (`recstack run --only`) is
tested as one run would be, with nothing refitted or re-predicted. The metrics:

- `AUC`: DeLong's paired test of each model's AUC against the baseline's on the same rows, with
  DeLong's normal intervals of the AUC and of the difference;
- `gAUC`: the paired test (t, Wilcoxon or permutation) of per-user AUCs, each user weighted once
  (the leaderboard's gAUC weighs users by their rows), over the users with rows of both labels;
- `LogLoss`: the paired test of per-row log losses (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recstack.errors import RecstackError
from recstack.evaluate.stats import CORRECTION_NAMES, Comparison, ComparisonRow

CTR_METRICS = ("AUC", "gAUC", "LogLoss")


@dataclass
class DeLongComparison(Comparison):
    """AUCs against the baseline's by DeLong's paired test; the row counts are rows, not users."""

    n_rows: int = 0

    @property
    def description(self) -> str:
        return (f"DeLong's paired test of each model's AUC against {self.baseline!r} on the same "
                f"{self.n_rows:,} test rows; correction across {max(len(self.rows) - 1, 0)} comparisons: "
                f"{CORRECTION_NAMES[self.correction]}; alpha {self.alpha:g}; {self.confidence:.0%} DeLong "
                "normal intervals")


@dataclass
class CTRPredictions:
    """One CTR run's test predictions: the rows' labels and users, and each model's probabilities."""

    name: str
    run_dir: Path
    rows_fingerprint: str
    label: np.ndarray
    user: np.ndarray
    p: dict[str, np.ndarray]


def read_predictions(run_dir: Path, manifest: dict[str, Any], name: str) -> CTRPredictions:
    """The predictions of a CTR run directory; one error line when the run kept none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recstack.experiment import rundir

    path = run_dir / rundir.PREDICTIONS
    fingerprint = manifest.get("rows_fingerprint")
    if not path.is_file() or not fingerprint:
        raise RecstackError(f"CTR run {name!r} has no {rundir.PREDICTIONS} (it was written before CTR runs kept "
                            "their test predictions); rerun it with this version of recstack, or use "
                            "benchmarks/ctr_runs_paired.py, which re-predicts from the saved models")
    table = pq.read_table(path)
    models = [str(m) for m in dict.fromkeys(table["model"].to_pylist())]
    p: dict[str, np.ndarray] = {}
    label = user = None
    for model in models:
        rows = table.filter(pc.equal(table["model"], model))
        order = np.argsort(rows["row"].to_numpy(), kind="stable")
        if label is None:
            label = rows["label"].to_numpy()[order].astype(np.int8)
            user = rows["user"].to_numpy()[order].astype(np.int64)
        elif not np.array_equal(rows["label"].to_numpy()[order], label):
            raise RecstackError(f"{path}: model {model!r} has other test labels than {models[0]!r}; the file is "
                                "damaged: rerun the experiment")
        p[model] = rows["p"].to_numpy()[order].astype(np.float64)
    if not models:
        raise RecstackError(f"{path} holds no predictions; rerun the experiment")
    return CTRPredictions(name, run_dir, str(fingerprint), label, user, p)  # type: ignore[arg-type]


def check_same_rows(runs: Sequence[CTRPredictions]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.rows_fingerprint != first.rows_fingerprint or not np.array_equal(run.label, first.label):
            raise RecstackError(
                f"cannot compare CTR run {first.name!r} (rows fingerprint {first.rows_fingerprint}) with run "
                f"{run.name!r} (rows fingerprint {run.rows_fingerprint}): their test rows differ, and paired "
                "tests need the same rows with the same labels; compare runs of one data set, label threshold, "
                "split ratios and seed")


def merged(runs: Sequence[CTRPredictions]) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    """Every model's probabilities; a label that appears in more than one run is shown `<run>/<model>`."""
    counts: dict[str, int] = {}
    for run in runs:
        for model in run.p:
            counts[model] = counts.get(model, 0) + 1
    out: dict[str, np.ndarray] = {}
    labels: dict[str, tuple[str, str]] = {}
    for run in runs:
        for model, p in run.p.items():
            shown = f"{run.name}/{model}" if counts[model] > 1 else model
            out[shown], labels[shown] = p, (run.name, model)
    return out, labels


def delong_comparison(label: np.ndarray, predictions: dict[str, np.ndarray], baseline: str | None, *,
                      correction: str | None, alpha: float, confidence: float) -> DeLongComparison:
    """Each model's AUC against the baseline's (default: the best AUC) by DeLong's paired test."""
    from scipy.stats import norm

    from recstack.evaluate.ctr import delong
    from recstack.evaluate.stats import adjust

    positives = int(label.sum())
    if positives < 2 or len(label) - positives < 2:
        raise RecstackError(f"DeLong's test needs at least two test rows of each label; the runs' test rows have "
                            f"{positives} positive and {len(label) - positives} negative")
    models = list(predictions)
    aucs, covariance = delong(label, *[predictions[m] for m in models])
    auc_of = dict(zip(models, aucs))
    if baseline is None:
        baseline = max(models, key=auc_of.__getitem__)
    b = models.index(baseline)
    z = norm.ppf((1 + confidence) / 2)
    rows, tested = [], []
    for k in np.argsort(-aucs, kind="stable"):
        model, half = models[k], z * np.sqrt(max(covariance[k, k], 0.0))
        row = ComparisonRow(model, len(label), float(aucs[k]), float(max(0.0, aucs[k] - half)),
                            float(min(1.0, aucs[k] + half)), is_baseline=k == b)
        if k != b:
            variance = covariance[k, k] + covariance[b, b] - 2 * covariance[k, b]
            diff = float(aucs[k] - aucs[b])
            spread = z * np.sqrt(max(variance, 0.0))
            row.n_paired, row.diff = len(label), diff
            row.diff_ci_low, row.diff_ci_high = diff - spread, diff + spread
            row.p = (float(2 * norm.sf(abs(diff) / np.sqrt(variance))) if variance > 1e-15
                     else (1.0 if abs(diff) < 1e-12 else 0.0))
            tested.append(row)
        rows.append(row)
    for row, p_adjusted in zip(tested, adjust([row.p for row in tested], correction)):  # type: ignore[arg-type]
        row.p_adjusted = float(p_adjusted)
        row.significant = bool(p_adjusted < alpha)
    return DeLongComparison("AUC", baseline, "delong", correction, alpha, confidence, True, "effect size", rows,
                            n_rows=len(label))


def paired_values(metric: str, label: np.ndarray, user: np.ndarray, predictions: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Long-format values for `compare_models`: per-user AUC (gAUC) or per-row log loss (LogLoss); the
    `user_id` column holds the user, or the test row for LogLoss."""
    from recstack.evaluate.ctr import per_user_auc, row_log_loss

    columns: dict[str, list[np.ndarray]] = {"model": [], "user_id": [], "value": []}
    for model, p in predictions.items():
        if metric == "gAUC":
            values = per_user_auc(label, p, user)
            ids, value = values.users, values.auc
        else:
            ids, value = np.arange(len(label)), row_log_loss(label, p)
        columns["model"].append(np.full(len(ids), model, dtype=object))
        columns["user_id"].append(np.asarray(ids))
        columns["value"].append(np.asarray(value, dtype=np.float64))
    return {name: np.concatenate(chunks) for name, chunks in columns.items()}
