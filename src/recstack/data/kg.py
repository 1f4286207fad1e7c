"""Knowledge graphs as side data: statistics, a user's own triples from CSV/TSV, item-table
attributes as triples, and attaching a graph to a `Dataset`.

The graph itself is `recstack.data.dataset.KnowledgeGraph` (head / relation / tail index arrays,
entity and relation vocabularies, `item_entity[i]` = entity of item i or -1). RecBole's atomic
`.kg` / `.link` files are read by `recstack.data.formats.atomic`; `recstack.data.datasets.load_dataset(
name, kg="recbole")` takes the recbole wheel's files for ml-100k whatever the interaction source.

    >>> kg, report = read_kg_table("triples.tsv", "links.csv", data.interactions.items)  # doctest: +SKIP
    >>> data = with_kg(data, kg)                                                        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.dataset import Dataset, KnowledgeGraph
from recstack.data.formats.cells import DataFormatError
from recstack.data.interactions import Vocab

TRIPLE_COLUMNS = ("head", "relation", "tail")
LINK_COLUMNS = ("item", "entity")
# accepted spellings of each column (RecBole's atomic names included)
_ALIASES = {"head": ("head", "head_id", "h"), "relation": ("relation", "relation_id", "r"),
            "tail": ("tail", "tail_id", "t"), "item": ("item", "item_id"), "entity": ("entity", "entity_id")}


def kg_stats(kg: KnowledgeGraph, n_items: int | None = None) -> dict[str, Any]:
    """Entities, relations, triples (in total and per relation, most frequent first) and the
    linked share of items (items whose entity is known)."""
    n_items = len(kg.item_entity) if n_items is None else n_items
    counts = np.bincount(np.asarray(kg.relation, dtype=np.int64), minlength=len(kg.relations))
    order = np.argsort(-counts, kind="stable")
    linked = int((np.asarray(kg.item_entity) >= 0).sum())
    return {"n_entities": len(kg.entities), "n_relations": len(kg.relations), "n_triples": len(kg),
            "linked_items": linked, "linked_share": linked / n_items if n_items else 0.0,
            "triples_per_relation": {str(kg.relations[r]): int(counts[r]) for r in order}}


def with_kg(dataset: Dataset, kg: KnowledgeGraph | None) -> Dataset:
    """The same dataset carrying `kg` (which must be aligned with its item vocabulary)."""
    if kg is not None and len(kg.item_entity) != dataset.interactions.n_items:
        raise ValueError(f"the knowledge graph links {len(kg.item_entity)} items, the dataset has "
                         f"{dataset.interactions.n_items}; build it against dataset.interactions.items")
    return replace(dataset, kg=kg)


def _column(table: dict[str, np.ndarray], role: str, path: Path, columns: dict[str, str] | None) -> np.ndarray:
    names = (columns[role],) if columns and role in columns else _ALIASES[role]
    for name in names:
        if name in table:
            values = np.asarray(table[name], dtype=object)
            blank = np.array([str(v).strip() == "" for v in values], dtype=bool)
            if blank.any():
                line = int(np.flatnonzero(blank)[0]) + 2  # the header is line 1
                raise DataFormatError(f"{path}: line {line} has an empty {name!r} cell; every row needs a {role}")
            return np.array([str(v).strip() for v in values], dtype=object)
    raise DataFormatError(f"{path} has no {role} column (looked for {', '.join(map(repr, names))}); columns "
                          f"present: {list(table)}. Name the columns {', '.join(names[:1])} or pass columns=...")


def _read_text_table(path: Path, sep: str | None) -> dict[str, np.ndarray]:
    """A small delimited file with a header, every cell kept as text (ids are not numbers here)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(f"{path} is empty; expected a header line and one row per line")
    if sep is None:
        sep = "\t" if "\t" in lines[0] else ","
    header = [name.strip().split(":")[0] for name in lines[0].split(sep)]  # "head_id:token" -> "head_id"
    rows = [line.split(sep) for line in lines[1:] if line.strip()]
    bad = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
    if bad is not None:
        raise DataFormatError(f"{path}: line {bad + 2} has {len(rows[bad])} fields, the header has {len(header)} "
                              f"(separator {sep!r})")
    return {name: np.array([row[j] for row in rows], dtype=object) for j, name in enumerate(header)}


def read_kg_table(triples: str | Path, links: str | Path, items: Vocab, *, sep: str | None = None,
                  columns: dict[str, str] | None = None) -> tuple[KnowledgeGraph, dict[str, Any]]:
    """A user's own knowledge graph: a triples file (head, relation, tail columns) and a link file
    (item, entity columns), CSV or TSV with a header (separator guessed from the header line unless
    `sep` is given; RecBole's `head_id:token` headers work too). `columns` maps a role to your column
    name, e.g. {"head": "subject"}.

    Link rows naming an item that is not in `items` are counted in the report and skipped (the
    interactions may have been filtered); a missing column, an empty cell or a ragged line raise a
    `DataFormatError` naming the file. Returns the graph and a report: rows read, unknown items (count
    and a few examples), items linked twice (the first link is kept).
    """
    triples, links = Path(triples), Path(links)
    table = _read_text_table(triples, sep)
    head, relation, tail = (_column(table, role, triples, columns) for role in TRIPLE_COLUMNS)
    link_table = _read_text_table(links, sep)
    link_items, link_entities = (_column(link_table, role, links, columns) for role in LINK_COLUMNS)

    # item ids as the vocabulary keeps them (int64 ids compared as text)
    lookup = {str(key): row for row, key in enumerate(np.asarray(items.ids).tolist())}
    rows = np.array([lookup.get(key, -1) for key in link_items.tolist()], dtype=np.int64)
    unknown = rows < 0
    item_entity_ids = np.full(len(items), None, dtype=object)
    twice = 0
    for row, entity in zip(rows[~unknown].tolist(), link_entities[~unknown].tolist()):
        if item_entity_ids[row] is None:
            item_entity_ids[row] = entity
        else:
            twice += 1
    has_link = np.array([e is not None for e in item_entity_ids], dtype=bool)
    entities, codes = Vocab.from_values(np.concatenate([item_entity_ids[has_link], head, tail]).astype(object),
                                        name="entity")
    relations, relation_codes = Vocab.from_values(relation, name="relation")
    n_linked = int(has_link.sum())
    item_entity = np.full(len(items), -1, dtype=np.int32)
    item_entity[has_link] = codes[:n_linked]
    kg = KnowledgeGraph(head=codes[n_linked:n_linked + len(head)], relation=relation_codes,
                        tail=codes[n_linked + len(head):], entities=entities.ids, relations=relations.ids,
                        item_entity=item_entity)
    report = {"triples": len(head), "links": len(link_items), "linked_items": n_linked,
              "unknown_items": int(unknown.sum()), "unknown_item_examples": link_items[unknown][:5].tolist(),
              "items_linked_twice": twice}
    return kg, report


def item_attribute_kg(item_table: dict[str, np.ndarray], columns: tuple[str, ...] | list[str], n_items: int,
                      base: KnowledgeGraph | None = None, sep: str = "|") -> KnowledgeGraph:
    """Item-table columns as triples (item entity, column name, value), values split on `sep`
    ("Action|Drama" gives two triples; empty cells none), appended to `base` when given. Items
    without an entity in `base` get one named "item:<index>"; values become "<column>:<value>"."""
    missing = [c for c in columns if c not in item_table]
    if missing:
        raise ValueError(f"item table has no column {missing[0]!r}; columns present: {list(item_table)}")
    if base is not None and len(base.item_entity) != n_items:
        raise ValueError(f"the knowledge graph links {len(base.item_entity)} items, expected {n_items}")
    names = list(np.asarray(base.entities, dtype=object)) if base is not None else []
    rel_names = list(np.asarray(base.relations, dtype=object)) if base is not None else []
    entity_index = {name: i for i, name in enumerate(names)}
    relation_index = {name: i for i, name in enumerate(rel_names)}
    item_entity = base.item_entity.astype(np.int32).copy() if base is not None else np.full(n_items, -1, np.int32)

    def entity(name: str) -> int:
        if name not in entity_index:
            entity_index[name] = len(names)
            names.append(name)
        return entity_index[name]

    for i in np.flatnonzero(item_entity < 0):
        item_entity[i] = entity(f"item:{i}")
    heads, rels, tails = [], [], []
    for column in columns:
        relation = relation_index.setdefault(str(column), len(rel_names))
        if relation == len(rel_names):
            rel_names.append(str(column))
        for i, cell in enumerate(np.asarray(item_table[column], dtype=object).tolist()):
            for value in str(cell).split(sep) if cell is not None else ():
                value = value.strip()
                if value and value not in ("-1", "nan"):
                    heads.append(item_entity[i])
                    rels.append(relation)
                    tails.append(entity(f"{column}:{value}"))
    as_int = lambda values: np.asarray(values, dtype=np.int32)  # noqa: E731
    head = np.concatenate([base.head, as_int(heads)]) if base is not None else as_int(heads)
    relation_codes = np.concatenate([base.relation, as_int(rels)]) if base is not None else as_int(rels)
    tail = np.concatenate([base.tail, as_int(tails)]) if base is not None else as_int(tails)
    return KnowledgeGraph(head=head.astype(np.int32), relation=relation_codes.astype(np.int32),
                          tail=tail.astype(np.int32), entities=np.array(names, dtype=object),
                          relations=np.array(rel_names, dtype=object), item_entity=item_entity)


__all__ = ["KnowledgeGraph", "LINK_COLUMNS", "TRIPLE_COLUMNS", "item_attribute_kg", "kg_stats", "read_kg_table",
           "with_kg"]
