"""`recstack tune`: Optuna search on validation only, resumable, with a final run of the best setting."""

from __future__ import annotations

import json

import pytest

from recstack.evaluate import evaluate
from recstack.experiment import parse_config
from recstack.experiment.config import ExperimentConfigError
from recstack.experiment.run import prepare_data
from recstack.errors import RecstackError
from recstack.experiment.tune import definition_changes, study_definition, tune
from recstack.models import build
from test_run import write_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_parts(tmp_path_factory.mktemp("tune-data") / "tiny")


def tune_config(parts, output_dir, valid_metric="NDCG@10", **tune_changes):
    spec = {"model": "ease", "space": {"reg": {"low": 1.0, "high": 1000.0, "log": True}}, "n_trials": 4}
    return parse_config({"data": {"files": parts}, "ks": [10], "output_dir": str(output_dir),
                         "valid_metric": valid_metric, "tune": {**spec, **tune_changes}})


def complete_runs(output_dir):
    return sorted(p.parent for p in output_dir.glob("*/manifest.json"))


def valid_score(config, params, metric):
    """The validation figure of `params`, recomputed outside tune."""
    _, split = prepare_data(config)
    model = build("ease", {**params, "seed": config.seed}).fit(split.train, split.valid)
    return evaluate(model, split.history("valid"), split.valid, metrics=[metric]).metrics[metric]


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
    assert (second.n_resumed, second.n_run_now) == (2, 1)
    # the resumed sampler proposes a new setting, not the first call's first trial again
    regs = [t["params"]["reg"] for t in json.loads((second.tune_dir / "trials.json").read_text())]
    assert len(set(regs)) == 3


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


def test_the_parameter_type_decides_integer_sampling_also_on_a_log_scale(parts, tmp_path):
    import optuna

    from recstack.experiment.tune import _suggest

    # itemknn's n_neighbors is an int: a log-scaled range samples integers (it used to sample floats such as 37.4)
    config = parse_config({"data": {"files": parts}, "ks": [10], "output_dir": str(tmp_path), "tune": {
        "model": "itemknn", "space": {"n_neighbors": {"low": 5, "high": 400, "log": True},
                                      "shrink": {"low": 0, "high": 100}}}})
    k, shrink = config.tune.space["n_neighbors"], config.tune.space["shrink"]
    assert k.is_int and k.log and not shrink.is_int  # shrink is a float: integral bounds sample floats
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        value = _suggest(trial, "n_neighbors", k)
        assert isinstance(value, int) and 5 <= value <= 400
        assert isinstance(_suggest(trial, "shrink", shrink), float)
    space = study_definition(config, *prepare_data(config))["space"]
    assert space["n_neighbors"] == {"kind": "int", "low": 5, "high": 400, "log": True}
    assert space["shrink"] == {"kind": "float", "low": 0.0, "high": 100.0, "log": False}
    with pytest.raises(ExperimentConfigError, match="tune.space.n_neighbors: .n_neighbors. is sampled as integers; give integer low"):
        parse_config({"data": {"files": parts}, "tune": {"model": "itemknn", "space": {"n_neighbors": {"low": 5.5, "high": 40}}}})


# ---- a study is its definition: never another study's results ------------------------------------

def test_a_changed_metric_and_space_start_a_new_study_that_reports_its_own_best(parts, tmp_path):
    # the reported bug: the old study's NDCG@10 and its out-of-space reg came back as "best Precision@10"
    first = tune(tune_config(parts, tmp_path, n_trials=3), final_run=False, progress=False)
    config = tune_config(parts, tmp_path, valid_metric="Precision@10", n_trials=3,
                         space={"reg": {"low": 1.0, "high": 50.0, "log": True}})
    second = tune(config, final_run=False, progress=False)
    assert second.tune_dir != first.tune_dir and second.study_name != first.study_name
    assert (second.n_resumed, second.n_run_now, second.metric) == (0, 3, "Precision@10")
    trials = json.loads((second.tune_dir / "trials.json").read_text())
    assert len(trials) == 3 and all(1.0 <= t["params"]["reg"] <= 50.0 for t in trials)
    assert 1.0 <= second.best_params["reg"] <= 50.0
    assert second.best_value == pytest.approx(max(t["value"] for t in trials))
    assert second.best_value == pytest.approx(valid_score(config, second.best_params, "Precision@10"))
    best = json.loads((second.tune_dir / "best.json").read_text())
    assert best["metric"] == "Precision@10" and "NDCG@10" not in best
    # the first study is untouched and still answers for itself
    again = tune(tune_config(parts, tmp_path, n_trials=3), final_run=False, progress=False)
    assert again.tune_dir == first.tune_dir and again.n_resumed == 3 and again.n_run_now == 0
    assert again.best_value == pytest.approx(first.best_value) and again.best_params == first.best_params


def test_changing_a_range_kind_starts_a_new_study_instead_of_crashing(parts, tmp_path):
    first = tune(tune_config(parts, tmp_path, n_trials=2), final_run=False, progress=False)
    second = tune(tune_config(parts, tmp_path, n_trials=2, space={"reg": {"low": 1, "high": 1000, "integer": True}}),
                  final_run=False, progress=False)
    assert second.tune_dir != first.tune_dir and second.n_resumed == 0
    trials = json.loads((second.tune_dir / "trials.json").read_text())
    assert all(isinstance(t["params"]["reg"], int) for t in trials)


def test_fewer_trials_than_the_study_holds_run_nothing_say_so_and_train_no_duplicate(parts, tmp_path):
    first = tune(tune_config(parts, tmp_path, n_trials=3), progress=False)
    assert first.run is not None and complete_runs(tmp_path) == [first.run_dir]
    second = tune(tune_config(parts, tmp_path, n_trials=2), progress=False)
    assert (second.n_run_now, second.n_resumed, second.n_trials) == (0, 3, 3)
    assert second.run is None and second.run_reused and second.run_dir == first.run_dir
    assert complete_runs(tmp_path) == [first.run_dir]
    lines = second.summary()
    assert "0 trials run now, 3 resumed" in lines[1] and "raise --n-trials" in lines[1]
    assert "not re-trained" in lines[2] and str(first.run_dir) in lines[2]
    # a changed final-run config (another cut-off) is a different run, so it is trained
    config = tune_config(parts, tmp_path, n_trials=2).model_copy(update={"ks": [5, 10]})
    third = tune(config, progress=False)
    assert third.n_run_now == 0 and third.run is not None and len(complete_runs(tmp_path)) == 2
    # more trials: only the new ones run; the best setting is re-trained only if the best changed
    fourth = tune(tune_config(parts, tmp_path, n_trials=4), progress=False)
    assert (fourth.n_run_now, fourth.n_resumed) == (1, 3)
    assert fourth.run_reused == (fourth.best_trial == first.best_trial)


def test_a_named_study_resumes_only_with_its_own_definition(parts, tmp_path):
    first = tune(tune_config(parts, tmp_path, n_trials=1), study="mine", final_run=False, progress=False)
    assert first.tune_dir == tmp_path / "tune-mine"
    changed = tune_config(parts, tmp_path, valid_metric="Precision@10", n_trials=2,
                          space={"reg": {"low": 1, "high": 50}}, params={"seed": 7})
    with pytest.raises(RecstackError) as caught:
        tune(changed, study="mine", final_run=False, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "study 'mine'" in message
    for change in ("metric was NDCG@10, now Precision@10", "space.reg was log-float [1.0, 1000.0], now float [1.0, 50.0]",
                   "params.seed was 2020, now 7"):
        assert change in message, message
    same = tune(tune_config(parts, tmp_path, n_trials=2), study="mine", final_run=False, progress=False)
    assert (same.n_resumed, same.n_run_now) == (1, 1)  # the refused call added no trial
    with pytest.raises(RecstackError, match="study name '../x'"):
        tune(tune_config(parts, tmp_path), study="../x", final_run=False, progress=False)
    with pytest.raises(RecstackError, match="--n-trials must be at least 1, got 0"):
        tune(tune_config(parts, tmp_path), n_trials=0, final_run=False, progress=False)


def test_the_definition_holds_what_decides_a_trial_and_not_the_budget(parts, tmp_path):
    def definition(config):
        dataset, split = prepare_data(config)
        return study_definition(config, dataset, split)

    base = definition(tune_config(parts, tmp_path))
    assert definition(tune_config(parts, tmp_path, n_trials=9, timeout_s=60)) == base
    other_parts = write_parts(tmp_path / "other", seed=3)
    changed = {
        "metric": tune_config(parts, tmp_path, valid_metric="Recall@10"),
        "space": tune_config(parts, tmp_path, space={"reg": {"low": 1.0, "high": 1000.0}}),
        "params": tune_config(parts, tmp_path, params={"seed": 1}),
        "mask_history": tune_config(parts, tmp_path).model_copy(update={"mask_history": False}),
        "data": tune_config(other_parts, tmp_path),
    }
    for key, config in changed.items():
        new = definition(config)
        assert new != base and any(change.startswith(key) for change in definition_changes(base, new)), key
