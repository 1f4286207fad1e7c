"""Splitters: `split(data, rng) -> Split`, deterministic given the seed."""

from recstack.split.base import Split

__all__ = ["Split"]
