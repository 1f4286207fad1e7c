"""Item tokenizers: each item becomes a short tuple of discrete tokens, and a prefix trie over
those tuples is what a generative recommender decodes against.

Semantic IDs come from TIGER (Rajput et al., "Recommender Systems with Generative Retrieval",
NeurIPS 2023): quantise an item embedding into L code levels, coarse to fine, so that similar items
share prefixes; the indexing schemes of Hua et al. ("How to Index Item IDs for Recommendation
Foundation Models", SIGIR-AP 2023) are tokenizers with the same interface (`item_indexing.py`).

The interface (every tokenizer, tested by one suite):

- `fit(embeddings=None, *, interactions=None, item_table=None) -> self`: each tokenizer reads the
  inputs it needs (item embeddings for the semantic ones; the TRAINING interactions for the
  collaborative ones; the item side table for category ones) and says which one is missing.
- `codes_`: int64 `(n_items, L)`, row i the code of item index i. Codes are unique and prefix-free
  (no code is the start of another), so decoding knows where an item ends. Schemes whose codes
  differ in length (Hua's collaborative and hybrid indexing) pad the tail with `PAD = -1`.
- `level_sizes_[l]`: the number of token values level l can take (0 .. size-1). A model's vocabulary
  is their sum; `token_offsets()` maps (level, value) to one flat token id.
- `code_of(item)`, `item_of(code)`, `items_of_prefix(prefix)` and `trie` (a `PrefixTrie` whose
  level-by-level CSR arrays give the allowed next tokens of a whole beam in one call).
- `stats()`: codebook utilisation per level, collision rate, vocabulary size, trie size.
- `save(dir)` / `load(dir)`: config JSON + `.npz` arrays, never a pickle.

Collisions: quantisers can give several items one base code. As in TIGER, one extra last token
(0, 1, 2, ... in item-index order within each group) tells them apart; it is appended for every
item so that all codes keep one length. The collision rate is the share of items whose base code an
earlier item already has, 1 - (distinct base codes) / n_items.

This file holds the interface, the trie, `disambiguate`, `combine_item_embeddings` and residual
k-means (`ResidualKMeansTokenizer`): multi-stage vector quantisation (Juang & Gray, ICASSP 1982)
with k-means codebooks, the training-free alternative to an RQ-VAE: k-means on the vectors, then
k-means on what the nearest centroid leaves over, L times. `rqvae.py` holds the RQ-VAE tokenizer.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping, Self, Sequence

import numpy as np
from pydantic import PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.protocol import (
    ConfigError, ModelConfig, SaveLoad, check_fitted, make_config, read_model_json,
)
from recstack.registry import Registry

PAD = -1


class TokenizerError(RecstackError):
    """A tokenizer cannot be fitted as asked (missing input, bad embeddings, missing package)."""


# ---- helpers ------------------------------------------------------------------------------------
def require_sklearn(what: str):
    try:
        return importlib.import_module("sklearn.cluster")
    except ImportError:
        raise TokenizerError(f"{what} needs scikit-learn, which is not installed; "
                             "install it with: pip install scikit-learn  (or pip install 'recstack[text]')") from None


def as_embeddings(embeddings: Any, what: str = "item embeddings") -> np.ndarray:
    """A finite float32 `(n_items, d)` array, or a `TokenizerError` saying what is wrong."""
    if embeddings is None:
        raise TokenizerError(f"{what} are required: pass fit(embeddings=...) with one row per item "
                             "(e.g. recstack.data.features.encode_items(dataset), or a fitted model's item_factors_)")
    array = np.asarray(getattr(embeddings, "item_factors_", embeddings), dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise TokenizerError(f"{what} must be a 2-D array (n_items, dim), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise TokenizerError(f"{what} contain NaN or infinite values; fix or drop those rows first")
    return np.ascontiguousarray(array)


def count_items(embeddings: Any = None, interactions: Interactions | None = None,
                item_table: Mapping[str, np.ndarray] | None = None) -> int:
    """The catalogue size from whichever input is given (they must agree)."""
    sizes = {}
    if embeddings is not None:
        sizes["embeddings"] = len(np.asarray(getattr(embeddings, "item_factors_", embeddings)))
    if interactions is not None:
        sizes["interactions"] = interactions.n_items
    if item_table:
        sizes["item_table"] = len(next(iter(item_table.values())))
    if not sizes:
        raise TokenizerError("the tokenizer needs the catalogue: pass embeddings, interactions or item_table to fit")
    if len(set(sizes.values())) > 1:
        raise TokenizerError(f"inputs disagree on the number of items: {sizes}; all must index the same item vocabulary")
    return next(iter(sizes.values()))


def combine_item_embeddings(*parts: Any, weights: Sequence[float] | None = None) -> np.ndarray:
    """Concatenate item embeddings from several sources (e.g. language + collaborative).

    Each part is an `(n_items, d_k)` array or a fitted model with `item_factors_` (BPR-MF,
    LightGCN, ...). Rows of each part are L2-normalised first, so that no source dominates by
    scale, then multiplied by its weight (default 1). Zero rows (cold items) stay zero.
    """
    if not parts:
        raise TokenizerError("combine_item_embeddings needs at least one part")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(weights) != len(parts):
        raise TokenizerError(f"got {len(weights)} weights for {len(parts)} parts")
    blocks = []
    for k, (part, weight) in enumerate(zip(parts, weights)):
        block = as_embeddings(part, f"part {k} of the item embeddings")
        if blocks and len(block) != len(blocks[0]):
            raise TokenizerError(f"part {k} has {len(block)} rows, part 0 has {len(blocks[0])}; "
                                 "every part must have one row per item of the same vocabulary")
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        blocks.append(block / np.where(norms > 0, norms, 1.0) * float(weight))
    return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def disambiguate(base: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Append one token that numbers items sharing a base code (0, 1, ... in item order).

    Returns (codes with one more column, collision rate, largest group size).
    """
    base = np.asarray(base, dtype=np.int64)
    n = len(base)
    order = np.lexsort(base.T[::-1])  # first column primary; stable, so ties keep item order
    ordered = base[order]
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    extra = np.empty(n, dtype=np.int64)
    extra[order] = np.arange(n) - group_start
    n_groups = int(new_group.sum())
    largest = int(extra.max()) + 1 if n else 0
    return np.concatenate([base, extra[:, None]], axis=1), 1.0 - n_groups / max(n, 1), largest


def nearest_codes(x: np.ndarray, codebooks: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Residual quantisation: at each level the nearest codeword to what the earlier levels left."""
    x = np.asarray(x, dtype=np.float32)
    n_levels = len(codebooks)
    codes = np.empty((len(x), n_levels), dtype=np.int64)
    squared = [np.einsum("kd,kd->k", book, book) for book in codebooks]
    for start in range(0, len(x), chunk):
        residual = x[start:start + chunk].copy()
        for level, book in enumerate(codebooks):
            distance = squared[level][None, :] - 2.0 * residual @ book.T
            index = distance.argmin(axis=1)  # ties go to the lower code
            codes[start:start + chunk, level] = index
            residual -= book[index]
    return codes


def residual_kmeans(x: np.ndarray, n_levels: int, codebook_size: int, seed: int,
                    n_init: int = 1, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """k-means codebooks level by level on the residuals; returns (codebooks (L, K, d), codes (n, L)).

    A level with fewer vectors than `codebook_size` fills only that many codewords; the rest stay
    zero (and unused). Empty clusters are re-seeded by scikit-learn's k-means from far points.
    """
    cluster = require_sklearn("residual k-means")
    x = np.asarray(x, dtype=np.float32)
    residual = x.copy()
    books = np.zeros((n_levels, codebook_size, x.shape[1]), dtype=np.float32)
    codes = np.empty((len(x), n_levels), dtype=np.int64)
    for level in range(n_levels):
        k = min(codebook_size, len(x))
        with warnings.catch_warnings():  # "fewer distinct points than clusters" is expected at fine levels
            warnings.simplefilter("ignore")
            km = cluster.KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter,
                                random_state=(seed + 7919 * level) % 2**32).fit(residual)
        books[level, :k] = km.cluster_centers_
        codes[:, level] = km.labels_
        residual = residual - books[level, codes[:, level]]
    return books, codes


# ---- the prefix trie ----------------------------------------------------------------------------
class PrefixTrie:
    """All codes as a tree stored level by level in CSR arrays.

    Nodes at depth d (d tokens decoded; the root is node 0 at depth 0) are numbered in the
    lexicographic order of their prefixes. For constrained beam search:

    - `allowed_mask(depth, nodes, size)`: bool `(B, size)`, the tokens each beam may emit next;
    - `step(depth, nodes, tokens)`: the child nodes at depth + 1 (-1 where a token is not allowed);
    - `item_at(depth, nodes)`: the item whose code ends at that node, else -1.
    """

    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise TokenizerError(f"codes must be a 2-D array (n_items, L), got shape {codes.shape}")
        n, depth = codes.shape
        lengths = (codes != PAD).sum(axis=1)
        if n and lengths.min() < 1:
            raise TokenizerError(f"item {int(np.argmin(lengths))} has an empty code")
        order = np.lexsort(codes.T[::-1])
        rows = codes[order]
        row_length = lengths[order]
        self.depth, self.n_items = depth, n
        self._order = order
        self._stride = int(codes.max()) + 2 if n else 1
        self._indptr: list[np.ndarray] = []
        self._token: list[np.ndarray] = []
        self._key: list[np.ndarray] = []
        self._start: list[np.ndarray] = []
        self._stop: list[np.ndarray] = []
        self._item: list[np.ndarray] = []
        parent = np.zeros(n, dtype=np.int64)  # node of each sorted row at the current depth
        n_nodes = 1
        for d in range(depth):
            active = np.flatnonzero(row_length > d)
            token = rows[active, d]
            above = parent[active]
            new = np.ones(len(active), dtype=bool)
            if len(active) > 1:
                new[1:] = (above[1:] != above[:-1]) | (token[1:] != token[:-1])
            child = np.cumsum(new) - 1
            heads = np.flatnonzero(new)
            tails = np.append(heads[1:], len(active)) - 1
            counts = np.bincount(above[new], minlength=n_nodes)
            self._indptr.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            self._token.append(token[new])
            self._key.append(above[new] * self._stride + token[new])
            self._start.append(active[heads])
            self._stop.append(active[tails] + 1)
            item = np.full(len(heads), -1, dtype=np.int64)
            ends = active[row_length[active] == d + 1]
            end_nodes = child[row_length[active] == d + 1]
            item[end_nodes] = order[ends]
            self._item.append(item)
            size = self._stop[-1][end_nodes] - self._start[-1][end_nodes]
            if np.any(size != 1):
                bad = order[ends[np.flatnonzero(size != 1)[0]]]
                raise TokenizerError(f"the code of item {int(bad)} ({codes[bad][codes[bad] != PAD].tolist()}) is "
                                     "shared with another item or is the start of another item's code; "
                                     "codes must be unique and prefix-free")
            new_parent = np.full(n, -1, dtype=np.int64)
            new_parent[active] = child
            parent = new_parent
            n_nodes = len(heads)

    def n_nodes(self, depth: int) -> int:
        """Number of distinct prefixes of length `depth` (1 at depth 0)."""
        return 1 if depth == 0 else len(self._token[depth - 1])

    def children(self, depth: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, child nodes at depth + 1) of one node, tokens ascending."""
        if depth >= self.depth:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        lo, hi = self._indptr[depth][node], self._indptr[depth][node + 1]
        return self._token[depth][lo:hi], np.arange(lo, hi, dtype=np.int64)

    def step(self, depth: int, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Child node of each (node, token) at depth + 1; -1 where the token is not a child (or node is -1)."""
        nodes, tokens = np.asarray(nodes, dtype=np.int64), np.asarray(tokens, dtype=np.int64)
        out = np.full(np.broadcast(nodes, tokens).shape, -1, dtype=np.int64)
        if depth >= self.depth:
            return out
        nodes, tokens = np.broadcast_arrays(nodes, tokens)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self._stride)
        keys = self._key[depth]
        query = nodes[ok] * self._stride + tokens[ok]
        where = np.searchsorted(keys, query)
        found = where < len(keys)
        found[found] = keys[where[found]] == query[found]
        result = np.full(len(query), -1, dtype=np.int64)
        result[found] = where[found]
        out[ok] = result
        return out

    def allowed_mask(self, depth: int, nodes: np.ndarray, size: int) -> np.ndarray:
        """bool `(len(nodes), size)`: which tokens each node may be followed by (none for node -1)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        mask = np.zeros((len(nodes), size), dtype=bool)
        if depth >= self.depth:
            return mask
        indptr = self._indptr[depth]
        valid = np.flatnonzero(nodes >= 0)
        if not len(valid):
            return mask
        lo, hi = indptr[nodes[valid]], indptr[nodes[valid] + 1]
        counts = hi - lo
        beam = np.repeat(valid, counts)
        flat = np.repeat(lo - np.cumsum(np.append(0, counts[:-1])), counts) + np.arange(counts.sum())
        tokens = self._token[depth][flat]
        keep = tokens < size
        mask[beam[keep], tokens[keep]] = True
        return mask

    def item_at(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        """Item whose code ends at each node of `depth` (-1 where none does)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        if depth == 0:
            return np.full(nodes.shape, -1, dtype=np.int64)
        items = self._item[depth - 1]
        out = np.full(nodes.shape, -1, dtype=np.int64)
        ok = nodes >= 0
        out[ok] = items[nodes[ok]]
        return out

    def find(self, prefix: Sequence[int]) -> int:
        """The node of `prefix` at depth len(prefix), or -1 when no code starts with it."""
        node = 0
        for d, token in enumerate(prefix):
            if d >= self.depth:
                return -1
            node = int(self.step(d, np.array([node]), np.array([int(token)]))[0])
            if node < 0:
                return -1
        return node

    def items_of_prefix(self, prefix: Sequence[int]) -> np.ndarray:
        """Items whose codes start with `prefix`, in code order (all items for an empty prefix)."""
        prefix = list(prefix)
        if not prefix:
            return self._order.copy()
        node = self.find(prefix)
        if node < 0:
            return np.empty(0, dtype=np.int64)
        d = len(prefix) - 1
        return self._order[self._start[d][node]:self._stop[d][node]].copy()

    def next_tokens(self, prefix: Sequence[int]) -> np.ndarray:
        """Tokens that may follow `prefix` (ascending); empty when the prefix is a full code or invalid."""
        node = self.find(prefix)
        if node < 0:
            return np.empty(0, dtype=np.int64)
        return self.children(len(prefix), node)[0].copy()

    def total_nodes(self) -> int:
        return 1 + sum(len(t) for t in self._token)


# ---- the tokenizer interface --------------------------------------------------------------------
class TokenizerConfig(ModelConfig):
    """Settings shared by every tokenizer (the seed)."""


class ItemTokenizer(SaveLoad):
    """Base of every item tokenizer; subclasses implement `fit` and call `_set_codes`."""

    Config: ClassVar[type[ModelConfig]] = TokenizerConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or self.Config()
        self._trie: PrefixTrie | None = None

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None) -> Self:
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


# ---- residual k-means ---------------------------------------------------------------------------
class ResidualKMeansConfig(ModelConfig):
    n_levels: PositiveInt = 3
    codebook_size: PositiveInt = 256
    standardize: bool = False  # z-score each embedding dimension before clustering
    n_init: PositiveInt = 1  # k-means restarts per level (k-means++ seeding)
    max_iter: PositiveInt = 100


class ResidualKMeansTokenizer(ItemTokenizer):
    """Residual k-means (RQ-KMeans) semantic IDs: L levels of `codebook_size` centroids + one collision token.

    Training-free and fast, but it spends fine levels badly when the first level is large for the
    catalogue: items alone (or nearly) in a first-level cluster leave near-zero residuals that the
    later levels map to the same codeword. On ml-100k MiniLM embeddings 22% of items collide at
    3 x 256 and 9.3% at 3 x 64, against 1.2% and 2.1% for the RQ-VAE (`benchmarks/semantic_ids.py`).
    """

    Config = ResidualKMeansConfig

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None) -> Self:
        c = self.config
        x = as_embeddings(embeddings)
        if interactions is not None or item_table:
            count_items(x, interactions, item_table)
        self.mean_ = x.mean(axis=0) if c.standardize else np.zeros(x.shape[1], dtype=np.float32)
        self.scale_ = (x.std(axis=0) + 1e-8) if c.standardize else np.ones(x.shape[1], dtype=np.float32)
        books, base = residual_kmeans((x - self.mean_) / self.scale_, c.n_levels, c.codebook_size, c.seed,
                                      n_init=c.n_init, max_iter=c.max_iter)
        self.codebooks_ = books
        codes, rate, largest = disambiguate(base)
        self._set_codes(codes, [c.codebook_size] * c.n_levels + [largest], n_base_levels=c.n_levels,
                        collision_rate=rate, max_group_size=largest)
        return self

    def assign(self, embeddings: Any) -> np.ndarray:
        """Base codes `(n, n_levels)` of (possibly new) item embeddings, without the collision token."""
        check_fitted(self, "codebooks_")
        x = as_embeddings(embeddings)
        if x.shape[1] != self.codebooks_.shape[2]:
            raise TokenizerError(f"embeddings have {x.shape[1]} dimensions, the tokenizer was fitted on "
                                 f"{self.codebooks_.shape[2]}")
        return nearest_codes((x - self.mean_) / self.scale_, self.codebooks_)


# ---- registry -----------------------------------------------------------------------------------
TOKENIZERS = Registry("item tokenizer", {
    "rqvae": "recstack.models.generative.rqvae:RQVAETokenizer",
    "rkmeans": "recstack.models.generative.semantic_ids:ResidualKMeansTokenizer",
    "random": "recstack.models.generative.item_indexing:RandomIndexing",
    "sequential": "recstack.models.generative.item_indexing:SequentialIndexing",
    "collaborative": "recstack.models.generative.item_indexing:CollaborativeIndexing",
    "semantic": "recstack.models.generative.item_indexing:SemanticIndexing",
    "hybrid": "recstack.models.generative.item_indexing:HybridIndexing",
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


__all__ = [
    "PAD", "ItemTokenizer", "PrefixTrie", "ResidualKMeansTokenizer", "TOKENIZERS", "TokenizerError",
    "as_embeddings", "build_tokenizer", "combine_item_embeddings", "count_items", "disambiguate",
    "load_tokenizer", "nearest_codes", "residual_kmeans", "resolve_tokenizer",
]
