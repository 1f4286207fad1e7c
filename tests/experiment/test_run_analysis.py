"""Beyond-accuracy, slices and sampled evaluation in a run (tiny fixtures of test_run.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_clustered, simple_split
from recstack.data.dataset import Dataset
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.evaluate.sampled import evaluate_sampled, sample_negatives
from recstack.experiment import parse_config, run_experiment
from recstack.experiment.analysis import RunAnalysis
from recstack.experiment.report import kendall_tau
from recstack.models import build
from test_run import config_for, write_parts

MODELS = [{"name": "pop"}, {"name": "itemknn"}, {"name": "ease", "params": {"reg": 50.0}}]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_parts(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def run(parts, tmp_path_factory):
    config = config_for(parts, tmp_path_factory.mktemp("runs"), models=MODELS,
                        sampled={"n_negatives": 10, "strategy": "uniform"})
    return run_experiment(config, progress=False)


@pytest.fixture(scope="module")
def metrics(run):
    return json.loads((run.run_dir / "metrics.json").read_text())


def test_beyond_section_per_model_and_k(metrics):
    for label in ("pop", "itemknn", "ease"):
        beyond = metrics[label]["beyond"]
        assert beyond["ks"] == [5, 10] and beyond["k"] == 10
        for k in (5, 10):
            for key in ("Coverage", "ExposureGini", "ExposureEntropy", "Novelty", "Serendipity", "ARP", "APLT",
                        "ACLT", "Jain_corrected", "Gini_corrected", "Ent_corrected", "QF", "VoCD"):
                assert f"{key}@{k}" in beyond, (label, key, k)
            assert 0 < beyond[f"Coverage@{k}"] <= 1 and 0 <= beyond[f"Gini_corrected@{k}"] <= 1
            assert beyond[f"Coverage@{k}"] == pytest.approx(beyond[f"QF@{k}"])  # same quantity, two modules
        # files carry no item table: genre-based measures are skipped with a note, never faked
        assert "ILD@10" not in beyond and "Miscalibration@10" not in beyond
        assert any("genres" in note for note in beyond["notes"])
    # Pop is its own serendipity reference: nothing in its lists is unexpected
    assert metrics["pop"]["beyond"]["Unexpectedness@10"] == 0 and metrics["pop"]["beyond"]["Serendipity@10"] == 0
    assert metrics["itemknn"]["beyond"]["Unexpectedness@10"] > 0
    # the coverage of the accuracy metrics and of `beyond` come from the same lists
    for label in ("pop", "ease"):
        assert metrics[label]["beyond"]["Coverage@10"] == pytest.approx(metrics[label]["test"]["Coverage@10"])
    # a personalised model spreads exposure more evenly than Pop
    assert metrics["ease"]["beyond"]["Gini_corrected@10"] < metrics["pop"]["beyond"]["Gini_corrected@10"]


def test_pop_coverage_by_hand(run, metrics):
    split, k = run.split, 10
    counts = split.train.item_counts()
    history = split.train.concat(split.valid).matrix().tolil().rows
    shown = set()
    for user in np.flatnonzero(np.diff(split.test.matrix().indptr) > 0):
        seen = set(history[user])
        # most popular unseen items, ties to the lower index
        ranked = [i for i in sorted(range(split.train.n_items), key=lambda i: (-counts[i], i)) if i not in seen]
        shown |= set(ranked[:k])
    assert metrics["pop"]["beyond"]["Coverage@10"] == pytest.approx(len(shown) / split.train.n_items)
    assert metrics["pop"]["beyond"]["Coverage@10"] >= k / split.train.n_items


def test_slices_add_up_and_head_tail_by_hand(run, metrics):
    n_users = metrics["ease"]["n_users"]["test"]
    for label in ("pop", "ease"):
        activity = metrics[label]["slices"]["user_activity"]
        assert sum(g["n_users"] for g in activity["groups"].values()) == n_users
        assert len(activity["cut_points"]) == 2
        items = metrics[label]["slices"]["item_popularity"]
        assert set(items["groups"]) == {"head", "tail"}
    # head/tail Recall@10 of EASE recomputed from the kept top-k lists
    result = run.results["ease"]["test"]
    counts = np.asarray(run.split.train.matrix().sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    n_head = int(np.searchsorted(np.cumsum(counts[order]), 0.8 * counts.sum() * (1 - 1e-12))) + 1
    head = np.zeros(len(counts), dtype=bool)
    head[order[:n_head]] = True
    truth = run.split.test.matrix().tolil().rows
    for group, member in (("head", head), ("tail", ~head)):
        recalls = []
        for row, user in enumerate(result.users):
            relevant = {i for i in truth[user] if member[i]}
            if relevant:
                recalls.append(len(relevant & set(result.rankings.items[row, :10].tolist())) / len(relevant))
        entry = metrics["ease"]["slices"]["item_popularity"]["groups"][group]
        assert entry["n_users"] == len(recalls)
        assert entry["Recall@10"] == pytest.approx(np.mean(recalls))


def test_sampled_section_is_labelled_and_never_below_full(run, metrics):
    for label in ("pop", "itemknn", "ease"):
        sampled = metrics[label]["sampled"]
        assert sampled and all(key.startswith("sampled_") for key in sampled)
        assert not any("sampled" in key for key in metrics[label]["test"])
        for name in ("NDCG", "Recall", "Hit", "MRR", "MAP"):
            for k in (5, 10):
                assert sampled[f"sampled_{name}@{k}"] >= metrics[label]["test"][f"{name}@{k}"] - 1e-12
        assert sampled["sampled_NDCG@10"] > metrics[label]["test"]["NDCG@10"]  # 10 negatives: a much easier task
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["protocol"]["sampled"] == {"n_negatives": 10, "strategy": "uniform"}


def test_report_sections(run):
    md = (run.run_dir / "report.md").read_text()
    page = (run.run_dir / "report.html").read_text()
    for text in (md, page):
        for heading in ("Accuracy and fairness side by side", "Slices", "user_activity", "item_popularity",
                        "Sampled evaluation", "Kendall tau"):
            assert heading in text, heading
    side = md.split("## Accuracy and fairness side by side")[1].split("\n## ")[0]
    header = next(line for line in side.splitlines() if line.startswith("| model"))
    for column in ("NDCG@10", "Recall@10", "coverage", "novelty", "APLT", "Gini (corrected)", "Jain (corrected)",
                   "miscalibration"):
        assert column in header
    sampled = md.split("## Sampled evaluation")[1].split("\n## ")[0]
    # every table of the sampled section says which figures are sampled
    for line in sampled.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            if "model" in line or "comparison" in line:
                assert "sampled" in line
    assert "## Sampled" not in md.split("## Accuracy")[0]  # nothing sampled in the leaderboard


def test_sampled_per_user_never_below_full_and_negatives_are_unseen(run):
    split = run.split
    history = split.train.concat(split.valid)
    interacted = history.concat(split.test).matrix()
    users = np.flatnonzero(np.diff(split.test.matrix().indptr) > 0).astype(np.int32)
    model = build("ease", {"reg": 50.0}).fit(split.train, split.valid)
    for strategy in ("uniform", "popularity"):
        counts = split.train.item_counts().astype(float)
        counts[:3] = 0  # never drawn by popularity
        negatives = sample_negatives(interacted, users, 15, strategy=strategy, popularity=counts, seed=1)
        assert negatives.shape == (len(users), 15)
        for row, user in enumerate(users):
            drawn = negatives[row][negatives[row] >= 0]
            assert len(set(drawn.tolist())) == len(drawn)
            assert not set(drawn.tolist()) & set(interacted[user].indices.tolist())
        if strategy == "popularity":
            assert not np.isin(negatives, [0, 1, 2]).any()
        full = evaluate(model, history, split.test, metrics=["NDCG", "Recall"], ks=[10])
        sampled = evaluate_sampled(model, history, split.test, users, negatives, metrics=["NDCG", "Recall"], ks=[10])
        assert np.array_equal(full.users, sampled.users)
        assert np.all(sampled.per_user["sampled_NDCG@10"] >= full.per_user["NDCG@10"] - 1e-9)
        assert np.all(sampled.per_user["sampled_Recall@10"] >= full.per_user["Recall@10"])
    assert sample_negatives(interacted, users, 5, seed=3).tolist() == sample_negatives(interacted, users, 5,
                                                                                       seed=3).tolist()


def test_kendall_tau():
    assert kendall_tau([0.3, 0.2, 0.1], [0.9, 0.8, 0.7]) == pytest.approx(1.0)
    assert kendall_tau([0.3, 0.2, 0.1], [0.7, 0.8, 0.9]) == pytest.approx(-1.0)
    assert kendall_tau([0.3], [0.9]) is None


def _side_tables_dataset():
    data = make_clustered(n_users=90, n_items=40, per_user=14, seed=2)
    rng = np.random.default_rng(0)
    keep_upto = rng.integers(5, 15, data.n_users)  # varied history lengths for the activity terciles
    position = np.arange(len(data)) - np.repeat(data.indptr[:-1], np.diff(data.indptr))
    data = data.take(position < np.repeat(keep_upto, np.diff(data.indptr)))
    genres = np.array(["Action|Comedy", "Drama", "Comedy", "Action", ""] * 8, dtype=object)
    users = {"age": rng.integers(10, 70, data.n_users), "gender": rng.choice(np.array(["F", "M"], dtype=object),
                                                                             data.n_users)}
    return Dataset(data, item_table={"genres": genres}, user_table=users, provenance={"name": "side"})


def test_attribute_slices_ild_and_calibration_with_side_tables():
    dataset = _side_tables_dataset()
    split = simple_split(dataset.interactions, seed=0)
    config = parse_config({"data": {"files": {"train": "a", "test": "b"}}, "models": [{"name": "pop"}],
                           "ks": [5, 10], "slices": {"user": ["age", "gender"], "item": ["genre"]}})
    analysis = RunAnalysis(config, dataset, split)
    model = build("itemknn", {}).fit(split.train, split.valid)
    result = evaluate(model, split.history("test"), split.test, ks=[5, 10], metrics=["NDCG", "Recall"],
                      keep_rankings=True)
    out = analysis.for_model(model, result)
    beyond = out["beyond"]
    assert 0 <= beyond["ILD@10"] <= 1 and 0 <= beyond["Miscalibration@10"] <= -np.log(0.01)
    assert not beyond["notes"]
    n = len(result.users)
    slices = out["slices"]
    for name in ("user_activity", "user:age", "user:gender"):
        assert sum(g["n_users"] for g in slices[name]["groups"].values()) == n, name
    cuts = slices["user_activity"]["cut_points"]
    assert cuts[0] < cuts[1] and all(slices["user_activity"]["groups"][g]["n_users"] > 0
                                     for g in ("light", "medium", "heavy"))
    assert set(slices["user:age"]["groups"]) <= {"<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert set(slices["user:gender"]["groups"]) == {"F", "M"}
    # gender slice means reproduce the overall mean when weighted by counts
    groups = slices["user:gender"]["groups"]
    weighted = sum(g["n_users"] * g["NDCG@10"] for g in groups.values()) / n
    assert weighted == pytest.approx(result.metrics["NDCG@10"])
    assert set(slices["item:genre"]["groups"]) == {"Action", "Comedy", "Drama"}
    assert "sampled" not in out


def test_unknown_slice_column_fails_before_training(parts, tmp_path):
    output = tmp_path / "runs"
    with pytest.raises(RecstackError, match=r"slices.user.*'gender'.*none"):
        run_experiment(config_for(parts, output, slices={"user": ["gender"]}), progress=False)
    assert not output.exists()


def test_beyond_switch_off_and_sampled_off_by_default(parts, tmp_path):
    result = run_experiment(config_for(parts, tmp_path, models=[{"name": "pop"}], beyond=False), progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert "beyond" not in metrics["pop"] and "sampled" not in metrics["pop"]
    assert "slices" in metrics["pop"]
    md = (result.run_dir / "report.md").read_text()
    assert "Accuracy and fairness side by side" not in md and "Sampled evaluation" not in md
    with pytest.raises(RecstackError, match="strategy"):
        parse_config({"data": {"files": {"train": "a", "test": "b"}}, "models": [{"name": "pop"}],
                      "sampled": {"n_negatives": 10, "strategy": "popular"}})
