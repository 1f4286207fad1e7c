"""Every config under examples/ loads, and every model entry in it builds a valid model config."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstack.experiment import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples_to_check():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_config_is_valid(path):
    config = load_config(path)
    if getattr(config, "task", None) == "llm":  # its models are sections; building the retriever is validated
        assert config.rating or config.rerank or config.tallrec
        return
    assert config.models, f"{path.name} lists no models"
    for entry in config.models:
        config.model_config_for(entry)  # raises ConfigError naming the field on a typo
