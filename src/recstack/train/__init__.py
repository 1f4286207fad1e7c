"""Shared training plumbing: negative sampling (numpy), losses and the `Trainer` (torch).

`sampling` needs only numpy; `losses` and `trainer` import torch, so they are loaded on first
use and `import recstack.train` works without torch installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from recstack.train.sampling import (
    EpochPairs,
    NoNegativesError,
    PopularityNegativeSampler,
    UniformNegativeSampler,
    positive_keys,
)

_LAZY = {
    "Trainer": "recstack.train.trainer",
    "TrainerConfig": "recstack.train.trainer",
    "TrainingDivergedError": "recstack.train.trainer",
    "resolve_device": "recstack.train.trainer",
    "seed_everything": "recstack.train.trainer",
    "bpr_loss": "recstack.train.losses",
    "l2_penalty": "recstack.train.losses",
    "bce_loss": "recstack.train.losses",
    "softmax_loss": "recstack.train.losses",
    "sampled_softmax_loss": "recstack.train.losses",
    "in_batch_softmax_loss": "recstack.train.losses",
    "info_nce_loss": "recstack.train.losses",
    "squared_loss": "recstack.train.losses",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recstack.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "EpochPairs", "NoNegativesError", "PopularityNegativeSampler", "UniformNegativeSampler", "positive_keys", *_LAZY,
]
