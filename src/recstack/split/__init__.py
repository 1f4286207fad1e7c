"""Splitters: `split(data, rng, **params) -> Split`, deterministic given the seed.

`make_split(data, "leave_last", seed=0, k=1)` is the one entry point the experiment layer
uses: it checks the method and parameter names, seeds the generator and records the
effective parameters (plus the seed) in `Split.params`.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import numpy as np

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.registry import Registry, did_you_mean
from recstack.split.base import Split
from recstack.split.cold import cold_item_split
from recstack.split.files import split_from_files
from recstack.split.holdout import user_holdout_split
from recstack.split.random import random_split
from recstack.split.temporal import leave_last_split, temporal_split

# Exact names (each Split and run manifest records the name as given) and no module paths: a run's
# config is validated without trust, and a splitter path would import its module's code.
SPLITTERS = Registry("split method", {
    "random": "recstack.split.random:random_split",
    "leave_last": "recstack.split.temporal:leave_last_split",
    "temporal": "recstack.split.temporal:temporal_split",
    "user_holdout": "recstack.split.holdout:user_holdout_split",
    "cold_items": "recstack.split.cold:cold_item_split",
}, paths=False, ignore_case=False)


def make_split(data: Interactions, method: str, seed: int = 0, **params: Any) -> Split:
    """Split `data` with the splitter named `method`, seeded by `seed`; see `SPLITTERS`."""
    if not isinstance(data, Interactions) and isinstance(getattr(data, "interactions", None), Interactions):
        data = data.interactions  # a Dataset: split its event log
    splitter = SPLITTERS.resolve(method)
    accepted = [p for p in inspect.signature(splitter).parameters if p not in ("data", "rng")]
    for name in params:
        if name not in accepted:
            raise RecstackError(f"split method {method!r} has no parameter {name!r}; its parameters: "
                                f"{', '.join(accepted)}.{did_you_mean(name, accepted)}")
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
