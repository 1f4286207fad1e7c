"""Side data keyed by external item id, aligned to a training vocabulary (shared by the models that
read item texts, vectors or tables through `use_dataset` or a setter)."""

from __future__ import annotations

from typing import Any, Mapping, Self

import numpy as np
from pydantic import BaseModel, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError


def rows_for_items(given_ids: np.ndarray, wanted_ids: np.ndarray, *, model: str, what: str) -> np.ndarray:
    """The row of each `wanted_ids` entry in `given_ids` (int64); one error naming the first item
    without side data when any is missing."""
    lookup = {key: row for row, key in enumerate(np.asarray(given_ids).tolist())}
    rows = np.array([lookup.get(key, -1) for key in np.asarray(wanted_ids).tolist()], dtype=np.int64)
    if (rows < 0).any():
        missing = np.asarray(wanted_ids)[rows < 0]
        raise RecstackError(f"{model} has no {what} for {len(missing)} item(s) of the training data, e.g. "
                            f"{missing[0]!r}; give {what} for every item of the item vocabulary")
    return rows


class ModalityFields(BaseModel):
    """Config mixin of the models that read item modalities (`ItemModalityInput`); the model's own
    config names which ones (`modalities`) with its own default."""

    text_encoder: str = "tfidf"  # "tfidf", "minilm" or a local sentence-transformers directory
    tfidf_dim: PositiveInt = 128
    cache_embeddings: bool = True  # recstack's on-disk cache of encoded item texts


class ItemModalityInput:
    """Item modalities (`recstack.data.modalities.ItemModality`, keyed by external item id) as side
    input: given with `set_modalities`, or built by `use_dataset` from the item table and MMRec's
    feature files, as `recstack run` does. Kept across fits and never saved. The config has
    `ModalityFields` and a `modalities` list of names."""

    _modalities: dict | None = None

    def set_modalities(self, modalities: Mapping) -> Self:
        """`{name: recstack.data.modalities.ItemModality}`, keyed by external item id."""
        self._modalities = dict(modalities)
        return self

    def use_dataset(self, dataset: Any) -> Self:
        """Build the configured modalities from the dataset (item table, MMRec feature files)."""
        from recstack.data.modalities import dataset_modalities

        c = self.config  # type: ignore[attr-defined]
        if not c.modalities:
            return self
        return self.set_modalities(dataset_modalities(dataset, list(c.modalities), text_encoder=c.text_encoder,
                                                      tfidf_dim=c.tfidf_dim, cache=c.cache_embeddings, seed=c.seed))

    def modality_features(self, train: Interactions, *, required: str | None = None, who: str | None = None,
                          hint: str = "") -> dict[str, np.ndarray]:
        """Each configured modality's matrix aligned with `train`'s item vocabulary, in config order.
        `required`: why the model needs one, raised when none is configured (None: an empty dict is
        fine); `who` names the model in errors (default its class), `hint` ends the missing-data one."""
        wanted = list(dict.fromkeys(self.config.modalities))  # type: ignore[attr-defined]
        name = who or type(self).__name__
        if not wanted:
            if required is not None:
                raise RecstackError(f"{name} {required}, and `modalities` is empty: name at least one, e.g. "
                                    "modalities: [text] (text, structure, knowledge, or MMRec's image/text files)")
            return {}
        given = self._modalities or {}
        missing = [m for m in wanted if m not in given]
        if missing:
            raise RecstackError(f"{name} needs the item modalities {', '.join(missing)} before fit: call "
                                "model.use_dataset(dataset) (`recstack run` does) or model.set_modalities({...})"
                                + hint)
        return {m: given[m].aligned(train.items) for m in wanted}


class KnowledgeGraphInput:
    """A dataset's knowledge graph as side input (KGAT, DiffKG): `use_dataset` keeps the dataset, and
    `knowledge(train)` links its graph to the training items by item id, with the item-table columns
    named in the config's `item_kg_columns` added as (item, column, value) triples."""

    _dataset: Any = None

    def use_dataset(self, dataset: Any) -> Self:
        """Keep the dataset whose KG (and item table, for `item_kg_columns`) the fit reads."""
        self._dataset = dataset
        return self

    def knowledge(self, train: Interactions) -> tuple[np.ndarray | None, Any]:
        """(item -> entity index per training item, -1 where unlinked; the `KnowledgeGraph`), or
        (None, None) without a graph."""
        name, columns, dataset = type(self).__name__, self.config.item_kg_columns, self._dataset  # type: ignore[attr-defined]
        if dataset is None:
            if columns:
                raise RecstackError(f"{name} item_kg_columns need the item table: call model.use_dataset(dataset) "
                                    "before fit (recstack run does)")
            return None, None
        kg = dataset.kg
        if columns:
            from recstack.data.kg import item_attribute_kg

            kg = item_attribute_kg(dataset.item_table, columns, dataset.interactions.n_items, base=kg)
        if kg is None:
            return None, None
        ids = np.asarray(dataset.interactions.items.ids)
        if len(ids) == train.n_items and np.array_equal(ids, np.asarray(train.items.ids)):
            return kg.item_entity, kg
        lookup = {key: row for row, key in enumerate(ids.tolist())}
        rows = np.array([lookup.get(key, -1) for key in train.items.ids.tolist()], dtype=np.int64)
        if (rows < 0).all():
            raise RecstackError(f"{name}: none of the training items is in the dataset given to use_dataset; "
                                "give it the dataset the split came from")
        return np.where(rows >= 0, kg.item_entity[np.maximum(rows, 0)], -1).astype(np.int64), kg
