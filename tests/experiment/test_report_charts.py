"""The report's chart data (by hand, no browser) and its fallbacks without plotly / matplotlib."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from recstack.evaluate.stats import bootstrap_ci
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
                "metric": ["NDCG@10"] * 130,
                "value": np.concatenate([a, b, rng.random(50)])}
    cis = C.leaderboard_cis(per_user, "NDCG@10", ["a", "b", "c"])
    assert set(cis) == {"a", "b"}  # c has no values
    assert cis["a"] == (*bootstrap_ci(a), 50) and cis["b"] == (*bootstrap_ci(b), 30)
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
           "slices": {"activity": {"groups": {"cold": {"NDCG@10": 0.1}, "heavy": {"NDCG@10": 0.3}}}}},
    "m2": {"test": {"NDCG@5": 0.05, "NDCG@10": None},
           "beyond": {"Gini_corrected@10": 0.5, "Novelty@10": 3.0},
           "slices": {"activity": {"groups": {"cold": {"NDCG@10": 0.05}}}}},
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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    parts = write_parts(tmp_path_factory.mktemp("data") / "tiny")
    config = config_for(parts, tmp_path_factory.mktemp("runs"), models=[{"name": "pop"}, {"name": "itemknn"}])
    return run_experiment(config, progress=False).run_dir


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
        assert f'<noscript><img src="plots/{key}.png"' in page
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
