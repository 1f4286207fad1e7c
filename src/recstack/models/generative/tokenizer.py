"""The item tokenizer interface (`ItemTokenizer`) and the tokenizer registry (`TOKENIZERS`, a
`recstack.registry.Registry`): names -> classes, `build_tokenizer`, and `load_tokenizer`, which
refuses an unregistered class named in a saved file unless trusted.

The interface (every tokenizer, tested by one suite in tests/models/test_semantic_ids.py):

- `fit(embeddings=None, *, interactions=None, item_table=None, options=None) -> self`: each
  tokenizer reads the inputs it needs (item embeddings for the semantic ones; the TRAINING
  interactions for the collaborative ones; the item side table for category ones) and says which
  one is missing; `options` (`FitOptions`) reaches a tokenizer that trains a network.
- `codes_`: int64 `(n_items, L)`, row i the code of item index i. Codes are unique and prefix-free
  (no code is the start of another), so decoding knows where an item ends. Schemes whose codes
  differ in length (Hua's collaborative and hybrid indexing) pad the tail with `PAD = -1`.
- `level_sizes_[l]`: the number of token values level l can take (0 .. size-1). A model's vocabulary
  is their sum; `token_offsets()` maps (level, value) to one flat token id.
- `code_of(item)`, `item_of(code)`, `items_of_prefix(prefix)` and `trie` (a `PrefixTrie` whose
  level-by-level CSR arrays give the allowed next tokens of a whole beam in one call).
- `stats()`: codebook utilisation per level, collision rate, vocabulary size, trie size.
- `save(dir)` / `load(dir)`: config JSON + `.npz` arrays, never a pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Self, Sequence

import numpy as np

from recstack.data.interactions import Interactions
from recstack.models.generative.codes import PAD, TokenizerError
from recstack.models.generative.trie import PrefixTrie
from recstack.models.protocol import (
    ConfigError, ModelConfig, SaveLoad, check_fitted, make_config, read_model_json,
)
from recstack.registry import Registry
from recstack.train.options import FitOptions


class TokenizerConfig(ModelConfig):
    """Settings shared by every tokenizer (the seed)."""


class ItemTokenizer(SaveLoad):
    """Base of every item tokenizer; subclasses implement `fit` and call `_set_codes`."""

    Config: ClassVar[type[ModelConfig]] = TokenizerConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or self.Config()
        self._trie: PrefixTrie | None = None

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        raise NotImplementedError

    # -- fitted state ----------------------------------------------------------------------------
    def _set_codes(self, codes: np.ndarray, level_sizes: Sequence[int], *, n_base_levels: int | None = None,
                   collision_rate: float = 0.0, max_group_size: int = 1) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        if np.any((codes < 0) & (codes != PAD)):
            raise TokenizerError("codes must be non-negative (PAD = -1 only at the tail)")
        if codes.shape[1] > 1 and np.any((codes[:, :-1] == PAD) & (codes[:, 1:] != PAD)):
            raise TokenizerError("PAD (-1) may only fill the tail of a code")
        level_sizes = [int(s) for s in level_sizes]
        if len(level_sizes) != codes.shape[1] or np.any(codes >= np.asarray(level_sizes)[None, :]):
            raise TokenizerError(f"a code value exceeds its level size {level_sizes}")
        trie = PrefixTrie(codes)  # validates uniqueness and prefix-freeness
        self.codes_ = codes
        self.level_sizes_ = level_sizes
        self.n_base_levels_ = int(codes.shape[1] if n_base_levels is None else n_base_levels)
        self.collision_rate_ = float(collision_rate)
        self.max_group_size_ = int(max_group_size)
        self._trie = trie

    @property
    def trie(self) -> PrefixTrie:
        check_fitted(self, "codes_")
        if self._trie is None or self._trie.n_items != len(self.codes_):
            self._trie = PrefixTrie(self.codes_)
        return self._trie

    @property
    def n_items(self) -> int:
        check_fitted(self, "codes_")
        return len(self.codes_)

    @property
    def code_length(self) -> int:
        """L, the longest code (every code for fixed-length schemes)."""
        check_fitted(self, "codes_")
        return int(self.codes_.shape[1])

    def lengths(self) -> np.ndarray:
        check_fitted(self, "codes_")
        return (self.codes_ != PAD).sum(axis=1)

    def code_of(self, item: int) -> tuple[int, ...]:
        """The code of one item index, without padding."""
        check_fitted(self, "codes_")
        if not 0 <= int(item) < len(self.codes_):
            raise TokenizerError(f"item index {item} is out of range (0..{len(self.codes_) - 1})")
        row = self.codes_[int(item)]
        return tuple(int(t) for t in row[row != PAD])

    def item_of(self, code: Sequence[int]) -> int:
        """The item index with exactly this code, or -1 when no item has it."""
        code = [int(t) for t in code]
        node = self.trie.find(code)
        return -1 if node < 0 or not code else int(self.trie.item_at(len(code), np.array([node]))[0])

    def items_of_prefix(self, prefix: Sequence[int]) -> np.ndarray:
        return self.trie.items_of_prefix(prefix)

    def token_offsets(self) -> np.ndarray:
        """Offsets so that (level l, value v) -> flat token `offsets[l] + v`; `offsets[-1]` is the vocabulary size."""
        check_fitted(self, "level_sizes_")
        return np.concatenate([[0], np.cumsum(self.level_sizes_)]).astype(np.int64)

    def stats(self) -> dict[str, Any]:
        """Codebook utilisation per base level, collision rate and the token counts of the scheme."""
        check_fitted(self, "codes_")
        codes, sizes = self.codes_, self.level_sizes_
        used = [int(np.unique(col[col != PAD]).size) for col in codes.T]
        base = self.n_base_levels_
        lengths = self.lengths()
        return {
            "n_items": int(len(codes)),
            "code_length": int(codes.shape[1]),
            "mean_code_length": float(lengths.mean()),
            "level_sizes": list(sizes),
            "vocab_size": int(sum(sizes)),
            "tokens_used": int(sum(used)),
            "utilisation": [used[l] / sizes[l] for l in range(base)],
            "collision_rate": self.collision_rate_,
            "max_items_per_code": self.max_group_size_,
            "trie_nodes": int(self.trie.total_nodes()),
        }


# ---- registry -----------------------------------------------------------------------------------
TOKENIZERS = Registry("item tokenizer", {
    "rqvae": "recstack.models.generative.rqvae:RQVAETokenizer",
    "rkmeans": "recstack.models.generative.semantic_ids:ResidualKMeansTokenizer",
    "random": "recstack.models.generative.item_indexing:RandomIndexing",
    "sequential": "recstack.models.generative.item_indexing:SequentialIndexing",
    "collaborative": "recstack.models.generative.item_indexing:CollaborativeIndexing",
    "semantic": "recstack.models.generative.item_indexing:SemanticIndexing",
    "hybrid": "recstack.models.generative.item_indexing:HybridIndexing",
    "hkmeans": "recstack.models.generative.colarec:HierarchicalKMeansTokenizer",  # ColaRec's GIDs
}, error=ConfigError)


def resolve_tokenizer(name: str) -> type[ItemTokenizer]:
    """A registered tokenizer name or `"package.module:Class"` -> the class."""
    cls = TOKENIZERS.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, ItemTokenizer)):
        raise ConfigError(f"{TOKENIZERS.target(name)!r} is not an ItemTokenizer")
    return cls


def build_tokenizer(name: str, params: dict[str, Any] | None = None) -> ItemTokenizer:
    cls = resolve_tokenizer(name)
    return cls(make_config(cls.Config, params))


def load_tokenizer(path: str | os.PathLike, *, trust: bool = False) -> ItemTokenizer:
    """Load any saved tokenizer; its class, named in `model.json`, must be registered unless `trust`."""
    target = read_model_json(path, "class")["class"]
    TOKENIZERS.resolve_trusted(target, trust=trust, source=str(Path(path) / "model.json"))  # refuses before importing
    return resolve_tokenizer(target).load(path)


__all__ = ["ItemTokenizer", "TOKENIZERS", "TokenizerConfig", "build_tokenizer", "load_tokenizer", "resolve_tokenizer"]
