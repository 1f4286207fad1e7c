"""Splitters: `split(data, rng, **params) -> Split`, deterministic given the seed.

`make_split(data, "leave_last", seed=0, k=1)` is the one entry point the experiment layer
uses: it checks the method and parameter names, seeds the generator and records the
effective parameters (plus the seed) in `Split.params`.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.split.base import Split
from recstack.split.cold import cold_item_split
from recstack.split.files import split_from_files
from recstack.split.holdout import user_holdout_split
from recstack.split.random import random_split
from recstack.split.temporal import leave_last_split, temporal_split

SPLITTERS: dict[str, Callable[..., Split]] = {
    "random": random_split,
    "leave_last": leave_last_split,
    "temporal": temporal_split,
    "user_holdout": user_holdout_split,
    "cold_items": cold_item_split,
}


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def make_split(data: Interactions, method: str, seed: int = 0, **params: Any) -> Split:
    """Split `data` with the splitter named `method`, seeded by `seed`; see `SPLITTERS`."""
    if not isinstance(data, Interactions) and isinstance(getattr(data, "interactions", None), Interactions):
        data = data.interactions  # a Dataset: split its event log
    splitter = SPLITTERS.get(method)
    if splitter is None:
        known = sorted(SPLITTERS)
        raise RecstackError(f"unknown split method {method!r}; known: {', '.join(known)}.{_suggest(str(method), known)}")
    accepted = [p for p in inspect.signature(splitter).parameters if p not in ("data", "rng")]
    for name in params:
        if name not in accepted:
            raise RecstackError(f"split method {method!r} has no parameter {name!r}; its parameters: "
                                f"{', '.join(accepted)}.{_suggest(name, accepted)}")
    split = splitter(data, np.random.default_rng(seed), **params)
    return replace(split, method=method, params={**split.params, "seed": seed})


__all__ = [
    "SPLITTERS",
    "Split",
    "cold_item_split",
    "leave_last_split",
    "make_split",
    "random_split",
    "split_from_files",
    "temporal_split",
    "user_holdout_split",
]
