"""Multi-seed runs (`seeds`): aggregation pinned by hand, the leaderboard's order and overlap marks,
the run directory and report, `compare` over seeds, and the config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_clustered
from recstack.cli import app
from recstack.errors import RecstackError
from recstack.experiment import ExperimentConfigError, load_run, parse_config, recommend, run_experiment
from recstack.experiment import rundir
from recstack.experiment.compare import compare_over_seeds, compare_runs
from recstack.experiment.report import leaderboard
from recstack.experiment.seeds import aggregate, overlaps_next, spread

T_975_2 = 4.302652729911275  # Student's t quantile 0.975 with 2 degrees of freedom (tables)
T_975_3 = 3.182446305284263  # ... with 3


@pytest.fixture(scope="module")
def log_file(tmp_path_factory) -> str:
    data = make_clustered(n_users=80, n_items=40, per_user=12, seed=2)
    path = tmp_path_factory.mktemp("data") / "tiny.tsv"
    lines = ["user_id\titem_id\trating\ttimestamp"]
    lines += [f"u{u}\t{i}\t{v:g}\t{t}" for u, i, v, t in
              zip(data.users.ids[data.user], data.items.ids[data.item], data.value, data.timestamp)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


BPR = {"name": "bpr", "params": {"epochs": 2, "verbose": False, "embedding_size": 8}}


def raw_config(log_file: str, output: Path, models: list[dict], **changes) -> dict:
    return {"data": {"path": log_file, "format": "table"}, "models": models, "seed": 3, "ks": [5, 10],
            "metrics": ["NDCG", "Recall"], "output_dir": str(output), "beyond": False, **changes}


@pytest.fixture(scope="module")
def multi(log_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs")
    config = parse_config(raw_config(log_file, output, [{"name": "pop"}, {"name": "itemknn"}, BPR], seeds=[3, 4, 5]))
    return run_experiment(config, progress=False)


# ---- aggregation, pinned by hand ----------------------------------------------------------------

def record(test: dict, valid: dict, fit: float, **extra) -> dict:
    return {"model": "m", "test": test, "valid": valid, "fit_seconds": fit, "eval_seconds": {"valid": 0.1, "test": 0.2},
            "n_users": {"valid": 9, "test": 9}, "n_skipped_users": {"valid": 0, "test": 0}, **extra}


def test_aggregate_pins_mean_sd_n_and_interval():
    per_seed = {
        7: record({"NDCG@10": 0.10, "Recall@10": 0.5}, {"NDCG@10": 0.20}, 1.0, beyond={"Coverage@10": 0.3}),
        8: record({"NDCG@10": 0.20, "Recall@10": None}, {"NDCG@10": 0.20}, 2.0, beyond={"Coverage@10": 0.9}),
        9: record({"NDCG@10": 0.30, "Recall@10": 0.7}, {"NDCG@10": 0.20}, 3.0, beyond={"Coverage@10": 0.9}),
    }
    out = aggregate(per_seed)
    cell = out["across_seeds"]["test"]["NDCG@10"]
    # mean 0.2; deviations -0.1, 0, 0.1: sample variance 0.02 / 2 = 0.01, sd 0.1
    assert cell["mean"] == pytest.approx(0.2) and cell["sd"] == pytest.approx(0.1) and cell["n"] == 3
    half = T_975_2 * 0.1 / math.sqrt(3)  # 0.248414...
    assert (cell["low"], cell["high"]) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    recall = out["across_seeds"]["test"]["Recall@10"]  # a seed without the figure is left out: n = 2
    assert recall["n"] == 2 and recall["mean"] == pytest.approx(0.6) and recall["sd"] == pytest.approx(math.sqrt(0.02))
    assert out["across_seeds"]["valid"]["NDCG@10"]["sd"] == pytest.approx(0.0)
    assert out["test"] == {"NDCG@10": pytest.approx(0.2), "Recall@10": pytest.approx(0.6)}  # the means
    assert out["seeds"] == [7, 8, 9] and out["n_seeds"] == 3 and out["fit_seconds"] == pytest.approx(2.0)
    assert out["beyond"] == {"Coverage@10": 0.3} and out["analysis_seed"] == 7  # the first seed's analysis
    assert out["per_seed"]["8"]["test"]["NDCG@10"] == 0.20


def test_spread_of_one_seed_has_no_sd_and_no_interval():
    one = spread([0.25, None, float("nan")])
    assert (one.mean, one.sd, one.n, one.low, one.high) == (0.25, None, 1, None, None)
    assert one.shown() == "0.2500"
    assert spread([None]) is None
    four = spread([1.0, 2.0, 3.0, 4.0])  # sd = sqrt(5/3)
    assert four.high - four.mean == pytest.approx(T_975_3 * math.sqrt(5 / 3) / 2)


def test_overlap_marks():
    assert overlaps_next([(0.5, 0.6), (0.55, 0.58), (0.3, 0.4), (0.1, 0.2)]) == [True, False, False, False]
    assert overlaps_next([(0.5, 0.6), (None, None), (0.1, 0.2)]) == [True, True, False]  # one seed: unseparated
    assert overlaps_next([]) == []


def test_leaderboard_ranks_by_mean_and_marks_overlaps():
    def model(values: list[float]) -> dict:
        return aggregate({seed: record({"NDCG@10": v}, {"NDCG@10": v}, 1.0) for seed, v in zip((1, 2, 3), values)})

    metrics = {"wide": model([0.30, 0.50, 0.40]), "tight": model([0.60, 0.61, 0.62]), "low": model([0.1, 0.1, 0.1]),
               "close": model([0.35, 0.36, 0.37])}
    board = leaderboard(metrics, [10], "NDCG@10")
    assert [row[0] for row in board.rows] == ["tight", "wide", "close", "low"]
    marks = {row[0]: row[board.columns.index("≈")] for row in board.rows}
    # tight [0.585, 0.635] vs wide [0.15, 0.65]: overlap; wide vs close: overlap; close vs low (0.1): apart
    assert marks == {"tight": "≈", "wide": "≈", "close": "", "low": ""}
    row = board.rows[0]
    assert row[board.columns.index("test NDCG@10")] == "0.6100 ± 0.0100"
    assert row[board.columns.index("test NDCG@10 per seed")] == "0.6000 0.6100 0.6200"
    assert board.means["tight"] == pytest.approx(0.61) and board.seeds == [1, 2, 3]


# ---- a multi-seed run end to end -----------------------------------------------------------------

def test_run_directory_holds_every_seed(multi):
    run_dir = multi.run_dir
    names = rundir.saved_models(run_dir)
    assert names == sorted(["pop", "itemknn", "bpr", *[f"{m}@seed{s}" for m in ("pop", "itemknn", "bpr")
                                                       for s in (4, 5)]])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seeds"]["seeds"] == [3, 4, 5] and manifest["seeds"]["split_per_seed"] is False
    assert len(set(manifest["seeds"]["split_fingerprints"].values())) == 1  # one split for every seed
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seeds"] == [3, 4, 5] and all("seed" not in m["params"] for m in config["models"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    bpr = metrics["bpr"]
    values = [bpr["per_seed"][str(s)]["test"]["NDCG@10"] for s in (3, 4, 5)]
    assert bpr["test"]["NDCG@10"] == pytest.approx(np.mean(values))
    assert bpr["across_seeds"]["test"]["NDCG@10"]["sd"] == pytest.approx(np.std(values, ddof=1))
    pop = metrics["pop"]["across_seeds"]["valid"]["NDCG@10"]  # a model without a seed trains per seed too
    assert pop["n"] == 3 and pop["sd"] == pytest.approx(0.0)
    table = pq.read_table(run_dir / "per_user.parquet").to_pandas()
    assert sorted(table["seed"].unique()) == [3, 4, 5]
    rows = table[(table.model == "bpr") & (table.part == "test") & (table.metric == "NDCG@10")]
    for seed, value in zip((3, 4, 5), values):
        assert rows[rows.seed == seed]["value"].mean() == pytest.approx(value)
    loaded = load_run(run_dir)
    assert loaded.model("bpr@seed4").config.seed == 4 and loaded.model("bpr").config.seed == 3
    assert recommend(run_dir, "bpr@seed5", "u1", k=3)


def test_first_seed_is_the_single_seed_run(multi, log_file, tmp_path):
    config = parse_config(raw_config(log_file, tmp_path, [{"name": "itemknn"}, BPR]))
    single = run_experiment(config, progress=False)
    first = json.loads((multi.run_dir / "metrics.json").read_text())
    for label in ("itemknn", "bpr"):
        assert first[label]["per_seed"]["3"]["test"] == pytest.approx(single.metrics[label]["test"], abs=1e-6)
    assert "seeds" not in yaml.safe_load((single.run_dir / "config.yaml").read_text())
    assert "seed" not in pq.read_table(single.run_dir / "per_user.parquet").column_names
    assert "seeds" not in json.loads((single.run_dir / "manifest.json").read_text())


def test_report_shows_mean_sd_interval_and_per_seed_values(multi):
    text = (multi.run_dir / "report.md").read_text()
    metrics = multi.metrics
    cell = metrics["bpr"]["across_seeds"]["test"]["NDCG@10"]
    assert f"{cell['mean']:.4f} ± {cell['sd']:.4f}" in text
    assert f"[{cell['low']:.4f}, {cell['high']:.4f}]" in text
    assert "mean +- t(0.975, n-1) * sd / sqrt(n)" in text and "seeds 3, 4, 5" in text
    assert "### Per-seed values" in text
    for seed in ("3", "4", "5"):
        value = metrics["bpr"]["per_seed"][seed]["test"]["NDCG@10"]
        assert f"| bpr | {seed} |" in text and f"{value:.4f}" in text
    html = (multi.run_dir / "report.html").read_text()
    assert f"{cell['mean']:.4f} ± {cell['sd']:.4f}" in html and "Per-seed values" in html


def test_compare_over_seeds_on_a_run(multi):
    result = compare_runs(multi.run_dir)
    assert result.baseline == "itemknn" and result.seeds == [3, 4, 5]
    assert set(result.per_seed) == {3, 4, 5}
    assert result.means["pop"] == pytest.approx([multi.metrics["pop"]["per_seed"][s]["test"]["NDCG@10"]
                                                 for s in ("3", "4", "5")])
    text = result.to_markdown()
    assert "little power" in text  # three seeds
    assert "#### seed 4" in text  # the per-user tests of every seed next to the test over seeds
    pop = result.test("pop")
    assert pop.signs == (0, 3, 0)


def test_compare_over_seeds_states_and_declines_the_claim():
    rng = np.random.default_rng(0)
    users = np.arange(50)

    def table(diffs: list[float]) -> dict:
        columns = {"model": [], "user_id": [], "value": [], "seed": []}
        for seed, diff in enumerate(diffs):
            base = rng.uniform(0.2, 0.4, len(users))
            for model, values in (("a", base + diff), ("b", base)):
                columns["model"] += [model] * len(users)
                columns["user_id"] += list(users)
                columns["value"] += list(values)
                columns["seed"] += [seed] * len(users)
        return {name: np.asarray(values, dtype=object if name == "model" else None)
                for name, values in columns.items()}

    # a constant per-user gap: significant per user within every seed, but its sign flips over seeds
    mixed = compare_over_seeds(table([0.01, -0.01, 0.02, -0.015, 0.005]), "NDCG@10", range(5), baseline="b")
    assert all(mixed.per_seed[s].row("a").significant for s in range(5))
    assert not mixed.test("a").significant
    assert "no difference established across seeds" in mixed.verdicts()[0] and "beats" not in mixed.verdicts()[0]
    assert "little power" not in mixed.to_markdown()  # five seeds
    steady = compare_over_seeds(table([0.05, 0.04, 0.06, 0.05, 0.045]), "NDCG@10", range(5))
    assert steady.baseline == "a" and steady.test("b").significant
    assert steady.verdicts() == [steady.verdicts()[0]] and steady.verdicts()[0].startswith("a beats b across seeds")


def test_compare_refuses_runs_with_other_seeds(multi, log_file, tmp_path):
    fewer = run_experiment(parse_config(raw_config(log_file, tmp_path, [{"name": "pop"}], seeds=[3, 4])),
                           progress=False)
    with pytest.raises(RecstackError, match=r"\(seeds 3, 4, 5\) with run .* \(seeds 3, 4\)"):
        compare_runs([multi.run_dir, fewer.run_dir])
    single = run_experiment(parse_config(raw_config(log_file, tmp_path, [{"name": "pop"}])), progress=False)
    with pytest.raises(RecstackError, match=r"a single-seed run \(seed 3\)"):
        compare_runs([multi.run_dir, single.run_dir])


def test_split_per_seed_draws_a_split_per_seed(log_file, tmp_path):
    config = parse_config(raw_config(log_file, tmp_path, [{"name": "pop"}], seeds=[1, 2], split_per_seed=True))
    result = run_experiment(config, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    fingerprints = manifest["seeds"]["split_fingerprints"]
    assert fingerprints["1"] != fingerprints["2"] and manifest["split"]["fingerprint"] == fingerprints["1"]
    assert load_run(result.run_dir).split.fingerprint() == fingerprints["1"]  # the first seed's split rebuilds
    assert "split fingerprint per seed" in (result.run_dir / "report.md").read_text()


# ---- configs and the command line --------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"seeds": []}, "give at least one seed"),
    ({"seeds": [1, 2, 1]}, "seed 1 is listed more than once"),
    ({"seeds": [1, -2]}, "every seed must be an integer from 0"),
    ({"split_per_seed": True}, "give seeds: \\[...\\] too"),
    ({"seeds": [1, 2], "models": [{"name": "bpr", "params": {"seed": 5}}]}, r"models\[0\] \(bpr\): params.seed is fixed"),
    ({"seeds": [1, 2], "tune": {"model": "ease", "space": {"reg": {"low": 1, "high": 10}}}},
     "'seeds' does not combine with 'tune'"),
])
def test_bad_seed_settings_get_one_clear_error(log_file, tmp_path, changes, message):
    raw = {**raw_config(log_file, tmp_path, [{"name": "pop"}]), **changes}
    with pytest.raises(ExperimentConfigError, match=message):
        parse_config(raw)


def test_split_per_seed_cannot_redraw_files(tmp_path):
    files = {part: str(tmp_path / f"{part}.tsv") for part in ("train", "valid", "test")}
    with pytest.raises(ExperimentConfigError, match="split_per_seed cannot re-draw pre-split 'files'"):
        parse_config({"data": {"files": files}, "models": [{"name": "pop"}], "seeds": [1, 2], "split_per_seed": True})


def test_single_seed_config_writes_no_seed_keys(log_file, tmp_path):
    dumped = parse_config(raw_config(log_file, tmp_path, [{"name": "pop"}])).resolved().to_dict()
    assert "seeds" not in dumped and "split_per_seed" not in dumped


def test_cli_seeds_option(log_file, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw_config(log_file, tmp_path / "out", [{"name": "pop"}])))
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(path), "--seeds", "2", "--seed", "11", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((Path(result.output.strip().splitlines()[-1]) / "manifest.json").read_text())
    assert manifest["seeds"]["seeds"] == [11, 12]
    result = runner.invoke(app, ["run", str(path), "--seeds", "0"])
    assert result.exit_code == 2 and "--seeds takes the number of seeds" in result.output
