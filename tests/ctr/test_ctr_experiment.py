"""CTR experiments: the example configs parse, bad sections are named, a run writes its leaderboard."""

import json
from pathlib import Path

import pytest
import yaml

from recstack.experiment.config import ExperimentConfigError, load_config, parse_config
from recstack.experiment.ctr import CTRExperimentConfig
from recstack.experiment.run import run_experiment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name, extra", [("ctr_ml100k.yaml", ["optinter", "dnis-fm"]), ("ctr_ml1m.yaml", ["optinter", "dnis-fm"])])
def test_example_configs_parse(name, extra):
    config = load_config(EXAMPLES / name, trust=False)
    assert isinstance(config, CTRExperimentConfig)
    assert [e.display for e in config.models] == ["fm", "deepfm", "autoint", "autoint_plus", *extra]
    assert config.model_config_for(config.models[0]).valid_metric == "AUC"
    assert {"user_id", "item_id", "genres"} <= {f.name for f in config.ctr.features}
    assert config.to_dict()["models"][1]["params"]["hidden_units"] == [400, 400, 400]


def _raw(**changes):
    raw = {"task": "ctr", "data": "ml-100k", "ctr": {"features": [{"name": "user_id"}]},
           "models": [{"name": "fm"}]}
    return {**raw, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"models": [{"name": "deepfn"}]}, "deepfn"),
    ({"models": [{"name": "fm", "params": {"n_heads": 2}}]}, "unknown parameter 'n_heads'"),
    ({"ctr": {"features": [{"name": "age", "sep": ","}]}}, "sep applies to kind: multi only"),
    ({"ctr": {"features": [{"name": "age"}, {"name": "age"}]}}, "feature 'age' is listed twice"),
    ({"ctr": {"features": [{"name": "age"}], "valid_metric": "NDCG@10"}}, "valid_metric"),
    ({"ctr": {"features": [{"name": "age"}], "threshhold": 4}}, "did you mean 'threshold'"),
    ({"rerank": {"retrievers": [{"name": "eas"}]}}, r"rerank.retrievers\[0\] \(eas\)"),
    ({"rerank": {"retrievers": [{"name": "ease"}], "rankers": ["deepfm"]}}, "'deepfm' is not the label of a CTR"),
    ({"rerank": {"retrievers": [{"name": "ease"}], "metrics": ["NDGC"]}}, "rerank.metrics"),
    ({"seeds": []}, "give at least one seed"),
    ({"seeds": [1, 1]}, "seed 1 is listed more than once"),
    ({"split_per_seed": True}, "give seeds"),
    ({"seeds": [1, 2], "models": [{"name": "fm", "params": {"seed": 3}}]}, "params.seed is fixed"),
])
def test_bad_ctr_sections_are_named(changes, message):
    with pytest.raises(ExperimentConfigError, match=message):
        parse_config(_raw(**changes), "ctr.yaml")


def test_ranking_configs_are_untouched():
    config = parse_config({"task": "ranking", "data": "ml-100k", "models": [{"name": "pop"}]})
    assert type(config).__name__ == "ExperimentConfig"
    with pytest.raises(ExperimentConfigError, match="unknown key 'ctr'"):
        parse_config({"data": "ml-100k", "models": [{"name": "pop"}], "ctr": {}})


def test_a_ctr_run_writes_its_leaderboard(planted_atomic, planted_features, tmp_path):
    data = planted_atomic
    raw = {"task": "ctr", "data": {"path": str(data), "format": "atomic"}, "output_dir": str(tmp_path / "runs"),
           "ctr": {"features": [{"name": "user_id"}, {"name": "item_id"}, *planted_features]},
           "models": [{"name": "fm", "params": {"epochs": 4, "learning_rate": 0.01, "batch_size": 512}},
                      {"name": "autoint+", "label": "autoint_plus",
                       "params": {"epochs": 2, "hidden_units": [16], "n_layers": 1, "batch_size": 512}}],
           "rerank": {"n": 20, "retrievers": [{"name": "pop"}], "rankers": ["fm"], "ks": [10]}}
    (tmp_path / "ctr.yaml").write_text(yaml.safe_dump(raw))
    result = run_experiment(tmp_path / "ctr.yaml", progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics) == {"fm", "autoint_plus"}
    assert set(metrics["fm"]["test"]) == {"AUC", "LogLoss", "gAUC", "Calibration"}
    assert metrics["fm"]["test"]["AUC"] > 0.8
    low, high = metrics["fm"]["test_gAUC_ci"]
    assert low < metrics["fm"]["test"]["gAUC"] < high
    compared = [m for m in metrics.values() if "test_vs_best" in m]  # the other model against the best one
    assert len(compared) == 1 and 0 <= compared[0]["test_vs_best"]["p"] <= 1
    low, high = metrics["fm"]["test_AUC_ci"]  # DeLong's interval, and its paired test against the best AUC
    assert low < metrics["fm"]["test"]["AUC"] < high
    compared = [m for m in metrics.values() if "test_AUC_vs_best" in m]
    assert len(compared) == 1 and compared[0]["test_AUC_vs_best"]["test"] == "DeLong's paired test on AUC"
    assert 0 <= compared[0]["test_AUC_vs_best"]["p"] <= 1
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["task"] == "ctr" and manifest["split"]["test"]["rows"] == 600
    assert manifest["split_fingerprint"] == result.split.fingerprint() and len(manifest["split_fingerprint"]) == 16
    assert "| fm |" in (result.run_dir / "report.md").read_text()
    assert (result.run_dir / "models" / "fm" / "model.json").is_file()
    rerank = json.loads((result.run_dir / "rerank.json").read_text())
    assert set(rerank) == {"pop", "pop>fm"}
    assert rerank["pop>fm"]["test"]["NDCG@10"] > rerank["pop"]["test"]["NDCG@10"] + 0.1  # the planted match
    assert "## Retrieve then rank" in (result.run_dir / "report.md").read_text()
    again = load_config(result.run_dir / "config.yaml", trust=False)  # the written config reads back
    assert again.models[1].params["hidden_units"] == [16]


def test_a_missing_feature_fails_before_training(planted_atomic, tmp_path):
    data = planted_atomic
    raw = {"task": "ctr", "data": {"path": str(data), "format": "atomic"}, "output_dir": str(tmp_path / "runs"),
           "ctr": {"features": [{"name": "occupation"}]}, "models": [{"name": "fm"}]}
    from recstack.data.ctr import FeatureError

    with pytest.raises(FeatureError, match="feature 'occupation' is not in the data"):
        run_experiment(raw, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_command_line_names_the_field_and_exits_2(planted_atomic, tmp_path):
    from typer.testing import CliRunner

    from recstack.cli import app

    raw = {"task": "ctr", "data": {"path": str(planted_atomic), "format": "atomic"},
           "output_dir": str(tmp_path / "runs"), "ctr": {"features": [{"name": "age", "kind": "numeric"},
                                                                       {"name": "kind", "kind": "numeric"}]},
           "models": [{"name": "fm"}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert "feature 'kind' is declared numeric but holds text" in " ".join(result.output.split())


def test_a_multi_seed_ctr_run_reports_the_spread_and_the_test_over_seeds(planted_atomic, planted_features, tmp_path):
    raw = {"task": "ctr", "data": {"path": str(planted_atomic), "format": "atomic"},
           "output_dir": str(tmp_path / "runs"), "seeds": [3, 4, 5],
           "ctr": {"features": [{"name": "user_id"}, {"name": "item_id"}, *planted_features]},
           "models": [{"name": "fm", "params": {"epochs": 2, "batch_size": 512}},
                      {"name": "fm", "label": "fm_tiny", "params": {"epochs": 1, "batch_size": 512,
                                                                     "embedding_size": 2}}]}
    result = run_experiment(raw, progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    fm = metrics["fm"]
    assert fm["seeds"] == [3, 4, 5] and set(fm["per_seed"]) == {"3", "4", "5"}
    per_seed = [fm["per_seed"][s]["test"]["AUC"] for s in ("3", "4", "5")]
    assert fm["test"]["AUC"] == pytest.approx(sum(per_seed) / 3)
    assert fm["across_seeds"]["test"]["AUC"]["n"] == 3 and fm["across_seeds"]["test"]["AUC"]["sd"] > 0
    # the seed is the model's: one split (split_per_seed off), three trainings
    assert fm["per_seed"]["3"]["test"]["AUC"] != fm["per_seed"]["4"]["test"]["AUC"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["seeds"]["seeds"] == [3, 4, 5] and len(set(manifest["seeds"]["split_fingerprints"].values())) == 1
    over = [m["test_AUC_vs_best_across_seeds"] for m in metrics.values() if "test_AUC_vs_best_across_seeds" in m]
    assert len(over) == 1 and over[0]["n_seeds"] == 3 and over[0]["better_on"] + over[0]["worse_on"] <= 3
    report = (result.run_dir / "report.md").read_text()
    assert "## Over seeds (3 seeds, one row split)" in report and " ± " in report
    assert "only 3 seeds" in report  # the power note
    again = run_experiment({**raw, "seeds": [3, 4], "split_per_seed": True, "models": raw["models"][:1]},
                           progress=False)
    fingerprints = json.loads((again.run_dir / "manifest.json").read_text())["seeds"]["split_fingerprints"]
    assert len(set(fingerprints.values())) == 2


def _record(aucs: list[float] | None, auc: float, low: float | None = None, high: float | None = None):
    record = {"test": {"AUC": auc, "LogLoss": 0.5}, "fit_seconds": 1.0}
    if aucs is not None:
        record["seeds"] = [1, 2, 3]
        record["across_seeds"] = {"test": {"AUC": {"mean": auc, "sd": 0.01, "n": 3, "low": low, "high": high}}}
    return record


def test_the_leaderboard_ranks_by_mean_auc_and_marks_overlapping_intervals():
    from recstack.experiment.ctr import leaderboard_markdown, leaderboard_title, ranked

    single = {"fm": _record(None, 0.70), "deepfm": _record(None, 0.75), "nan": _record(None, float("nan"))}
    assert ranked(single) == (["deepfm", "fm", "nan"], None) and leaderboard_title(single) == "sorted by test AUC"
    # by hand: b [0.78, 0.82] overlaps a [0.75, 0.79]; a does not reach c [0.60, 0.70]; the last row has no next
    several = {"c": _record([], 0.65, 0.60, 0.70), "a": _record([], 0.77, 0.75, 0.79), "b": _record([], 0.80, 0.78, 0.82)}
    assert ranked(several) == (["b", "a", "c"], {"b": True, "a": False, "c": False})
    assert "mean test AUC over 3 seeds" in leaderboard_title(several)
    rows = [line for line in leaderboard_markdown(several).splitlines()[2:]]
    assert [row.split(" | ")[0] for row in rows] == ["| b", "| a", "| c"]
    assert " | ≈ | " in rows[0] and " | ≈ | " not in rows[1] + rows[2]
