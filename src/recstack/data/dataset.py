"""`Dataset`: interactions plus side information and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recstack.data.interactions import Interactions


@dataclass(frozen=True)
class KnowledgeGraph:
    """Triples (head, relation, tail) over entity and relation vocabularies.

    `item_entity[i]` is the entity index linked to item i, or -1 where the source has no link.
    """

    head: np.ndarray
    relation: np.ndarray
    tail: np.ndarray
    entities: np.ndarray  # external entity ids, index -> id
    relations: np.ndarray  # external relation ids, index -> id
    item_entity: np.ndarray

    def __len__(self) -> int:
        return len(self.head)


@dataclass(frozen=True)
class Dataset:
    """Interactions + item/user side tables (rows indexed by dense index) + optional KG.

    Side tables are plain dicts of column name -> numpy array of length n_items / n_users;
    text columns are kept as object arrays so language models can read them later.
    """

    interactions: Interactions
    item_table: dict[str, np.ndarray] = field(default_factory=dict)
    user_table: dict[str, np.ndarray] = field(default_factory=dict)
    kg: KnowledgeGraph | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table, n, what in ((self.item_table, self.interactions.n_items, "item"),
                               (self.user_table, self.interactions.n_users, "user")):
            for name, column in table.items():
                if len(column) != n:
                    raise ValueError(f"{what} table column {name!r} has {len(column)} rows, expected {n}")

    @property
    def name(self) -> str:
        return str(self.provenance.get("name", "dataset"))

    def item_titles(self) -> np.ndarray | None:
        for column in ("title", "movie_title", "name"):
            if column in self.item_table:
                return self.item_table[column]
        return None

    def with_interactions(self, interactions: Interactions) -> "Dataset":
        """Same side information over (possibly filtered) interactions sharing the vocabularies."""
        if interactions.users != self.interactions.users or interactions.items != self.interactions.items:
            raise ValueError("with_interactions needs the same vocabularies; re-index side tables instead")
        return Dataset(interactions, self.item_table, self.user_table, self.kg, dict(self.provenance))
