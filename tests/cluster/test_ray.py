"""Scale-out on Ray (issue 18): distributed evaluation, batch scoring and tuning on a local Ray
instance give the single-process results, and survive a worker that dies."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cluster.faulty import ScoreDiesOnce
from recstack.cli import app
from recstack.cluster import RaySettings, check_reachable
from recstack.cluster.evaluate import RayRanker, user_blocks
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import ColdUsers, evaluate
from recstack.experiment import parse_config
from recstack.experiment.run import run_experiment
from recstack.experiment.tune import tune
from recstack.models import build
from recstack.serve.batch import recommend_all
from recstack.testing import assert_scores_equivalent, clustered_interactions, shuffled_split, write_split_files

pytestmark = pytest.mark.usefixtures("ray_instance")
RANKER = RayRanker(RaySettings(workers=2))
# a scoring budget of 100 users' scores over the fixture's 120 items: the local evaluation then
# scores in blocks of 100 users, and the Ray tasks get exactly those blocks, so both sides multiply
# the same shapes and the per-user values can be compared bit for bit on any CPU
ALIGNED_MB = 100 * 120 * 8 / 2**20


@pytest.fixture(scope="module")
def split():
    return shuffled_split(clustered_interactions(n_users=300, n_items=120), seed=1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, split):
    """The split as TSV files with string ids, for experiment configs."""
    return write_split_files(split, tmp_path_factory.mktemp("ray-data"), user_id="u{}", item_id="i{}")


def assert_same_evaluation(local, distributed):
    assert np.array_equal(local.users, distributed.users)
    assert local.per_user.keys() == distributed.per_user.keys()
    for label, values in local.per_user.items():
        assert np.array_equal(values, distributed.per_user[label]), label  # user by user, exactly
    assert local.metrics == distributed.metrics


def test_user_blocks_cover_every_user_once_and_respect_the_scoring_block():
    for n_users, workers in [(0, 2), (1, 2), (7, 3), (300, 2), (10_000, 4)]:
        blocks = user_blocks(n_users, n_items=50_000, workers=workers, memory_budget_mb=16)
        covered = np.concatenate([np.arange(a, b) for a, b in blocks]) if blocks else np.array([], int)
        assert np.array_equal(covered, np.arange(n_users))
        assert all(b - a <= 41 for a, b in blocks)  # 16 MiB / 8 bytes / 50,000 items = 41 users
        assert len(blocks) >= min(workers, n_users)
    # enough users for whole local blocks: the tasks' blocks are the local ones
    assert user_blocks(300, 120, 2, ALIGNED_MB) == [(0, 100), (100, 200), (200, 300)]


# als: implicit's fold-in wants writable factors, and Ray hands tasks read-only arrays (the model
# travels as bytes for that); sasrec: a torch module
FAST_PARAMS = {"bpr": {"seed": 3}, "als": {"seed": 3}, "sasrec": {"epochs": 25, "seed": 3}}


@pytest.mark.parametrize("name", ["ease", "itemknn", "bpr", "als", "sasrec"])
def test_distributed_evaluation_equals_local_user_by_user(split, name):
    model = build(name, FAST_PARAMS.get(name, {})).fit(split.train)
    history = split.history("test")
    local = evaluate(model, history, split.test, memory_budget_mb=ALIGNED_MB)
    distributed = evaluate(model, history, split.test, ranker=RANKER, memory_budget_mb=ALIGNED_MB)
    assert_same_evaluation(local, distributed)
    assert local.metrics["NDCG@10"] > 0.1  # a real model, not an empty list


def test_distributed_evaluation_keeps_the_protocol_options(split):
    """Masked validation items at test, the fallback for cold users and a small memory budget (many
    blocks) travel to the tasks unchanged."""
    model = build("ease").fit(split.train)
    pop = build("pop").fit(split.train)
    policy = ColdUsers("fallback", min_history=25, fallback=pop, fallback_name="pop")
    options = {"exclude": split.valid, "cold_users": policy, "memory_budget_mb": ALIGNED_MB / 4, "ks": [5, 10]}
    local = evaluate(model, split.train, split.test, **options)
    distributed = evaluate(model, split.train, split.test, ranker=RANKER, **options)
    assert local.history_counts.n_fallback > 0
    assert_same_evaluation(local, distributed)


def test_a_worker_that_dies_mid_evaluation_is_replaced_and_the_results_are_complete(split, ray_instance):
    model = build("ease").fit(split.train)
    local = evaluate(model, split.train, split.valid, memory_budget_mb=ALIGNED_MB)
    dying = ScoreDiesOnce(model, marker="evaluate-score")
    distributed = evaluate(dying, split.train, split.valid, ranker=RANKER, memory_budget_mb=ALIGNED_MB)
    assert (ray_instance / "evaluate-score").exists()  # a worker did die
    assert_same_evaluation(local, distributed)


def test_a_run_with_a_ray_section_writes_the_local_figures(parts, tmp_path):
    raw = {"data": {"files": parts}, "models": [{"name": "pop"}, {"name": "ease"}], "ks": [5, 10],
           "memory_budget_mb": ALIGNED_MB}
    local = run_experiment(parse_config({**raw, "output_dir": str(tmp_path / "local")}), progress=False)
    on_ray = run_experiment(parse_config({**raw, "output_dir": str(tmp_path / "ray"), "ray": {"workers": 2}}),
                            progress=False)
    for label, record in local.metrics.items():
        for part in ("valid", "test"):
            assert on_ray.metrics[label][part] == record[part], (label, part)
    per_user = [pq.read_table(r.run_dir / "per_user.parquet").sort_by(
        [("model", "ascending"), ("part", "ascending"), ("user_id", "ascending"), ("metric", "ascending")])
        for r in (local, on_ray)]
    assert per_user[0].equals(per_user[1])
    manifest = json.loads((on_ray.run_dir / "manifest.json").read_text())
    assert manifest["execution"] == {"evaluation": "ray", "address": "local instance", "workers": 2}


def test_batch_top_k_as_partitioned_parquet_equals_the_single_file(parts, tmp_path):
    raw = {"data": {"files": parts}, "models": [{"name": "ease"}, {"name": "itemknn"}], "ks": [10],
           "output_dir": str(tmp_path)}
    run = run_experiment(parse_config(raw), progress=False)
    recommend_all(run.run_dir, tmp_path / "one.parquet", k=7, memory_budget_mb=ALIGNED_MB)
    recommend_all(run.run_dir, tmp_path / "parts", k=7, ray=RaySettings(workers=2), memory_budget_mb=ALIGNED_MB)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["model=ease", "model=itemknn"]
    assert len(list((tmp_path / "parts" / "model=ease").glob("part-*.parquet"))) >= 2
    keys = [("model", "ascending"), ("user_id", "ascending"), ("rank", "ascending")]
    single = pq.read_table(tmp_path / "one.parquet").sort_by(keys)
    partitioned = pads.dataset(tmp_path / "parts", partitioning="hive").to_table()
    partitioned = partitioned.set_column(partitioned.schema.get_field_index("model"), "model",
                                         partitioned["model"].cast("string")).select(single.column_names)
    assert partitioned.sort_by(keys).equals(single)
    assert single.num_rows == 300 * 7 * 2


def test_batch_on_ray_wants_a_folder(parts, tmp_path):
    with pytest.raises(RecstackError, match="give a folder"):
        recommend_all(tmp_path, tmp_path / "recs.parquet", ray=RaySettings())


def tune_config(parts, output_dir, model="ease", **changes):
    spec = {"model": model, "space": {"reg": {"choices": [-1.0, 3.0, 30.0, 300.0]}}, "n_trials": 5}
    return parse_config({"data": {"files": parts}, "ks": [10], "output_dir": str(output_dir), "tune": spec,
                         "ray": {"workers": 2}, **changes})


def test_tuning_on_ray_records_failed_trials_and_keeps_the_study(parts, tmp_path):
    result = tune(tune_config(parts, tmp_path), progress=False)
    trials = json.loads((result.tune_dir / "trials.json").read_text())
    assert len(trials) == 5
    failed = [t for t in trials if t["state"] == "FAIL"]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    assert done and failed and all(t["params"]["reg"] > 0 and t["fit_seconds"] > 0 for t in done)
    # reg -1 is refused by EASE's config: recorded with its error, never retried into a success
    assert all(t["params"]["reg"] == -1.0 and "reg" in t["error"] and "greater than 0" in t["error"]
               for t in failed)
    assert result.best_value == max(t["value"] for t in done)
    assert result.n_failed == len(failed) and f"{len(failed)} failed" in "\n".join(result.summary())
    # each trial's value is what the local evaluation of that setting gives
    best = next(t for t in done if t["number"] == result.best_trial)
    config = tune_config(parts, tmp_path)
    from recstack.experiment.run import prepare_data

    _, split = prepare_data(config)
    model = build("ease", {"reg": best["params"]["reg"], "seed": config.seed}).fit(split.train, split.valid)
    assert evaluate(model, split.train, split.valid, ks=[10]).metrics["NDCG@10"] == pytest.approx(best["value"])
    assert list(result.run.metrics) == ["ease-tuned"]
    # the same study, resumed by the local backend: same name, same identity, the Ray trials counted
    local = tune(tune_config(parts, tmp_path, ray=None).model_copy(update={"ray": None}), n_trials=len(done) + 1,
                 progress=False, final_run=False)
    assert local.study_name == result.study_name and (local.n_resumed, local.n_run_now) == (len(done), 1)


def test_a_trial_whose_worker_dies_is_restarted_with_its_parameters(parts, tmp_path, ray_instance):
    config = tune_config(parts, tmp_path, model="cluster.faulty:EASEFitDiesOnce")
    config = config.model_copy(update={"tune": config.tune.model_copy(update={
        "space": {"reg": config.tune.space["reg"].model_copy(update={"choices": [30.0]})}, "n_trials": 2})})
    result = tune(config, progress=False, final_run=False)
    trials = json.loads((result.tune_dir / "trials.json").read_text())
    assert (ray_instance / "fit-reg-30").exists()  # a worker did die
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0]["value"] == pytest.approx(trials[1]["value"])  # the restarted trial scores as the other


def test_an_unreachable_cluster_is_one_line_and_exit_2(parts, tmp_path):
    with pytest.raises(RecstackError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        check_reachable("127.0.0.1:9")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"files": parts}, "models": [{"name": "pop"}]}))
    result = CliRunner().invoke(app, ["run", str(config), "--backend", "ray", "--address", "127.0.0.1:9",
                                      "-o", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "cannot reach the Ray cluster" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_data_parallel_training_on_two_ray_train_workers_equals_one_process(split, tmp_path):
    """`workers: 2` fits LightGCN on two Ray Train workers (gloo), each on half of every batch: the
    steps are one process's steps, so the model that comes back (an ordinary fitted model, curve
    included) scores as the one-process fit does, to float tolerance."""
    params = {"epochs": 6, "batch_size": 256, "seed": 1, "eval_every": 2}
    one = build("lightgcn", params).fit(split.train, split.valid)
    two = build("lightgcn", {**params, "workers": 2}).fit(split.train, split.valid)
    history = split.history("test")
    users = np.arange(split.train.n_users)
    assert_scores_equivalent(two.score(users, history), one.score(users, history))
    assert [h["epoch"] for h in two.history_] == list(range(1, 7)) and two.best_epoch_ == one.best_epoch_
    np.testing.assert_allclose([h["loss"] for h in two.history_], [h["loss"] for h in one.history_], rtol=1e-4)
    two.save(tmp_path / "m")
    assert np.array_equal(type(two).load(tmp_path / "m").score(users[:5], history), two.score(users[:5], history))


def test_data_parallel_training_refuses_a_model_without_gradients(split):
    with pytest.raises(RecstackError, match="solver: adam"):
        build("bpr", {"workers": 2}).fit(split.train)  # LearnBPR updates its own weights
