"""The item indexing schemes of Hua et al., "How to Index Item IDs for Recommendation Foundation
Models" (SIGIR-AP 2023; code: the OpenP5 / LLM-RecSys-ID repositories), as item tokenizers with
the interface of `semantic_ids.ItemTokenizer`.

- `RandomIndexing` (RID): a random number per item, written as `base`-ary digits (fixed width),
  one token per digit, as a language model's tokenizer splits "1274" into digit pieces.
  `base=None` gives every item its own single token (Hua's IID, independent indexing).
- `SequentialIndexing` (SID): consecutive numbers in order of first appearance when the users'
  time-ordered training sequences are read one user after another, so items consumed together
  get numbers, and digit prefixes, close together. Items never seen in training come last.
- `CollaborativeIndexing` (CID): recursive spectral clustering of the item co-occurrence graph
  (A_ij = number of training users who interacted with both i and j): split the catalogue into
  `n_clusters` clusters, split again every cluster larger than `max_cluster_size`, and end each
  code with the item's position in its final cluster. Codes differ in length (tail `PAD`).
  Spectral clustering is scikit-learn's on the precomputed affinity with `cluster_qr` labels,
  as in the reference code; items without any co-occurrence are dealt round-robin.
- `SemanticIndexing` (SemID, content-based): the item's categories from a side-table column
  (ml-100k: genres "A|B"), ordered from the most to the least frequent category in the catalogue
  so that broad categories come first, cut to `depth` levels and padded with a "none" value, plus
  one collision token. Hua et al. read Amazon's category paths; flat multi-label categories are
  turned into a path by that frequency order.
- `HybridIndexing` (HID): the category prefix followed by the collaborative code (or the other
  way round, `order="collaborative_first"`); the collaborative part already makes codes unique.

Every token is a (level, value) pair: a level's values are that position's digits, cluster labels,
categories or collision numbers. Random and sequential codes are unique by construction; the
collaborative part is unique through its final position token.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Mapping, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.generative.semantic_ids import (
    PAD,
    ItemTokenizer,
    TokenizerError,
    count_items,
    disambiguate,
    require_sklearn,
)
from recstack.models.protocol import ModelConfig
from recstack.train.options import FitOptions


# ---- number-based schemes -----------------------------------------------------------------------
def digits(numbers: np.ndarray, base: int | None, n: int) -> tuple[np.ndarray, list[int]]:
    """Numbers 0..n-1 as fixed-width `base`-ary digits, most significant first; (codes, level sizes)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if base is None:
        return numbers[:, None].copy(), [max(n, 1)]
    width = 1
    while base ** width < n:
        width += 1
    powers = base ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (numbers[:, None] // powers[None, :]) % base, [base] * width


class NumberIndexingConfig(ModelConfig):
    base: int | None = Field(default=10, ge=2)  # None: one token per item (independent indexing)


class RandomIndexing(ItemTokenizer):
    """RID: a random permutation of 0..n-1 written in `base`-ary digits."""

    Config = NumberIndexingConfig

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        n = count_items(embeddings, interactions, item_table)
        self.numbers_ = np.random.default_rng(self.config.seed).permutation(n).astype(np.int64)
        codes, sizes = digits(self.numbers_, self.config.base, n)
        self._set_codes(codes, sizes)
        return self


class SequentialIndexing(ItemTokenizer):
    """SID: numbers by first appearance in the users' time-ordered training sequences, in `base`-ary digits."""

    Config = NumberIndexingConfig

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        if interactions is None:
            raise TokenizerError("sequential indexing reads the users' sequences: pass fit(interactions=train)")
        n = count_items(embeddings, interactions, item_table)
        # Interactions are sorted by (user, time, source order): the log is the concatenated sequences
        seen, first = np.unique(interactions.item, return_index=True)
        ordered = seen[np.argsort(first, kind="stable")]
        unseen = np.setdiff1d(np.arange(n), seen)
        numbers = np.empty(n, dtype=np.int64)
        numbers[np.concatenate([ordered, unseen]).astype(np.int64)] = np.arange(n)
        self.numbers_ = numbers
        codes, sizes = digits(numbers, self.config.base, n)
        self._set_codes(codes, sizes)
        return self


# ---- collaborative indexing ---------------------------------------------------------------------
class ClusterFields(ModelConfig):
    n_clusters: int = Field(default=20, ge=2)  # N: clusters per split
    max_cluster_size: PositiveInt = 100  # M: clusters larger than this are split again


def cooccurrence(interactions: Interactions) -> sp.csr_matrix:
    """Item x item counts of users who interacted with both (zero diagonal)."""
    matrix = interactions.matrix().astype(np.float64)
    graph = (matrix.T @ matrix).tocsr()
    graph.setdiag(0.0)
    graph.eliminate_zeros()
    return graph


def _spectral_labels(graph: sp.csr_matrix, n_clusters: int, seed: int) -> np.ndarray:
    n = graph.shape[0]
    labels = np.empty(n, dtype=np.int64)
    linked = np.asarray(graph.sum(axis=1)).ravel() > 0
    alone = np.flatnonzero(~linked)
    labels[alone] = np.arange(len(alone)) % n_clusters  # no co-occurrence signal: deal them evenly
    if linked.sum() > n_clusters:
        cluster = require_sklearn("collaborative indexing")
        sub = graph[linked][:, linked]
        with warnings.catch_warnings():  # "graph is not fully connected" is informative only
            warnings.simplefilter("ignore")
            model = cluster.SpectralClustering(n_clusters=n_clusters, affinity="precomputed",
                                               assign_labels="cluster_qr", random_state=seed % 2**32)
            labels[linked] = model.fit(sub).labels_
    else:
        labels[linked] = np.arange(int(linked.sum())) % n_clusters
    if len(np.unique(labels)) < 2:  # never loop on a cluster that spectral clustering cannot split
        labels = np.arange(n) * n_clusters // n
    return labels


def collaborative_codes(graph: sp.csr_matrix, n_clusters: int, max_cluster_size: int, seed: int) -> np.ndarray:
    """Hua et al.'s recursive spectral clustering; codes padded with PAD, leaf position last."""
    n = graph.shape[0]
    paths: list[list[int]] = [[] for _ in range(n)]
    pending = [np.arange(n)]
    while pending:
        members = pending.pop()
        if len(members) <= max_cluster_size:
            for position, item in enumerate(members):
                paths[item].append(position)
            continue
        labels = _spectral_labels(graph[members][:, members], n_clusters, seed)
        for label in np.unique(labels)[::-1]:  # stack: smallest label processed first
            chosen = members[labels == label]
            for item in chosen:
                paths[item].append(int(label))
            pending.append(chosen)
    width = max(len(p) for p in paths)
    codes = np.full((n, width), PAD, dtype=np.int64)
    for item, path in enumerate(paths):
        codes[item, :len(path)] = path
    return codes


def _level_sizes(codes: np.ndarray) -> list[int]:
    return [int(col[col != PAD].max()) + 1 for col in codes.T]


class CollaborativeIndexing(ItemTokenizer):
    """CID: recursive spectral clustering of the training co-occurrence graph (Hua et al.)."""

    Config = ClusterFields

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        if interactions is None:
            raise TokenizerError("collaborative indexing clusters the co-occurrence graph: pass fit(interactions=train)")
        count_items(embeddings, interactions, item_table)
        c = self.config
        codes = collaborative_codes(cooccurrence(interactions), c.n_clusters, c.max_cluster_size, c.seed)
        self._set_codes(codes, _level_sizes(codes))
        return self


# ---- category (content) indexing ----------------------------------------------------------------
class CategoryFields(ModelConfig):
    column: str = "genres"
    separator: str = "|"  # multi-valued cells "A|B"; list-valued cells are read as they are
    depth: PositiveInt = 3  # category levels kept (most frequent category first)


def category_paths(item_table: Mapping[str, np.ndarray] | None, column: str, separator: str,
                   depth: int) -> tuple[np.ndarray, list[str]]:
    """(paths (n, depth) of category indices, NONE = len(categories) pads; category names by frequency)."""
    if not item_table:
        raise TokenizerError("category indexing reads item categories: pass fit(item_table=dataset.item_table)")
    if column not in item_table:
        raise TokenizerError(f"item column {column!r} not found; available: {', '.join(item_table)}. "
                             "Set column= to the item table's category column")
    cells = []
    for value in item_table[column]:
        if isinstance(value, (list, tuple, np.ndarray)):
            names = [str(v).strip() for v in value]
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            names = []
        else:
            names = str(value).split(separator) if separator else [str(value)]
        cells.append([name.strip() for name in names if name.strip()])
    counts: dict[str, int] = {}
    for names in cells:
        for name in dict.fromkeys(names):
            counts[name] = counts.get(name, 0) + 1
    categories = sorted(counts, key=lambda name: (-counts[name], name))
    rank = {name: i for i, name in enumerate(categories)}
    paths = np.full((len(cells), depth), len(categories), dtype=np.int64)
    for item, names in enumerate(cells):
        ordered = sorted({rank[name] for name in names})[:depth]
        paths[item, :len(ordered)] = ordered
    return paths, categories


class SemanticIndexing(ItemTokenizer):
    """SemID: the item's categories, most frequent first, then a collision token (Hua et al.'s content-based IDs)."""

    Config = CategoryFields

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        c = self.config
        paths, categories = category_paths(item_table, c.column, c.separator, c.depth)
        count_items(embeddings, interactions, item_table)
        self.categories_ = categories
        codes, rate, largest = disambiguate(paths)
        self._set_codes(codes, [len(categories) + 1] * c.depth + [largest], n_base_levels=c.depth,
                        collision_rate=rate, max_group_size=largest)
        return self


class HybridConfig(CategoryFields, ClusterFields):
    depth: PositiveInt = 1  # the broad category, then the collaborative code
    order: Literal["semantic_first", "collaborative_first"] = "semantic_first"


class HybridIndexing(ItemTokenizer):
    """HID: category prefix + collaborative code (or collaborative first); unique through the collaborative part."""

    Config = HybridConfig

    def fit(self, embeddings: Any = None, *, interactions: Interactions | None = None,
            item_table: Mapping[str, np.ndarray] | None = None, options: FitOptions | None = None) -> Self:
        c = self.config
        if interactions is None:
            raise TokenizerError("hybrid indexing needs the co-occurrence graph: "
                                 "pass fit(interactions=train, item_table=...)")
        paths, categories = category_paths(item_table, c.column, c.separator, c.depth)
        n = count_items(embeddings, interactions, item_table)
        collaborative = collaborative_codes(cooccurrence(interactions), c.n_clusters, c.max_cluster_size, c.seed)
        codes = np.full((n, c.depth + collaborative.shape[1]), PAD, dtype=np.int64)
        if c.order == "semantic_first":
            codes[:, :c.depth] = paths
            codes[:, c.depth:] = collaborative
        else:
            codes[:, :collaborative.shape[1]] = collaborative
            length = (collaborative != PAD).sum(axis=1)
            rows = np.arange(n)
            for level in range(c.depth):
                codes[rows, length + level] = paths[:, level]
        self.categories_ = categories
        self._set_codes(codes, _level_sizes(codes))
        return self
