"""Pointwise CTR models, fitted on labelled rows (`recstack.data.ctr`), in their own name table.

They are not in `recstack.models.MODELS`: their `fit` takes `CTRData` rows with features, not
interactions, so the top-N contract (fit on an `Interactions` log) does not apply; after `fit` they
do answer `score(users, history, items)` like every scorer (see `docs/ctr.md`).
"""

from __future__ import annotations

from typing import Any

from recstack.models.protocol import ConfigError, make_config
from recstack.registry import Registry

CTR_MODELS = Registry("CTR model", {
    "fm": "recstack.models.ctr.fm:FM",
    "deepfm": "recstack.models.ctr.deepfm:DeepFM",
    "autoint": "recstack.models.ctr.autoint:AutoInt",
    "autoint+": "recstack.models.ctr.autoint:AutoIntPlus",
    "optinter": "recstack.models.ctr.optinter:OptInter",
    "dnis-fm": "recstack.models.ctr.dnis_fm:DNISFM",
    "diffumin": "recstack.models.ctr.diffumin:DiffuMIN",
}, error=ConfigError)


def build_ctr(name: str, params: dict[str, Any] | None = None):
    """A CTR model by name with validated parameters."""
    cls = CTR_MODELS.resolve(name)
    return cls(make_config(cls.Config, params))


__all__ = ["CTR_MODELS", "build_ctr"]
