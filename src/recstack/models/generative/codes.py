"""The code utilities every item tokenizer shares: the padding value, the tokenizer error, input
checks (`as_embeddings`, `count_items`), combining embedding sources, the collision token
(`disambiguate`) and residual quantisation (`residual_kmeans`, `nearest_codes`).

Collisions: quantisers can give several items one base code. As in TIGER, one extra last token
(0, 1, 2, ... in item-index order within each group) tells them apart; it is appended for every
item so that all codes keep one length. The collision rate is the share of items whose base code an
earlier item already has, 1 - (distinct base codes) / n_items.

Residual k-means is multi-stage vector quantisation (Juang & Gray, ICASSP 1982) with k-means
codebooks, the training-free alternative to an RQ-VAE: k-means on the vectors, then k-means on what
the nearest centroid leaves over, L times.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError

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


def checked_embeddings(embeddings: Any, interactions: Interactions | None = None,
                       item_table: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """`as_embeddings`, checked against the other inputs given (they must index the same items)."""
    x = as_embeddings(embeddings)
    if interactions is not None or item_table:
        count_items(x, interactions, item_table)
    return x


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


EXACT_SVD_ITEMS = 8192  # stable_item_vectors: exact below, randomized SVD above


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


def stable_item_vectors(matrix: sp.spmatrix, rank: int, seed: int) -> np.ndarray:
    """(n_items, rank) collaborative item vectors V * sqrt(S) of the user-item `matrix`, the same on
    every machine up to rounding: float64, an exact eigendecomposition of the item Gram matrix for
    catalogues up to EXACT_SVD_ITEMS (randomized SVD beyond), and each vector's sign fixed so that
    its largest entry is positive (an SVD's signs are arbitrary and differ between LAPACK builds)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    n_items = matrix.shape[1]
    rank = max(1, min(rank, min(matrix.shape) - 1))
    if n_items <= EXACT_SVD_ITEMS:
        values, vectors = np.linalg.eigh((matrix.T @ matrix).toarray())
        top = np.argsort(values)[::-1][:rank]
        singular, vectors = np.sqrt(np.clip(values[top], 0.0, None)), vectors[:, top]
    else:
        from sklearn.utils.extmath import randomized_svd

        _, singular, vt = randomized_svd(matrix, rank, n_iter=7, random_state=seed % 2**32)
        vectors = vt.T
    largest = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[largest, np.arange(vectors.shape[1])])[None, :]
    return vectors * np.sqrt(singular)[None, :]


__all__ = [
    "PAD", "TokenizerError", "as_embeddings", "checked_embeddings", "combine_item_embeddings", "count_items",
    "disambiguate", "nearest_codes", "require_sklearn", "residual_kmeans", "stable_item_vectors",
]
