"""RecBole atomic files: `<name>.inter` (+ optional .item, .user, .kg, .link), tab separated, typed headers."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.formats.cells import DataFormatError, _column_to_numpy, _line_label
from recstack.data.formats.delimited import _header, read_delimited
from recstack.data.formats.side import align_side_table
from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError

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


def _read_inter(inter_path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """An `.inter` file's columns (user_id and item_id required) and its rating or label column, if any."""
    fields = [column.partition(":")[0] for column in _header(inter_path, "\t")]
    value_field = next((f for f in ("rating", "label") if f in fields), None)
    roles = {"timestamp": "timestamp", **({value_field: "value"} if value_field else {})}
    inter, kinds = _read_atomic(inter_path, roles)
    missing = [f for f in ("user_id", "item_id") if f not in inter]
    if missing:
        raise DataFormatError(f"{inter_path} has no field {missing[0]!r}; fields present: {list(kinds)}")
    return inter, inter[value_field] if value_field else None


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
        elif name == "age":
            values = _whole_numbers(values)
        columns[name] = values
    return columns


def _whole_numbers(values: np.ndarray) -> np.ndarray:
    """Digit strings, or floats that are all whole numbers (`age:float` holds 25.0), as int64; else unchanged."""
    if not len(values):
        return values
    if values.dtype.kind == "f":
        return values.astype(np.int64) if np.isfinite(values).all() and (values == np.round(values)).all() \
            else values
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return values.astype(np.int64) if all(str(v).isascii() and str(v).isdigit() for v in values) else values


def _numeric_year(values: np.ndarray) -> np.ndarray:
    """Years as int64, -1 where unknown: digit strings ("1995") or whole floats (`release_year:float`)."""
    years = np.full(len(values), -1, dtype=np.int64)
    if values.dtype.kind == "f":
        known = np.isfinite(values) & (values == np.round(values)) & (values > 0)
        years[known] = values[known].astype(np.int64)
        return years
    for i, value in enumerate(values):
        text = str(value).strip()
        if text.isascii() and text.isdigit():
            years[i] = int(text)
    return years


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
    inter, value = _read_inter(inter_path)
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
