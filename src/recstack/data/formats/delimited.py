"""Delimited text files (CSV, TSV, "::" and "|" separated): separator sniffing, header, parsing.

`read_delimited` parses with pyarrow and turns its errors into ones that name the path and the line.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv

from recstack.data.formats.cells import DataFormatError, _cell_error, _line_label

_SNIFF_SEPARATORS = ("\t", "::", ",", ";", "|")
_JOINED_SEPARATOR = "\x1f"  # stands in for multi-character separators such as "::"


def _sniff_separator(path: Path) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    with open(path, "rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace")
    counts = {sep: first.count(sep) for sep in _SNIFF_SEPARATORS}
    if counts["::"]:
        return "::"
    best = max(("\t", ",", ";", "|"), key=lambda s: counts[s])
    if counts[best]:
        return best
    if path.suffix.lower() == ".csv":
        return ","
    return " " if " " in first.strip() else ","


def _header(path: Path, sep: str) -> list[str]:
    with open(path, "rb") as handle:
        raw = handle.readline()
    try:
        first = raw.decode("utf-8")
    except UnicodeDecodeError:
        first = raw.decode("latin-1")  # as read_delimited falls back for the whole file
    first = first.lstrip("\ufeff").rstrip("\r\n")
    if not first:
        raise DataFormatError(f"{path} is empty: expected a header row and interactions")
    if len(sep) > 1:
        return first.split(sep)
    return next(csv.reader([first], delimiter=sep))


def read_delimited(
    path: Path,
    sep: str,
    *,
    header: bool,
    names: list[str] | None = None,
    column_types: dict[str, pa.DataType] | None = None,
    include: list[str] | None = None,
    encoding: str = "utf8",
    quoted: bool = True,
) -> pa.Table:
    """Parse a delimited file with pyarrow; errors name the path and the line.

    Multi-character separators ("::" in ml-1m) are swapped for a control character first;
    a file that is not valid UTF-8 is re-read as latin-1 (the MovieLens archives are latin-1).
    """
    path = Path(path)
    data = path.read_bytes().replace(sep.encode(), _JOINED_SEPARATOR.encode()) if len(sep) > 1 else None
    delimiter = _JOINED_SEPARATOR if data is not None else sep

    def source():
        return io.BytesIO(data) if data is not None else path

    def options(threads: bool, handler=None):
        read = pv.ReadOptions(use_threads=threads, encoding=encoding, column_names=names,
                              skip_rows=1 if (header and names) else 0)
        parse = pv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                                invalid_row_handler=handler)
        convert = pv.ConvertOptions(column_types=column_types or {}, include_columns=include,
                                    strings_can_be_null=False)
        return read, parse, convert

    try:
        return pv.read_csv(source(), *options(True))
    except pa.ArrowInvalid as exc:
        message = str(exc)
    if "invalid UTF8" in message and encoding == "utf8":
        return read_delimited(path, sep, header=header, names=names, column_types=column_types,
                              include=include, encoding="latin-1", quoted=quoted)
    raise _locate(path, sep, message, header, source, options)


def _locate(path: Path, sep: str, message: str, header: bool, source, options) -> DataFormatError:
    """Turn a pyarrow error into one that names the line (re-parses serially, error path only)."""
    if "Expected" in message and "columns" in message:
        rows = []

        def remember(row):
            rows.append(row)
            return "error"

        try:
            pv.read_csv(source(), *options(False, remember))
        except pa.ArrowInvalid:
            pass
        if rows and rows[0].number is not None:
            row = rows[0]
            text = row.text.replace(_JOINED_SEPARATOR, sep)[:80]
            return DataFormatError(f"{path}, line {row.number}: expected {row.expected_columns} fields, found "
                                   f"{row.actual_columns} ({text!r}); check the separator and quoting")
        return DataFormatError(f"{path}: {message}")
    match = re.search(r"column #(\d+).*invalid value '(.*)'", message)
    if match:
        column, value = int(match.group(1)), match.group(2)
        read, parse, _ = options(True)
        try:
            table = pv.read_csv(source(), read, parse, pv.ConvertOptions(strings_can_be_null=False))
            strings = table.column(column).cast(pa.string()).to_numpy(zero_copy_only=False)
            # pyarrow names the culprit's text; its first occurrence is the line (float() would
            # accept cells that arrow refuses, such as "1.5" in an integer column)
            same = np.flatnonzero(strings == value)
            bad = int(same[0]) if len(same) else _first_non_number(strings)
            return _cell_error(str(path), _line_label(header)(bad), table.column_names[column],
                               f"{strings[bad]!r} is not a number", "correct the cell or drop the row")
        except (pa.ArrowInvalid, IndexError):
            return DataFormatError(f"{path}: value {value!r} in column {column + 1} is not a number; "
                                   "correct the cell or drop the row")
    return DataFormatError(f"{path}: {message}")


def _first_non_number(strings: np.ndarray) -> int:
    for i, text in enumerate(strings):  # error path only: runs once to locate the culprit
        try:
            float(text)
        except (TypeError, ValueError):
            return i
    return 0
