"""Graph propagation shared by the graph models: the normalised bipartite adjacency of LightGCN
(D^-1/2 A D^-1/2), its torch sparse form, and a sparse @ dense product with a cheap backward."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def normalized_adjacency(matrix: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [R^T, 0]] of a (users x items) matrix R
    (binarised), nodes ordered users then items; zero-degree nodes get empty rows and columns."""
    r = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()  # an explicit zero is no edge
    r.data[:] = 1.0
    adjacency = sp.bmat([[None, r], [r.T, None]], format="csr",
                        dtype=np.float64) if r.nnz else sp.csr_matrix((sum(r.shape),) * 2)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    scale = sp.diags(inv_sqrt)
    normalized = (scale @ adjacency @ scale).tocsr()
    normalized.sort_indices()
    return normalized


def sparse_tensor(matrix: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR matrix as a float32 torch sparse CSR tensor (cpu; modules move it to their device)."""
    matrix = sp.csr_matrix(matrix)
    with warnings.catch_warnings():  # torch says "sparse CSR support is in beta" once per process
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)), size=matrix.shape, check_invariants=True,
        )


class _SymmetricMatmul(torch.autograd.Function):
    """A @ x for a symmetric sparse A: the gradient A^T @ g is A @ g, which spares torch's backward
    for sparse CSR (it transposes A on every call, 5x slower than the product itself on the cpu)."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(matrix)
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        matrix, = ctx.saved_tensors
        return None, matrix @ grad


def symmetric_matmul(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """`matrix @ dense` for a symmetric sparse `matrix` (no gradient for the matrix itself)."""
    return _SymmetricMatmul.apply(matrix, dense)
