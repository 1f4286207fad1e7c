"""`recstack tune`: Optuna search on validation only, resumable, with a final run of the best setting."""

from __future__ import annotations

import json

import pytest

from recstack.evaluate import evaluate
from recstack.experiment import parse_config
from recstack.experiment.config import ExperimentConfigError
from recstack.experiment.run import prepare_data
from recstack.experiment.tune import tune
from recstack.models import build
from test_run import write_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_parts(tmp_path_factory.mktemp("tune-data") / "tiny")


def tune_config(parts, output_dir, **tune_changes):
    spec = {"model": "ease", "space": {"reg": {"low": 1.0, "high": 1000.0, "log": True}}, "n_trials": 4}
    return parse_config({"data": {"files": parts}, "ks": [10], "output_dir": str(output_dir),
                         "tune": {**spec, **tune_changes}})


def test_best_trial_is_the_best_validation_score_and_test_is_untouched(parts, tmp_path, monkeypatch):
    config = tune_config(parts, tmp_path)
    _, split = prepare_data(config)
    calls = []
    import recstack.experiment.tune as tune_module

    real_evaluate = tune_module.evaluate

    def watching(model, history, test, **kwargs):
        calls.append(test)
        return real_evaluate(model, history, test, **kwargs)

    monkeypatch.setattr(tune_module, "evaluate", watching)
    result = tune(config, final_run=False, progress=False)
    assert len(calls) == 4 and all(part.fingerprint() == split.valid.fingerprint() for part in calls)
    trials = json.loads((result.tune_dir / "trials.json").read_text())
    assert len(trials) == result.n_trials == 4
    assert result.best_value == max(t["value"] for t in trials)
    # recompute the best trial's validation score independently
    model = build("ease", {**result.best_params, "seed": config.seed}).fit(split.train, split.valid)
    again = evaluate(model, split.history("valid"), split.valid, metrics=["NDCG@10"]).metrics["NDCG@10"]
    assert again == pytest.approx(result.best_value)
    assert 1.0 <= result.best_params["reg"] <= 1000.0
    best = json.loads((result.tune_dir / "best.json").read_text())
    assert best["selected_on"] == "valid" and best["params"] == result.best_params


def test_a_second_call_resumes_the_study(parts, tmp_path):
    first = tune(tune_config(parts, tmp_path, n_trials=2), final_run=False, progress=False)
    second = tune(tune_config(parts, tmp_path, n_trials=3), final_run=False, progress=False)
    assert first.tune_dir == second.tune_dir and second.n_trials == 3


def test_final_run_trains_the_best_setting(parts, tmp_path):
    result = tune(tune_config(parts, tmp_path, n_trials=2, params={}), progress=False)
    assert list(result.run.metrics) == ["ease-tuned"]
    assert result.run.metrics["ease-tuned"]["valid"]["NDCG@10"] == pytest.approx(result.best_value)


def test_search_space_errors_are_caught_before_any_data_is_read(parts, tmp_path):
    with pytest.raises(ExperimentConfigError, match="unknown key 'regg'.*did you mean 'reg'"):
        tune_config(parts, tmp_path, space={"regg": {"low": 1, "high": 2}})
    with pytest.raises(ExperimentConfigError, match="either 'choices' or both 'low' and 'high'"):
        tune_config(parts, tmp_path, space={"reg": {"low": 1}})
    with pytest.raises(ExperimentConfigError, match="both fixed in 'params' and searched"):
        tune_config(parts, tmp_path, params={"reg": 5.0})
