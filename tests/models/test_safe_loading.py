"""Opening a saved model or a run's config runs nobody's code: a class outside the registry is refused
before it is imported (unless the caller trusts it), and a damaged save fails with one line naming the
file, never with numpy's hint to allow pickle."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_clustered, user_module
from recstack.errors import RecstackError
from recstack.experiment.config import load_config
from recstack.models import MODELS, ModelFileError, UntrustedCodeError, build, load_model
from recstack.models.neighborhood.ease import EASE


@pytest.fixture(scope="module")
def data():
    return make_clustered(n_users=40, n_items=25, per_user=8, seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data) -> Path:
    """A fitted registered model with dense and sparse state (ItemKNN keeps a CSR similarity)."""
    path = tmp_path_factory.mktemp("saved") / "itemknn"
    build("itemknn", {}).fit(data).save(path)
    return path


@pytest.fixture()
def copy(saved, tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    return target


def set_class(path: Path, target: str) -> None:
    meta = json.loads((path / "model.json").read_text())
    meta["class"] = target
    (path / "model.json").write_text(json.dumps(meta))


def user_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "allow_pickle" not in message
    return message


# ---- classes: registered ones load, others only when trusted -------------------------------------

def test_a_registered_class_loads_and_scores_the_same(saved, data):
    model = build("itemknn", {}).fit(data)
    loaded = load_model(saved)
    users = np.arange(5, dtype=np.int32)
    np.testing.assert_allclose(loaded.score(users, data), model.score(users, data), rtol=1e-6)


def test_every_registered_class_string_is_accepted_without_trust():
    from recstack.models.protocol import check_trusted

    for target in MODELS.values():
        check_trusted(target, MODELS, trust=False, source="model.json")  # raises if refused


def test_an_unregistered_class_is_refused_without_importing_it(copy, tmp_path, monkeypatch):
    name, flag = user_module(tmp_path / "code", monkeypatch)
    set_class(copy, f"{name}:ItemKNN")
    with pytest.raises(UntrustedCodeError) as caught:
        load_model(copy)
    message = user_error(caught)
    assert str(copy / "model.json") in message and f"'{name}:ItemKNN'" in message
    assert "trust=True" in message and "--trust-code" in message
    assert name not in sys.modules and not flag.exists()


def test_a_standard_library_module_is_refused_too(copy):
    # `this` prints the Zen of Python on import: a harmless stand-in for code with side effects
    was_imported = "this" in sys.modules
    set_class(copy, "this:x")
    with pytest.raises(UntrustedCodeError, match="'this:x'"):
        load_model(copy)
    assert ("this" in sys.modules) == was_imported


def test_trust_imports_the_users_own_class(saved, copy, data, tmp_path, monkeypatch):
    name, flag = user_module(tmp_path / "code", monkeypatch,
                             "from recstack.models.neighborhood.itemknn import ItemKNN\n\n"
                             "class MyKNN(ItemKNN):\n    pass\n")
    set_class(copy, f"{name}:MyKNN")
    loaded = load_model(copy, trust=True)
    assert flag.exists() and type(loaded).__name__ == "MyKNN"
    users = np.arange(5, dtype=np.int32)
    np.testing.assert_allclose(loaded.score(users, data), load_model(saved).score(users, data), rtol=1e-6)


def test_a_registered_model_cannot_be_loaded_as_another_class(copy):
    with pytest.raises(ModelFileError, match=r"holds a 'recstack\.models\.neighborhood\.itemknn:ItemKNN', not a EASE"):
        EASE.load(copy)


def test_an_unregistered_tokenizer_is_refused_without_importing_it(copy, tmp_path, monkeypatch):
    from recstack.models.generative.semantic_ids import load_tokenizer

    name, flag = user_module(tmp_path / "code", monkeypatch)
    set_class(copy, f"{name}:Tokenizer")
    with pytest.raises(UntrustedCodeError, match=f"item tokenizer class '{name}:Tokenizer'"):
        load_tokenizer(copy)
    assert name not in sys.modules and not flag.exists()


# ---- a run's config.yaml: model names resolve through the registry unless trusted ----------------

def write_run_config(path: Path, **raw) -> Path:
    raw = {"data": {"dataset": "ml-100k"}, **raw}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("where", ["models", "tune"])
def test_a_run_config_naming_an_unregistered_model_is_refused_without_importing(where, tmp_path, monkeypatch):
    name, flag = user_module(tmp_path / "code", monkeypatch)
    target = f"{name}:Mine"
    raw = {"models": [{"name": "pop"}, {"name": target}]} if where == "models" else {"tune": {"model": target}}
    config = write_run_config(tmp_path / "config.yaml", **raw)
    with pytest.raises(UntrustedCodeError) as caught:
        load_config(config, trust=False)
    message = user_error(caught)
    assert str(config) in message and repr(target) in message
    assert name not in sys.modules and not flag.exists()


def test_a_config_the_user_wrote_still_names_their_own_class(tmp_path, monkeypatch):
    name, flag = user_module(tmp_path / "code", monkeypatch,
                             "from recstack.models.baseline.pop import Pop\n\nclass MyPop(Pop):\n    pass\n")
    config = write_run_config(tmp_path / "exp.yaml", models=[{"name": f"{name}:MyPop"}])
    assert load_config(config).models[0].display == "MyPop"  # the default: the user's own file is trusted
    assert flag.exists()
    registered = write_run_config(tmp_path / "run.yaml", models=[{"name": "pop"}, {"name": "ease"}])
    assert [m.name for m in load_config(registered, trust=False).models] == ["pop", "ease"]


# ---- damaged files: one line naming the file, never a hint to allow pickle -----------------------

def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _cut_tail(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-7])


def _garbage(file: Path) -> None:
    file.write_bytes(bytes(range(256)) * 4)


def _pickle_bytes(file: Path) -> None:
    file.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")  # a pickle of 1


def _empty(file: Path) -> None:
    file.write_bytes(b"")


def _object_array(file: Path) -> None:
    np.savez(file, weights_=np.array([{"a": 1}, None], dtype=object))


def _single_npy(file: Path) -> None:
    with open(file, "wb") as handle:
        np.save(handle, np.arange(4))


def _corrupt_member(file: Path) -> None:
    raw = bytearray(file.read_bytes())
    middle = len(raw) // 3
    raw[middle:middle + 64] = bytes(64)  # the central directory stays intact, a member's CRC does not
    file.write_bytes(bytes(raw))


def _missing(file: Path) -> None:
    file.unlink()


def _folder(file: Path) -> None:
    file.unlink()
    file.mkdir()


@pytest.mark.parametrize("damage", [_truncate, _cut_tail, _garbage, _pickle_bytes, _empty, _object_array,
                                    _single_npy, _corrupt_member, _missing, _folder], ids=lambda f: f.__name__[1:])
def test_a_damaged_state_file_is_one_line_naming_it(damage, copy):
    file = copy / "state.npz"
    damage(file)
    with pytest.raises(ModelFileError) as caught:
        load_model(copy)
    message = user_error(caught)
    assert message.startswith(str(file)) and "re-save the model" in message


def test_an_object_array_is_named_and_never_unpickled(copy):
    _object_array(copy / "state.npz")
    with pytest.raises(ModelFileError, match="entry 'weights_' holds Python objects.*never unpickles"):
        load_model(copy)


def test_a_missing_sparse_part_names_it(copy):
    with np.load(copy / "state.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "similarity_.indptr"}
    np.savez(copy / "state.npz", **arrays)
    with pytest.raises(ModelFileError, match="no entry 'similarity_.indptr'"):
        load_model(copy)


@pytest.mark.parametrize("text, reason", [
    ('{"class": "recstack.models', "not valid JSON"),
    ("[1, 2]", "a JSON object was expected"),
    ('{"config": {}}', "no 'class' entry"),
    (None, "is missing"),
])
def test_a_damaged_model_json_is_one_line_naming_it(text, reason, copy):
    file = copy / "model.json"
    if text is None:
        file.unlink()
    else:
        file.write_text(text)
    with pytest.raises(ModelFileError) as caught:
        load_model(copy)
    message = user_error(caught)
    assert message.startswith(str(file)) and reason in message and "re-save the model" in message


@pytest.mark.parametrize("key, value, reason", [
    ("config", None, "no 'config' entry"),
    ("config", [1], "'config' is not a JSON object"),
    ("sparse", None, "no 'sparse' entry"),
    ("config", {"k_neighbors": 5}, "unknown parameter 'k_neighbors'"),
])
def test_a_model_json_with_bad_entries_names_them(key, value, reason, copy):
    file = copy / "model.json"
    meta = json.loads(file.read_text())
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    file.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError) as caught:
        load_model(copy)
    message = user_error(caught)
    assert message.startswith(str(file)) and reason in message


def test_load_errors_are_user_errors():
    assert issubclass(ModelFileError, RecstackError) and issubclass(UntrustedCodeError, RecstackError)
