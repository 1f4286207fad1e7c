"""Embedding-dimension search shared by DNIS on BPR-MF (`factorization/dnis.py`) and on FM
(`ctr/dnis_fm.py`): ids cut into frequency blocks, and the pruning of searched selection weights
alpha (groups x blocks x dimensions) by a threshold or a parameter budget (Cheng, Shen and Huang,
"Differentiable Neural Input Search for Recommender Systems", arXiv 2006.04466)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def frequency_blocks(counts: np.ndarray, n_blocks: int) -> np.ndarray:
    """Block of each id: ids sorted by descending frequency (ties to the lower index), cut into
    `n_blocks` blocks of (nearly) equal numbers of ids; block 0 holds the most frequent."""
    order = np.lexsort((np.arange(len(counts)), -np.asarray(counts)))
    block = np.empty(len(counts), dtype=np.int64)
    for k, members in enumerate(np.array_split(order, n_blocks)):
        block[members] = k
    return block


def prune_cells(alpha: np.ndarray, block_sizes: np.ndarray, threshold: float, target: float | None,
                column_scale: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask, shaped like `alpha` ((groups, K, d)), of the (group, block, dimension) cells kept.

    With a parameter budget (`target`, a share of all embedding parameters) cells are taken greedily
    in order of |alpha|, each one kept if the rows it costs still fit the budget; many weights end at
    the upper bound 1, so ties go to the larger `column_scale` (the block's embedding column norm),
    then to the lower index.
    """
    magnitude = np.abs(alpha)
    if target is None:
        return magnitude >= threshold
    cost = np.broadcast_to(block_sizes[..., None], alpha.shape).ravel().astype(np.int64)
    scale = np.zeros(magnitude.size) if column_scale is None else -np.asarray(column_scale, dtype=np.float64).ravel()
    order = np.lexsort((np.arange(magnitude.size), scale, -magnitude.ravel()))
    budget, used = target * cost.sum(), 0
    keep = np.zeros(magnitude.size, dtype=bool)
    for cell in order:  # 2 * n_blocks * embedding_size cells, once per fit
        if used + cost[cell] <= budget + 1e-9:
            keep[cell] = True
            used += cost[cell]
    return keep.reshape(alpha.shape)


def block_column_scale(embedding: np.ndarray, block: np.ndarray, n_blocks: int) -> np.ndarray:
    """(K, d) root-mean-square of each embedding column within each block."""
    one_hot = sp.csr_matrix((np.ones(len(block)), (block, np.arange(len(block)))), shape=(n_blocks, len(block)))
    sizes = np.maximum(np.bincount(block, minlength=n_blocks), 1)[:, None]
    return np.sqrt(np.asarray(one_hot @ (embedding.astype(np.float64) ** 2)) / sizes)


__all__ = ["block_column_scale", "frequency_blocks", "prune_cells"]
