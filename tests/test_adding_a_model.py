"""The model of `docs/adding_a_model.md`, copied into a module outside the package, passes the
contract of `recstack.testing` in one call: a user's own `"module:Class"` is checked like ours."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from recstack.evaluate.evaluator import evaluate
from recstack.models import build, load_model
from recstack.testing import CONTRACT_CHECKS, check_recommender, clustered_dataset, shuffled_split

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_model.md"


def example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, f"{DOC} has no python block"
    return blocks[0]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The documented model as `my_mf_<test>.py` in a folder of its own on sys.path."""
    name = f"my_mf_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(example_code())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_the_example_is_short():
    assert len(example_code().strip().splitlines()) <= 80


def test_the_documented_model_passes_the_contract_from_outside_the_package(user_module):
    ran = check_recommender(f"{user_module}:MyMF", {"epochs": 5, "verbose": False})
    assert ran == list(CONTRACT_CHECKS)  # every check ran, none skipped


def test_the_documented_model_trains_evaluates_saves_and_loads(user_module, tmp_path):
    split = shuffled_split(clustered_dataset().interactions)
    model = build(f"{user_module}:MyMF", {"epochs": 30, "verbose": False}).fit(split.train, split.valid)
    assert 1 <= model.best_epoch_ <= len(model.history_) <= 30
    ndcg = evaluate(model, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"]
    popular = build("pop").fit(split.train)
    assert ndcg > evaluate(popular, split.history("test"), split.test, metrics=["NDCG@10"])["NDCG@10"] + 0.05
    model.save(tmp_path / "saved")
    with np.load(tmp_path / "saved" / "state.npz", allow_pickle=False) as state:
        assert {"user_factors_", "item_factors_"} <= set(state.files)
    loaded = load_model(tmp_path / "saved", trust=True)
    np.testing.assert_array_equal(loaded.item_factors_, model.item_factors_)


def test_a_broken_user_model_fails_the_contract_naming_the_check(user_module, tmp_path):
    broken = tmp_path / "broken_mf.py"
    broken.write_text(f"from {user_module} import MyMF\n\n"
                      "class Broken(MyMF):\n"
                      "    def score(self, users, history, items=None):\n"
                      "        return super().score(users, history, items).astype('float64')\n")
    sys.modules.pop("broken_mf", None)
    with pytest.raises(AssertionError, match="contract check 'score_shape_dtype_and_no_nan' failed for Broken.*float64"):
        check_recommender("broken_mf:Broken", {"epochs": 2, "verbose": False})
