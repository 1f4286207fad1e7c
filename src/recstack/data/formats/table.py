"""Interaction tables: CSV / TSV / delimited text and Parquet files with a header, or data frames.

pandas and polars frames are accepted but never imported here, so they stay optional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from recstack.data.dataset import Dataset
from recstack.data.formats.cells import (ROLES, DataFormatError, _cell_error, _column_to_numpy, _line_label,
                                         _row_label)
from recstack.data.formats.delimited import _header, _sniff_separator, read_delimited
from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError

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
    id_types: dict[str, np.dtype] = {}
    raw, mapping, fmt, where = _read_table(source, columns, sep, id_types=id_types)
    if len(raw["user"]) == 0:
        raise DataFormatError(f"{where} has no interaction rows")
    # each raw id column is encoded and released before the next: at 50M events the raw 64-bit ids
    # are 400 MB a column (issue 18)
    users, user = _vocabulary(raw.pop("user"), "user", id_types)
    items, item = _vocabulary(raw.pop("item"), "item", id_types)
    interactions = Interactions(user, item, users, items, value=raw.pop("value", None),
                                timestamp=raw.pop("timestamp", None))
    pa.default_memory_pool().release_unused()  # the read buffers Arrow's allocator would keep
    default_name = Path(source).stem if isinstance(source, (str, Path)) else "dataframe"
    provenance = {"name": name or default_name, "format": fmt,
                  "source": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                  "columns": mapping}
    return Dataset(interactions, provenance=provenance)


def _vocabulary(ids: np.ndarray, role: str, id_types: dict[str, np.dtype]) -> tuple[Vocab, np.ndarray]:
    """(vocabulary, codes) of a raw id column; ids read in 32 bits get their source type back."""
    vocab, codes = Vocab.from_values(ids, name=role)
    if role in id_types and vocab.ids.dtype == np.int32:
        vocab = Vocab(vocab.ids.astype(id_types[role]), name=role)
    return vocab, codes


def _read_table(source, columns, sep, id_types: dict | None = None):
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
        if path.is_dir():
            return _read_parquet_folder(path, explicit, id_types)
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


def _read_parquet_folder(folder: Path, explicit: dict[str, str], id_types: dict | None = None):
    """A folder of Parquet parts (plain or Hive-partitioned, as Spark, Ray Data, DuckDB and
    `recstack.data.synthetic.write_power_law_parquet` write them), read one record batch at a time
    into preallocated columns: no Python object per row for numeric ids, no second copy of the log.
    Every cell gets the checks a single file gets, with the part and row named.

    With `id_types` (a dict to fill), 64-bit integer ids that fit are held in 32 bits, half the
    memory of the raw log, and `id_types[role]` records the type they were read as."""
    import pyarrow.dataset as ds

    parts = sorted(p for p in folder.rglob("*.parquet") if not any(x.startswith(".") for x in p.parts[len(folder.parts):]))
    if not parts:
        raise DataFormatError(f"{folder} is a folder without .parquet files; give a file, or a folder of Parquet parts")
    try:
        dataset = ds.dataset([str(p) for p in parts], format="parquet")
        mapping = _resolve_columns(dataset.schema.names, explicit, str(folder))
        wanted = list(dict.fromkeys(mapping.values()))
        total = dataset.count_rows()
        columns: dict[str, Any] = {}
        filled = 0
        for fragment in dataset.get_fragments():
            offset = 0
            for batch in fragment.to_batches(columns=wanted, batch_size=1 << 20):
                line = (lambda start: (lambda i: _row_label(start + i)))(offset)
                for role, name in mapping.items():
                    values = _column_to_numpy(pa.chunked_array([batch.column(name)]), role, name, fragment.path, line)
                    if id_types is not None and role in ("user", "item"):
                        values = _compact_ids(values, role, id_types)
                    if role not in columns:  # numeric columns go straight into one array of the full length
                        columns[role] = (np.empty(total, dtype=values.dtype) if values.dtype != object else [])
                    target = columns[role]
                    if isinstance(target, list):
                        target.append(values)
                    elif values.dtype != target.dtype:  # a part with another type (int ids in one, text in another)
                        columns[role] = [target[:filled], values]
                    else:
                        target[filled:filled + len(values)] = values
                offset += batch.num_rows
                filled += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(f"{folder}: not a readable folder of Parquet parts ({exc})") from None
    arrays = {role: (_joined(values) if isinstance(values, list) else values[:filled])
              for role, values in columns.items()}
    if not arrays:
        arrays = {role: np.empty(0) for role in mapping}
    return arrays, mapping, "parquet", str(folder)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """One column from parts read with different types: integer ids beside text ids become text, as
    in one file, where an id column is integer only if every id is."""
    if any(part.dtype == object for part in parts) and any(part.dtype.kind in "iu" for part in parts):
        parts = [part.astype(str).astype(object) if part.dtype.kind in "iu" else part for part in parts]
    return np.concatenate(parts)


def _compact_ids(values: np.ndarray, role: str, id_types: dict) -> np.ndarray:
    """A batch of integer ids as int32 when they fit (a batch that does not fit stays 64-bit, and the
    column is then joined in 64 bits)."""
    if values.dtype != np.int64:
        return values
    id_types.setdefault(role, values.dtype)
    if len(values) and (values.min() < -2**31 or values.max() >= 2**31):
        return values
    return values.astype(np.int32)


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
