"""Loaders: interaction files, data frames and the raw MovieLens / RecBole formats -> `Dataset`.

Parsing goes through pyarrow (a core dependency, multi-threaded C++); pandas and polars frames
are accepted but never imported here, so they stay optional. External ids are kept as read:
an id column whose every value is a canonical integer ("17", not "017") becomes int64, anything
else stays a `str` object array, so "007" never silently turns into 7. Wrong cells are refused,
never absorbed: an empty, blank or NaN id (or "nan"/"NA"/... among integer ids), and an empty,
non-finite or out-of-range rating or timestamp, each raise one line naming the file, the line (or
row), the column and the fix.

Every loader returns a `Dataset` whose provenance holds at least {"name", "format", "source"}.
Side tables are indexed by the dense item/user index: rows of the side file for ids that have
no interaction are dropped, ids with interactions but no side row get "" / -1 / NaN.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError

ROLES = ("user", "item", "value", "timestamp")
DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "value": "rating", "timestamp": "timestamp"}
# Spellings tried, in order, for a role the caller did not name: MovieLens (userId, movieId)
# and RecBole (user_id:token) headers then load without a mapping.
_ALIASES = {
    "user": ("user_id", "userId", "userID", "user"),
    "item": ("item_id", "itemId", "itemID", "movieId", "movie_id", "item"),
    "value": ("rating", "value", "score"),
    "timestamp": ("timestamp", "time", "ts"),
}
_REQUIRED = ("user", "item")
_SNIFF_SEPARATORS = ("\t", "::", ",", ";", "|")
_JOINED_SEPARATOR = "\x1f"  # stands in for multi-character separators such as "::"

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
# ml-1m users.dat stores occupations as codes 0..20 (README of the archive); names read better.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_YEAR = re.compile(r"(\d{4})\s*$")


class DataFormatError(RecstackError):
    """A file or frame that cannot be read as interactions: the message names where and why."""


# ---- generic tables ----------------------------------------------------------------------------
def read_table(
    source: Any, columns: Mapping[str, str] | None = None, sep: str | None = None
) -> dict[str, np.ndarray]:
    """Raw interaction columns keyed by role ("user", "item", optional "value", "timestamp").

    `source` is a .csv/.tsv/.txt/.parquet path (with a header row) or a pandas / polars / pyarrow
    table. `columns` maps roles to source column names; roles it leaves out fall back to
    `DEFAULT_COLUMNS` (then common spellings such as userId/movieId); "value" and "timestamp" are
    dropped when absent unless named explicitly. `sep` is sniffed from the extension / header line
    when None. Values come back as float64, timestamps as int64 seconds, ids as read.
    """
    return _read_table(source, columns, sep)[0]


def load_table(
    source: Any, columns: Mapping[str, str] | None = None, sep: str | None = None, name: str | None = None
) -> Dataset:
    """`read_table` turned into a `Dataset` (vocabularies in order of first appearance)."""
    raw, mapping, fmt, where = _read_table(source, columns, sep)
    if len(raw["user"]) == 0:
        raise DataFormatError(f"{where} has no interaction rows")
    interactions = Interactions.from_ids(raw["user"], raw["item"], value=raw.get("value"),
                                         timestamp=raw.get("timestamp"))
    default_name = Path(source).stem if isinstance(source, (str, Path)) else "dataframe"
    provenance = {"name": name or default_name, "format": fmt,
                  "source": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                  "columns": mapping}
    return Dataset(interactions, provenance=provenance)


def _read_table(source, columns, sep):
    explicit = dict(columns or {})
    unknown = sorted(set(explicit) - set(ROLES))
    if unknown:
        raise RecstackError(f"unknown column role(s) {unknown}; the roles are {list(ROLES)}")
    if _is_frame(source):
        names = list(source.column_names) if isinstance(source, pa.Table) else [str(c) for c in source.columns]
        mapping = _resolve_columns(names, explicit, "the data frame")
        table = _frame_to_arrow(source, mapping)
        where, fmt = "the data frame", "dataframe"
        line = _row_label
    else:
        path = Path(source)
        if not path.is_file():
            raise DataFormatError(f"{path}: no such file")
        where = str(path)
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(path).names
                mapping = _resolve_columns(names, explicit, where)
                table = pq.read_table(path, columns=list(dict.fromkeys(mapping.values())))
            except (pa.ArrowException, OSError) as exc:
                raise DataFormatError(f"{path}: not a readable parquet file ({exc})") from None
            fmt, line = "parquet", _row_label
        else:
            sep = sep or _sniff_separator(path)
            names = _header(path, sep)
            mapping = _resolve_columns(names, explicit, where)
            ids = {mapping["user"], mapping["item"]}
            types = {name: pa.string() for name in ids}
            if "value" in mapping:
                types[mapping["value"]] = pa.float64()
            table = read_delimited(path, sep, header=True, column_types=types,
                                   include=list(dict.fromkeys(mapping.values())))
            fmt = {"\t": "tsv", ",": "csv"}.get(sep, "delimited")
            line = _line_label(header=True)
    arrays = {role: _column_to_numpy(table.column(name), role, name, where, line)
              for role, name in mapping.items()}
    return arrays, mapping, fmt, where


def _is_frame(source: Any) -> bool:
    if isinstance(source, pa.Table):
        return True
    module = type(source).__module__.split(".")[0]
    return module in ("pandas", "polars") and hasattr(source, "columns")


def _resolve_columns(names: list[str], explicit: dict[str, str], where: str) -> dict[str, str]:
    """Role -> source column; an explicitly named column must exist, defaults may be absent."""
    # RecBole headers carry types ("user_id:token"): match on the part before the colon too.
    bare = {name.split(":", 1)[0]: name for name in names}
    mapping: dict[str, str] = {}
    for role in ROLES:
        if role in explicit:
            wanted = explicit[role]
            if wanted is None:
                continue
            found = wanted if wanted in names else bare.get(wanted)
            if found is None:
                raise DataFormatError(f"{where} has no column {wanted!r} (for {role}); columns present: {names}")
            mapping[role] = found
            continue
        for candidate in (DEFAULT_COLUMNS[role], *_ALIASES[role]):
            found = candidate if candidate in names else bare.get(candidate)
            if found is not None:
                mapping[role] = found
                break
        else:
            if role in _REQUIRED:
                raise DataFormatError(
                    f"{where} has no {role} column (looked for {DEFAULT_COLUMNS[role]!r} and "
                    f"{list(_ALIASES[role][1:])}); columns present: {names}. Pass columns={{'{role}': ...}}"
                    " naming it, and check the file has a header row")
    return mapping


def _frame_to_arrow(frame: Any, mapping: dict[str, str]) -> pa.Table:
    wanted = list(dict.fromkeys(mapping.values()))
    if isinstance(frame, pa.Table):
        return frame.select(wanted)
    module = type(frame).__module__.split(".")[0]
    if module == "polars":
        return frame.select(wanted).to_arrow()
    arrays = []
    for name in wanted:
        series = frame[name]
        try:
            arrays.append(pa.array(series, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            cells, missing = series.to_numpy(dtype=object), series.isna().to_numpy()
            if name in (mapping["user"], mapping["item"]):
                # mixed-type object ids (1 and "a") and ints beyond int64 become their text; a missing
                # cell stays missing (str() would make it a phantom id "nan"), refused with its row below
                text = np.where(missing, None, cells.astype(str).astype(object))
                arrays.append(pa.array(text, type=pa.string()))
                continue
            role = next(r for r, column in mapping.items() if column == name)
            at = next((i for i, cell in enumerate(cells) if missing[i] or not _is_number(cell)), 0)  # error path
            problem = f"empty {role}" if missing[at] else f"{role} {cells[at]!r} is not a number"
            raise _cell_error("the data frame", _row_label(at), name, problem,
                              f"every {role} must be a number: correct the cell or drop the row") from None
    return pa.table(arrays, names=wanted)


def _is_number(cell: Any) -> bool:
    if isinstance(cell, (bool, np.bool_)):
        return True
    if isinstance(cell, (int, np.integer)):
        return -(2 ** 63) <= int(cell) < 2 ** 63
    return isinstance(cell, (float, np.floating))


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


def _first_non_number(strings: np.ndarray) -> int:
    for i, text in enumerate(strings):  # error path only: runs once to locate the culprit
        try:
            float(text)
        except (TypeError, ValueError):
            return i
    return 0


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


# ---- delimited files ---------------------------------------------------------------------------
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


# ---- side tables -------------------------------------------------------------------------------
def _fill_value(array: np.ndarray):
    if array.dtype.kind in "iu":
        return -1
    if array.dtype.kind == "f":
        return np.nan
    if array.dtype.kind == "b":
        return False
    return ""


def align_side_table(vocab_ids: np.ndarray, side_ids: np.ndarray, columns: dict[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
    """Re-order side-file columns onto a vocabulary (dense index order), vectorised.

    Side rows whose id is not in the vocabulary are dropped; vocabulary ids without a side
    row get "" (text), -1 (integers) or NaN (floats). The first row wins for repeated ids.
    """
    vocab_ids, side_ids = np.asarray(vocab_ids), np.asarray(side_ids)
    if (vocab_ids.dtype.kind in "iuf") != (side_ids.dtype.kind in "iuf"):
        vocab_ids, side_ids = vocab_ids.astype(str).astype(object), side_ids.astype(str).astype(object)
    order = np.argsort(side_ids, kind="stable")
    sorted_ids = side_ids[order]
    position = np.clip(np.searchsorted(sorted_ids, vocab_ids), 0, max(len(sorted_ids) - 1, 0))
    if len(sorted_ids):
        found = np.asarray(sorted_ids[position] == vocab_ids, dtype=bool)
        row = order[position]
    else:
        found, row = np.zeros(len(vocab_ids), dtype=bool), np.zeros(len(vocab_ids), dtype=np.int64)
    table = {}
    for name, values in columns.items():
        values = np.asarray(values)
        out = values[row] if len(values) else np.empty(len(vocab_ids), dtype=values.dtype)
        if not found.all():
            out = out.copy()
            if out.dtype.kind in "US":
                out = out.astype(object)
            out[~found] = _fill_value(values)
        table[name] = out
    return table


def split_title_year(titles: np.ndarray, fallback_dates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """"Toy Story (1995)" -> ("Toy Story", 1995); the year falls back to a date's trailing year, else -1."""
    clean = np.empty(len(titles), dtype=object)
    years = np.full(len(titles), -1, dtype=np.int64)
    for i, title in enumerate(titles):  # one pass over the catalogue, not over interactions
        title = str(title).strip()
        match = _TITLE_YEAR.match(title)
        if match:
            clean[i], years[i] = match.group(1), int(match.group(2))
            continue
        clean[i] = title
        if fallback_dates is not None:
            date = _YEAR.search(str(fallback_dates[i]))
            if date:
                years[i] = int(date.group(1))
    return clean, years


def _numeric_year(values: np.ndarray) -> np.ndarray:
    years = np.full(len(values), -1, dtype=np.int64)
    for i, value in enumerate(values):
        text = str(value).strip()
        if text.isdigit():
            years[i] = int(text)
    return years


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_numpy(zero_copy_only=False).astype(object)
    return column.to_numpy()


# ---- MovieLens (GroupLens archives) ------------------------------------------------------------
def load_movielens(path: str | Path) -> Dataset:
    """Load a MovieLens directory as GroupLens ships it, detecting the variant by its files.

    ml-100k (u.data, u.item, u.user), ml-1m / ml-10m (ratings.dat, movies.dat, users.dat with "::"),
    ml-latest / ml-latest-small / ml-20m / ml-25m (ratings.csv, movies.csv), or RecBole atomic files
    (delegated to `load_atomic`). A directory holding exactly one such folder (an unzipped archive)
    works too. Items get title (year stripped), year (-1 unknown) and genres ("A|B"); users get the
    demographic columns where the variant has them.
    """
    root = _movielens_root(Path(path))
    if (root / "u.data").is_file():
        return _load_ml100k(root)
    if (root / "ratings.dat").is_file():
        return _load_ml1m(root)
    if (root / "ratings.csv").is_file():
        return _load_ml_latest(root)
    return load_atomic(root)


def _has_movielens_files(directory: Path) -> bool:
    return any((directory / f).is_file() for f in ("u.data", "ratings.dat", "ratings.csv")) or any(
        directory.glob("*.inter"))


def _movielens_root(path: Path) -> Path:
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise RecstackError(f"{path}: no such directory; give the folder that holds the MovieLens files")
    if _has_movielens_files(path):
        return path
    nested = [d for d in sorted(path.iterdir()) if d.is_dir() and _has_movielens_files(d)]
    if len(nested) == 1:
        return nested[0]
    raise RecstackError(
        f"{path} holds no MovieLens files: expected u.data (ml-100k), ratings.dat (ml-1m), ratings.csv "
        "(ml-latest) or RecBole *.inter files" + (f"; several candidate folders: {[d.name for d in nested]}"
                                                  if nested else ""))


def _name_from(root: Path, default: str) -> str:
    return root.name if root.name.lower().startswith("ml-") else default


def _load_ml100k(root: Path) -> Dataset:
    ratings = read_delimited(root / "u.data", "\t", header=False, names=["user", "item", "value", "timestamp"],
                             column_types={"user": pa.int64(), "item": pa.int64(), "value": pa.float64(),
                                           "timestamp": pa.int64()})
    interactions = _checked_interactions(ratings, root / "u.data", header=False)
    item_table, user_table = {}, {}
    if (root / "u.item").is_file():
        names = ["item", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
        types = {"item": pa.int64(), **{g: pa.int8() for g in ML100K_GENRES},
                 **{c: pa.string() for c in names[1:5]}}
        items = read_delimited(root / "u.item", "|", header=False, names=names, column_types=types,
                               encoding="latin-1", quoted=False)
        title, year = split_title_year(_column(items, "title"), _column(items, "release_date"))
        flags = np.stack([_column(items, g) for g in ML100K_GENRES], axis=1) > 0
        genres = _genre_strings(flags, ML100K_GENRES)
        item_table = align_side_table(interactions.items.ids, _column(items, "item"),
                                      {"title": title, "year": year, "genres": genres})
    if (root / "u.user").is_file():
        names = ["user", "age", "gender", "occupation", "zip_code"]
        users = read_delimited(root / "u.user", "|", header=False, names=names, encoding="latin-1", quoted=False,
                               column_types={"user": pa.int64(), "age": pa.int64(), "gender": pa.string(),
                                             "occupation": pa.string(), "zip_code": pa.string()})
        user_table = align_side_table(interactions.users.ids, _column(users, "user"),
                                      {c: _column(users, c) for c in names[1:]})
    provenance = {"name": _name_from(root, "ml-100k"), "format": "movielens-100k", "source": str(root)}
    return Dataset(interactions, item_table, user_table, provenance=provenance)


def _checked_interactions(ratings: pa.Table, path: Path, header: bool,
                          names: Mapping[str, str] | None = None) -> Interactions:
    """A MovieLens ratings table -> Interactions, refusing empty ids and non-finite cells by line."""
    names = names or {role: role for role in ROLES}
    line = _line_label(header)
    raw = {role: _column_to_numpy(ratings.column(column), role, column, str(path), line)
           for role, column in names.items() if column in ratings.column_names}
    return Interactions.from_ids(raw["user"], raw["item"], value=raw.get("value"), timestamp=raw.get("timestamp"))


def _genre_strings(flags: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    labels = np.asarray(names, dtype=object)
    return np.array(["|".join(labels[row]) for row in flags], dtype=object)


def _load_ml1m(root: Path) -> Dataset:
    ratings = read_delimited(root / "ratings.dat", "::", header=False, names=["user", "item", "value", "timestamp"],
                             column_types={"user": pa.int64(), "item": pa.int64(), "value": pa.float64(),
                                           "timestamp": pa.int64()})
    interactions = _checked_interactions(ratings, root / "ratings.dat", header=False)
    item_table, user_table = {}, {}
    if (root / "movies.dat").is_file():
        movies = read_delimited(root / "movies.dat", "::", header=False, names=["item", "title", "genres"],
                                column_types={"item": pa.int64(), "title": pa.string(), "genres": pa.string()},
                                encoding="latin-1", quoted=False)
        title, year = split_title_year(_column(movies, "title"))
        item_table = align_side_table(interactions.items.ids, _column(movies, "item"),
                                      {"title": title, "year": year, "genres": _column(movies, "genres")})
    if (root / "users.dat").is_file():
        names = ["user", "gender", "age", "occupation", "zip_code"]
        users = read_delimited(root / "users.dat", "::", header=False, names=names, encoding="latin-1", quoted=False,
                               column_types={"user": pa.int64(), "gender": pa.string(), "age": pa.int64(),
                                             "occupation": pa.int64(), "zip_code": pa.string()})
        codes = _column(users, "occupation")
        known = (codes >= 0) & (codes < len(ML1M_OCCUPATIONS))
        occupation = np.where(known, np.asarray(ML1M_OCCUPATIONS, dtype=object)[np.where(known, codes, 0)],
                              codes.astype(str).astype(object))
        user_table = align_side_table(interactions.users.ids, _column(users, "user"), {
            "age": _column(users, "age"), "gender": _column(users, "gender"), "occupation": occupation,
            "zip_code": _column(users, "zip_code")})
    provenance = {"name": _name_from(root, "ml-1m"), "format": "movielens-1m", "source": str(root)}
    return Dataset(interactions, item_table, user_table, provenance=provenance)


def _load_ml_latest(root: Path) -> Dataset:
    ratings = read_delimited(root / "ratings.csv", ",", header=True,
                             column_types={"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(),
                                           "timestamp": pa.int64()})
    for needed in ("userId", "movieId", "rating"):
        if needed not in ratings.column_names:
            raise DataFormatError(f"{root / 'ratings.csv'} has no column {needed!r}; columns present: "
                                  f"{ratings.column_names}")
    interactions = _checked_interactions(ratings, root / "ratings.csv", header=True, names={
        "user": "userId", "item": "movieId", "value": "rating", "timestamp": "timestamp"})
    item_table = {}
    if (root / "movies.csv").is_file():
        movies = read_delimited(root / "movies.csv", ",", header=True,
                                column_types={"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()})
        title, year = split_title_year(_column(movies, "title"))
        genres = _column(movies, "genres")
        genres = np.where(genres == "(no genres listed)", "", genres).astype(object)
        item_table = align_side_table(interactions.items.ids, _column(movies, "movieId"),
                                      {"title": title, "year": year, "genres": genres})
    provenance = {"name": _name_from(root, "ml-latest"), "format": "movielens-latest", "source": str(root)}
    return Dataset(interactions, item_table, provenance=provenance)


# ---- RecBole atomic files ----------------------------------------------------------------------
# RecBole's MovieLens columns renamed so both loaders give the same side tables.
_RENAMES = {"movie_title": "title", "release_year": "year", "class": "genres", "genre": "genres"}


def _read_atomic(path: Path, roles: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """One atomic file -> ({field: array}, {field: type}); header fields are `name:type`.

    `roles` maps fields to interaction roles (user_id and item_id always are ids), read and checked
    as `read_table` reads that role.
    """
    roles = {"user_id": "user", "item_id": "item", **(roles or {})}
    header = _header(path, "\t")
    fields, kinds, types = [], {}, {}
    for column in header:
        field, _, kind = column.partition(":")
        kind = kind or "token"
        if kind not in ("token", "token_seq", "float", "float_seq"):
            raise DataFormatError(f"{path}, line 1: field {column!r} has unknown type {kind!r} "
                                  "(expected token, token_seq, float or float_seq)")
        fields.append(field)
        kinds[field] = kind
        types[column] = pa.float64() if kind == "float" else pa.string()
    table = read_delimited(path, "\t", header=True, column_types=types, quoted=False)
    line = _line_label(header=True)
    out = {}
    for column, field in zip(header, fields):
        values = table.column(column)
        if field in roles:
            out[field] = _column_to_numpy(values, roles[field], column, str(path), line)
        elif kinds[field] == "float":
            out[field] = values.to_numpy()
        else:
            out[field] = values.to_numpy(zero_copy_only=False).astype(object)
    return out, kinds


def _side_columns(fields: dict[str, np.ndarray], kinds: dict[str, str], id_field: str) -> dict[str, np.ndarray]:
    columns = {}
    for field, values in fields.items():
        if field == id_field:
            continue
        name = _RENAMES.get(field, field)
        if name == "year":
            values = _numeric_year(values)
        elif name == "genres" and kinds[field] == "token_seq":
            values = np.array([" ".join(str(v).split()).replace(" ", "|") for v in values], dtype=object)
        elif name == "age" and len(values) and all(str(v).isdigit() for v in values):
            values = values.astype(np.int64)
        columns[name] = values
    return columns


def load_atomic(directory: str | Path, name: str | None = None) -> Dataset:
    """Load RecBole atomic files `<name>.inter` (+ optional .item, .user, .kg, .link).

    Fields are typed `name:type` (token, token_seq, float, float_seq), tab separated. The .inter
    fields user_id, item_id, rating (or label) and timestamp become the interactions; other .item
    and .user fields become side-table columns (sequences kept as the space-joined string, except
    MovieLens' class/genre, joined with "|"; movie_title -> title, release_year -> year as int).
    .kg + .link become a `KnowledgeGraph` whose item_entity is -1 for unlinked items.
    """
    root = Path(directory)
    if root.is_file():
        name, root = name or root.stem, root.parent
    if name is None:
        candidates = sorted(p.stem for p in root.glob("*.inter"))
        if len(candidates) != 1:
            raise RecstackError(f"{root}: expected one <name>.inter file, found {candidates or 'none'}; "
                                "pass name=... to choose")
        name = candidates[0]
    inter_path = root / f"{name}.inter"
    if not inter_path.is_file():
        raise RecstackError(f"{inter_path}: no such file (RecBole atomic data needs <name>.inter)")
    fields = [column.partition(":")[0] for column in _header(inter_path, "\t")]
    value_field = next((f for f in ("rating", "label") if f in fields), None)
    roles = {"timestamp": "timestamp", **({value_field: "value"} if value_field else {})}
    inter, kinds = _read_atomic(inter_path, roles)
    missing = [f for f in ("user_id", "item_id") if f not in inter]
    if missing:
        raise DataFormatError(f"{inter_path} has no field {missing[0]!r}; fields present: {list(kinds)}")
    value = inter[value_field] if value_field else None
    timestamp = inter.get("timestamp")
    interactions = Interactions.from_ids(inter["user_id"], inter["item_id"], value=value, timestamp=timestamp)

    item_table: dict[str, np.ndarray] = {}
    user_table: dict[str, np.ndarray] = {}
    for suffix, id_field, vocab in (("item", "item_id", interactions.items), ("user", "user_id", interactions.users)):
        path = root / f"{name}.{suffix}"
        if not path.is_file():
            continue
        fields, field_kinds = _read_atomic(path)
        if id_field not in fields:
            raise DataFormatError(f"{path} has no field {id_field!r}; fields present: {list(field_kinds)}")
        table = align_side_table(vocab.ids, fields[id_field], _side_columns(fields, field_kinds, id_field))
        (item_table if suffix == "item" else user_table).update(table)

    kg = None
    if (root / f"{name}.kg").is_file():
        kg = _read_kg(root / f"{name}.kg", root / f"{name}.link", interactions.items)
    provenance = {"name": name, "format": "atomic", "source": str(root)}
    return Dataset(interactions, item_table, user_table, kg, provenance)


def _read_kg(kg_path: Path, link_path: Path, items: Vocab) -> KnowledgeGraph:
    triples, kinds = _read_atomic(kg_path)
    missing = [f for f in ("head_id", "relation_id", "tail_id") if f not in triples]
    if missing:
        raise DataFormatError(f"{kg_path} has no field {missing[0]!r}; fields present: {list(kinds)}")
    head, relation, tail = triples["head_id"], triples["relation_id"], triples["tail_id"]
    linked = np.empty(len(items), dtype=object)
    has_link = np.zeros(len(items), dtype=bool)
    if link_path.is_file():
        link, link_kinds = _read_atomic(link_path)
        if "item_id" not in link or "entity_id" not in link:
            raise DataFormatError(f"{link_path} needs fields item_id and entity_id; fields present: {list(link_kinds)}")
        linked = align_side_table(items.ids, link["item_id"], {"entity": link["entity_id"]})["entity"]
        has_link = linked != ""
    # Linked item entities come first (in item order), so item-heavy entity tables stay compact.
    entities, codes = Vocab.from_values(np.concatenate([linked[has_link], head, tail]).astype(object), name="entity")
    relations, relation_codes = Vocab.from_values(np.asarray(relation, dtype=object), name="relation")
    n_linked = int(has_link.sum())
    item_entity = np.full(len(items), -1, dtype=np.int32)
    item_entity[has_link] = codes[:n_linked]
    return KnowledgeGraph(
        head=codes[n_linked:n_linked + len(head)], relation=relation_codes, tail=codes[n_linked + len(head):],
        entities=entities.ids, relations=relations.ids, item_entity=item_entity,
    )
