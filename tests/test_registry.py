"""The one name table behind models, item tokenizers and splitters: lookup, messages, lazy import, trust."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from recstack.errors import RecstackError
from recstack.registry import Registry, RegistryError, UntrustedCodeError, did_you_mean
from conftest import user_module


@pytest.fixture()
def probe(tmp_path, monkeypatch):
    return user_module(tmp_path / "code", monkeypatch, "class Thing:\n    class Inner:\n        pass\n")


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_it_reads_as_a_mapping_of_class_strings(probe):
    name, _ = probe
    things = Registry("thing", {"b": f"{name}:Thing", "a": "collections:OrderedDict"})
    assert things["a"] == "collections:OrderedDict" and "b" in things and "c" not in things
    assert sorted(things) == things.names() == ["a", "b"] and len(things) == 2
    assert set(things.values()) == {f"{name}:Thing", "collections:OrderedDict"}
    assert things.get("c") is None and things.kind == "thing"


def test_a_registered_name_is_imported_only_when_resolved(probe):
    name, flag = probe
    things = Registry("thing", {"thing": f"{name}:Thing"})
    assert name not in sys.modules and not flag.exists()
    cls = things.resolve("thing")
    assert name in sys.modules and flag.exists()
    assert cls is sys.modules[name].Thing
    flag.unlink()
    assert things.resolve("thing") is cls and not flag.exists()  # imported once, then cached


def test_names_match_case_insensitively_unless_asked_otherwise():
    loose = Registry("thing", {"ordered": "collections:OrderedDict"})
    assert loose.resolve("Ordered") is loose.resolve("ORDERED") is __import__("collections").OrderedDict
    strict = Registry("thing", {"ordered": "collections:OrderedDict"}, ignore_case=False)
    with pytest.raises(RegistryError, match="unknown thing 'Ordered'"):
        strict.resolve("Ordered")


def test_an_unknown_name_is_one_line_with_a_suggestion_and_the_known_names():
    things = Registry("thing", {"ordered": "collections:OrderedDict", "counter": "collections:Counter"})
    with pytest.raises(RegistryError) as caught:
        things.resolve("countr")
    assert one_line(caught) == ("unknown thing 'countr'. Did you mean 'counter'? Known: counter, ordered; "
                                "or give your own class as 'package.module:Class'.")
    with pytest.raises(RegistryError) as caught:
        things.resolve("zzzz")
    assert "Did you mean" not in one_line(caught) and "Known: counter, ordered" in one_line(caught)
    assert isinstance(caught.value, RecstackError) and isinstance(caught.value, ValueError)


def test_module_paths_are_accepted_or_refused_as_the_registry_says(probe):
    name, flag = probe
    open_ = Registry("thing", {})
    assert open_.resolve(f"{name}:Thing.Inner") is sys.modules[name].Thing.Inner
    closed = Registry("split method", {"random": "recstack.split.random:random_split"}, paths=False)
    with pytest.raises(RegistryError) as caught:
        closed.resolve("collections:OrderedDict")
    message = one_line(caught)
    assert message.startswith("unknown split method 'collections:OrderedDict'.") and "Known: random." in message
    assert "package.module:Class" not in message


def test_modules_and_classes_that_cannot_be_found_are_named(tmp_path, monkeypatch):
    things = Registry("thing", {})
    module = f"recstack_no_such_module_{uuid.uuid4().hex[:8]}"
    with pytest.raises(RegistryError, match=f"thing '{module}:X': module '{module}' cannot be imported"):
        things.resolve(f"{module}:X")
    with pytest.raises(RegistryError, match="thing 'collections:Nope': 'collections' has no class 'Nope'"):
        things.resolve("collections:Nope")
    with pytest.raises(RegistryError, match="module '' cannot be imported"):
        things.resolve(":Nope")
    # a module that imports a missing package: the package is named, not the user's module
    name, _ = user_module(tmp_path / "code", monkeypatch, f"import {module}\n")
    with pytest.raises(RegistryError, match=f"needs the package '{module}'; install it"):
        things.resolve(f"{name}:Thing")


def test_the_error_class_is_the_callers():
    class MyError(RecstackError, ValueError):
        pass

    with pytest.raises(MyError, match="unknown gadget 'x'"):
        Registry("gadget", {}, error=MyError).resolve("x")


def test_setting_an_entry_registers_it_and_bad_entries_are_refused(monkeypatch):
    things = Registry("thing", {})
    monkeypatch.setitem(things, "ordered", "collections:OrderedDict")
    assert things.resolve("ordered").__name__ == "OrderedDict"
    monkeypatch.undo()
    assert "ordered" not in things
    for name, target in [("Ordered", "collections:OrderedDict"), ("a:b", "collections:OrderedDict"),
                         ("ordered", "collections"), ("ordered", "collections:"), ("ordered", ":OrderedDict")]:
        with pytest.raises(ValueError):
            things[name] = target
    assert len(things) == 0


def test_a_class_string_from_a_file_is_refused_before_import_unless_registered_or_trusted(probe):
    name, flag = probe
    things = Registry("gadget", {"ordered": "collections:OrderedDict"})
    assert things.resolve_trusted("collections:OrderedDict", trust=False, source="x.json").__name__ == "OrderedDict"
    assert things.resolve_trusted("ordered", trust=False, source="x.json").__name__ == "OrderedDict"
    with pytest.raises(UntrustedCodeError) as caught:
        things.resolve_trusted(f"{name}:Thing", trust=False, source="x.json")
    message = one_line(caught)
    assert message.startswith(f"x.json names the gadget class '{name}:Thing'") and "--trust-code" in message
    assert name not in sys.modules and not flag.exists()
    assert things.resolve_trusted(f"{name}:Thing", trust=True, source="x.json") is sys.modules[name].Thing


def test_did_you_mean():
    assert did_you_mean("lightgnc", ["lightgcn", "ngcf"]) == " Did you mean 'lightgcn'?"
    assert did_you_mean("zzz", ["lightgcn", "ngcf"]) == ""


def test_models_tokenizers_and_splitters_are_registries():
    from recstack.models import MODELS, ConfigError
    from recstack.models.generative.semantic_ids import TOKENIZERS
    from recstack.split import SPLITTERS

    assert MODELS.kind == "model" and MODELS.error is ConfigError and MODELS.paths
    assert TOKENIZERS.kind == "item tokenizer" and TOKENIZERS.error is ConfigError and TOKENIZERS.paths
    assert SPLITTERS.kind == "split method" and not SPLITTERS.paths and not SPLITTERS.ignore_case
    for registry in (MODELS, TOKENIZERS, SPLITTERS):
        assert all(":" in target for target in registry.values())


def test_the_registry_module_imports_nothing_of_recstack_but_errors():
    source = Path(__import__("recstack.registry").registry.__file__).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from ")) and "recstack" in line]
    assert imports == ["from recstack.errors import RecstackError"]
