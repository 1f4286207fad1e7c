"""`recstack compare` on CTR runs: the test predictions each run keeps pair up row by row across runs."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recstack.cli import app
from recstack.errors import RecstackError
from recstack.evaluate.ctr import delong_test, per_user_auc
from recstack.evaluate.stats import paired_test
from recstack.experiment.compare import compare_runs
from recstack.experiment.run import run_experiment

from .conftest import PLANTED_FEATURES, planted_dataset, write_atomic


def _run(data, features, out, models, seed=2020):
    raw = {"task": "ctr", "data": {"path": str(data), "format": "atomic"}, "output_dir": str(out), "seed": seed,
           "ctr": {"features": [{"name": "user_id"}, {"name": "item_id"}, *features]}, "models": models}
    return run_experiment(raw, progress=False).run_dir


FM = {"name": "fm", "params": {"epochs": 3, "learning_rate": 0.01, "batch_size": 512}}
DEEPFM = {"name": "deepfm", "params": {"epochs": 2, "hidden_units": [16], "batch_size": 512}}
LR = {"name": "fm", "label": "fm_slow", "params": {"epochs": 1, "learning_rate": 0.001, "batch_size": 512}}


@pytest.fixture(scope="module")
def ctr_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr_compare")
    data = write_atomic(planted_dataset(), root / "data")
    first = _run(data, PLANTED_FEATURES, root / "a", [FM, LR])
    # the second run reads one field fewer: other features, the same rows
    second = _run(data, PLANTED_FEATURES[:-1], root / "b", [DEEPFM])
    other_rows = _run(data, PLANTED_FEATURES, root / "c", [FM], seed=7)
    return first, second, other_rows


def _predictions(run_dir):
    table = pq.read_table(run_dir / "predictions.parquet").to_pandas()
    return {str(model): rows.sort_values("row") for model, rows in table.groupby("model", observed=True)}


def test_runs_of_one_row_split_pair_on_auc_as_delong(ctr_runs):
    first, second, _ = ctr_runs
    result = compare_runs([first, second])  # default metric: AUC
    comparison = result.comparison
    assert comparison.metric == "AUC" and comparison.test == "delong"
    assert {row.model for row in comparison.rows} == {"fm", "fm_slow", "deepfm"}
    ours = {**_predictions(first), **_predictions(second)}
    labels = ours["fm"]["label"].to_numpy()
    assert all(np.array_equal(rows["label"].to_numpy(), labels) for rows in ours.values())
    metrics = {**json.loads((first / "metrics.json").read_text()), **json.loads((second / "metrics.json").read_text())}
    for row in comparison.rows:  # the run's own figure, from the same probabilities
        assert row.mean == pytest.approx(metrics[row.model]["test"]["AUC"], abs=1e-12)
        assert row.ci_low < row.mean < row.ci_high
    baseline = comparison.baseline
    assert baseline == max(metrics, key=lambda m: metrics[m]["test"]["AUC"])
    for row in comparison.rows:
        if row.is_baseline:
            continue
        p = delong_test(labels, ours[row.model]["p"].to_numpy(), ours[baseline]["p"].to_numpy())
        assert row.p == pytest.approx(p, rel=1e-9)
        assert row.diff_ci_low < row.diff < row.diff_ci_high
    assert min(row.p for row in comparison.rows if not row.is_baseline) < 0.05  # one epoch at lr 1e-3 is worse
    assert "DeLong" in result.to_markdown() and "rows fingerprint" in result.to_markdown()


def test_gauc_pairs_users_and_logloss_pairs_rows(ctr_runs):
    first, second, _ = ctr_runs
    ours = {**_predictions(first), **_predictions(second)}
    labels, users = ours["fm"]["label"].to_numpy(), ours["fm"]["user"].to_numpy()
    gauc = compare_runs([first, second], "gAUC", baseline="fm")
    per_user = {m: per_user_auc(labels, rows["p"].to_numpy(), users) for m, rows in ours.items()}
    assert gauc.comparison.row("fm").mean == pytest.approx(per_user["fm"].auc.mean(), abs=1e-12)
    assert gauc.comparison.row("deepfm").p == pytest.approx(
        paired_test(per_user["deepfm"].auc, per_user["fm"].auc, "t"), rel=1e-9)
    assert "gAUC here: the mean of the per-user AUCs, each user once" in gauc.to_markdown()
    logloss = compare_runs([first, second], "LogLoss")
    metrics = json.loads((second / "metrics.json").read_text())
    assert logloss.comparison.row("deepfm").mean == pytest.approx(metrics["deepfm"]["test"]["LogLoss"], abs=1e-9)
    assert not logloss.comparison.higher_is_better and "per-row LogLoss" in logloss.comparison.description
    assert logloss.comparison.row("deepfm").n_users == len(labels)


def test_the_command_line_prints_the_ctr_comparison(ctr_runs):
    first, second, _ = ctr_runs
    out = CliRunner().invoke(app, ["compare", str(first), str(second), "--markdown"])
    assert out.exit_code == 0, out.output
    assert "### AUC (test): every model against" in out.output and "| rows |" in out.output


def test_mismatched_ctr_runs_are_refused_in_one_line(ctr_runs, tmp_path):
    first, second, other_rows = ctr_runs
    with pytest.raises(RecstackError, match="their test rows differ"):
        compare_runs([first, other_rows])
    with pytest.raises(RecstackError, match="CTR runs are compared on AUC, gAUC, LogLoss, not 'NDCG@10'"):
        compare_runs([first, second], "NDCG@10")
    with pytest.raises(RecstackError, match="--part test"):
        compare_runs([first, second], part="valid")
    with pytest.raises(RecstackError, match="baseline 'ease' is not a model"):
        compare_runs([first, second], baseline="ease")
    old = tmp_path / "old"
    shutil.copytree(second, old)
    (old / "predictions.parquet").unlink()
    with pytest.raises(RecstackError, match="has no predictions.parquet"):
        compare_runs([first, old])
    ranking = tmp_path / "ranking"
    shutil.copytree(second, ranking)
    manifest = json.loads((ranking / "manifest.json").read_text())
    del manifest["task"]
    (ranking / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecstackError, match="cannot compare CTR run .* with ranking run 'ranking'"):
        compare_runs([first, ranking])
    out = CliRunner().invoke(app, ["compare", str(first), str(other_rows)])
    assert out.exit_code == 2 and "their test rows differ" in out.output
