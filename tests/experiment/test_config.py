"""Experiment configs: YAML/TOML reading, strict keys with suggestions, validation before any data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from recstack.errors import RecstackError
from recstack.experiment.config import (
    DEFAULT_METRICS,
    ExperimentConfig,
    ExperimentConfigError,
    default_config,
    load_config,
    parse_config,
)

BASE = {"data": {"dataset": "ml-100k"}, "models": [{"name": "pop"}]}


def with_(**changes) -> dict:
    return {**BASE, **changes}


def error_of(raw: dict) -> str:
    with pytest.raises(ExperimentConfigError) as info:
        parse_config(raw, source="exp.yaml")
    return str(info.value)


def test_defaults_fill_in():
    config = parse_config(BASE)
    assert config.seed == 2020
    assert config.ks == [10, 20]
    assert config.metrics == list(DEFAULT_METRICS)
    assert config.valid_metric == "NDCG@10"
    assert config.output_dir == "runs"
    assert config.split.method == "random"
    assert config.data.label == "ml-100k"
    assert "NDCG@20" in config.metric_labels and "Coverage@10" in config.metric_labels


def test_dataset_shorthand_and_frozen():
    config = parse_config({"data": "ml-100k", "models": [{"name": "ease"}]})
    assert config.data.dataset == "ml-100k"
    with pytest.raises(ValidationError):
        config.seed = 1  # frozen


def test_yaml_and_toml_read_the_same(tmp_path):
    raw = {"data": {"dataset": "ml-100k"}, "split": {"method": "leave_last", "k": 2},
           "models": [{"name": "ease", "params": {"reg": 250.0}}, {"name": "pop", "label": "popular"}],
           "ks": [5, 10], "valid_metric": "NDCG@5", "seed": 7}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "exp.toml").write_text(
        'ks = [5, 10]\nvalid_metric = "NDCG@5"\nseed = 7\n'
        '[data]\ndataset = "ml-100k"\n[split]\nmethod = "leave_last"\nk = 2\n'
        '[[models]]\nname = "ease"\nparams = { reg = 250.0 }\n[[models]]\nname = "pop"\nlabel = "popular"\n')
    from_yaml, from_toml = load_config(tmp_path / "exp.yaml"), load_config(tmp_path / "exp.toml")
    assert from_yaml == from_toml
    assert from_yaml.split.params == {"k": 2}  # flat split keys are gathered into params
    assert [m.display for m in from_yaml.models] == ["ease", "popular"]


def test_typo_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data: {dataset: ml-100k}\nmodels: [{name: pop}]\nmodles: []\n")
    with pytest.raises(ExperimentConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "'modles'" in message and "did you mean 'models'" in message


@pytest.mark.parametrize("raw, expected", [
    (with_(preprocessing={"thresold": 4}), ["preprocessing", "'thresold'", "did you mean 'threshold'"]),
    (with_(split={"method": "random", "ratio": [0.8, 0.1, 0.1]}), ["split", "'ratio'", "did you mean 'ratios'"]),
    (with_(split={"methd": "random"}), ["'methd'", "did you mean 'method'"]),
    (with_(split={"method": "randomm"}), ["unknown split method 'randomm'", "'random'"]),
    (with_(models=[{"name": "ease", "params": {"regg": 1.0}}]), ["models[0] (ease)", "'regg'"]),
    (with_(models=[{"name": "ease", "params": {"reg": -1.0}}]), ["models[0] (ease)", "reg"]),
    (with_(models=[{"name": "eas"}]), ["unknown model 'eas'", "'ease'"]),
    (with_(models=[{"nam": "ease"}]), ["models[0]", "did you mean 'name'"]),
    (with_(models=[]), ["models"]),
    (with_(models=[{"name": "pop"}, {"name": "pop"}]), ["two models are labelled 'pop'"]),
    (with_(models=[{"name": "pop", "label": "a/b"}]), ["label 'a/b'"]),
    (with_(metrics=["NDGC"]), ["unknown metric 'NDGC'", "NDCG"]),
    (with_(ks=[10, 0]), ["ks", ">= 1"]),
    (with_(valid_metric="NDCG@5"), ["valid_metric 'NDCG@5'", "NDCG@10"]),
    (with_(data={"dataset": "ml-100kk"}), ["unknown dataset 'ml-100kk'", "ml-100k", "ml-1m"]),
    (with_(data={}), ["exactly one data source"]),
    (with_(data={"dataset": "ml-100k", "path": "x.csv"}), ["exactly one data source", "dataset, path"]),
    (with_(data={"path": "x.csv", "columns": {"usr": "userId"}}), ["'usr'", "did you mean 'user'"]),
    (with_(data={"dataset": "ml-100k", "sep": ","}), ["'sep'", "named dataset"]),
    (with_(data={"files": {"train": "a", "valid": "b", "test": "c"}}, split={"method": "random"}),
     ["'split' is not used with pre-split 'files'"]),
    (with_(data={"files": {"train": "a", "test": "c"}}, preprocessing={"threshold": 4}),
     ["'preprocessing' is not applied to pre-split 'files'"]),
    (with_(memory_budget_mb=0), ["memory_budget_mb"]),
    (with_(preprocessing={"dedup": "sum"}), ["preprocessing.dedup", "'keep'"]),
    (with_(seed=-1), ["seed: must be an integer from 0 to 4294967295", "got -1"]),
    (with_(seed=2**32), ["seed: must be an integer from 0 to 4294967295", f"got {2**32}"]),
    # values a model only hands to its trainer at fit time: checked now, naming the entry
    (with_(models=[{"name": "pop"}, {"name": "bpr", "params": {"valid_metric": "Recal@10"}}]),
     ["models[1] (bpr): invalid BPRConfig: valid_metric: 'Recal@10' is unknown; did you mean 'Recall@10'?"]),
    (with_(models=[{"name": "bpr", "label": "b", "params": {"valid_metric": "ndcg@0"}}]),
     ["models[0] (b): invalid BPRConfig: valid_metric: 'ndcg@0' needs a cut-off k >= 1, e.g. 'NDCG@10'"]),
    (with_(models=[{"name": "pop"}, {"name": "ease", "params": {"seed": -5}}]),
     ["models[1] (ease): seed must be an integer from 0 to 4294967295", "got -5"]),
    (with_(models=[{"name": "ease", "params": {"seed": 2**40}}]), ["models[0] (ease): seed", f"got {2**40}"]),
])
def test_invalid_configs_are_rejected_with_the_culprit(raw, expected):
    message = error_of(raw)
    assert message.startswith("exp.yaml: ")
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_the_seed_range_ends_where_numpy_and_torch_accept_it():
    import numpy as np
    import torch

    from recstack.experiment.config import SEED_MAX

    assert parse_config(with_(seed=0)).seed == 0 and parse_config(with_(seed=SEED_MAX)).seed == SEED_MAX
    np.random.seed(SEED_MAX)  # the widest seed is usable by every generator a model may seed
    torch.manual_seed(SEED_MAX)
    with pytest.raises(ValueError):
        np.random.seed(SEED_MAX + 1)


def test_valid_metric_of_a_model_is_canonicalised_like_the_trainer_does():
    from recstack.train.trainer import TrainerConfig

    config = parse_config(with_(models=[{"name": "bpr", "params": {"valid_metric": "recall@20"}}]))
    # the model's config holds the canonical label, as the trainer did (TrainingFields validates it)
    assert config.model_config_for(config.models[0]).valid_metric == "Recall@20"
    assert TrainerConfig(valid_metric="recall@20").valid_metric == "Recall@20"
    with pytest.raises(ValidationError, match="'Recal@10' is unknown; did you mean 'Recall@10'"):
        TrainerConfig(valid_metric="Recal@10")


def test_devices_are_checked_before_a_run_but_not_when_a_finished_run_is_read(tmp_path):
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 3}"  # past the last GPU, or no CUDA at all
    raw = with_(models=[{"name": "pop"}, {"name": "bpr", "label": "gpu", "params": {"device": missing}}])
    config = parse_config(raw)  # a run written on a GPU machine stays readable anywhere
    with pytest.raises(ExperimentConfigError) as info:
        config.check_devices("exp.yaml")
    assert str(info.value).startswith(f"exp.yaml: models[1] (gpu): device '{missing}'")
    parse_config(with_(models=[{"name": "bpr", "params": {"device": "cpu"}}])).check_devices()


def test_a_copy_with_changed_values_is_validated_again():
    config = parse_config(BASE)
    with pytest.raises(ExperimentConfigError, match=r"^cli: seed: must be an integer from 0 .* got -1$"):
        parse_config(config.model_copy(update={"seed": -1}), source="cli")
    assert parse_config(config.model_copy(update={"seed": 5})).seed == 5
    with pytest.raises(ExperimentConfigError, match=r"models\[0\] \(bpr\): invalid BPRConfig: valid_metric: 'x@1' is unknown"):
        parse_config(config.model_copy(update={"models": [{"name": "bpr", "params": {"valid_metric": "x@1"}}]}))


def test_errors_are_recstack_errors():
    with pytest.raises(RecstackError):
        parse_config(with_(seed="not a number"))
    with pytest.raises(RecstackError):
        parse_config(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_model_seed_defaults_to_the_experiment_seed():
    models = [{"name": "ease"}, {"name": "bpr", "label": "b", "params": {"seed": 3}}]
    config = parse_config(with_(seed=11, models=models))
    resolved = config.resolved()
    assert resolved.models[0].params["seed"] == 11
    assert resolved.models[1].params["seed"] == 3
    assert resolved.models[0].params["reg"] > 0  # every default parameter is spelled out
    assert resolved.models[1].label == "b"


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = parse_config(with_(models=[{"name": "itemknn", "params": {"n_neighbors": 20}}],
                                split={"method": "temporal", "ratios": [0.8, 0.1, 0.1]})).resolved()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert again.resolved() == config


def test_relative_data_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "exp.yaml").write_text(
        "data: {files: {train: data/train.tsv, valid: data/valid.tsv, test: /abs/test.tsv}}\nmodels: [{name: pop}]\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config("experiments/exp.yaml")
    assert Path(config.data.files.train) == (folder / "data" / "train.tsv").resolve()
    assert config.data.files.test == "/abs/test.tsv"


def test_files_without_valid_and_label_from_folder(tmp_path):
    config = parse_config(with_(data={"files": {"train": str(tmp_path / "d" / "train.tsv"),
                                                 "test": str(tmp_path / "d" / "test.tsv")}}))
    assert config.data.files.valid is None
    assert config.data.label == "d"
    assert "split" not in config.resolved().to_dict()  # writing it back would be rejected


def test_file_errors(tmp_path):
    with pytest.raises(ExperimentConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "exp.json").write_text("{}")
    with pytest.raises(ExperimentConfigError, match=r"\.yaml, \.yml or \.toml"):
        load_config(tmp_path / "exp.json")
    (tmp_path / "bad.yaml").write_text("data: {dataset: ml-100k}\nmodels: [{name: pop}\nks: [10]\n")
    with pytest.raises(ExperimentConfigError, match=r"bad\.yaml line \d+, column \d+: invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.toml").write_text("ks = [10\n")
    with pytest.raises(ExperimentConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ExperimentConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")


def test_packaged_default_benchmark():
    config = default_config()
    assert config.data.dataset == "ml-100k"
    assert config.preprocessing.threshold is None
    assert config.split.method == "random" and config.split.params == {"ratios": [0.8, 0.1, 0.1]}
    assert config.seed == 2020 and config.ks == [10, 20]
    assert [m.name for m in config.models] == ["random", "pop", "itemknn", "userknn", "rp3beta", "ease", "als", "bpr"]
    assert all(m.params == {} for m in config.models)  # each model at its own defaults
    assert isinstance(config, ExperimentConfig)


def test_the_knowledge_graph_source_is_a_data_option_of_named_datasets(monkeypatch):
    import recstack.data.datasets as datasets
    from recstack.experiment.run import load_data

    config = parse_config({"data": {"dataset": "ml-100k", "kg": "recbole"}, "models": [{"name": "pop"}]})
    assert config.data.kg == "recbole" and parse_config({"data": {"dataset": "ml-100k"},
                                                         "models": [{"name": "pop"}]}).data.kg == "source"
    asked = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, cache_dir=None, kg="source": asked.update(kg=kg))
    load_data(config)
    assert asked == {"kg": "recbole"}
    with pytest.raises(ExperimentConfigError, match="kg: 'recbole' applies to a named dataset only"):
        parse_config({"data": {"path": "x.csv", "kg": "recbole"}, "models": [{"name": "pop"}]})
    with pytest.raises(ExperimentConfigError, match="kg"):
        parse_config({"data": {"dataset": "ml-100k", "kg": "wikidata"}, "models": [{"name": "pop"}]})
