"""The report's chart data (by hand, no browser) and its fallbacks without plotly / matplotlib."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from recstack.evaluate.stats import bootstrap_ci, compare_models
from recstack.experiment import charts as C
from recstack.experiment import run_experiment
from recstack.experiment.report import write_report
from test_run import config_for, write_parts


def test_popularity_bias_by_hand():
    popularity = np.array([10.0, 5.0, 1.0, 0.0])
    # users 0..3 have histories {0}, {0,1}, {2}, {1,2}; user 4 has none, user 5 gets an empty list
    history = sp.csr_matrix(np.array([[1, 0, 0, 0], [3, 1, 0, 0], [0, 0, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0],
                                      [1, 0, 0, 0]]))
    lists = np.array([[1, 2], [2, -1], [0, 1], [0, 3], [0, 1], [-1, -1]])
    out = C.popularity_bias(lists, history, popularity, n_buckets=2)
    # historical: 10, 7.5, 1, 3 (values ignored: counts are binarised); recommended: 3, 1, 7.5, 5
    assert out["k"] == 2 and out["cut_points"] == [pytest.approx(5.25)]
    assert out["buckets"] == [
        {"bucket": "Q1", "n_users": 2, "historical": pytest.approx(2.0), "recommended": pytest.approx(6.25)},
        {"bucket": "Q2", "n_users": 2, "historical": pytest.approx(8.75), "recommended": pytest.approx(2.0)},
    ]
    # ties: every user with the same history popularity lands in one bucket; the empty ones are dropped
    same = C.popularity_bias(np.array([[0], [1]]), sp.csr_matrix(np.array([[1, 0], [1, 0]])),
                             np.array([4.0, 2.0]), n_buckets=3)
    assert [b["n_users"] for b in same["buckets"]] == [2] and same["buckets"][0]["recommended"] == 3.0
    assert C.popularity_bias(np.array([[-1]]), sp.csr_matrix((1, 2)), np.ones(2))["buckets"] == []


def test_leaderboard_intervals_are_the_bootstrap_of_per_user_values():
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(30) * 0.5
    per_user = {"model": ["a"] * 50 + ["b"] * 30 + ["a"] * 50,
                "part": ["test"] * 80 + ["valid"] * 50,
                "user_id": [f"u{u}" for u in (*range(50), *range(30), *range(50))],
                "metric": ["NDCG@10"] * 130,
                "value": np.concatenate([a, b, rng.random(50)])}
    cis = C.leaderboard_cis(per_user, "NDCG@10", ["a", "b", "c"])
    assert set(cis) == {"a", "b"}  # c has no values
    assert cis["a"] == (*bootstrap_ci(a), 50) and cis["b"] == (*bootstrap_ci(b), 30)
    # what `recstack compare` prints for the same values, seed and resamples: the very same interval
    comparison = compare_models(per_user, "NDCG@10")
    assert (comparison.row("a").ci_low, comparison.row("a").ci_high) == cis["a"][:2]
    chart = C.leaderboard_chart([("a", a.mean()), ("b", b.mean()), ("c", None)], "NDCG@10", cis)
    (bars,) = chart.series
    assert bars.x == ["a", "b", "c"] and bars.low[:2] == [cis["a"][0], cis["b"][0]] and bars.high[2] is None
    fig = C.to_plotly(chart)
    error = fig.data[0].error_y
    assert error.array[0] == pytest.approx(cis["a"][1] - a.mean())
    assert error.arrayminus[1] == pytest.approx(b.mean() - cis["b"][0])


METRICS = {
    "m1": {"test": {"NDCG@5": 0.1, "NDCG@10": 0.2, "Recall@5": 0.3, "Recall@10": 0.4},
           "beyond": {"Gini_corrected@10": 0.9, "Novelty@10": 2.0,
                      "popularity_bias": {"k": 10, "buckets": [{"bucket": "Q1", "n_users": 3, "historical": 5.0,
                                                                "recommended": 8.0}]}},
           "slices": {"activity": {"groups": {"light": {"NDCG@10": 0.1}, "heavy": {"NDCG@10": 0.3}}}}},
    "m2": {"test": {"NDCG@5": 0.05, "NDCG@10": None},
           "beyond": {"Gini_corrected@10": 0.5, "Novelty@10": 3.0},
           "slices": {"activity": {"groups": {"light": {"NDCG@10": 0.05}}}}},
}


def test_curves_scatters_slices_and_training_from_metrics():
    ndcg, recall = C.k_curves(METRICS, [10, 5])
    assert ndcg.x_ticks == [5, 10]
    assert [(s.name, s.x, s.y) for s in ndcg.series] == [("m1", [5, 10], [0.1, 0.2]), ("m2", [5, 10], [0.05, None])]
    assert [s.name for s in recall.series] == ["m1"]  # m2 has no Recall

    fair = C.tradeoff_chart(METRICS, 10, "Gini_corrected", "Gini", "fair", "")
    assert [(s.name, s.x, s.y) for s in fair.series] == [("m1", [0.9], [0.2])]  # m2's NDCG@10 is missing
    assert C.tradeoff_chart(METRICS, 10, "Nothing", "x", "x", "") is None

    (activity,) = C.slice_charts(METRICS, 10)
    assert activity.key == "slice_activity" and activity.categorical_x
    assert [(s.name, s.y) for s in activity.series] == [("m1", [0.1, 0.3]), ("m2", [0.05, None])]

    pop = C.popularity_chart(METRICS)
    assert [s.name for s in pop.series] == ["m1", "history (y = x)"]
    assert pop.series[0].x == [5.0] and pop.series[0].y == [8.0] and pop.series[1].x == [5.0, 8.0]

    curves = {"bpr": [{"epoch": 1, "loss": 0.7, "NDCG@10": 0.1, "learning_rate": 0.01, "seconds": 1.0},
                      {"epoch": 2, "loss": 0.5, "NDCG@10": float("nan"), "learning_rate": 0.01, "seconds": 1.0}],
              "sasrec": [{"epoch": 1, "loss": 7.0}]}
    loss, metric = C.training_charts(curves)
    assert (loss.key, metric.key) == ("train_loss", "train_NDCG_10")
    assert [(s.name, s.x, s.y) for s in loss.series] == [("bpr", [1, 2], [0.7, 0.5]), ("sasrec", [1], [7.0])]
    assert [(s.x, s.y) for s in metric.series] == [([1], [0.1])]  # NaN dropped; no learning-rate chart


def test_slice_charts_carry_intervals_counts_and_mark_small_groups(tmp_path):
    groups = {"big": {"n_users": 300, "NDCG@10": 0.3, "ci": {"NDCG@10": [0.27, 0.33]}},
              "tiny": {"n_users": 7, "NDCG@10": 0.5, "ci": {"NDCG@10": [0.2, 0.8]}}}
    metrics = {"m1": {"slices": {"user:country": {"definition": "by country.", "groups": groups}}},
               "m2": {"slices": {"user:country": {"groups": {"big": {"n_users": 300, "NDCG@10": 0.25}}}}}}
    (chart,) = C.slice_charts(metrics, 10)
    m1, m2 = chart.series
    assert m1.x == ["big (n=300)", "tiny (n=7)"] and m1.y == [0.3, 0.5]
    assert (m1.low, m1.high, m1.n, m1.weak) == ([0.27, 0.2], [0.33, 0.8], [300, 7], [False, True])
    assert (m2.y, m2.low, m2.weak) == ([0.25, None], [None, None], [False, False])  # no interval recorded
    assert "fewer than 30 users (tiny)" in chart.caption and "bootstrap" in chart.caption
    bars = C.to_plotly(chart).data[0]
    assert list(bars.marker.opacity) == [1.0, 0.4] and list(bars.marker.pattern.shape) == ["", "/"]
    assert bars.error_y.array == pytest.approx([0.03, 0.3]) and bars.error_y.arrayminus == pytest.approx([0.03, 0.3])
    C.to_png(chart, tmp_path / "slice.png")
    assert png_size(tmp_path / "slice.png") == C.PNG_SIZE


def test_training_charts_mark_the_restored_epoch(tmp_path):
    curves = {"bpr": [{"epoch": e, "loss": 1 / e, "NDCG@10": v} for e, v in zip(range(1, 6), (.1, .2, .3, .25, .2))],
              "mf": [{"epoch": e, "loss": 1 / e} for e in range(1, 4)],
              "sasrec": [{"epoch": 1, "loss": 7.0}]}
    loss, ndcg = C.training_charts(curves, {"bpr": 3, "mf": 3})
    assert [(s.name, s.mark) for s in loss.series] == [("bpr", (3, "restored epoch 3")),
                                                       ("mf", (3, "last epoch 3 (no validation)")), ("sasrec", None)]
    assert [s.mark for s in ndcg.series] == [(3, "restored epoch 3")] and "restored" in ndcg.caption
    fig = C.to_plotly(ndcg)
    assert [shape.x0 for shape in fig.layout.shapes] == [3]
    (star,) = [trace for trace in fig.data if trace.name == "restored epoch"]
    assert star.x == (3,) and star.y == (0.3,) and star.marker.symbol == "star"
    C.to_png(ndcg, tmp_path / "curve.png")
    assert png_size(tmp_path / "curve.png") == C.PNG_SIZE
    assert all(s.mark is None for chart in C.training_charts(curves) for s in chart.series)


def test_scatter_labels_do_not_overlap():
    rng = np.random.default_rng(3)
    points = [(400 + x, 300 + y) for x, y in rng.normal(0, 12, size=(8, 2))]  # eight markers in one clump
    sizes = [(60.0 + 5 * i, 14.0) for i in range(8)]
    bounds = (0.0, 0.0, 900.0, 600.0)
    spots = C.place_labels(points, sizes, bounds, reach=(1.0, 2.5, 4.0, 6.0))
    boxes = [C.label_box(p, size, (ox, oy), spot) for p, size, (ox, oy, spot) in zip(points, sizes, spots)]
    for i, a in enumerate(boxes):
        assert bounds[0] <= a[0] and a[2] <= bounds[2] and bounds[1] <= a[1] and a[3] <= bounds[3]
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
        for px, py in points:  # no label hides a marker centre
            assert not (a[0] < px < a[2] and a[1] < py < a[3])
    # the interactive chart labels two coinciding points on different sides, one per model
    metrics = {name: {"test": {"NDCG@10": 0.3}, "beyond": {"Novelty@10": 2.0}} for name in ("ease", "ease-200")}
    metrics["pop"] = {"test": {"NDCG@10": 0.1}, "beyond": {"Novelty@10": 1.0}}
    fig = C.to_plotly(C.tradeoff_chart(metrics, 10, "Novelty", "novelty", "novelty", ""))
    notes = {note.text: note for note in fig.layout.annotations}
    assert set(notes) == {"ease", "ease-200", "pop"}
    assert (notes["ease"].ax, notes["ease"].ay) != (notes["ease-200"].ax, notes["ease-200"].ay)
    assert len({trace.marker.symbol for trace in fig.data}) == 3  # shapes tell the models apart


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    parts = write_parts(tmp_path_factory.mktemp("data") / "tiny")
    config = config_for(parts, tmp_path_factory.mktemp("runs"), models=[
        {"name": "pop"}, {"name": "itemknn"},
        {"name": "bpr", "params": {"epochs": 4, "verbose": False, "embedding_size": 8}}])
    return run_experiment(config, progress=False)


@pytest.fixture(scope="module")
def run_dir(run):
    return run.run_dir


def _copy(run_dir, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    shutil.rmtree(target / "plots")
    return target


def test_report_charts_pngs_and_offline_html(run_dir):
    page = (run_dir / "report.html").read_text()
    keys = re.findall(r'<figure class="chart" data-chart="([^"]+)"', page)
    assert len(keys) == len(set(keys)) >= 8
    for key in keys:
        png = run_dir / "plots" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000, key
        width, height = png_size(png)
        assert width >= 1200 and height >= 700, key  # readable without zooming
        assert f'<noscript><img src="plots/{key}.png" alt=' in page
        assert f'width="{width}" height="{height}"' in page
    assert page.count('id="chart-') == len(keys)
    assert not re.search(r"<(script|link|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"<(script|link)\b[^>]*\b(src|href)\s*=", page, re.I)  # plotly.js is inline

    # the leaderboard's interval column is the bootstrap of per_user.parquet's test NDCG@10
    table = pq.read_table(run_dir / "per_user.parquet").to_pandas()
    values = table.query("model == 'itemknn' and part == 'test' and metric == 'NDCG@10'")["value"].to_numpy()
    low, high = bootstrap_ci(values)
    row = next(line for line in (run_dir / "report.md").read_text().splitlines() if line.startswith("| itemknn |"))
    assert f"[{low:.4f}, {high:.4f}]" in row
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["itemknn"]["beyond"]["popularity_bias"]["k"] == 10


def test_static_only_and_tables_only_fallbacks(run_dir, tmp_path):
    static = _copy(run_dir, tmp_path, "static")
    write_report(static, interactive=False)
    page = (static / "report.html").read_text()
    assert "Plotly" not in page and "<noscript>" not in page and 'class="note"' in page
    assert len(re.findall(r'<img src="plots/[^"]+\.png"', page)) == page.count('class="chart"') >= 8
    assert (static / "report.md").read_text() == (run_dir / "report.md").read_text()

    bare = _copy(run_dir, tmp_path, "bare")
    write_report(bare, interactive=False, static=False)
    page = (bare / "report.html").read_text()
    assert 'class="chart"' not in page and not (bare / "plots").exists()
    assert "install <code>plotly</code>" in page and "<code>matplotlib</code>" in page
    assert "<table>" in page and (bare / "report.md").read_text() == (run_dir / "report.md").read_text()


def test_a_chart_that_fails_to_draw_leaves_a_note_not_a_lost_run(run_dir, tmp_path, monkeypatch):
    target = _copy(run_dir, tmp_path, "broken")
    draw = C.to_png

    def broken(chart, path):
        if chart.key == "leaderboard":
            raise ValueError("no ink")
        draw(chart, path)

    monkeypatch.setattr(C, "to_png", broken)
    write_report(target)
    page = (target / "report.html").read_text()
    assert 'matplotlib could not draw "Test NDCG@10 per model' in page and "ValueError: no ink" in page
    assert not (target / "plots" / "leaderboard.png").exists() and (target / "plots" / "k_NDCG.png").exists()
    assert 'id="chart-leaderboard"' in page  # the interactive chart is still there


def test_report_marks_the_restored_epoch_and_draws_slice_intervals(run):
    from recstack.experiment.report import _blocks, _Chart

    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    curves = json.loads((run.run_dir / "curves.json").read_text())
    best = metrics["bpr"]["best_epoch"]
    assert best == run.models["bpr"].best_epoch_ and best in [e["epoch"] for e in curves["bpr"]]
    assert "best_epoch" not in metrics["pop"]  # nothing trained per epoch
    charts = {block.chart.key: block.chart for block in _blocks(run.run_dir)[1] if isinstance(block, _Chart)}
    assert charts["train_loss"].series[0].mark[0] == best and charts["train_NDCG_10"].series[0].mark[0] == best
    row = next(line for line in (run.run_dir / "report.md").read_text().splitlines()
               if line.startswith("| bpr | NDCG@10 |"))
    assert row.split("|")[-3].strip() == str(best)  # the "restored epoch" column

    # each slice group carries the shared bootstrap interval of its users' per-user NDCG@10
    test = run.results["itemknn"]["test"]
    activity = metrics["itemknn"]["slices"]["user_activity"]
    counts = run.split.train.user_counts()[test.users]
    light = counts <= activity["cut_points"][0]
    assert light.any()
    group = activity["groups"]["light"]
    assert group["ci"]["NDCG@10"] == list(bootstrap_ci(test.per_user["NDCG@10"][light]))
    assert group["ci"]["NDCG@10"][0] <= group["NDCG@10"] <= group["ci"]["NDCG@10"][1]
    for key in ("slice_user_activity", "slice_item_popularity"):
        chart = charts[key]
        for s in chart.series:  # an interval wherever the group has users
            assert [lo is None for lo in s.low] == [hi is None for hi in s.high] == [not n for n in s.n], key
        assert all(f"(n={n:,})" in x for s in chart.series for x, n in zip(s.x, s.n))
    series = next(s for s in charts["slice_user_activity"].series if s.name == "itemknn")
    assert (series.low[0], series.high[0]) == tuple(group["ci"]["NDCG@10"])
