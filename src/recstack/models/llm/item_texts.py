"""What a recommender that prompts an LLM about items needs before `fit`: the items' texts and the
language model behind the answer cache. Shared by RLMRec and LLMRec."""

from __future__ import annotations

from pathlib import Path
from typing import Self, Sequence

import numpy as np

from recstack.data.dataset import Dataset
from recstack.errors import RecstackError


class ItemTextsAndLLM:
    """Mixin: `set_item_texts` / `use_dataset` give the item texts, `use_language_model` / `language_model`
    the LLM. The model's config has `llm` (a named model, a path, or "none") and `llm_cache`. Side data
    given before fit is kept by fit and never saved."""

    def _init_item_texts(self) -> None:
        self._item_ids: np.ndarray | None = None
        self._item_texts: np.ndarray | None = None
        self.lm = None  # the language model, built at the first fit that needs it and kept (weights load once)

    def set_item_texts(self, item_ids: Sequence | np.ndarray, texts: Sequence[str] | np.ndarray) -> Self:
        """Item texts ("Title (year). Genres: ..."), entry r for the external item id `item_ids[r]`."""
        ids, texts = np.asarray(item_ids), np.asarray([str(t) for t in texts], dtype=object)
        if ids.ndim != 1 or len(ids) != len(texts):
            raise RecstackError(f"{type(self).__name__} item texts need one text per item id; got {len(ids)} ids "
                                f"and {len(texts)} texts")
        self._item_ids, self._item_texts = ids, texts
        return self

    def use_dataset(self, dataset: Dataset) -> Self:
        """The dataset's item texts (`recstack.data.features.item_texts`); `recstack run` calls this."""
        from recstack.data.features import item_texts

        if not dataset.item_table:
            raise RecstackError(
                f"{type(self).__name__} needs item texts for its prompts, but dataset {dataset.name!r} has no item "
                "side table (titles etc.); load data with item metadata (e.g. ml-100k), or give texts with "
                "model.set_item_texts(item_ids, texts)")
        return self.set_item_texts(dataset.interactions.items.ids, item_texts(dataset))

    def use_language_model(self, lm) -> Self:
        """Ask `lm` (any `recstack.llm` backend, e.g. an experiment's `CachedLM`) instead of building one from
        `llm`; `llm: "none"` still means no LLM."""
        self.lm = lm
        return self

    def language_model(self):
        """The LLM behind the answer cache; None for `llm: "none"`."""
        c = self.config
        if c.llm == "none":
            return None
        if self.lm is None:
            from recstack.data.datasets import data_home
            from recstack.llm import CachedLM, LocalLM

            path = Path(c.llm_cache).expanduser() if c.llm_cache else data_home() / "llm" / "answers.sqlite"
            self.lm = CachedLM(LocalLM(c.llm), path)
        return self.lm
