"""`cold_users` in an experiment: the config, the counts a run prints and stores, the warning, the
report's protocol table and history-length slice, and the policy in every model's evaluation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import LATE_JOINER_CUTOFFS, late_joiners, write_log
from recstack.cli import app
from recstack.errors import RecstackWarning
from recstack.registry import UntrustedCodeError
from recstack.evaluate import evaluate, rank
from recstack.experiment import load_config, parse_config, run_experiment
from recstack.experiment.config import ColdUsersConfig, ExperimentConfigError

K = 5
# pinned by hand from `late_joiners`' docstring: users with held-out events, of them without history,
# with fewer than 5 history events
COUNTS = {"valid": (11, 3, 5), "test": (14, 3, 8)}
NO_HISTORY = {"valid": [6, 7, 8], "test": [9, 10, 11]}  # user indices (external ids 'u6' ...)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_log(late_joiners(), tmp_path_factory.mktemp("late") / "late.csv")


def experiment(data_csv, output_dir, **changes):
    raw = {"data": {"path": str(data_csv), "columns": {"user": "user", "item": "item", "value": "rating",
                                                       "timestamp": "timestamp"}},
           "split": {"method": "temporal", "cutoffs": list(LATE_JOINER_CUTOFFS)}, "ks": [K],
           "valid_metric": f"NDCG@{K}", "output_dir": str(output_dir),
           "models": [{"name": "pop"}, {"name": "ease"},
                      {"name": "bpr", "params": {"epochs": 3, "embedding_size": 4, "verbose": False}}]}
    return {**raw, **changes}


@pytest.fixture(scope="module", params=["include", "skip", "fallback"])
def finished(request, data_csv, tmp_path_factory):
    policy = request.param
    stream = io.StringIO()
    with pytest.warns(RecstackWarning) as warned:
        run = run_experiment(parse_config(experiment(data_csv, tmp_path_factory.mktemp("runs"),
                                                     cold_users={"policy": policy})),
                             console=Console(file=stream, width=200))
    return policy, run, stream.getvalue(), [str(w.message) for w in warned]


# ---- the config ----------------------------------------------------------------------------------

def test_the_default_is_include_and_a_policy_reads_in_short(data_csv, tmp_path):
    default = parse_config(experiment(data_csv, tmp_path)).cold_users
    assert (default.policy, default.fallback, default.min_history, default.few_history) == ("include", None, 1, 5)
    assert parse_config(experiment(data_csv, tmp_path, cold_users="skip")).cold_users.policy == "skip"
    fallback = parse_config(experiment(data_csv, tmp_path, cold_users={"policy": "fallback"})).cold_users
    assert fallback.fallback == "pop"  # the default fallback
    written = parse_config(experiment(data_csv, tmp_path, cold_users={"policy": "fallback", "min_history": 2}))
    assert parse_config(written.resolved().to_dict()) == written.resolved()  # the run's config.yaml reads back


@pytest.mark.parametrize("cold_users, message", [
    ({"polcy": "skip"}, "cold_users: unknown key 'polcy'; did you mean 'policy'?"),
    ({"policy": "drop"}, "cold_users.policy: Input should be 'include', 'skip' or 'fallback'"),
    ({"policy": "skip", "fallback": "pop"}, "'fallback' is used by policy 'fallback' only, not 'skip'"),
    ({"policy": "fallback", "fallback": "popp"}, "fallback: unknown model 'popp'. Did you mean 'pop'?"),
    ({"min_history": 0}, "cold_users.min_history: Input should be greater than or equal to 1"),
    ({"few_history": -1}, "cold_users.few_history: Input should be greater than or equal to 1"),
])
def test_a_bad_cold_user_setting_is_one_clear_error(data_csv, tmp_path, cold_users, message):
    with pytest.raises(ExperimentConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_config(experiment(data_csv, tmp_path, cold_users=cold_users))


def test_a_fallback_class_from_an_untrusted_run_directory_is_refused_before_import(data_csv, tmp_path):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(experiment(data_csv, tmp_path, cold_users={"policy": "fallback",
                                                                              "fallback": "os:system"})))
    with pytest.raises(UntrustedCodeError, match="os:system"):
        load_config(path, trust=False)
    assert ColdUsersConfig(policy="fallback", fallback="pop").fallback == "pop"


# ---- a run ---------------------------------------------------------------------------------------

def test_the_run_prints_and_stores_the_counts_once_per_part(finished):
    policy, run, console, _ = finished
    cold = json.loads((run.run_dir / "manifest.json").read_text())["protocol"]["cold_users"]
    assert (cold["policy"], cold["min_history"], cold["few_history"]) == (policy, 1, 5)
    assert cold.get("fallback") == ("pop" if policy == "fallback" else None)
    for part, (n_users, no_history, few) in COUNTS.items():
        counts = cold[part]
        assert (counts["n_users"], counts["n_no_history"], counts["n_few_history"]) == (n_users, no_history, few)
        assert counts["n_skipped"] == (no_history if policy == "skip" else 0)
        assert counts["n_fallback"] == (no_history if policy == "fallback" else 0)
        line = next(line for line in console.splitlines() if line.strip().startswith(f"{part}:"))
        assert (f"{n_users} users with held-out events, {no_history} ({no_history / n_users:.1%}) with no history, "
                f"{few} ({few / n_users:.1%}) with fewer than 5 history events") in line
        assert f"cold-user policy {policy}" in line
        for label, results in run.results.items():  # every model's evaluation carries the same counts ...
            own = results[part].history_counts.to_dict()
            unscorable = own.pop("n_unscorable")  # ... and, its own, the users it says it cannot score
            if policy == "fallback":  # which the fallback serves too
                own["n_fallback"] -= unscorable
            assert own == {key: value for key, value in counts.items() if key != "n_unscorable"}, label
            empty_left_to_model = no_history if policy == "include" else 0
            assert unscorable == {"pop": 0, "ease": empty_left_to_model}.get(label, unscorable), label
            assert label == "pop" or unscorable >= empty_left_to_model, label  # bpr: those and more
        evaluated = n_users - (no_history if policy == "skip" else 0)
        assert {entry["n_users"][part] for entry in run.metrics.values()} == {evaluated}


def test_a_large_share_of_cold_users_warns_once_per_part(finished):
    policy, _, _, warned = finished
    assert [message.split(" users")[0] for message in warned] == ["3 of the 11 valid", "3 of the 14 test"]
    assert all("have no history" in message for message in warned)
    assert all({"include": "state a policy", "skip": "leaves them out", "fallback": "pop's lists"}[policy] in message
               for message in warned)


def test_the_report_names_the_policy_and_shows_the_counts(finished):
    policy, run, _, _ = finished
    report = (run.run_dir / "report.md").read_text()
    assert f"| cold-user policy | {policy}: users with no history are " in report
    assert "| users with no history (valid / test) | 3 (27.3%) / 3 (21.4%) |" in report
    assert "| users with fewer than 5 history events, none included (valid / test) | 5 (45.5%) / 8 (57.1%) |" in report
    if policy == "skip":
        assert "| users with no history skipped by the policy (valid / test) | 3 (27.3%) / 3 (21.4%) |" in report
    if policy == "fallback":
        assert "| users ranked by the fallback 'pop', share of the evaluated (valid / test) | 3 (27.3%) / 3 (21.4%) |" \
            in report
    # BPR has no embedding for users without training events: in valid the users without history,
    # in test also those whose only history is in valid (the policy leaves those to the model)
    row = next(line for line in report.splitlines() if line.startswith("| users a model says it cannot score"))
    expected = {"include": "ease 3 / 3; bpr 3 / 6: ranked by the model itself (policy include)",
                "skip": "bpr 0 / 3: ranked by the model itself", "fallback": "bpr 0 / 3: ranked by the fallback model"}
    assert expected[policy] in row and "pop" not in row.split("|")[2]


def test_every_report_has_the_history_length_slices(finished):
    policy, run, _, _ = finished
    for label, entry in run.metrics.items():
        groups = entry["slices"]["history_length"]["groups"]
        # test histories: 0 (users 9-11), 2 (6-8), 3 (12-13), 9 (0-5); skip leaves the empty ones out
        assert {g: groups[g]["n_users"] for g in groups} == {"0": 0 if policy == "skip" else 3, "1-4": 5,
                                                             "5-19": 6, "20+": 0}, label
        assert groups["5-19"]["ci"][f"NDCG@{K}"] is not None
    report = (run.run_dir / "report.md").read_text()
    assert "### history_length (user)" in report
    assert "slice_history_length" in (run.run_dir / "report.html").read_text()


def test_the_policy_decides_every_models_figures(finished):
    policy, run, _, _ = finished
    split = run.split
    history, cold = split.history("test"), np.array(NO_HISTORY["test"], dtype=np.int32)
    ease = run.models["ease"]
    result, metrics = run.results["ease"]["test"], run.config.metrics
    if policy == "include":
        assert result.metrics == pytest.approx(evaluate(ease, history, split.test, ks=[K], metrics=metrics).metrics)
    elif policy == "skip":
        warm = np.setdiff1d(np.flatnonzero(split.test.user_counts() > 0), cold)
        assert result.users.tolist() == warm.tolist()
        assert result.metrics == pytest.approx(evaluate(ease, history, split.test, ks=[K], users=warm,
                                                        metrics=metrics).metrics)
    else:  # every model's cold users get the fallback's list: the run's own pop ranks them the same way
        pop_lists, _ = rank(run.models["pop"], cold, history, K)
        for label, results in run.results.items():
            rows = np.searchsorted(results["test"].users, cold)
            assert np.array_equal(results["test"].rankings.items[rows], pop_lists), label
        assert not np.array_equal(rank(ease, cold, history, K)[0], pop_lists)  # EASE alone would differ


def test_the_cli_prints_the_counts_and_one_warning_line_per_part(data_csv, tmp_path):
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(data_csv, tmp_path / "runs", models=[{"name": "pop"}])))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and "3 of the 11 valid users" in warnings[0] and "3 of the 14 test" in warnings[1]
    assert "valid: 11 users with held-out events, 3 (27.3%) with no history" in result.stdout


def test_no_warning_when_cold_users_are_rare(tmp_path, recwarn):
    from test_run import config_for, write_parts

    run = run_experiment(config_for(write_parts(tmp_path / "tiny"), tmp_path / "runs", models=[{"name": "pop"}]),
                         progress=False)
    assert not [w for w in recwarn if issubclass(w.category, RecstackWarning)]
    counts = json.loads((run.run_dir / "manifest.json").read_text())["protocol"]["cold_users"]["test"]
    assert counts["n_no_history"] == 0 and counts["n_users"] > 0


@pytest.mark.parametrize("policy", ["skip", "fallback"])
def test_tune_selects_under_the_same_policy(data_csv, tmp_path, policy):
    from recstack.evaluate import ColdUsers
    from recstack.experiment.run import prepare_data
    from recstack.experiment.tune import study_definition, tune
    from recstack.models import build

    raw = experiment(data_csv, tmp_path / "out", cold_users={"policy": policy},
                     tune={"model": "ease", "space": {"reg": {"choices": [20.0]}}, "n_trials": 1})
    raw.pop("models")
    with pytest.warns(RecstackWarning, match="3 of the 11 valid users"):  # tuning scores valid: its counts
        tuned = tune(parse_config(raw), final_run=False, progress=False)
    config = parse_config(raw)
    dataset, split = prepare_data(config)
    ease = build("ease", {"reg": 20.0}).fit(split.train)
    fallback = build("pop", {}).fit(split.train) if policy == "fallback" else None
    under = evaluate(ease, split.train, split.valid, ks=[K], cold_users=ColdUsers(policy, fallback=fallback))
    included = evaluate(ease, split.train, split.valid, ks=[K])
    assert tuned.best_value == pytest.approx(under[f"NDCG@{K}"])
    assert tuned.best_value != pytest.approx(included[f"NDCG@{K}"])
    assert study_definition(config, dataset, split)["cold_users"]["policy"] == policy  # a study per policy
