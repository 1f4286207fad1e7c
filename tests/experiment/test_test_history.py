"""`test_history` in an experiment: the config, the history and masked items every test figure is
made with, the manifest and the report that state it, and the protocol check of `recstack compare`
and of the peer benchmarks."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import LATE_JOINER_CUTOFFS, late_joiners, write_log
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.experiment import parse_config, run_experiment
from recstack.experiment.compare import Protocol, compare_runs, require_same_protocol
from recstack.experiment.config import ExperimentConfigError
from recstack.experiment.run import prepare_data
from recstack.experiment.steps import scoring

K = 5


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_log(late_joiners(), tmp_path_factory.mktemp("late") / "late.csv")


def experiment(data_csv, output_dir, **changes):
    raw = {"data": {"path": str(data_csv), "columns": {"user": "user", "item": "item", "value": "rating",
                                                       "timestamp": "timestamp"}},
           "split": {"method": "temporal", "cutoffs": list(LATE_JOINER_CUTOFFS)}, "ks": [K],
           "metrics": ["NDCG", "Recall"], "valid_metric": f"NDCG@{K}", "output_dir": str(output_dir),
           "beyond": False, "models": [{"name": "pop"}, {"name": "ease"}]}
    return parse_config({**raw, **changes})


@pytest.fixture(scope="module")
def runs(data_csv, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    with pytest.warns(Warning):  # the late joiners make the cold-user warning fire
        both = {choice: run_experiment(experiment(data_csv, folder, test_history=choice), run_dir=folder / choice,
                                       progress=False) for choice in ("train_valid", "train")}
    return both


# ---- the config ----------------------------------------------------------------------------------

def test_the_default_is_train_valid_and_other_values_are_refused(data_csv, tmp_path):
    assert experiment(data_csv, tmp_path).test_history == "train_valid"
    assert experiment(data_csv, tmp_path, test_history="train").test_history == "train"
    with pytest.raises(ExperimentConfigError, match=r"test_history: Input should be 'train_valid' or 'train'"):
        experiment(data_csv, tmp_path, test_history="valid")
    with pytest.raises(ExperimentConfigError, match="did you mean 'test_history'"):
        experiment(data_csv, tmp_path, test_histroy="train")


# ---- the history every test figure is made with ------------------------------------------------------

def test_the_option_changes_the_test_history_and_keeps_the_validation_items_masked(data_csv, tmp_path):
    config = experiment(data_csv, tmp_path, test_history="train")
    _, split = prepare_data(config)
    plan = scoring(config, split, "test")
    assert plan.history is split.train and plan.options["exclude"] is split.valid
    default = scoring(experiment(data_csv, tmp_path), split, "test")
    assert len(default.history) == len(split.train) + len(split.valid) and default.options["exclude"] is None
    for part_config in (config, experiment(data_csv, tmp_path)):  # validation is the same under both
        valid = scoring(part_config, split, "valid")
        assert valid.history is split.train and valid.options["exclude"] is None
    # users 6-8 joined in the validation window: their test history is empty under `train`
    lengths = split.history("test", "train").user_counts()
    assert lengths[[6, 7, 8]].tolist() == [0, 0, 0] and split.history("test").user_counts()[6] == 2
    with pytest.raises(ValueError, match="test_history must be one of train_valid, train"):
        split.history("test", "valid")


def test_a_run_scores_test_from_train_only_and_masks_the_validation_items(runs):
    run = runs["train"]
    split = run.split
    for label, model in run.models.items():
        expected = evaluate(model, split.train, split.test, metrics=["NDCG"], ks=[K], exclude=split.valid)
        assert run.metrics[label]["test"][f"NDCG@{K}"] == pytest.approx(expected.metrics[f"NDCG@{K}"])
        lists = run.results[label]["test"].rankings.items
        users = run.results[label]["test"].users
        valid = split.valid.matrix()[users]
        for row, items in enumerate(lists):  # no validation item in any test list
            assert not np.isin(items, valid.indices[valid.indptr[row]:valid.indptr[row + 1]]).any()
    # the same fitted models, the same validation figures: the option changes test only
    for label in run.metrics:
        assert run.metrics[label]["valid"] == runs["train_valid"].metrics[label]["valid"]


def test_manifest_and_report_state_both_choices(runs):
    expected = {"train_valid": ("train + valid", 3), "train": ("train", 6)}
    for choice, run in runs.items():
        manifest = json.loads((run.run_dir / "manifest.json").read_text())
        protocol = manifest["protocol"]
        events, no_history = expected[choice]
        assert (protocol["mask_history"], protocol["test_history"], protocol["test_masked"]) == \
            (True, events, "train + valid")
        assert protocol["cold_users"]["test"]["n_no_history"] == no_history  # counted on what the model reads
        report = (run.run_dir / "report.md").read_text()
        assert f"| test history (test_history) | {choice}: valid users are ranked from train, test users " \
               f"from {events} |" in report
        assert "| history masking (mask_history) | on: lists leave out the items of train (valid) and of " \
               "train + valid (test) |" in report
        assert Protocol.of_run(run.run_dir) == Protocol.of_config(run.config, run.split)


# ---- refusing to compare different protocols ---------------------------------------------------------

def test_compare_refuses_runs_with_different_test_histories_naming_both(runs):
    with pytest.raises(RecstackError) as refused:
        compare_runs([runs["train_valid"].run_dir, runs["train"].run_dir])
    message = str(refused.value)
    assert "\n" not in message
    assert "protocols differ (test_history = 'train + valid' vs 'train')" in message
    # validation figures do not depend on the test history: they pair up
    assert compare_runs([runs["train_valid"].run_dir, runs["train"].run_dir], part="valid") is not None


def test_compare_refuses_mismatched_masking_and_candidates(runs, tmp_path):
    import shutil

    for key, value, shown in (("mask_history", False, "mask_history = True vs False"),
                              ("ranking", "item_pool", "ranking = 'full' vs 'item_pool'"),
                              ("test_masked", "train", "test_masked = 'train + valid' vs 'train'"),
                              ("score_precision", "bf16", "score_precision = 'fp32' vs 'bf16'")):
        copy = tmp_path / key
        shutil.copytree(runs["train_valid"].run_dir, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["protocol"][key] = value
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(RecstackError, match=re.escape(f"protocols differ ({shown})")):
            compare_runs([runs["train_valid"].run_dir, copy])


def test_a_manifest_written_before_the_option_reads_as_the_default():
    old = {"ranking": "full", "mask_history": True, "graded": False, "valid_history": "train",
           "test_history": "train + valid"}
    assert Protocol.from_manifest(old) == Protocol()
    assert Protocol.from_manifest({**old, "mask_history": False}).test_masked == "none"


def test_require_same_protocol_is_one_line_naming_the_setting_and_both_values():
    require_same_protocol("a ratio", ("a", Protocol()), ("b", Protocol()))
    with pytest.raises(RecstackError) as refused:
        require_same_protocol("a ratio", ("recstack", Protocol()), ("RecBole", Protocol(test_history="train")))
    assert str(refused.value) == ("not printing a ratio: recstack and RecBole were measured under different "
                                  "protocols (test_history = 'train + valid' vs 'train')")


# ---- the peer benchmarks' protocols -----------------------------------------------------------------

@pytest.fixture(scope="module")
def peer_protocol():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import peer_protocol
    finally:
        sys.path.pop(0)
    return peer_protocol


def test_recstack_configured_as_recbole_has_recbole_s_protocol(peer_protocol, data_csv, tmp_path):
    _, split = prepare_data(experiment(data_csv, tmp_path))
    for name in ("A", "B"):
        config = experiment(data_csv, tmp_path, **peer_protocol.RECSTACK_AS_RECBOLE[name])
        assert Protocol.of_config(config, split) == peer_protocol.recbole_protocol({"protocol": name})
        assert peer_protocol.ratio_refusal(("recstack", Protocol.of_config(config, split)),
                                           ("RecBole", peer_protocol.RECBOLE[name])) is None
    refusal = peer_protocol.ratio_refusal(("recstack", Protocol.of_config(experiment(data_csv, tmp_path), split)),
                                          ("RecBole", peer_protocol.RECBOLE["A"]))
    assert refusal == ("refused: not printing an accuracy ratio: recstack and RecBole were measured under "
                       "different protocols (test_history = 'train + valid' vs 'train')")
