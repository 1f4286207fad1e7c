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

from recstack.evaluate.stats import BOOTSTRAP_CONFIDENCE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

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
    n: list[int | None] | None = None  # users behind each point (a slice's group size)
    weak: list[bool] | None = None  # points drawn faded and hatched: too few users to read
    mark: tuple[Any, str] | None = None  # (x, label): one point to mark, e.g. the restored epoch


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
    x_label_angle: int = 0  # rotated category labels (many or long)


# below this many users a slice's mean is drawn faded and hatched: its interval is too wide to rank on
MIN_SLICE_USERS = 30
PNG_SIZE = (1300, 720)  # pixels of every static chart: 13 x 7.2 inches at 100 dpi
CI_PCT = f"{BOOTSTRAP_CONFIDENCE:.0%}"
BOOTSTRAP_NOTE = (f"percentile bootstrap interval of the mean over users ({BOOTSTRAP_RESAMPLES:,} resamples, "
                  f"seed {BOOTSTRAP_SEED}; the same interval `recstack compare` prints)")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def safe_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "chart"


# ---- data builders -----------------------------------------------------------------------------

def leaderboard_cis(per_user: Any, metric: str, models: Sequence[str]) -> dict[str, tuple[float, float, int]]:
    """model -> (CI low, CI high, n users) of the per-user test `metric`: `stats.mean_intervals`.

    `per_user` is a run's per_user.parquet as a mapping of columns (model, part, user_id, metric,
    value). The interval is the one `recstack compare` prints (same function, same settings);
    models without per-user values of `metric` are left out.
    """
    from recstack.evaluate.stats import mean_intervals

    return mean_intervals(per_user, metric, models, part="test")


def leaderboard_chart(rows: Sequence[tuple[str, float | None]], metric: str,
                      cis: dict[str, tuple[float, float, int]], over_seeds: str | None = None) -> Chart:
    """Bars of test `metric` per model (in the given order) with the bootstrap interval as error bars;
    `over_seeds` (a multi-seed run: how its interval is defined) makes them means with that interval."""
    labels = [label for label, _ in rows]
    series = Series(metric, labels, [_number(v) for _, v in rows], mode="bar",
                    low=[cis[m][0] if m in cis else None for m in labels],
                    high=[cis[m][1] if m in cis else None for m in labels])
    if over_seeds is not None:
        return Chart("leaderboard", f"Mean test {metric} per model ({CI_PCT} interval over seeds)", "model", metric,
                     [series], f"error bars: {over_seeds}", categorical_x=True)
    return Chart("leaderboard", f"Test {metric} per model ({CI_PCT} bootstrap CI over users)", "model", metric,
                 [series], f"error bars: {CI_PCT} {BOOTSTRAP_NOTE}", categorical_x=True)


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


def slice_charts(metrics: dict[str, Any], k: int, order: Sequence[str] | None = None,
                 min_users: int = MIN_SLICE_USERS) -> list[Chart]:
    """Grouped bars of test NDCG@k per group of each slice, one bar per model, with the bootstrap
    interval of each group's mean and its user count; groups under `min_users` users are marked weak."""
    order = [label for label in (order or metrics) if metrics[label].get("slices")]
    if not order:
        return []
    metric = f"NDCG@{k}"
    charts = []
    for name, entry in metrics[order[0]]["slices"].items():
        groups = list(entry["groups"])
        sizes = [entry["groups"][g].get("n_users") for g in groups]
        x = [g if n is None else f"{g} (n={n:,})" for g, n in zip(groups, sizes)]
        series, any_ci = [], False
        for label in order:
            mine = [metrics[label]["slices"].get(name, {}).get("groups", {}).get(g, {}) for g in groups]
            cis = [(e.get("ci") or {}).get(metric) or (None, None) for e in mine]
            any_ci |= any(low is not None for low, _ in cis)
            n = [e.get("n_users") for e in mine]
            series.append(Series(label, x, [_number(e.get(metric)) for e in mine], mode="bar",
                                 low=[_number(low) for low, _ in cis], high=[_number(high) for _, high in cis],
                                 n=n, weak=[v is not None and v < min_users for v in n]))
        caption = entry.get("definition", "")
        if any_ci:
            caption += f" Error bars: {CI_PCT} {BOOTSTRAP_NOTE} of the group."
        small = [g for g, n in zip(groups, sizes) if n is not None and n < min_users]
        if small:
            caption += (f" Faded, hatched bars: groups of fewer than {min_users} users ({', '.join(map(str, small))}),"
                        " whose means are too noisy to compare.")
        charts.append(Chart(f"slice_{safe_key(name)}", f"Test {metric} per group: {name}", "group (users)", metric,
                            series, caption.strip(), categorical_x=True,
                            x_label_angle=30 if len(x) > 5 or sum(len(v) for v in x) > 80 else 0))
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


def training_charts(curves: dict[str, list[dict[str, Any]]],
                    best_epochs: dict[str, int] | None = None) -> list[Chart]:
    """One chart per logged series (loss, each validation metric), one line per model, x = epoch.

    `best_epochs` (model -> epoch, metrics.json's `best_epoch`) marks the epoch whose weights each
    model kept: the restored best validation epoch, or the last one when nothing was validated.
    """
    best_epochs = best_epochs or {}
    by_key: dict[str, list[Series]] = {}
    for label, epochs in curves.items():
        keys = [k for k in dict.fromkeys(k for e in epochs for k in e)
                if k not in ("epoch", "seconds", "learning_rate", "lr")]
        validated = any(_number(e.get(k)) is not None for e in epochs for k in keys if k != "loss")
        best = best_epochs.get(label)
        mark = None if best is None else (best, f"restored epoch {best}" if validated
                                          else f"last epoch {best} (no validation)")
        for key in keys:
            points = [(e.get("epoch", i + 1), _number(e.get(key))) for i, e in enumerate(epochs)]
            points = [(x, y) for x, y in points if isinstance(x, (int, float)) and y is not None]
            if points:
                by_key.setdefault(key, []).append(Series(label, [x for x, _ in points], [y for _, y in points],
                                                         mark=mark))
    marked = " The star and dotted line mark the epoch whose weights each model kept (restored)." \
        if best_epochs else ""
    return [Chart(f"train_{safe_key(key)}", f"Training curve: {key} per epoch", "epoch", key, series,
                  "per-epoch values logged by each model's trainer"
                  + ("" if key == "loss" else " (validation part)") + "." + marked)
            for key, series in by_key.items()]


# ---- renderings --------------------------------------------------------------------------------

def plotting_backends() -> dict[str, bool]:
    """Which optional plotting packages are importable: {"plotly": ..., "matplotlib": ...}."""
    import importlib.util

    return {name: importlib.util.find_spec(name) is not None for name in ("plotly", "matplotlib")}


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# one shape per scatter model; 9 shapes against 10 colours, so no two of the first 90 models look alike
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")  # matplotlib
SYMBOLS = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star", "hexagon")  # plotly
# label directions tried around a point, in order of preference: beside, above/below, diagonal
_SPOTS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
_BESIDE = 15.0  # pixels: a label farther from its point than straight beside it gets a leader line


def label_box(point: tuple[float, float], size: tuple[float, float], offset: tuple[float, float], spot: int
              ) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixels of a label of `size` placed at `offset` from `point` towards `_SPOTS[spot]`."""
    (px, py), (w, h), (ox, oy) = point, size, offset
    dx, dy = _SPOTS[spot]
    # the box sits on the side the direction points to (centred along the other axis)
    left = px + ox + (0 if dx > 0 else -w if dx < 0 else -w / 2)
    bottom = py + oy + (0 if dy > 0 else -h if dy < 0 else -h / 2)
    return left, bottom, left + w, bottom + h


def place_labels(points: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                 bounds: tuple[float, float, float, float], gap: float = 6.0, reach: Sequence[float] = (1.0,)
                 ) -> list[tuple[float, float, int]]:
    """Greedy label placement in pixels: per point, the label's anchor (x offset, y offset, spot).

    `points` are marker centres, `sizes` the labels' (width, height), `bounds` the plot area
    (x0, y0, x1, y1), y up. Each label takes the position around its point (8 directions, then
    farther out for each `reach` multiple) that overlaps the fewest already placed labels, markers
    and plot edges; `spot` indexes `_SPOTS` for the direction. Crowded points are placed first.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    x0, y0, x1, y1 = bounds
    marker = 7.0
    crowd = [int(np.sum(np.hypot(*(pts - p).T) < 60)) for p in pts]
    placed: list[tuple[float, float, float, float]] = []
    out: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(pts)

    def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    for i in sorted(range(len(pts)), key=lambda i: -crowd[i]):
        (px, py), (w, h) = pts[i], sizes[i]
        best = None
        for r, far in enumerate(reach):
            for spot, (dx, dy) in enumerate(_SPOTS):
                ox = dx * (gap + marker) * far
                oy = dy * (gap + marker) * far
                box = label_box((px, py), (w, h), (ox, oy), spot)
                cost = sum(overlap(box, other) for other in placed)
                cost += sum(overlap(box, (qx - marker, qy - marker, qx + marker, qy + marker)) for qx, qy in pts)
                outside = w * h - overlap(box, (x0, y0, x1, y1))
                cost += 4 * outside + r * 1e-3 + spot * 1e-6  # prefer near and in the listed order
                if best is None or cost < best[0]:
                    best = (cost, ox, oy, spot, box)
        _, ox, oy, spot, box = best
        placed.append(box)
        out[i] = (ox, oy, spot)
    return out


def _text_px(text: str, size: float) -> tuple[float, float]:
    """Rough width and height in pixels of a one-line label at font `size` px (plotly cannot measure)."""
    return 0.6 * size * len(text) + 4, 1.3 * size


PLOTLY_SIZE = (900, 460)  # the layout the label placement assumes for the interactive charts


def to_plotly(chart: Chart):
    """The chart as a plotly `Figure`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    marked_legend = False
    for i, s in enumerate(chart.series):
        color = "#888888" if s.dash else _color(i)
        error = None
        if s.low is not None and s.high is not None:
            up = [None if h is None or y is None else h - y for y, h in zip(s.y, s.high)]
            down = [None if lo is None or y is None else y - lo for y, lo in zip(s.y, s.low)]
            error = dict(type="data", array=up, arrayminus=down, visible=True, color="#333")
        custom = None if s.n is None else [["" if n is None else f" ({n:,} users)"] for n in s.n]
        if s.mode == "bar":
            weak = s.weak or [False] * len(s.x)
            fig.add_trace(go.Bar(
                name=s.name, x=s.x, y=s.y, error_y=error, customdata=custom,
                marker=dict(color=color, opacity=[0.4 if w else 1.0 for w in weak],
                            pattern=dict(shape=["/" if w else "" for w in weak], fgcolor="#333")),
                hovertemplate="%{x}: %{y:.4f}" + ("%{customdata[0]}" if custom else "") + "<extra>" + s.name
                              + "</extra>"))
        elif s.mode == "markers":
            # labels are annotations placed by `place_labels`, with a leader line when moved away
            fig.add_trace(go.Scatter(
                name=s.name, x=s.x, y=s.y, mode="markers", error_y=error, text=s.text,
                hovertemplate="%{text}: (%{x:.4f}, %{y:.4f})<extra></extra>",
                marker=dict(size=12, color=color, symbol=SYMBOLS[i % len(SYMBOLS)],
                            line=dict(color="#333", width=0.5))))
        else:
            fig.add_trace(go.Scatter(
                name=s.name, x=s.x, y=s.y, mode="lines" if s.dash else "lines+markers", error_y=error,
                text=s.text, marker=dict(size=6, color=color),
                line=dict(color=color, dash="dash" if s.dash else "solid")))
        if s.mark is not None:
            mx, label = s.mark
            # the label at the end of the line away from the marked point, on the side with room
            xs, ys = [float(x) for x in s.x], [y for y in s.y if y is not None]
            right_half = bool(xs) and float(mx) > (min(xs) + max(xs)) / 2
            my = s.y[s.x.index(mx)] if mx in s.x else None
            top = my is None or not ys or my < (min(ys) + max(ys)) / 2
            fig.add_vline(x=mx, line=dict(color=color, dash="dot", width=1.5),
                          annotation=dict(text=label if len(chart.series) == 1 else f"{s.name}: {label}",
                                          font=dict(size=12, color="#222"), bgcolor="rgba(255,255,255,0.85)",
                                          bordercolor=color, yshift=-22 * i if top else 22 * i),
                          annotation_position=f"{'top' if top else 'bottom'} {'left' if right_half else 'right'}")
            if mx in s.x:
                fig.add_trace(go.Scatter(
                    name="restored epoch", x=[mx], y=[s.y[s.x.index(mx)]], mode="markers", legendgroup="mark",
                    showlegend=not marked_legend, hovertemplate=f"{s.name}: {label}<extra></extra>",
                    marker=dict(symbol="star", size=16, color=color, line=dict(color="#222", width=1))))
                marked_legend = True
    fig.update_layout(title=dict(text=chart.title, font=dict(size=16)), template="plotly_white",
                      xaxis_title=chart.x_title, yaxis_title=chart.y_title, barmode="group",
                      height=PLOTLY_SIZE[1], margin=dict(l=70, r=20, t=60, b=60),
                      legend=dict(font=dict(size=12), x=1.02, xanchor="left", y=1, yanchor="top"))
    for note in _plotly_labels(chart):
        fig.add_annotation(**note)
    if chart.categorical_x:
        fig.update_xaxes(type="category", tickangle=-chart.x_label_angle if chart.x_label_angle else None)
    if chart.x_ticks:
        fig.update_xaxes(tickmode="array", tickvals=chart.x_ticks)
    return fig


def _plotly_labels(chart: Chart) -> list[dict[str, Any]]:
    """Plotly annotations labelling each scatter point where it overlaps no other label or marker."""
    points = [(float(x), float(y), t) for s in chart.series if s.mode == "markers"
              for x, y, t in zip(s.x, s.y, s.text or []) if y is not None]
    if not points:
        return []
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    # pixels of the plot area in the layout `to_plotly` sets (legend ~150 px); plotly pads ~5% each side
    width, height = PLOTLY_SIZE[0] - 70 - 20 - 150, PLOTLY_SIZE[1] - 60 - 60
    span_x, span_y = (np.ptp(xs) or 1.0) * 1.1, (np.ptp(ys) or 1.0) * 1.1
    px = (xs - xs.min() + 0.05 * span_x) / span_x * width
    py = (ys - ys.min() + 0.05 * span_y) / span_y * height
    spots = place_labels(list(zip(px, py)), [_text_px(t, 12) for _, _, t in points], (0, 0, width, height),
                         reach=(1.0, 2.5, 4.0))
    notes = []
    for (x, y, text), (ox, oy, spot) in zip(points, spots):
        dx, dy = _SPOTS[spot]
        far = math.hypot(ox, oy) > _BESIDE
        notes.append(dict(x=x, y=y, text=text, showarrow=True, arrowhead=0, arrowwidth=1, ax=ox, ay=-oy,
                          arrowcolor="#777" if far else "rgba(0,0,0,0)", standoff=6, font=dict(size=12),
                          xanchor="left" if dx > 0 else "right" if dx < 0 else "center",
                          yanchor="bottom" if dy > 0 else "top" if dy < 0 else "middle"))
    return notes


def to_png(chart: Chart, path: Any) -> None:
    """Draw the chart with matplotlib (Agg) into `path`, `PNG_SIZE` pixels, legend beside the plot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    dpi = 100
    fig, ax = plt.subplots(figsize=(PNG_SIZE[0] / dpi, PNG_SIZE[1] / dpi), dpi=dpi, layout="constrained")
    extra_handles, marks = [], []
    try:
        bars = [s for s in chart.series if s.mode == "bar"]
        if bars:
            categories = list(dict.fromkeys(x for s in bars for x in s.x))
            width = 0.8 / len(bars)
            any_weak = False
            for i, s in enumerate(bars):
                pos = np.array([categories.index(x) for x in s.x], dtype=float) - 0.4 + width * (i + 0.5)
                ys = np.array([np.nan if y is None else y for y in s.y])
                err = None
                if s.low is not None and s.high is not None:
                    err = np.array([[0 if y is None or lo is None else y - lo for y, lo in zip(s.y, s.low)],
                                    [0 if y is None or h is None else h - y for y, h in zip(s.y, s.high)]])
                drawn = ax.bar(pos, ys, width=width, color=_color(i), label=s.name, yerr=err, capsize=3,
                               error_kw=dict(elinewidth=1, ecolor="#333"))
                for patch, weak in zip(drawn.patches, s.weak or []):
                    if weak:
                        any_weak = True
                        patch.set_alpha(0.35)
                        patch.set_hatch("///")
                        patch.set_edgecolor("#333")
            if any_weak:
                extra_handles.append(Patch(facecolor="#bbbbbb", alpha=0.5, hatch="///", edgecolor="#333",
                                           label=f"< {MIN_SLICE_USERS} users: noisy"))
            angle = chart.x_label_angle or (30 if len(categories) > 5 else 0)
            ax.set_xticks(range(len(categories)), [str(c) for c in categories], rotation=angle,
                          ha="right" if angle else "center")
            weak_x = {x for s in bars for x, w in zip(s.x, s.weak or []) if w}
            for tick in ax.get_xticklabels():
                if tick.get_text() in weak_x:
                    tick.set_color("#777")
                    tick.set_fontstyle("italic")
        scatter = [(i, s) for i, s in enumerate(chart.series) if s.mode == "markers"]
        for i, s in enumerate(chart.series):
            if s.mode == "bar":
                continue
            xs = np.array(s.x, dtype=float)
            ys = np.array([np.nan if y is None else y for y in s.y])
            if s.dash:
                ax.plot(xs, ys, "--", color="#888888", label=s.name)
            elif s.mode == "markers":
                ax.scatter(xs, ys, s=90, color=_color(i), marker=MARKERS[i % len(MARKERS)], label=s.name,
                           edgecolors="#333", linewidths=0.5, zorder=3)
            else:
                ax.plot(xs, ys, "-o", markersize=4, color=_color(i), label=s.name)
            if s.mark is not None:
                mx, label = s.mark
                ax.axvline(float(mx), color=_color(i), linestyle=":", linewidth=1.5)
                my = s.y[s.x.index(mx)] if mx in s.x else None
                if my is not None:
                    ax.plot([mx], [my], marker="*", markersize=18, color=_color(i), markeredgecolor="#222",
                            zorder=4, linestyle="none")
                marks.append((i, s, float(mx), my, label))
        low, high = ax.get_ylim()
        for row, (i, s, mx, my, label) in enumerate(marks):
            # inside the axes at the end of its line away from the marked point, on the side with room
            top = my is None or (my - low) / (high - low) < 0.5
            right_half = mx > np.mean(ax.get_xlim())
            ax.annotate(label if len(chart.series) == 1 else f"{s.name}: {label}", (mx, 1.0 if top else 0.0),
                        xycoords=("data", "axes fraction"), textcoords="offset points",
                        xytext=(-6 if right_half else 6, (-8 - 22 * row) if top else (8 + 22 * row)),
                        ha="right" if right_half else "left", va="top" if top else "bottom", fontsize=11,
                        color="#222", bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=_color(i), alpha=0.9))
        if any(s.mark is not None for s in chart.series):
            extra_handles.append(Line2D([], [], marker="*", markersize=14, color="#666", markeredgecolor="#222",
                                        linestyle=":", label="restored epoch"))
        if chart.x_ticks:
            ax.set_xticks(chart.x_ticks)
        ax.set_title(chart.title, fontsize=15)
        ax.set_xlabel(chart.x_title, fontsize=13)
        ax.set_ylabel(chart.y_title, fontsize=13)
        ax.tick_params(labelsize=11)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
        handles, _ = ax.get_legend_handles_labels()
        handles += extra_handles
        if len(handles) > 1:
            # beside the axes, never over the data
            ax.legend(handles=handles, fontsize=11, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                      frameon=False)
        if scatter:
            _label_points(fig, ax, scatter)  # after the legend: it measures the final layout
        fig.savefig(path)
    finally:
        plt.close(fig)


def _label_points(fig: Any, ax: Any, scatter: list[tuple[int, Series]]) -> None:
    """Annotate each scatter point with its label where it overlaps nothing (leader line when moved away)."""
    ax.margins(0.08)
    fig.canvas.draw()  # final limits and layout before measuring in pixels
    renderer = fig.canvas.get_renderer()
    points, sizes, labels = [], [], []
    for _, s in scatter:
        for x, y, t in zip(s.x, s.y, s.text or []):
            if y is None:
                continue
            points.append(tuple(ax.transData.transform((float(x), float(y)))))
            probe = ax.text(0, 0, t, fontsize=11)
            box = probe.get_window_extent(renderer)
            probe.remove()
            sizes.append((box.width + 4, box.height + 2))
            labels.append((t, float(x), float(y)))
    if not points:
        return
    bbox = ax.get_window_extent(renderer)
    spots = place_labels(points, sizes, (bbox.x0, bbox.y0, bbox.x1, bbox.y1), reach=(1.0, 2.5, 4.0, 6.0))
    scale = 72 / fig.dpi  # pixels -> points
    for (text, x, y), (ox, oy, spot) in zip(labels, spots):
        dx, dy = _SPOTS[spot]
        far = math.hypot(ox, oy) > _BESIDE
        note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(ox * scale, oy * scale), fontsize=11,
                           ha="left" if dx > 0 else "right" if dx < 0 else "center",
                           va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                           arrowprops=dict(arrowstyle="-", color="#777", lw=0.8, shrinkA=0, shrinkB=6) if far else None,
                           zorder=5)
        note.set_in_layout(False)  # placed for this layout: must not shrink the axes again
