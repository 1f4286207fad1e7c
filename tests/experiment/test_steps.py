"""The shared units of work (`steps`) and the run directory's one owner of names, writers and readers (`rundir`)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

import recstack.models as registry
from recstack.cli import app
from recstack.errors import RecstackError
from recstack.experiment import load_run, parse_config, recommend, run_experiment, rundir
from recstack.experiment.compare import compare_runs
from recstack.experiment.report import write_report
from recstack.experiment.tune import tune
from test_run import write_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_parts(tmp_path_factory.mktemp("steps-data") / "tiny", seed=3)


class Recording:
    """Wraps a real model; notes what a flow handed it: side data, the validation protocol, the data."""

    def __init__(self, inner, notes: list) -> None:
        self.inner, self.notes, self.dataset = inner, notes, None
        self.config = inner.config

    def use_dataset(self, dataset) -> None:
        self.dataset = dataset

    def fit(self, train, valid=None, *, options=None):
        self.notes.append({
            "model": type(self.inner).__name__,
            "config": self.inner.config.model_dump(),
            "side_data": None if self.dataset is None else self.dataset.interactions.fingerprint(),
            "mask_history_in_validation": options.mask_history,
            "cold_users_in_validation": None if options.cold_users is None else options.cold_users.policy,
            "fallback": None if options.cold_users is None else options.cold_users.fallback,
            "train": train.fingerprint(), "valid": None if valid is None else valid.fingerprint(),
            "epoch_log": options.log_path,
        })
        self.inner.fit(train, valid, options=options)
        return self

    def score(self, users, history, items=None):
        return self.inner.score(users, history, items)

    def save(self, path):
        self.inner.save(path)


@pytest.fixture
def notes(monkeypatch):
    real_build, notes = registry.build, []
    monkeypatch.setattr(registry, "build", lambda name, params=None: Recording(real_build(name, params), notes))
    return notes


def test_a_tuning_trial_and_a_run_fit_a_model_the_same_way(parts, tmp_path, notes):
    # mask_history false, a cold-user policy and a seed of its own: a flow that forgot any would record the default
    common = {"data": {"files": parts}, "ks": [10], "seed": 7, "mask_history": False,
              "cold_users": {"policy": "skip", "min_history": 2}, "output_dir": str(tmp_path / "out")}
    run = run_experiment(parse_config({**common, "models": [{"name": "ease", "params": {"reg": 30.0}}]}),
                         progress=False)
    from_run = [note for note in notes if note["model"] == "EASE"]
    notes.clear()
    tuned = tune(parse_config({**common, "tune": {"model": "ease", "space": {"reg": {"choices": [30.0]}},
                                                  "n_trials": 1}}), final_run=False, progress=False)
    from_trial = [note for note in notes if note["model"] == "EASE"]
    assert len(from_run) == len(from_trial) == 1
    ran, trial = from_run[0], from_trial[0]
    log = ran.pop("epoch_log")  # logs/ease.jsonl in the hidden folder the run was written in
    written_in = log.parent.parent
    assert log == rundir.log_path(written_in, "ease") and written_in.name.startswith(f".{run.run_dir.name}.")
    assert trial.pop("epoch_log") is None  # trials keep no epoch log
    assert ran == trial
    assert trial["config"]["seed"] == 7 and trial["mask_history_in_validation"] is False
    assert trial["cold_users_in_validation"] == "skip"
    assert trial["side_data"] == run.dataset.interactions.fingerprint()
    # the trial's figure is the run's valid figure: the same scoring of the same part
    assert tuned.best_value == pytest.approx(run.metrics["ease"]["valid"]["NDCG@10"])


def test_the_analysis_reference_is_fitted_through_the_same_step(parts, tmp_path, notes):
    run_experiment(parse_config({"data": {"files": parts}, "ks": [10], "seed": 11, "models": [{"name": "pop"}],
                                 "output_dir": str(tmp_path / "out")}), progress=False)
    # the run's pop, then the popularity reference of `beyond`: both seeded by the experiment
    assert [note["config"]["seed"] for note in notes] == [11, 11]
    assert notes[1]["epoch_log"] is None and notes[0]["epoch_log"] is not None


def test_the_fallback_is_fitted_once_per_flow_and_reaches_every_validation(parts, tmp_path, notes):
    common = {"data": {"files": parts}, "ks": [10], "seed": 5, "cold_users": {"policy": "fallback"},
              "output_dir": str(tmp_path / "out")}
    run_experiment(parse_config({**common, "models": [{"name": "ease"}, {"name": "itemknn"}]}), progress=False)
    fallback, *fitted = notes
    # first the fallback (validating its own cold users itself), then each model with it (and the reference)
    assert (fallback["model"], fallback["cold_users_in_validation"], fallback["epoch_log"]) == ("Pop", "include", None)
    assert [n["model"] for n in fitted] == ["EASE", "Pop", "ItemKNN"]  # Pop: the analysis reference
    assert all(n["cold_users_in_validation"] == "fallback" for n in fitted)
    served_by = {id(n["fallback"]) for n in fitted}
    assert len(served_by) == 1 and fallback["config"]["seed"] == 5
    notes.clear()
    tune(parse_config({**common, "tune": {"model": "ease", "space": {"reg": {"choices": [10.0, 30.0]}},
                                          "n_trials": 2}}), final_run=False, progress=False)
    assert [n["model"] for n in notes] == ["Pop", "EASE", "EASE"]  # one fallback for every trial
    assert notes[1]["fallback"] is notes[2]["fallback"] is not None


# ---- the run directory ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(parts, tmp_path_factory):
    config = parse_config({"data": {"files": parts}, "ks": [5], "valid_metric": "NDCG@5",
                           "models": [{"name": "pop"}, {"name": "ease"}],
                           "output_dir": str(tmp_path_factory.mktemp("runs"))})
    return run_experiment(config, progress=False)


def test_every_file_of_a_run_directory_is_named_by_rundir(finished):
    known = {rundir.CONFIG, rundir.MANIFEST, rundir.METRICS, rundir.CURVES, rundir.PER_USER, rundir.HISTORY,
             rundir.MODELS, rundir.LOGS, rundir.REPORT_MD, rundir.REPORT_HTML, rundir.PLOTS}
    written = {p.name for p in finished.run_dir.iterdir()}
    assert written <= known, written - known
    assert {rundir.CONFIG, rundir.MANIFEST, rundir.METRICS, rundir.PER_USER, rundir.HISTORY} <= written
    assert rundir.saved_models(finished.run_dir) == ["ease", "pop"]
    assert rundir.read_manifest(finished.run_dir)["run_name"] == finished.run_dir.name
    assert rundir.read_metrics(finished.run_dir)["ease"]["test"] == pytest.approx(finished.metrics["ease"]["test"])


@pytest.fixture
def damaged(finished, tmp_path):
    copy = tmp_path / finished.run_dir.name
    shutil.copytree(finished.run_dir, copy)
    return copy


@pytest.mark.parametrize("name", [rundir.MANIFEST, rundir.METRICS])
def test_a_damaged_json_file_is_one_line_naming_it(damaged, name):
    (damaged / name).write_text('{"run_name": "x", ')  # cut off mid-write
    message = rf"^'{damaged / name}' is not valid JSON \(.* at line 1 column \d+\); the run directory is damaged: " \
              r"run the experiment again$"
    with pytest.raises(RecstackError, match=message):
        write_report(damaged)
    if name == rundir.MANIFEST:
        with pytest.raises(RecstackError, match=message):
            recommend(damaged, "pop", "u3")
        with pytest.raises(RecstackError, match=message):
            load_run(damaged)
        with pytest.raises(RecstackError, match=message):
            compare_runs([damaged])


def test_a_missing_or_non_object_json_file_is_one_line_naming_it(damaged):
    (damaged / rundir.METRICS).unlink()
    with pytest.raises(RecstackError, match=rf"^'{damaged / rundir.METRICS}' is missing; the run directory is "
                                            r"damaged: run the experiment again$"):
        write_report(damaged)
    (damaged / rundir.MANIFEST).write_text(json.dumps([1, 2]))
    with pytest.raises(RecstackError, match=rf"^'{damaged / rundir.MANIFEST}' holds a JSON list, not an object; "):
        compare_runs([damaged])


def test_the_cli_prints_a_damaged_manifest_as_one_error_line(damaged):
    (damaged / rundir.MANIFEST).write_text("not json")
    result = CliRunner().invoke(app, ["compare", str(damaged)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "manifest.json' is not valid JSON" in lines[0]
    assert "Traceback" not in result.output
