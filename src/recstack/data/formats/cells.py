"""Shared by every format: the one error, the role of each column, and the cell checks.

`_column_to_numpy` turns one arrow column into numpy for its role (user / item id, value,
timestamp) and refuses an empty, blank, non-finite or out-of-range cell with one line naming the
file (or frame), the line (or row), the column and the fix, always in the shape of `_cell_error`.
Every reader (tables, MovieLens, RecBole atomic files) checks its cells through here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recstack.errors import RecstackError

ROLES = ("user", "item", "value", "timestamp")


class DataFormatError(RecstackError):
    """A file or frame that cannot be read as interactions: the message names where and why."""


def _row_label(i: int) -> str:
    return f"row {i} (0-based)"


def _line_label(header: bool) -> Callable[[int], str]:
    offset = 2 if header else 1  # 1-based lines, plus the header line
    return lambda i: f"line {i + offset}"


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _cell_error(where: str, at: str, name: str, problem: str, fix: str) -> DataFormatError:
    """The one shape of every refused cell: where, which line or row, which column, what, the fix."""
    return DataFormatError(f"{where}, {at}, column {name!r}: {problem}; {fix}")


# Cells that writers of missing values produce (pandas, R, SQL exports). Among integer ids they
# can only mean "missing"; in a column of text ids they stay ids ("NA" may be Namibia).
_MISSING_MARKERS = ("nan", "NaN", "NAN", "-nan", "NA", "N/A", "n/a", "#N/A", "<NA>", "NULL", "null", "None",
                    "NaT")
_INT64_LIMIT = 2.0 ** 63  # a float timestamp at or beyond it does not fit int64 seconds
_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def _column_to_numpy(column, role: str, name: str, where: str, line: Callable[[int], str]) -> np.ndarray:
    """One arrow column -> numpy for its role; an empty, blank or non-finite cell is refused with its place.

    Ids: null, blank (whitespace only) and NaN/inf are refused, and so is a missing-value marker
    such as "nan" or "NA" in an otherwise integer id column. Values must be finite numbers;
    timestamps finite seconds within int64 (floats rounded), ISO strings or dates.
    """
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    what = f"{role} id" if role in ("user", "item") else role
    if column.null_count:
        fix = f"give every row {_a(what)} or drop the row"
        raise _cell_error(where, line(_first_true(column.is_null())), name, f"empty {what}", fix)
    kind = column.type
    is_text = any(test(kind) for test in _STRING_TYPES)
    if role in ("user", "item"):
        if is_text:
            return _text_ids(column.cast(pa.string()), what, name, where, line)
        values = column.to_numpy()
        if values.dtype.kind == "f":
            _check_finite(values, what, name, where, line, f"give every row {_a(what)} or drop the row")
        return values
    if role == "value":
        fix = "values (ratings) must be finite numbers: correct the cell or drop the row"
        if is_text:
            values = _parse_strings(column, pa.float64(), what, name, where, line, fix)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) \
                or pa.types.is_decimal(kind):
            values = column.cast(pa.float64()).to_numpy()
        else:
            raise _cell_error(where, line(0), name, f"value of type {kind} is not a number", fix)
        _check_finite(values, what, name, where, line, fix)
        with np.errstate(over="ignore"):
            kept = np.isfinite(values.astype(np.float32))  # Interactions keeps values as float32
        if not kept.all():
            at = int(np.argmin(kept))
            raise _cell_error(where, line(at), name, f"value {float(values[at])!r} is out of range (values are kept "
                              "as 32-bit floats, up to 3.4e38)", fix)
        return values
    # timestamp: integer seconds; floats are rounded, dates and ISO strings converted
    fix = "timestamps must be finite seconds (within 64 bits) or ISO dates: correct the cell or drop the row"
    if pa.types.is_integer(kind):
        try:
            return column.cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:  # uint64 beyond int64
            at = int(np.argmax(column.to_numpy() > np.iinfo(np.int64).max))
            raise _cell_error(where, line(at), name, f"timestamp {column[at].as_py()} is out of range", fix) from None
    if is_text:
        try:  # numbers of seconds held as text (a frame or parquet file of strings)
            column = column.cast(pa.float64())
            kind = column.type
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if pa.types.is_floating(kind):
        values = column.to_numpy()
        _check_finite(values, what, name, where, line, fix)
        outside = np.abs(values) >= _INT64_LIMIT
        if outside.any():
            at = int(np.argmax(outside))
            raise _cell_error(where, line(at), name, f"timestamp {float(values[at])!r} is out of range", fix)
        return np.rint(values).astype(np.int64)
    try:
        seconds = column.cast(pa.timestamp("s")) if not pa.types.is_timestamp(kind) else column
        return seconds.cast(pa.timestamp("s"), safe=False).cast(pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        strings = column.cast(pa.string()).to_numpy(zero_copy_only=False)
        bad = next((i for i, text in enumerate(strings) if not _is_time(text)), None)  # error path only
        if bad is None:
            raise _cell_error(where, line(0), name, "the column mixes numbers of seconds and ISO dates",
                              fix) from None
        raise _cell_error(where, line(bad), name, f"timestamp {strings[bad]!r} is neither a number of seconds nor "
                          "an ISO date", fix) from None


def _a(noun: str) -> str:
    return f"an {noun}" if noun.startswith("item") else f"a {noun}"  # the nouns: user/item id, value, timestamp


def _text_ids(column: pa.ChunkedArray, what: str, name: str, where: str, line: Callable[[int], str]) -> np.ndarray:
    blank = pc.equal(pc.utf8_trim_whitespace(column), "")
    if pc.any(blank).as_py():
        at = _first_true(blank)
        text = column[at].as_py()
        problem = f"empty {what}" if text == "" else f"blank {what} {text!r}"
        raise _cell_error(where, line(at), name, problem, f"give every row {_a(what)} or drop the row")
    ids = ids_as_read(column)
    if ids.dtype == object:
        marker = pc.is_in(column, value_set=pa.array(_MISSING_MARKERS))
        # only a marker stops the column from being integer ids: it stands for a missing id
        if pc.any(marker).as_py() and ids_as_read(column.filter(pc.invert(marker))).dtype != object:
            at = _first_true(marker)
            raise _cell_error(where, line(at), name, f"{what} {column[at].as_py()!r} marks a missing value among "
                              "integer ids", f"give the row a real {what} or drop the row")
    return ids


def _check_finite(values: np.ndarray, what: str, name: str, where: str, line: Callable[[int], str],
                  fix: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        at = int(np.argmin(finite))
        raise _cell_error(where, line(at), name, f"{what} {float(values[at])!r} is not finite", fix)


def _parse_strings(column: pa.ChunkedArray, kind: pa.DataType, what: str, name: str, where: str,
                   line: Callable[[int], str], fix: str) -> np.ndarray:
    """Text cells -> numbers (a frame or parquet file of numeric strings), else the first culprit."""
    try:
        return column.cast(kind).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        strings = column.to_numpy(zero_copy_only=False)
        at = _first_unparsable(strings, kind)
        raise _cell_error(where, line(at), name, f"{what} {strings[at]!r} is not a number", fix) from None


def _first_unparsable(strings: np.ndarray, kind: pa.DataType) -> int:
    for i, text in enumerate(strings):  # error path only: runs once to locate the culprit
        try:
            pa.scalar(text, pa.string()).cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
            return i
    return 0


def _is_time(text: str) -> bool:
    """A cell that arrow reads as a number (of seconds) or as an ISO timestamp."""
    for kind in (pa.float64(), pa.timestamp("s")):
        try:
            pa.scalar(text, pa.string()).cast(kind)
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return False


def ids_as_read(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """String ids -> int64 when every one is a canonical integer, else a `str` object array."""
    column = column.cast(pa.string())
    try:
        as_int = pc.cast(column, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return column.to_numpy(zero_copy_only=False).astype(object)
    # The cast accepted every value, so a non-canonical one ("007", "+7", " 7") is longer than
    # the decimal digits of its integer: compare lengths instead of formatting every integer.
    negative = as_int < 0
    magnitude = np.where(negative, (-(as_int + 1)).astype(np.uint64) + np.uint64(1), as_int.astype(np.uint64))
    digits = np.searchsorted(_POWERS_OF_TEN, magnitude, side="right") + 1 + negative
    lengths = pc.binary_length(column).to_numpy()
    if np.array_equal(digits, lengths):
        return as_int
    return column.to_numpy(zero_copy_only=False).astype(object)


_POWERS_OF_TEN = np.array([10 ** k for k in range(1, 20)], dtype=np.uint64)
