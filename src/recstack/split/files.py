"""A split given as three files (or data frames), e.g. RecBole's `.train/.valid/.test.inter` exports.

One joint vocabulary covers all three parts, ids numbered in order of first appearance over
train, then valid, then test, so indices do not depend on which part an id first shows up in
beyond that fixed order. Within each part the source row order is kept among equal
(user, timestamp) keys: exports that rely on row order to order same-second events stay exact.

Where a file's order disagrees with its timestamps (a user's event listed after a later one of the
same file), `order="time"` (the default) re-sorts by time and warns once with the number of users
concerned; `order="file"` keeps the files' order as each user's sequence order (RecBole's), and the
parts are `Interactions` in file order (history = train then valid, each as listed). Across parts
no order is claimed (a random split's valid events may precede its train events), so only
inversions inside a file are counted.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError, RecstackWarning
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
    order: Literal["time", "file"] = "time",
) -> Split:
    """Read pre-split parts with `recstack.data.load.read_table` into one `Split`.

    Each source is a path (csv/tsv/parquet with a header, default columns
    user_id, item_id, rating, timestamp) or a data frame; `valid` may be None for no validation
    part. `columns` and `sep` are passed to `read_table` for every part. `order` is each user's
    sequence order: "time" (timestamps, file order among ties; warns where the files disagree)
    or "file" (the files' order: train, then valid, then test, each top to bottom).
    """
    from recstack.data.load import read_table  # pyarrow-backed: imported only when files are read

    if order not in ("time", "file"):
        raise RecstackError(f"order must be 'time' (sort each user's events by timestamp) or 'file' "
                            f"(keep the files' order), not {order!r}")

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
    if has["timestamp"] and order == "time":
        inverted = len(np.unique(np.concatenate([
            _users_out_of_time_order(user_codes[bounds[i]:bounds[i + 1]], raw[name]["timestamp"])
            for i, name in enumerate(present) if len(raw[name]["user"])])))
        if inverted:
            where = (f"the split files in {Path(train).parent}" if isinstance(train, (str, Path))
                     else "the split's data frames")
            warnings.warn(
                f"{where}: for {inverted} of {len(users)} users a file lists an event after a later one (file "
                "order and timestamps disagree); those users' events were re-sorted by time. To keep "
                "the files' order as the sequence order, set 'order: file' under data.files (order='file' in "
                "split_from_files)", RecstackWarning, stacklevel=2)
    built: dict[str, Interactions] = {}
    for i, name in enumerate(present):
        lo, hi = bounds[i], bounds[i + 1]
        columns_of = raw[name]

        def optional(role: str) -> np.ndarray | None:
            if not has[role]:
                return None
            return columns_of[role] if role in columns_of else np.empty(0)

        # a stable sort by (user, timestamp), or by user alone in file order: source order breaks ties
        built[name] = Interactions(user_codes[lo:hi], item_codes[lo:hi], users, items,
                                   value=optional("value"), timestamp=optional("timestamp"), order=order)
    if "valid" not in built:
        empty = np.empty(0)
        built["valid"] = Interactions(
            np.empty(0, np.int32), np.empty(0, np.int32), users, items,
            value=empty if has["value"] else None, timestamp=empty if has["timestamp"] else None, order=order)
    params: dict[str, Any] = {name: _describe(source) for name, source in sources.items() if source is not None}
    if order == "file":
        params["order"] = "file"
    return Split(built["train"], built["valid"], built["test"], method="files", params=params)


def _users_out_of_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Users of one file whose events, in file order, have a timestamp that decreases."""
    by_user = np.argsort(user, kind="stable")
    user, timestamp = user[by_user], timestamp[by_user]
    earlier = (user[1:] == user[:-1]) & (timestamp[1:] < timestamp[:-1])
    return np.unique(user[1:][earlier])
