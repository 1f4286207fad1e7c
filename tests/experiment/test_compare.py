"""`compare_runs` and `recstack compare` on tiny runs: merging, significance table, markdown,
and the refusal to pair runs whose splits differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import make_clustered
from recstack.cli import app
from recstack.errors import RecstackError
from recstack.evaluate.stats import holm, paired_t_test
from recstack.experiment import parse_config, run_experiment
from recstack.experiment.compare import compare_runs

runner = CliRunner()


@pytest.fixture(scope="module")
def log_file(tmp_path_factory) -> str:
    """One tiny clustered log as a TSV; each run splits it itself (random split, seeded)."""
    data = make_clustered(n_users=80, n_items=40, per_user=12, seed=2)
    path = tmp_path_factory.mktemp("data") / "tiny.tsv"
    lines = ["user_id\titem_id\trating\ttimestamp"]
    lines += [f"u{u}\t{i}\t{v:g}\t{t}" for u, i, v, t in
              zip(data.users.ids[data.user], data.items.ids[data.item], data.value, data.timestamp)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def make_run(log_file: str, run_dir: Path, models: list[dict], seed: int = 7) -> Path:
    config = parse_config({"data": {"path": log_file, "format": "table"}, "models": models, "seed": seed,
                           "ks": [5, 10], "metrics": ["NDCG", "Recall"], "output_dir": str(run_dir.parent)})
    return run_experiment(config, run_dir=run_dir, progress=False).run_dir


@pytest.fixture(scope="module")
def runs(log_file, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    return {
        "a": make_run(log_file, folder / "run-a", [{"name": "pop"}, {"name": "itemknn"}]),
        "b": make_run(log_file, folder / "run-b", [{"name": "pop"}, {"name": "ease", "params": {"reg": 20.0}}]),
        "other_seed": make_run(log_file, folder / "run-c", [{"name": "pop"}], seed=8),
    }


def per_user(run_dir: Path, model: str, metric: str = "NDCG@10") -> np.ndarray:
    table = pq.read_table(run_dir / "per_user.parquet").to_pylist()
    rows = sorted((r["user_id"], r["value"]) for r in table
                  if r["model"] == model and r["part"] == "test" and r["metric"] == metric)
    return np.array([value for _, value in rows])


def test_one_run_compares_its_models(runs):
    result = compare_runs(runs["a"], test="t", correction="holm")
    c = result.comparison
    assert c.metric == "NDCG@10"  # the run's valid_metric by default
    assert {row.model for row in c.rows} == {"pop", "itemknn"}
    metrics = json.loads((runs["a"] / "metrics.json").read_text())
    for row in c.rows:
        assert row.mean == pytest.approx(metrics[row.model]["test"]["NDCG@10"])
        assert row.ci_low <= row.mean <= row.ci_high
    other = next(row for row in c.rows if not row.is_baseline)
    x, y = per_user(runs["a"], other.model), per_user(runs["a"], c.baseline)
    assert other.p == pytest.approx(paired_t_test(x, y))
    assert other.p_adjusted == pytest.approx(other.p)  # a family of one


def test_compare_and_the_report_print_one_interval_for_one_figure(runs):
    from recstack.experiment.report import _leaderboard_cis, leaderboard

    run_dir = runs["a"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    board = leaderboard(metrics, [5, 10], "NDCG@10")
    assert board.sort_label == "NDCG@10"
    report = _leaderboard_cis(run_dir, board)
    comparison = compare_runs(run_dir, "NDCG@10").comparison  # default seed and resamples, as the report
    markdown = compare_runs(run_dir, "NDCG@10").to_markdown()
    lines = (run_dir / "report.md").read_text().splitlines()
    for row in comparison.rows:
        assert report[row.model] == (row.ci_low, row.ci_high, row.n_users)  # identical floats
        shown = f"[{row.ci_low:.4f}, {row.ci_high:.4f}]"
        assert shown in next(line for line in lines if line.startswith(f"| {row.model} |"))
        assert shown in next(line for line in markdown.splitlines() if line.startswith(f"| {row.model}"))


def test_runs_on_one_split_merge_and_prefix_shared_model_names(runs):
    result = compare_runs([runs["a"], runs["b"]], "NDCG@10", baseline="ease", correction="holm")
    names = {row.model for row in result.comparison.rows}
    a, b = result.runs[0].name, result.runs[1].name
    assert names == {f"{a}/pop", f"{b}/pop", "itemknn", "ease"}
    assert result.labels["ease"] == (b, "ease")
    # both runs evaluated the same split, so their popularity models agree user by user
    assert result.comparison.row(f"{a}/pop").mean == pytest.approx(result.comparison.row(f"{b}/pop").mean)
    tested = [row for row in result.comparison.rows if not row.is_baseline]
    raw = [paired_t_test(per_user(runs["a" if row.model != f"{b}/pop" else "b"], row.model.split("/")[-1]),
                         per_user(runs["b"], "ease")) for row in tested]
    assert [row.p for row in tested] == pytest.approx(raw)
    assert [row.p_adjusted for row in tested] == pytest.approx(holm(raw))
    pop = result.comparison.row(f"{a}/pop")
    assert pop.diff < 0 and pop.significant  # EASE beats popularity on clustered data

    text = result.to_markdown()
    assert "| model |" in text and f"| {a}/pop |" in text and "ease (B)" in text
    assert "* = Holm-Bonferroni-adjusted p < 0.05" in text
    assert result.fingerprint in text


def test_runs_on_different_splits_are_refused(runs):
    with pytest.raises(RecstackError) as error:
        compare_runs([runs["a"], runs["other_seed"]])
    message = str(error.value)
    fingerprint_a = json.loads((runs["a"] / "manifest.json").read_text())["split"]["fingerprint"]
    fingerprint_b = json.loads((runs["other_seed"] / "manifest.json").read_text())["split"]["fingerprint"]
    assert fingerprint_a != fingerprint_b
    for text in (runs["a"].name, runs["other_seed"].name, fingerprint_a, fingerprint_b, "different splits"):
        assert text in message


def test_bad_inputs_name_the_culprit(runs, tmp_path):
    with pytest.raises(RecstackError, match="not a recstack run directory"):
        compare_runs(tmp_path)
    with pytest.raises(RecstackError, match="given twice"):
        compare_runs([runs["a"], runs["a"]])
    with pytest.raises(RecstackError, match="'pop' is in more than one run; name one of run-a/pop, run-b/pop"):
        compare_runs([runs["a"], runs["b"]], baseline="pop")
    with pytest.raises(RecstackError, match="no per-user NDCG@3 values.*NDCG@10"):
        compare_runs(runs["a"], "NDCG@3")
    copy = tmp_path / "copy"
    shutil.copytree(runs["b"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["protocol"]["graded"] = True
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecstackError, match="protocols differ \\(graded"):
        compare_runs([runs["a"], copy])
    manifest["protocol"]["graded"] = json.loads((runs["a"] / "manifest.json").read_text())["protocol"]["graded"]
    manifest["protocol"]["cold_users"]["policy"] = "skip"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecstackError, match=r"protocols differ \(cold_users = 'include \(min_history 1\)' vs 'skip"):
        compare_runs([runs["a"], copy])
    del manifest["protocol"]["cold_users"]  # a run written before the policy existed: include
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert compare_runs([runs["a"], copy]) is not None


def test_cli_compare_prints_the_table_and_refuses_different_splits(runs):
    result = runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--metric", "Recall@10",
                                 "--test", "wilcoxon", "--correction", "bh"])
    assert result.exit_code == 0, result.output
    assert "Recall@10 (test)" in result.stdout and "rank-biserial r" in result.stdout
    assert "Benjamini-Hochberg" in result.stdout and "ease" in result.stdout
    markdown = runner.invoke(app, ["compare", str(runs["a"]), "--test", "permutation", "--n-resamples", "200",
                                   "--correction", "none", "--markdown"])
    assert markdown.exit_code == 0, markdown.output
    assert markdown.stdout.startswith("### NDCG@10 (test)") and "p (uncorrected)" in markdown.stdout
    refused = runner.invoke(app, ["compare", str(runs["a"]), str(runs["other_seed"])])
    assert refused.exit_code == 2
    assert "different splits" in refused.stderr and "Traceback" not in refused.output
    typo = runner.invoke(app, ["compare", str(runs["a"]), "--baseline", "itemnkn"])
    assert typo.exit_code == 2 and "Did you mean 'itemknn'" in typo.stderr
