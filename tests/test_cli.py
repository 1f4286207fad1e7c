"""The `recstack` command line: a run on tiny files, recommendations, and every bad input a user
can give failing with one clear line, exit code 2, no traceback and no complete-looking run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_clustered, simple_split
from recstack.cli import app
from recstack.models import MODELS

runner = CliRunner()


def write_parts(folder: Path) -> dict[str, str]:
    """A tiny clustered log split 8:1:1 per user, as TSVs with integer ids offset to look raw."""
    folder.mkdir(parents=True, exist_ok=True)
    split = simple_split(make_clustered(n_users=60, n_items=30, per_user=10, seed=1))
    paths = {}
    for part in ("train", "valid", "test"):
        log = getattr(split, part)
        lines = ["user_id\titem_id\trating\ttimestamp"]
        lines += [f"{1000 + u}\t{500 + i}\t{v:g}\t{t}" for u, i, v, t in
                  zip(log.users.ids[log.user], log.items.ids[log.item], log.value, log.timestamp)]
        paths[part] = str(folder / f"{part}.tsv")
        Path(paths[part]).write_text("\n".join(lines) + "\n")
    return paths


def write_config(path: Path, **raw) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def parts(tmp_path) -> dict[str, str]:
    return write_parts(tmp_path / "data")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    parts = write_parts(folder / "data")
    config = write_config(folder / "exp.yaml", data={"files": parts}, ks=[5, 10],
                          models=[{"name": "pop"}, {"name": "ease", "params": {"reg": 20.0}}])
    result = runner.invoke(app, ["run", str(config), "--output-dir", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    assert "leaderboard" in result.stdout and "ease" in result.stdout
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


def complete_runs(output_dir: Path) -> list[Path]:
    if not output_dir.exists():
        return []
    return [p for p in output_dir.rglob("*") if p.is_dir() and (p / "manifest.json").exists()]


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr starting 'error:', naming the culprit; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---- commands that work ------------------------------------------------------------------------

def test_models_lists_the_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in MODELS:
        assert name in result.stdout


def test_data_list_names_the_datasets():
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    assert "ml-100k" in result.stdout


def test_run_writes_a_run_directory(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert set(metrics) == {"pop", "ease"}
    assert (finished_run / "report.html").is_file()


def test_run_overrides_seed_and_quiet_prints_only_the_directory(parts, tmp_path):
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}], ks=[5, 10])
    result = runner.invoke(app, ["run", str(config), "-o", str(tmp_path / "out"), "--seed", "9", "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip())
    assert run_dir.parent == tmp_path / "out"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 9
    assert json.loads((run_dir / "manifest.json").read_text())["seed"] == 9


def test_recommend_prints_raw_item_ids(finished_run, parts):
    result = runner.invoke(app, ["recommend", str(finished_run), "--model", "ease", "--user", "1003", "-k", "4"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 4
    item_ids = [int(row.split("│")[2]) for row in rows]
    assert all(500 <= i < 530 for i in item_ids)  # raw ids as in the files, not dense indices
    rated = set()
    for part in ("train", "valid", "test"):
        for line in Path(parts[part]).read_text().splitlines()[1:]:
            user, item = line.split("\t")[:2]
            if user == "1003":
                rated.add(int(item))
    assert not rated & set(item_ids)


# ---- bad input: one line, exit 2, no traceback, nothing complete left behind ------------------

def test_unknown_dataset_lists_known_ones(tmp_path):
    config = write_config(tmp_path / "exp.yaml", data={"dataset": "ml-100kk"}, models=[{"name": "pop"}],
                          output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), "ml-100kk", "ml-100k", "ml-1m")
    assert complete_runs(tmp_path / "runs") == []
    assert_user_error(runner.invoke(app, ["data", "info", "nope"]), "'nope'", "ml-100k")
    assert_user_error(runner.invoke(app, ["data", "fetch", "nope"]), "'nope'", "ml-100k")


def test_malformed_file_names_path_and_line(parts, tmp_path):
    train = Path(parts["train"])
    lines = train.read_text().splitlines()
    fields = lines[2].split("\t")
    fields[2] = "abc"
    lines[2] = "\t".join(fields)
    train.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}],
                          output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), str(train), "line 3", "'abc'")
    assert complete_runs(tmp_path / "runs") == []


def test_unreadable_file(parts, tmp_path):
    missing = {**parts, "valid": str(tmp_path / "nowhere.tsv")}
    config = write_config(tmp_path / "exp.yaml", data={"files": missing}, models=[{"name": "pop"}],
                          output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), "nowhere.tsv")
    assert complete_runs(tmp_path / "runs") == []


def test_missing_column(parts, tmp_path):
    test = Path(parts["test"])
    test.write_text("\n".join(line.replace("item_id", "movie") for line in test.read_text().splitlines()) + "\n")
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}],
                          output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), str(test), "item_id")
    assert complete_runs(tmp_path / "runs") == []


def test_empty_data_after_filtering(parts, tmp_path):
    config = write_config(tmp_path / "exp.yaml", data={"path": parts["train"]}, preprocessing={"threshold": 10},
                          models=[{"name": "pop"}], output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), "no interactions left", "threshold")
    assert complete_runs(tmp_path / "runs") == []


def test_unknown_user_suggests_close_ids(finished_run):
    message = assert_user_error(
        runner.invoke(app, ["recommend", str(finished_run), "--model", "ease", "--user", "10033"]),
        "unknown user '10033'", "Did you mean")
    assert "1003" in message


def test_unknown_model_label_in_recommend(finished_run):
    assert_user_error(runner.invoke(app, ["recommend", str(finished_run), "--model", "eas", "--user", "1003"]),
                      "'eas'", "'ease'")


def test_not_a_run_directory(tmp_path):
    assert_user_error(runner.invoke(app, ["recommend", str(tmp_path), "--model", "pop", "--user", "1"]),
                      "not a recstack run directory")


def test_config_typo_names_key_and_suggests(parts, tmp_path):
    config = write_config(tmp_path / "exp.yaml", data={"files": parts},
                          models=[{"name": "ease", "params": {"regg": 1}}], output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), str(config), "'regg'", "ease")
    config = write_config(tmp_path / "exp2.yaml", data={"files": parts}, models=[{"name": "pop"}], kss=[10])
    assert_user_error(runner.invoke(app, ["run", str(config)]), "'kss'", "did you mean 'ks'")
    assert_user_error(runner.invoke(app, ["run", str(tmp_path / "absent.yaml")]), "absent.yaml", "does not exist")
    assert complete_runs(tmp_path / "runs") == []


def test_k_larger_than_catalogue(parts, tmp_path, finished_run):
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}], ks=[10, 31],
                          valid_metric="NDCG@10", output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), "k=31", "30 items")
    assert complete_runs(tmp_path / "runs") == []
    assert_user_error(runner.invoke(app, ["recommend", str(finished_run), "--model", "pop", "--user", "1003",
                                          "-k", "1000"]), "k=1000", "catalogue")


def test_debug_shows_the_traceback(tmp_path):
    config = write_config(tmp_path / "exp.yaml", data={"dataset": "nope"}, models=[{"name": "pop"}])
    result = runner.invoke(app, ["run", str(config), "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_unexpected_errors_are_not_disguised(monkeypatch, tmp_path, parts):
    import recstack.experiment.run as run_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(run_module, "run_experiment", broken)
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}])
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


def test_console_script_entry_point(tmp_path):
    """The real process: `main()` exits 2 with one stderr line and no traceback."""
    config = write_config(tmp_path / "exp.yaml", data={"dataset": "ml-100k"}, models=[{"name": "pop"}], ks=[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", "from recstack.cli import main; main()", "run", str(config)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: ")
    assert "ks" in done.stderr and "Traceback" not in done.stderr


# ---- the real default benchmark ----------------------------------------------------------------

@pytest.mark.slow
def test_default_benchmark_on_ml100k(tmp_path):
    """`recstack run` with no config: ml-100k, 8:1:1 random split, eight models (needs ml-100k fetched
    through the data layer; the package index copy works offline from the web)."""
    result = runner.invoke(app, ["run", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("ml-100k-")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"random", "pop", "itemknn", "userknn", "rp3beta", "ease", "als", "bpr"}
    ndcg = {label: entry["test"]["NDCG@10"] for label, entry in metrics.items()}
    assert ndcg["ease"] >= 0.32, ndcg
    for label in ("itemknn", "als", "bpr"):
        assert ndcg[label] >= 1.6 * ndcg["pop"], ndcg
    assert ndcg["pop"] >= 2 * ndcg["random"], ndcg
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["dataset"]["stats"]["n_interactions"] == 100_000
    assert manifest["split"]["train_events"] + manifest["split"]["valid_events"] + manifest["split"]["test_events"] \
        == 100_000
    # recommendations for a raw ml-100k user carry titles
    shown = runner.invoke(app, ["recommend", str(run_dir), "--model", "ease", "--user", "196", "-k", "5"])
    assert shown.exit_code == 0, shown.output
    assert "title" in shown.stdout and sum(line.startswith("│") for line in shown.stdout.splitlines()) == 5
    info = runner.invoke(app, ["data", "info", "ml-100k"])
    assert info.exit_code == 0 and "943" in info.stdout


def test_run_only_runs_the_named_entries_and_names_the_labels_on_a_typo(parts, tmp_path):
    models = [{"name": "pop"}, {"name": "ease", "label": "ease-a"}, {"name": "itemknn"}]
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=models, ks=[5, 10])
    result = runner.invoke(app, ["run", str(config), "-o", str(tmp_path / "out"), "--only", "itemknn",
                                 "--only", "ease-a", "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((Path(result.stdout.strip()) / "metrics.json").read_text())
    assert list(metrics) == ["ease-a", "itemknn"]  # the file's order

    result = runner.invoke(app, ["run", str(config), "-o", str(tmp_path / "typo"), "--only", "eas-a"])
    assert_user_error(result, "'eas-a'", "pop, ease-a, itemknn")
    assert complete_runs(tmp_path / "typo") == []


def test_tune_searches_and_runs_the_best_setting(parts, tmp_path):
    config = write_config(tmp_path / "tune.yaml", data={"files": parts}, ks=[5, 10],
                          tune={"model": "ease", "space": {"reg": {"low": 1, "high": 1000, "log": True}},
                                "n_trials": 2})
    result = runner.invoke(app, ["tune", str(config), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(complete_runs(tmp_path / "out")) == 1  # the best setting's run
