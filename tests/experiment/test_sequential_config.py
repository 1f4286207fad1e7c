"""The sequential example config, and the experiment option `mask_history` (repeat consumption)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recstack.evaluate import evaluate
from recstack.experiment import load_config, parse_config, run_experiment
from recstack.experiment.config import ExperimentConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sequential_ml100k.yaml"


def test_the_sequential_example_config_is_valid():
    config = load_config(EXAMPLE)
    assert config.data.dataset == "ml-100k"
    assert config.split.method == "leave_last" and config.split.params == {"k": 1}
    assert [m.name for m in config.models] == ["sasrec", "sasrec", "sasrec", "gru4rec", "gru4rec", "bert4rec",
                                              "m2trec", "mqsated", "hcn", "adaretrieval", "adaretrieval",
                                              "pop", "itemknn", "ease"]
    backbones = [config.model_config_for(m).backbone for m in config.models if m.name == "adaretrieval"]
    assert backbones == ["sasrec", "gru4rec"]
    losses = [config.model_config_for(m).loss for m in config.models if m.name == "sasrec"]
    assert losses == ["ce", "bce", "sampled_softmax"]
    assert config.metric_labels == [f"{m}@{k}" for m in ("Hit", "NDCG", "MRR") for k in (5, 10, 20)]
    assert config.mask_history is True


def log_file(folder: Path) -> Path:
    """Users repeat items (re-consumption): 30 users x 8 events over 6 items, increasing time."""
    rng = np.random.default_rng(0)
    rows = ["user\titem\ttimestamp"]
    for u in range(30):
        for t, item in enumerate(rng.integers(0, 6, 8)):
            rows.append(f"u{u}\ti{item}\t{1000 * u + t}")
    path = folder / "repeats.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_mask_history_defaults_on_and_rejects_typos(tmp_path):
    raw = {"data": {"path": str(log_file(tmp_path))}, "models": [{"name": "pop"}]}
    assert parse_config(raw).mask_history is True
    with pytest.raises(ExperimentConfigError, match="did you mean 'mask_history'"):
        parse_config({**raw, "mask_histroy": False})


@pytest.mark.parametrize("mask", [True, False])
def test_mask_history_reaches_the_evaluation_and_the_manifest(tmp_path, mask):
    raw = {"data": {"path": str(log_file(tmp_path)), "format": "table"}, "split": {"method": "leave_last"},
           "models": [{"name": "pop"}], "metrics": ["Hit", "NDCG"], "ks": [1, 3],
           "valid_metric": "NDCG@3", "mask_history": mask, "output_dir": str(tmp_path / "runs")}
    result = run_experiment(parse_config(raw), progress=False)
    split, model = result.split, result.models["pop"]
    expected = evaluate(model, split.history("test"), split.test, metrics=["Hit", "NDCG"], ks=[1, 3],
                        mask_history=mask)
    assert result.metrics["pop"]["test"] == pytest.approx(expected.metrics)
    other = evaluate(model, split.history("test"), split.test, metrics=["Hit", "NDCG"], ks=[1, 3],
                     mask_history=not mask)
    assert result.metrics["pop"]["test"] != pytest.approx(other.metrics)  # the option changes the figures
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["protocol"]["mask_history"] is mask
    assert ("on" if mask else "off") + ":" in (result.run_dir / "report.md").read_text()
