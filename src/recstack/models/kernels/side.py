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
