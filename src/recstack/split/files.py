"""A split given as three files (or data frames), e.g. RecBole's `.train/.valid/.test.inter` exports.

One joint vocabulary covers all three parts, ids numbered in order of first appearance over
train, then valid, then test, so indices do not depend on which part an id first shows up in
beyond that fixed order. Within each part the source row order is kept among equal
(user, timestamp) keys: exports that rely on row order to order same-second events stay exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.split.base import Split

_PARTS = ("train", "valid", "test")


def _joint_ids(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate id columns; parts read as ints and parts read as strings meet as strings."""
    parts = [p for p in parts if len(p)]  # an empty part's dtype says nothing about the ids
    if len({p.dtype.kind for p in parts}) > 1:
        # read_table keeps an id column as int only when every value is a canonical integer,
        # so str(int) reproduces the text that a string-typed part holds for the same id
        parts = [p.astype(str).astype(object) for p in parts]
    return np.concatenate(parts)


def _describe(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else type(source).__name__


def split_from_files(
    train: Any,
    valid: Any,
    test: Any,
    columns: Mapping[str, str] | None = None,
    sep: str | None = None,
) -> Split:
    """Read pre-split parts with `recstack.data.load.read_table` into one `Split`.

    Each source is a path (csv/tsv/parquet with a header, default columns
    user_id, item_id, rating, timestamp) or a data frame; `valid` may be None for no validation
    part. `columns` and `sep` are passed to `read_table` for every part.
    """
    from recstack.data.load import read_table  # pyarrow-backed: imported only when files are read

    sources = {"train": train, "valid": valid, "test": test}
    raw: dict[str, dict[str, np.ndarray]] = {}
    for name, source in sources.items():
        if source is None:
            if name != "valid":
                raise RecstackError(f"split_from_files needs a {name} file; only valid may be None")
            continue
        raw[name] = read_table(source, columns=columns, sep=sep)
    if len(raw["train"]["user"]) == 0:
        raise RecstackError(f"the train part {_describe(train)} has no interaction rows")
    present = list(raw)
    for role in ("value", "timestamp"):
        having = [name for name in present if role in raw[name] and len(raw[name]["user"])]
        lacking = [name for name in present if role not in raw[name] and len(raw[name]["user"])]
        if having and lacking:
            raise RecstackError(
                f"the {role} column is in {', '.join(having)} but missing from {', '.join(lacking)}; "
                f"every part of a split needs the same columns (name it with columns={{'{role}': ...}})")
    has = {role: any(role in raw[name] for name in present if len(raw[name]["user"])) for role in ("value", "timestamp")}

    users, user_codes = Vocab.from_values(_joint_ids([raw[n]["user"] for n in present]), name="user")
    items, item_codes = Vocab.from_values(_joint_ids([raw[n]["item"] for n in present]), name="item")
    bounds = np.cumsum([0] + [len(raw[n]["user"]) for n in present])
    built: dict[str, Interactions] = {}
    for i, name in enumerate(present):
        lo, hi = bounds[i], bounds[i + 1]
        columns_of = raw[name]

        def optional(role: str) -> np.ndarray | None:
            if not has[role]:
                return None
            return columns_of[role] if role in columns_of else np.empty(0)

        # Interactions sorts by (user, timestamp) with a stable sort: source order breaks ties
        built[name] = Interactions(user_codes[lo:hi], item_codes[lo:hi], users, items,
                                   value=optional("value"), timestamp=optional("timestamp"))
    if "valid" not in built:
        empty = np.empty(0)
        built["valid"] = Interactions(
            np.empty(0, np.int32), np.empty(0, np.int32), users, items,
            value=empty if has["value"] else None, timestamp=empty if has["timestamp"] else None)
    return Split(built["train"], built["valid"], built["test"], method="files",
                 params={name: _describe(source) for name, source in sources.items() if source is not None})
