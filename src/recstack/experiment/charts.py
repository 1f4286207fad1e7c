"""The charts of a run report: plain data first, then two renderings (plotly for the HTML, matplotlib PNGs).

Each `Chart` is built from a run directory's files by a pure function (`leaderboard_chart`,
`k_curves`, `tradeoff_chart`, `slice_charts`, `popularity_chart`, `training_charts`), so the
numbers a chart shows can be tested without a browser or a plotting library. `to_plotly` turns a
chart into a plotly figure (embedded interactively in report.html, plotly.js inline so it opens
offline); `to_png` draws the same chart with matplotlib (Agg) as the static fallback. Both
libraries are optional: `plotting_backends()` says which are installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import scipy.sparse as sp

Mode = Literal["bar", "lines", "markers"]
PALETTE = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac")


@dataclass
class Series:
    """One trace: y over x; optional absolute interval bounds (error bars) and point labels."""

    name: str
    x: list[Any]
    y: list[float | None]
    mode: Mode = "lines"
    low: list[float | None] | None = None
    high: list[float | None] | None = None
    text: list[str] | None = None
    dash: bool = False


@dataclass
class Chart:
    key: str  # file-safe: plots/<key>.png and the HTML element id chart-<key>
    title: str
    x_title: str
    y_title: str
    series: list[Series] = field(default_factory=list)
    caption: str = ""
    categorical_x: bool = False
    x_ticks: list[float] | None = None  # exact tick positions (the cut-offs of a k curve)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def safe_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "chart"


# ---- data builders -----------------------------------------------------------------------------

def leaderboard_cis(per_user: Any, metric: str, models: Sequence[str], *, confidence: float = 0.95,
                    n_resamples: int = 2_000, seed: int = 0) -> dict[str, tuple[float, float, int]]:
    """model -> (CI low, CI high, n users): percentile bootstrap of the per-user test `metric`.

    `per_user` is a run's per_user.parquet as a mapping of columns (model, part, metric, value).
    Models without per-user values of `metric` are left out.
    """
    from recstack.evaluate.stats import bootstrap_ci

    model = np.asarray(per_user["model"], dtype=object)
    chosen = (np.asarray(per_user["part"], dtype=object) == "test") & \
             (np.asarray(per_user["metric"], dtype=object) == metric)
    values = np.asarray(per_user["value"], dtype=np.float64)
    out = {}
    for label in models:
        mine = values[chosen & (model == label)]
        if len(mine):
            low, high = bootstrap_ci(mine, confidence=confidence, n_resamples=n_resamples, seed=seed)
            out[label] = (low, high, len(mine))
    return out


def leaderboard_chart(rows: Sequence[tuple[str, float | None]], metric: str,
                      cis: dict[str, tuple[float, float, int]]) -> Chart:
    """Bars of test `metric` per model (in the given order) with the bootstrap interval as error bars."""
    labels = [label for label, _ in rows]
    series = Series(metric, labels, [_number(v) for _, v in rows], mode="bar",
                    low=[cis[m][0] if m in cis else None for m in labels],
                    high=[cis[m][1] if m in cis else None for m in labels])
    return Chart("leaderboard", f"Test {metric} per model (95% bootstrap CI over users)", "model", metric,
                 [series], "error bars: 95% percentile bootstrap interval of the mean over test users "
                 "(2,000 resamples, seed 0)", categorical_x=True)


def k_curves(metrics: dict[str, Any], ks: Sequence[int], names: Sequence[str] = ("NDCG", "Recall"),
             order: Sequence[str] | None = None) -> list[Chart]:
    """Test metric vs cut-off k, one line per model, one chart per metric name that has values."""
    order = list(order or metrics)
    ks = sorted(ks)
    charts = []
    for name in names:
        series = []
        for label in order:
            y = [_number(metrics[label].get("test", {}).get(f"{name}@{k}")) for k in ks]
            if any(v is not None for v in y):
                series.append(Series(label, list(ks), y, mode="lines"))
        if series:
            charts.append(Chart(f"k_{safe_key(name)}", f"Test {name}@k vs k", "k (cut-off)", f"{name}@k", series,
                                f"test {name} at each cut-off of the run", x_ticks=list(ks)))
    return charts


def tradeoff_chart(metrics: dict[str, Any], k: int, x_key: str, x_title: str, key: str, caption: str,
                   order: Sequence[str] | None = None) -> Chart | None:
    """Scatter of test NDCG@k (y) against a beyond-accuracy measure `x_key`@k (x), one point per model."""
    series = []
    for label in order or metrics:
        entry = metrics[label]
        x = _number(entry.get("beyond", {}).get(f"{x_key}@{k}"))
        y = _number(entry.get("test", {}).get(f"NDCG@{k}"))
        if x is not None and y is not None:
            series.append(Series(label, [x], [y], mode="markers", text=[label]))
    if not series:
        return None
    return Chart(key, f"NDCG@{k} vs {x_title}", x_title, f"NDCG@{k}", series, caption)


def slice_charts(metrics: dict[str, Any], k: int, order: Sequence[str] | None = None) -> list[Chart]:
    """Grouped bars of test NDCG@k per group of each slice, one bar per model."""
    order = [label for label in (order or metrics) if metrics[label].get("slices")]
    if not order:
        return []
    charts = []
    for name, entry in metrics[order[0]]["slices"].items():
        groups = list(entry["groups"])
        series = [Series(label, groups, [_number(metrics[label]["slices"].get(name, {}).get("groups", {})
                                                 .get(g, {}).get(f"NDCG@{k}")) for g in groups], mode="bar")
                  for label in order]
        charts.append(Chart(f"slice_{safe_key(name)}", f"Test NDCG@{k} per group: {name}", "group", f"NDCG@{k}",
                            series, entry.get("definition", ""), categorical_x=True))
    return charts


def popularity_bias(lists: np.ndarray, history: sp.spmatrix, popularity: np.ndarray, n_buckets: int = 5
                    ) -> dict[str, Any]:
    """Mean popularity of recommended items against that of each user's history, per user bucket.

    `lists` (n_users, k) item indices (-1 = empty slot), `history` (n_users, n_items) the users'
    interactions (values ignored), `popularity` train interactions per item. Users are cut into
    `n_buckets` quantile buckets by the mean popularity of their history items (users without
    history or without recommendations are left out; buckets emptied by ties are dropped). Per
    bucket: users, mean historical popularity and mean recommended popularity (ARP) of its users.
    A model that follows each user's taste lies on the diagonal; above it, it pushes popular items.
    """
    popularity = np.asarray(popularity, dtype=np.float64)
    lists = np.asarray(lists)
    seen = sp.csr_matrix(history, dtype=np.float64, copy=True)
    seen.data[:] = 1.0
    counts = np.diff(seen.indptr)
    with np.errstate(invalid="ignore", divide="ignore"):
        historical = np.asarray(seen @ popularity).ravel() / counts
        valid = lists >= 0
        recommended = (popularity[np.where(valid, lists, 0)] * valid).sum(axis=1) / valid.sum(axis=1)
    keep = np.isfinite(historical) & np.isfinite(recommended)
    historical, recommended = historical[keep], recommended[keep]
    if not len(historical):
        return {"k": int(lists.shape[1]), "n_buckets": n_buckets, "cut_points": [], "buckets": []}
    cuts = np.quantile(historical, np.linspace(0, 1, n_buckets + 1)[1:-1])
    bucket = np.searchsorted(cuts, historical, side="left")  # a value equal to a cut goes to the lower bucket
    buckets = []
    for b in range(n_buckets):
        mine = bucket == b
        if mine.any():
            buckets.append({"bucket": f"Q{b + 1}", "n_users": int(mine.sum()),
                            "historical": float(historical[mine].mean()),
                            "recommended": float(recommended[mine].mean())})
    return {"k": int(lists.shape[1]), "n_buckets": n_buckets, "cut_points": cuts.tolist(), "buckets": buckets}


def popularity_chart(metrics: dict[str, Any], order: Sequence[str] | None = None) -> Chart | None:
    """Recommended vs historical popularity per user bucket, one line per model, and the diagonal."""
    series, k, top, bottom = [], None, 0.0, math.inf
    for label in order or metrics:
        data = metrics[label].get("beyond", {}).get("popularity_bias")
        if not data or not data.get("buckets"):
            continue
        k = data["k"]
        xs = [b["historical"] for b in data["buckets"]]
        ys = [b["recommended"] for b in data["buckets"]]
        top, bottom = max(top, *xs, *ys), min(bottom, *xs, *ys)
        series.append(Series(label, xs, ys, mode="lines", text=[f"{b['bucket']} ({b['n_users']} users)"
                                                                 for b in data["buckets"]]))
    if not series:
        return None
    series.append(Series("history (y = x)", [bottom, top], [bottom, top], mode="lines", dash=True))
    return Chart("popularity_bias", f"Popularity bias: recommended vs historical popularity (top-{k})",
                 "mean train popularity of the user's history items", "mean train popularity of recommended items",
                 series, "users in quintiles of their history's mean item popularity; one point per quintile. "
                 "Above the dashed diagonal a model recommends more popular items than the users consumed.")


def training_charts(curves: dict[str, list[dict[str, Any]]]) -> list[Chart]:
    """One chart per logged series (loss, each validation metric), one line per model, x = epoch."""
    by_key: dict[str, list[Series]] = {}
    for label, epochs in curves.items():
        keys = [k for k in dict.fromkeys(k for e in epochs for k in e)
                if k not in ("epoch", "seconds", "learning_rate", "lr")]
        for key in keys:
            points = [(e.get("epoch", i + 1), _number(e.get(key))) for i, e in enumerate(epochs)]
            points = [(x, y) for x, y in points if isinstance(x, (int, float)) and y is not None]
            if points:
                by_key.setdefault(key, []).append(Series(label, [x for x, _ in points], [y for _, y in points]))
    return [Chart(f"train_{safe_key(key)}", f"Training curve: {key} per epoch", "epoch", key, series,
                  "per-epoch values logged by each model's trainer"
                  + ("" if key == "loss" else " (validation part)"))
            for key, series in by_key.items()]


# ---- renderings --------------------------------------------------------------------------------

def plotting_backends() -> dict[str, bool]:
    """Which optional plotting packages are importable: {"plotly": ..., "matplotlib": ...}."""
    import importlib.util

    return {name: importlib.util.find_spec(name) is not None for name in ("plotly", "matplotlib")}


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def to_plotly(chart: Chart):
    """The chart as a plotly `Figure`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, s in enumerate(chart.series):
        color = "#888888" if s.dash else _color(i)
        error = None
        if s.low is not None and s.high is not None:
            up = [None if h is None or y is None else h - y for y, h in zip(s.y, s.high)]
            down = [None if lo is None or y is None else y - lo for y, lo in zip(s.y, s.low)]
            error = dict(type="data", array=up, arrayminus=down, visible=True, color="#333")
        if s.mode == "bar":
            fig.add_trace(go.Bar(name=s.name, x=s.x, y=s.y, error_y=error, marker_color=color,
                                 hovertemplate="%{x}: %{y:.4f}<extra>" + s.name + "</extra>"))
        else:
            mode = "markers+text" if s.mode == "markers" else "lines+markers"
            fig.add_trace(go.Scatter(
                name=s.name, x=s.x, y=s.y, mode="lines" if s.dash else mode, error_y=error,
                text=s.text, textposition="top center", marker=dict(size=10 if s.mode == "markers" else 6,
                                                                    color=color),
                line=dict(color=color, dash="dash" if s.dash else "solid")))
    fig.update_layout(title=dict(text=chart.title, font=dict(size=15)), template="plotly_white",
                      xaxis_title=chart.x_title, yaxis_title=chart.y_title, barmode="group", height=380,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(font=dict(size=11)))
    if chart.categorical_x:
        fig.update_xaxes(type="category")
    if chart.x_ticks:
        fig.update_xaxes(tickmode="array", tickvals=chart.x_ticks)
    return fig


def to_png(chart: Chart, path: Any) -> None:
    """Draw the chart with matplotlib (Agg) into `path`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=90)
    try:
        bars = [s for s in chart.series if s.mode == "bar"]
        if bars:
            categories = list(dict.fromkeys(x for s in bars for x in s.x))
            width = 0.8 / len(bars)
            for i, s in enumerate(bars):
                pos = np.array([categories.index(x) for x in s.x], dtype=float) - 0.4 + width * (i + 0.5)
                ys = np.array([np.nan if y is None else y for y in s.y])
                err = None
                if s.low is not None and s.high is not None:
                    err = np.array([[0 if y is None or lo is None else y - lo for y, lo in zip(s.y, s.low)],
                                    [0 if y is None or h is None else h - y for y, h in zip(s.y, s.high)]])
                ax.bar(pos, ys, width=width, color=_color(i), label=s.name, yerr=err, capsize=3)
            ax.set_xticks(range(len(categories)), [str(c) for c in categories],
                          rotation=30 if len(categories) > 5 else 0, ha="right" if len(categories) > 5 else "center")
        for i, s in enumerate(chart.series):
            if s.mode == "bar":
                continue
            xs = np.array(s.x, dtype=float)
            ys = np.array([np.nan if y is None else y for y in s.y])
            if s.dash:
                ax.plot(xs, ys, "--", color="#888888", label=s.name)
            elif s.mode == "markers":
                ax.scatter(xs, ys, s=40, color=_color(i), label=s.name)
                for x, y, t in zip(xs, ys, s.text or []):
                    ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            else:
                ax.plot(xs, ys, "-o", markersize=3, color=_color(i), label=s.name)
        if chart.x_ticks:
            ax.set_xticks(chart.x_ticks)
        ax.set_title(chart.title, fontsize=10)
        ax.set_xlabel(chart.x_title, fontsize=9)
        ax.set_ylabel(chart.y_title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(chart.series) > 1:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
