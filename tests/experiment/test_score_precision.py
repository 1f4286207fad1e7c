"""`score_precision` in an experiment: bf16 ranking of dot-product models, stated in the manifest, the
report and the protocol `recstack compare` checks."""

from __future__ import annotations

import pytest

from conftest import LATE_JOINER_CUTOFFS, late_joiners, write_log
from recstack.errors import RecstackError
from recstack.experiment import parse_config, run_experiment
from recstack.experiment.compare import Protocol, compare_runs
from recstack.experiment.config import ExperimentConfigError
from recstack.experiment.rundir import read_manifest

K = 5


def experiment(data_csv, output_dir, **changes):
    raw = {"data": {"path": str(data_csv), "columns": {"user": "user", "item": "item", "value": "rating",
                                                       "timestamp": "timestamp"}},
           "split": {"method": "temporal", "cutoffs": list(LATE_JOINER_CUTOFFS)}, "ks": [K],
           "metrics": ["NDCG", "Recall"], "valid_metric": f"NDCG@{K}", "output_dir": str(output_dir),
           "beyond": False, "models": [{"name": "als", "params": {"epochs": 3}}, {"name": "ease"}]}
    return parse_config({**raw, **changes})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision")
    data_csv = write_log(late_joiners(), folder / "late.csv")
    with pytest.warns(Warning):  # the late joiners make the cold-user warning fire
        return {precision: run_experiment(experiment(data_csv, folder, score_precision=precision),
                                          run_dir=folder / precision, progress=False)
                for precision in ("fp32", "bf16")}


def test_bf16_runs_state_their_precision_and_keep_the_float32_figures_here(runs):
    for precision, run in runs.items():
        assert read_manifest(run.run_dir)["protocol"]["score_precision"] == precision
        assert Protocol.of_run(run.run_dir) == Protocol.of_config(run.config, run.split)
        report = (run.run_dir / "report.md").read_text()
        assert "score precision (score_precision)" in report
        assert ("bf16: dot-product models" in report) == (precision == "bf16")
    # ALS is ranked from bf16 products re-scored exactly; EASE is not a dot-product model
    for label in ("als", "ease"):
        assert runs["bf16"].metrics[label]["test"][f"NDCG@{K}"] == pytest.approx(
            runs["fp32"].metrics[label]["test"][f"NDCG@{K}"], rel=5e-3)


def test_compare_refuses_runs_of_different_precisions(runs):
    with pytest.raises(RecstackError, match=r"protocols differ \(score_precision = 'fp32' vs 'bf16'\)"):
        compare_runs([runs["fp32"].run_dir, runs["bf16"].run_dir])


def test_an_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ExperimentConfigError, match=r"score_precision: Input should be 'fp32' or 'bf16'"):
        experiment(tmp_path / "x.csv", tmp_path, score_precision="fp16")
