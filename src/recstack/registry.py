"""Name tables: a registered name -> `"module:attribute"`, imported on first use.

`models.MODELS`, the item tokenizers' `TOKENIZERS` and `split.SPLITTERS` are each one `Registry`.
Importing on first use keeps `import recstack` light (no torch until a neural model is asked for).
A user's own class is accepted as `"package.module:Class"` where the registry allows it.

Opening a saved file goes through `check_trusted` before anything is imported: a class string
that is not a value of the registry would run its module's code, which only the user may allow.

A ground-floor module: it imports nothing of recstack but `recstack.errors`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from recstack.errors import RecstackError

_TRUST_HINT = "pass trust=True (CLI: --trust-code) only if you wrote it or trust whoever sent it"
_OWN_CLASS = "give your own class as 'package.module:Class'"


class RegistryError(RecstackError, ValueError):
    """An unknown name, or a registered target that cannot be imported."""


class UntrustedCodeError(RecstackError):
    """A saved model or run names a class outside the registry, and the caller did not trust it."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`" Did you mean 'x'?"` for the closest of `known`, or `""` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_trusted(target: str, registry: Mapping[str, str], *, trust: bool, source: str, kind: str = "model") -> None:
    """Refuse, before any import, a `"module:Class"` that is not a value of `registry` unless `trust`.

    A registered name (no ':') resolves through the registry alone, so it can never import anything
    else; a module path imports and runs that module, which only the user may allow.
    """
    if trust or ":" not in target or target in registry.values():
        return
    raise UntrustedCodeError(
        f"{source} names the {kind} class {target!r}, which is not registered in recstack; loading it would "
        f"import and run that module's code, so it was not loaded: {_TRUST_HINT}"
    )


class Registry(MutableMapping[str, str]):
    """A name -> `"module:attribute"` table whose `resolve` imports on first use.

    It reads as a mapping of strings (`MODELS["ease"]`, `sorted(MODELS)`, `MODELS.values()`); setting an
    entry registers a name at run time (tests do it with `monkeypatch.setitem`).

        >>> SORTS = Registry("sorter", {"stable": "builtins:sorted"})
        >>> SORTS.resolve("Stable") is sorted
        True

    `kind` names an entry in messages ("model", "split method"); `paths` accepts
    `"package.module:Class"` beside the names; `ignore_case` matches names case-insensitively
    (registered names are then lower-case); `error` is the `RecstackError` subclass raised.
    """

    def __init__(self, kind: str, entries: Mapping[str, str], *, paths: bool = True, ignore_case: bool = True,
                 error: type[RecstackError] = RegistryError) -> None:
        self.kind = kind
        self.paths = paths
        self.ignore_case = ignore_case
        self.error = error
        self._entries: dict[str, str] = {}
        for name, target in entries.items():
            self[name] = target

    # ---- the mapping -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> str:
        return self._entries[name]

    def __setitem__(self, name: str, target: str) -> None:
        if not isinstance(name, str) or ":" in name or (self.ignore_case and name != name.lower()):
            raise ValueError(f"a {self.kind} name is a {'lower-case ' if self.ignore_case else ''}string "
                             f"without ':', not {name!r}")
        module_name, colon, attribute = target.partition(":") if isinstance(target, str) else ("", "", "")
        if not (module_name and colon and attribute):
            raise ValueError(f"{self.kind} {name!r} must map to 'package.module:Class', not {target!r}")
        self._entries[name] = target

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self._entries!r})"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    # ---- resolving -------------------------------------------------------------------------------
    def target(self, name: str) -> str:
        """The `"module:attribute"` that `name` stands for; an unknown name raises one line listing the known."""
        if isinstance(name, str):
            if self.paths and ":" in name:
                return name
            key = name.lower() if self.ignore_case else name
            if key in self._entries:
                return self._entries[key]
        else:
            key = str(name)
        own = f"; or {_OWN_CLASS}" if self.paths else ""
        raise self.error(f"unknown {self.kind} {name!r}.{did_you_mean(key, self._entries)} "
                         f"Known: {', '.join(self.names())}{own}.")

    def resolve(self, name: str) -> Any:
        """A registered name (or `"package.module:Class"` where allowed) -> the object, imported now."""
        target = self.target(name)
        module_name, _, attribute = target.partition(":")
        if not module_name or module_name.startswith("."):
            raise self.error(f"{self.kind} {name!r}: module {module_name!r} cannot be imported; {_OWN_CLASS}")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise self.error(f"{self.kind} {name!r}: module {module_name!r} cannot be imported") from None
            raise self.error(
                f"{self.kind} {name!r} needs the package {exc.name!r}; install it "
                f"(e.g. pip install 'recstack[all]', torch pinned as torch==2.13.0)"
            ) from None
        except ImportError as exc:  # the module itself imports a name that does not exist
            raise self.error(f"{self.kind} {name!r}: module {module_name!r} cannot be imported ({exc})") from None
        found: Any = module
        for part in attribute.split("."):
            found = getattr(found, part, None)
            if found is None:
                raise self.error(f"{self.kind} {name!r}: {module_name!r} has no class {attribute!r}")
        return found

    def resolve_trusted(self, target: str, *, trust: bool, source: str) -> Any:
        """`resolve` for a class string read from a file: refused before any import unless registered or `trust`."""
        check_trusted(target, self, trust=trust, source=source, kind=self.kind)
        return self.resolve(target)


__all__ = ["Registry", "RegistryError", "UntrustedCodeError", "check_trusted", "did_you_mean"]
