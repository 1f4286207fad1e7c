"""`task: llm` experiments: config validation (fast) and a small end-to-end run on ml-100k with SmolLM2."""

from __future__ import annotations

import json

import pytest

from recstack.experiment.config import ExperimentConfigError, parse_config
from recstack.experiment.llm import LLMExperimentConfig
from recstack.experiment.run import run_experiment


def test_an_llm_config_parses_with_defaults_and_names_its_mistakes():
    config = parse_config({"task": "llm", "data": "ml-100k", "rating": {}})
    assert isinstance(config, LLMExperimentConfig)
    assert config.split.method == "leave_last" and config.preprocessing.threshold is None
    assert [m.label for m in config.rating.methods] == ["zero-shot", "few-shot-3"]
    with pytest.raises(ExperimentConfigError, match="needs a 'rating', 'rerank', 'tallrec' or 'allmrec' section"):
        parse_config({"task": "llm", "data": "ml-100k"})
    with pytest.raises(ExperimentConfigError, match="needs llm.url"):
        parse_config({"task": "llm", "data": "ml-100k", "rating": {}, "llm": {"backend": "openai"}})
    with pytest.raises(ExperimentConfigError, match="'mf' is used twice"):
        parse_config({"task": "llm", "data": "ml-100k",
                      "rating": {"methods": [{"label": "mf"}], "baselines": [{"label": "mf"}]}})
    with pytest.raises(ExperimentConfigError, match="needs llm.backend local"):
        parse_config({"task": "llm", "data": "ml-100k", "tallrec": {"examples": [16]},
                      "llm": {"backend": "openai", "url": "http://127.0.0.1:1"}})
    with pytest.raises(ExperimentConfigError, match="rerank.retriever"):
        parse_config({"task": "llm", "data": "ml-100k", "rerank": {"retriever": {"name": "no-such-model"}}})


@pytest.mark.slow
def test_a_small_llm_run_writes_its_tables_costs_and_samples(tmp_path):
    # the dataset and the model weights come from the shared cache; the answers' cache is this test's
    config = {"task": "llm", "data": "ml-100k",
              "llm": {"model": "smollm2", "threads": 1, "cache": str(tmp_path / "answers.sqlite")},
              "rating": {"users": 3, "methods": [{"label": "zero-shot"}, {"label": "few-shot-1", "shots": 1}],
                         "baselines": [{"label": "bias", "factors": 0}]},
              "tallrec": {"users": 3, "examples": [0, 4], "epochs": 1},
              "rerank": {"retriever": {"name": "pop"}, "n": 4, "users": 2, "candidates": 5,
                         "listwise": {"n": 3, "bootstraps": 2, "users": 1}}}
    result = run_experiment(config, run_dir=tmp_path / "run", progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    rows = metrics["rating"]["rows"]
    assert set(rows) == {"bias", "zero-shot (expected)", "zero-shot (parsed)", "few-shot-1 (expected)",
                         "few-shot-1 (parsed)"}
    assert metrics["rating"]["n_ratings"] == 3  # leave-last: one held-out rating per user
    for label, row in rows.items():
        assert 0 <= row["MAE"] <= row["RMSE"] <= 4, (label, row)
    assert rows["zero-shot (expected)"]["tokens_in_per_user"] > 50
    assert 0 <= rows["zero-shot (parsed)"]["n_unparsed"] <= 3
    tallrec = metrics["tallrec"]["rows"]
    assert set(tallrec) == {"0", "4"} and tallrec["4"]["loss_per_epoch"] and "loss_per_epoch" not in tallrec["0"]
    rerank = metrics["rerank"]
    assert set(rerank["rows"]) == {"pop", "pop + llm top 4"}
    # reordering the top 4 cannot change which items are in the top 10, so Hit@10 is the retriever's
    assert rerank["rows"]["pop + llm top 4"]["Hit@10"] == rerank["rows"]["pop"]["Hit@10"]
    assert rerank["candidates"]["random"]["HR@1"] == pytest.approx(0.2)
    listwise = rerank["listwise"]["rows"]["pop + llm listwise top 3"]
    assert listwise["n_answers"] == 2 and 0 <= listwise["n_unparsed"] <= 2  # one user, two candidate orders
    assert listwise["Hit@10"] == rerank["listwise"]["rows"]["pop"]["Hit@10"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["llm"]["usage"]["calls"] > 0 and manifest["llm"]["source"]["name"] == "smollm2"
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["section"] for s in samples} == {"rating", "rerank"}
    assert "Rating prediction" in (result.run_dir / "report.md").read_text()
    # the run keeps the adapters it trained, beside the answer cache and in its own folder
    key = tallrec["4"]["lora"]["key"]
    assert not tallrec["4"]["lora"]["reused"] and (result.run_dir / "lora" / key / "adapters.npz").exists()
    assert (tmp_path / "lora" / key / "adapters.npz").exists()
    # a second run (TALLRec left out: it needs the weights to merge its adapters) is answered by the
    # cache: identical figures, no model call, and the weights are never loaded
    config.pop("tallrec")  # (loading stored adapters instead of training is tested in test_backends.py)
    again = run_experiment(config, run_dir=tmp_path / "run2", progress=False)
    second = json.loads((again.run_dir / "manifest.json").read_text())["llm"]["usage"]
    assert second["calls"] == 0 and second["cached_calls"] > 0
    # the cost columns report what the method costs, also when the cache answered every call
    again_rows = json.loads((again.run_dir / "metrics.json").read_text())["rating"]["rows"]
    for label, row in rows.items():
        if row["kind"] == "llm":
            assert again_rows[label]["tokens_in_per_user"] == row["tokens_in_per_user"] > 0
            assert again_rows[label]["seconds_per_user"] > 0 and again_rows[label]["seconds"] == 0
    assert json.loads((again.run_dir / "manifest.json").read_text())["llm"]["load_seconds"] is None
    for label in rows:
        for metric in ("RMSE", "MAE"):
            assert json.loads((again.run_dir / "metrics.json").read_text())["rating"]["rows"][label][metric] \
                == rows[label][metric]
