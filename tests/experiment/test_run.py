"""`run_experiment` end to end on tiny pre-split files, the run directory it writes, and `recommend`."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import make_clustered, simple_split
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.experiment import load_config, load_run, parse_config, recommend, run_experiment
from recstack.experiment.report import leaderboard, write_report
from recstack.models import build, load_model
from recstack.testing import write_split_files


def write_parts(folder: Path, seed: int = 0) -> dict[str, str]:
    """Tiny clustered log, split 8:1:1 per user, written as TSVs with string user ids ('u7')."""
    split = simple_split(make_clustered(n_users=90, n_items=40, per_user=12, seed=seed), seed=seed)
    return write_split_files(split, folder, user_id="u{}")


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, str]:
    return write_parts(tmp_path_factory.mktemp("data") / "tiny")


def config_for(parts: dict[str, str], output_dir: Path, **changes):
    raw = {"data": {"files": parts}, "models": [{"name": "pop"}, {"name": "itemknn"}, {"name": "ease"}],
           "ks": [5, 10], "output_dir": str(output_dir)}
    return parse_config({**raw, **changes})


@pytest.fixture(scope="module")
def finished(parts, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs")
    models = [{"name": "pop"}, {"name": "itemknn"}, {"name": "ease", "params": {"reg": 50.0}},
              {"name": "bpr", "params": {"epochs": 2, "verbose": False, "embedding_size": 8}}]
    return run_experiment(config_for(parts, output, models=models), progress=False)


def test_run_directory_layout_and_name(finished):
    run_dir = finished.run_dir
    assert re.fullmatch(r"tiny-\d{8}T\d{6}Z-[0-9a-f]{8}", run_dir.name)
    for name in ("config.yaml", "manifest.json", "metrics.json", "per_user.parquet", "curves.json",
                 "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["bpr", "ease", "itemknn", "pop"]
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]  # no temporary leftovers


def test_metrics_match_an_independent_evaluation(finished):
    split = finished.split
    metrics = json.loads((finished.run_dir / "metrics.json").read_text())
    assert set(metrics) == {"pop", "itemknn", "ease", "bpr"}
    for label, name, params in (("pop", "pop", {}), ("ease", "ease", {"reg": 50.0})):
        model = build(name, params).fit(split.train, split.valid)
        test = evaluate(model, split.train.concat(split.valid), split.test, ks=[5, 10],
                        metrics=["NDCG", "Recall", "Coverage"])
        valid = evaluate(model, split.train, split.valid, ks=[5, 10], metrics=["NDCG", "Recall"])
        for key, value in test.metrics.items():
            assert metrics[label]["test"][key] == pytest.approx(value)
        for key, value in valid.metrics.items():
            assert metrics[label]["valid"][key] == pytest.approx(value)
        assert metrics[label]["n_skipped_users"]["test"] == test.n_skipped_users
    assert metrics["ease"]["test"]["NDCG@10"] > 1.5 * metrics["pop"]["test"]["NDCG@10"]  # the data has clusters
    assert metrics["pop"]["fit_seconds"] >= 0


def test_per_user_values_are_long_format_with_external_ids(finished):
    table = pq.read_table(finished.run_dir / "per_user.parquet").to_pandas()
    assert list(table.columns) == ["model", "part", "user_id", "metric", "value"]
    assert table["user_id"].str.fullmatch(r"u\d+").all()  # external ids, not dense indices
    metrics = finished.metrics
    means = table.groupby(["model", "part", "metric"])["value"].mean()
    for (model, part, metric), mean in means.items():
        assert metrics[model][part][metric] == pytest.approx(mean)
    # one row per evaluated user and metric: every test user of the files has a test event
    n_test_users = len(np.unique(finished.split.test.user))
    assert (table.query("model == 'pop' and part == 'test' and metric == 'NDCG@10'")["user_id"].nunique()
            == n_test_users)
    assert "Coverage@10" not in set(table["metric"])  # a per-run figure has no per-user values


def test_manifest_records_provenance_without_hostname(finished):
    text = (finished.run_dir / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["split"]["fingerprint"] == finished.split.fingerprint()
    assert manifest["dataset"]["fingerprint"] == finished.dataset.interactions.fingerprint()
    assert manifest["dataset"]["stats"]["n_interactions"] == 90 * 12
    assert manifest["seed"] == 2020
    for package in ("python", "recstack", "numpy", "scipy", "torch", "implicit"):
        assert package in manifest["versions"]
    assert set(manifest["timings"]) == {"pop", "itemknn", "ease", "bpr"}
    assert manifest["peak_rss_mb"] > 10
    assert manifest["started"] <= manifest["finished"]
    assert socket.gethostname() not in text


def test_config_yaml_is_the_resolved_config(finished):
    again = load_config(finished.run_dir / "config.yaml")
    assert again == finished.config
    params = {m.label: m.params for m in again.models}
    assert params["ease"]["reg"] == 50.0 and params["pop"]["seed"] == 2020


def test_saved_models_reload_and_score_the_same(finished):
    split = finished.split
    users = np.arange(10, dtype=np.int32)
    for label, model in finished.models.items():
        loaded = load_model(finished.run_dir / "models" / label)
        np.testing.assert_allclose(loaded.score(users, split.train), model.score(users, split.train), rtol=1e-5)


def test_training_curves_and_reports(finished):
    curves = json.loads((finished.run_dir / "curves.json").read_text())
    assert list(curves) == ["bpr"] and len(curves["bpr"]) == 2
    # the trainer's live per-epoch log, written while bpr trained, ends up in the run directory
    log = finished.run_dir / "logs" / "bpr.jsonl"
    assert [json.loads(line) for line in log.read_text().splitlines()] == curves["bpr"]
    assert sorted(p.name for p in (finished.run_dir / "logs").iterdir()) == ["bpr.jsonl"]  # only trained models
    md = (finished.run_dir / "report.md").read_text()
    page = (finished.run_dir / "report.html").read_text()
    fingerprint = finished.split.fingerprint()
    for text in (md, page):
        assert fingerprint in text and "full" in text
        for label in ("pop", "itemknn", "ease", "bpr"):
            assert label in text
    # leaderboard rows in descending test NDCG@10 order
    order = sorted(finished.metrics, key=lambda m: -finished.metrics[m]["test"]["NDCG@10"])
    rows = [line.split("|")[1].strip() for line in md.split("## Leaderboard")[1].split("###")[0].splitlines()
            if line.startswith("| ") and not line.startswith("| model")]
    assert rows == order
    assert 'class="chart" data-chart="leaderboard"' in page and 'data-chart="train_loss"' in page
    # self-contained: no script, style sheet or import fetched (plotly.js is inline; PNGs are local files)
    assert not re.search(r"<(script|link|iframe)\b[^>]*\b(src|href)\s*=|@import", page, re.I)
    assert "<style>" in page


def test_write_report_regenerates_from_files(finished, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished.run_dir, copy)
    (copy / "report.md").unlink()
    write_report(copy)
    assert (copy / "report.md").read_text() == (finished.run_dir / "report.md").read_text()


def test_leaderboard_sorts_and_handles_missing_values():
    metrics = {"a": {"valid": {"NDCG@10": 0.2}, "test": {"NDCG@10": 0.1}, "fit_seconds": 1.0},
               "b": {"valid": {"NDCG@10": 0.3}, "test": {"NDCG@10": 0.4}, "fit_seconds": 2.0},
               "c": {"valid": {}, "test": {}, "fit_seconds": 0.5}}
    board = leaderboard(metrics, [10, 20], "NDCG@10")
    assert [row[0] for row in board.rows] == ["b", "a", "c"]
    assert board.rows[2][2] is None
    assert board.columns[:3] == ["model", "valid NDCG@10", "test NDCG@10"]
    assert leaderboard(metrics, [5], "NDCG@5").sort_label == "NDCG@5"


def test_recommend_excludes_everything_rated_and_ranks_by_popularity(finished, parts):
    run = load_run(finished.run_dir)
    rows = recommend(run, "pop", "u3", k=5)
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    # independent check straight from the files: training counts, excluding all the user rated
    train = np.loadtxt(parts["train"], dtype=str, skiprows=1)
    rated = set()
    for part in ("train", "valid", "test"):
        table = np.loadtxt(parts[part], dtype=str, skiprows=1)
        rated |= set(table[table[:, 0] == "u3", 1].astype(int).tolist())
    items, counts = np.unique(train[:, 1].astype(int), return_counts=True)
    count_of = dict(zip(items.tolist(), counts.tolist()))
    candidates = sorted((c for i, c in count_of.items() if i not in rated), reverse=True)
    assert not rated & {row["item_id"] for row in rows}
    assert [count_of[row["item_id"]] for row in rows] == candidates[:5]
    assert all(isinstance(row["item_id"], int) for row in rows)  # raw ids as read


def test_recommend_errors(finished):
    with pytest.raises(RecstackError, match=r"unknown user 'u999'.*Did you mean"):
        recommend(finished.run_dir, "pop", "u999")
    with pytest.raises(RecstackError, match=r"no saved model 'eas'.*Did you mean 'ease'"):
        recommend(finished.run_dir, "eas", "u3")
    with pytest.raises(RecstackError, match="larger than the catalogue"):
        recommend(finished.run_dir, "pop", "u3", k=41)
    with pytest.raises(RecstackError, match="not a recstack run directory"):
        load_run(finished.run_dir / "models")


def test_failed_run_leaves_no_directory(parts, tmp_path, monkeypatch):
    import recstack.models as registry

    real_build = registry.build

    class Exploding:
        def fit(self, train, valid=None, *, options=None):
            raise RuntimeError("boom in fit")

    def build_or_explode(name, params=None):
        return Exploding() if name == "ease" else real_build(name, params)

    monkeypatch.setattr(registry, "build", build_or_explode)
    output = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(config_for(parts, output), progress=False)
    assert list(output.iterdir()) == []  # neither the run nor its temporary sibling


def test_user_errors_fail_before_anything_is_written(parts, tmp_path):
    output = tmp_path / "runs"
    with pytest.raises(RecstackError, match=r"k=50 is larger than the catalogue.*40 items"):
        run_experiment(config_for(parts, output, ks=[10, 50]), progress=False)
    missing = {**parts, "test": str(tmp_path / "nope.tsv")}
    with pytest.raises(RecstackError, match="nope.tsv"):
        run_experiment(config_for(missing, output), progress=False)
    assert not output.exists()


def test_named_run_dir_must_be_new(parts, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("keep me")
    with pytest.raises(RecstackError, match="already exists"):
        run_experiment(config_for(parts, tmp_path, models=[{"name": "pop"}]), run_dir=taken, progress=False)
    assert (taken / "something").read_text() == "keep me"


def test_runs_started_in_the_same_second_get_their_own_directories(parts, tmp_path, monkeypatch):
    import datetime as real

    import recstack.experiment.run as run_module

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime(2030, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(run_module, "datetime", Frozen)
    config = config_for(parts, tmp_path / "runs", models=[{"name": "pop"}])
    first = run_experiment(config, progress=False)
    written = (first.run_dir / "metrics.json").read_text()
    second = run_experiment(config, progress=False)
    assert second.run_dir == first.run_dir.with_name(first.run_dir.name + "-2")
    assert (first.run_dir / "metrics.json").read_text() == written  # the first run's results are untouched
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.run_dir.name, second.run_dir.name]


def test_a_run_dir_being_written_by_another_run_is_refused(parts, tmp_path):
    from recstack.fs import exclusive_directory

    target = tmp_path / "shared"
    other = exclusive_directory(target)
    other.claim()  # a run that started first and is still training
    with pytest.raises(RecstackError, match=r"^run directory '.*shared' is being written by another run"):
        run_experiment(config_for(parts, tmp_path, models=[{"name": "pop"}]), run_dir=target, progress=False)
    with other as tmp:  # the first run finishes undisturbed
        (tmp / "metrics.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["metrics.json"]


def test_an_empty_run_dir_is_filled_and_left_empty_on_failure(parts, tmp_path, monkeypatch):
    import recstack.models as registry

    target = tmp_path / "made-by-the-caller"
    target.mkdir()
    config = config_for(parts, tmp_path, models=[{"name": "pop"}])

    def explode(name, params=None):
        raise RuntimeError("boom in build")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "build", explode)
        with pytest.raises(RuntimeError, match="boom"):
            run_experiment(config, run_dir=target, progress=False)
    assert target.is_dir() and list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made-by-the-caller"]
    result = run_experiment(config, run_dir=target, progress=False)
    assert result.run_dir == target and (target / "manifest.json").is_file()


def test_destination_and_devices_are_checked_before_the_data_is_read(parts, tmp_path, monkeypatch):
    import recstack.experiment.run as run_module

    def never(config):
        raise AssertionError("the data was read before the check")

    monkeypatch.setattr(run_module, "prepare_data", never)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RecstackError, match=r"^output_dir '.*a-file/runs' cannot be written \(not a directory: "):
        run_experiment(config_for(parts, tmp_path / "a-file" / "runs"), progress=False)
    gpu = [{"name": "pop"}, {"name": "bpr", "label": "gpu", "params": {"device": "cuda:999"}}]
    with pytest.raises(RecstackError, match=r"^models\[1\] \(gpu\): device 'cuda:999'"):
        run_experiment(config_for(parts, tmp_path / "runs", models=gpu), progress=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    with pytest.raises(RecstackError, match="already exists"):
        run_experiment(config_for(parts, tmp_path), run_dir=taken, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken"]


def test_path_source_with_preprocessing_and_split(parts, tmp_path):
    # one file, thresholded and split by recstack: the seed fixes the split
    merged = tmp_path / "all.tsv"
    lines = Path(parts["train"]).read_text().splitlines()
    for part in ("valid", "test"):
        lines += Path(parts[part]).read_text().splitlines()[1:]
    merged.write_text("\n".join(lines) + "\n")
    raw = {"data": {"path": str(merged), "name": "merged"}, "preprocessing": {"threshold": 3},
           "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]}, "models": [{"name": "pop"}],
           "ks": [5], "valid_metric": "NDCG@5", "output_dir": str(tmp_path / "runs")}
    first = run_experiment(raw, progress=False)
    second = run_experiment(raw, progress=False)
    assert first.run_dir != second.run_dir and first.run_dir.name.startswith("merged-")
    assert first.split.fingerprint() == second.split.fingerprint()
    ratings = np.loadtxt(merged, dtype=str, skiprows=1)[:, 2].astype(float)
    assert len(first.dataset.interactions) == int((ratings >= 3).sum())
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert manifest["split"]["method"] == "random"
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["preprocessing"]["threshold"] == 3


# ---- the in-progress directory and recommend without reloading the data ----------------------------

def test_the_in_progress_directory_is_printed_where_training_logs_appear(parts, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import recstack.models as registry

    real_build, logs = registry.build, []

    def build_and_watch(name, params=None):
        model = real_build(name, params)
        fit = model.fit

        def fit_and_note(train, valid=None, *, options=None):
            logs.append(options.log_path)  # where a trainer inside this fit writes its epochs
            return fit(train, valid, options=options)

        model.fit = fit_and_note
        return model

    monkeypatch.setattr(registry, "build", build_and_watch)
    out = io.StringIO()
    result = run_experiment(config_for(parts, tmp_path / "runs", models=[{"name": "pop"}]), progress=True,
                            console=Console(file=out, width=400))
    printed = out.getvalue()
    match = re.search(r"writing to (\S+) \(renamed to (\S+) when done; "
                      r"follow training with tail -f (\S+)/<label>\.jsonl\)", printed)
    assert match, printed
    in_progress = Path(match[1])
    assert in_progress.parent == result.run_dir.parent and in_progress.name.startswith(f".{result.run_dir.name}.")
    assert match[2] == result.run_dir.name and Path(match[3]) == in_progress / "logs"
    assert logs[0] == in_progress / "logs" / "pop.jsonl"  # (the analysis may fit helpers of its own)
    assert not in_progress.exists() and f"run directory: {result.run_dir}" in printed


def test_recommend_reads_the_saved_history_instead_of_reloading_the_data(finished, monkeypatch, tmp_path):
    import shutil

    import recstack.experiment.run as run_module

    rebuilt = recommend(load_run(finished.run_dir), "ease", "u3", k=6)
    assert (finished.run_dir / "history.npz").is_file()

    def no_reload(config):
        raise AssertionError("recommend reloaded the data")

    monkeypatch.setattr(run_module, "prepare_data", no_reload)
    assert recommend(finished.run_dir, "ease", "u3", k=6) == rebuilt  # same items, scores and raw ids
    # a run written before history.npz existed: the data is reloaded and the split rebuilt, as before
    old = tmp_path / finished.run_dir.name
    shutil.copytree(finished.run_dir, old)
    (old / "history.npz").unlink()
    with pytest.raises(AssertionError, match="reloaded"):
        recommend(old, "ease", "u3", k=6)
    monkeypatch.undo()
    assert recommend(old, "ease", "u3", k=6) == rebuilt


def test_recommend_checks_k_and_the_user_before_loading_a_model(finished, monkeypatch):
    import recstack.experiment.run as run_module

    def fail(*args, **kwargs):
        raise AssertionError("loaded too early")

    monkeypatch.setattr(run_module, "_read_history", fail)
    with pytest.raises(RecstackError, match=r"^k must be >= 1, got 0$"):
        recommend(finished.run_dir, "pop", "u3", k=0)
    with pytest.raises(RecstackError, match=r"^k=41 is larger than the catalogue of run .* \(40 items\); "
                                            r"choose k <= 40$"):
        recommend(finished.run_dir, "pop", "u3", k=41)
    monkeypatch.undo()
    monkeypatch.setattr(run_module, "_saved_model", fail)
    with pytest.raises(RecstackError, match=r"unknown user 'u999'"):
        recommend(finished.run_dir, "pop", "u999")


def test_recommend_a_user_who_has_seen_everything(parts, tmp_path):
    # u0 also rates every item in training: nothing unseen is left for them
    train = Path(parts["train"]).read_text().splitlines()
    items = sorted({int(line.split("\t")[1]) for line in train[1:]})
    extended = dict(parts, train=str(tmp_path / "train.tsv"))
    first = min(int(line.split("\t")[3]) for line in train[1:])  # before everything: file and time order agree
    Path(extended["train"]).write_text("\n".join(train[:1] + [f"u0\t{i}\t5\t{first - 1}" for i in items]
                                                 + train[1:]) + "\n")
    result = run_experiment(config_for(extended, tmp_path / "runs", models=[{"name": "pop"}]), progress=False)
    n_items = result.split.train.n_items
    with pytest.raises(RecstackError, match=rf"^user 'u0' has interacted with all {n_items} items of run .*; "
                                            r"nothing is left to recommend \(--include-seen"):
        recommend(result.run_dir, "pop", "u0", k=5)
    rows = recommend(result.run_dir, "pop", "u0", k=5, include_seen=True)
    counts = result.split.train.item_counts()
    top = np.argsort(-counts, kind="stable")[:5]
    assert [row["item_id"] for row in rows] == result.split.train.items.ids[top].tolist()
    assert [row["score"] for row in rows] == pytest.approx(sorted(counts[top].astype(float), reverse=True), rel=1e-6)
