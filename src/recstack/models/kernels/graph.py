"""Graph propagation shared by the graph models: the frozen kNN item-item graph of item content
(FREEDOM, LIRDRec), the normalised bipartite adjacency of LightGCN
(D^-1/2 A D^-1/2), its torch sparse form, a sparse @ dense product with a cheap backward, the BPR
terms on propagated embeddings, and the export and scoring of propagated factors."""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.scoring import DotProductScores, dot_scores
from recstack.models.protocol import ScoresTrainedUsers, check_fitted
from recstack.train.fields import TrainingFields
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import pair_batches


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


def layer_mean(adjacency: torch.Tensor, layer: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN's final embeddings: the mean of E^(0) = `layer` and E^(k+1) = A_hat E^(k), k < K."""
    total = layer
    for _ in range(n_layers):
        layer = symmetric_matmul(adjacency, layer)
        total = total + layer
    return total / (n_layers + 1)


# ---- frozen item-item kNN graphs of item content (FREEDOM, LIRDRec) --------------------------------------
def knn_graph(features: np.ndarray, k: int) -> sp.csr_matrix:
    """Row i: the k items most cosine-similar to item i (itself included, ties to the lower index),
    normalised D^-1/2 A D^-1/2 with D the row degrees (every value 1/k, as the reference)."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    n = len(x)
    k = min(k, n)
    columns = np.empty((n, k), dtype=np.int64)
    block = max(1, (1 << 23) // max(n, 1))  # 64 MB of similarities at a time
    for start in range(0, n, block):
        similarity = -np.round(x[start:start + block] @ x.T, 9)  # rounding makes equal vectors exact ties
        if n <= 8192:  # a stable sort: ties go to the lower index on every machine
            columns[start:start + block] = np.argsort(similarity, axis=1, kind="stable")[:, :k]
        else:  # large catalogues: partition first, then order the k found
            top = np.argpartition(similarity, k - 1, axis=1)[:, :k]
            columns[start:start + block] = np.take_along_axis(
                top, np.argsort(np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable"), axis=1)
    rows = np.repeat(np.arange(n), k)
    adjacency = sp.csr_matrix((np.ones(n * k), (rows, columns.ravel())), shape=(n, n))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    out = (sp.diags(inv_sqrt) @ adjacency @ sp.diags(inv_sqrt)).tocsr()
    out.sort_indices()
    return out


def modality_graph(features: Mapping[str, np.ndarray], k: int, weights: Mapping[str, float] | None = None, *,
                   model: str = "FREEDOM") -> sp.csr_matrix | None:
    """sum_m w_m S_m over the modalities (weights normalised to sum 1); None without modalities."""
    names = list(features)
    if not names:
        return None
    if weights is None:
        weights = {"image": 0.1, "text": 0.9} if sorted(names) == ["image", "text"] else {m: 1.0 for m in names}
    unknown = [m for m in names if m not in weights]
    if unknown:
        raise RecstackError(f"{model} graph_weights name {', '.join(weights)} but not {', '.join(unknown)}; "
                            "give a weight for every modality in `modalities`")
    total = sum(float(weights[m]) for m in names)
    if total <= 0:
        raise RecstackError(f"{model} graph_weights must not all be zero")
    return sum(float(weights[m]) / total * knn_graph(features[m], k) for m in names).tocsr()


class _DirectedMatmul(torch.autograd.Function):
    """S @ x for a fixed sparse S whose transpose is given (S is not symmetric: kNN is directed)."""

    @staticmethod
    def forward(ctx, matrix, transposed, dense):
        ctx.save_for_backward(transposed)
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad):
        transposed, = ctx.saved_tensors
        return None, None, transposed @ grad


def directed_matmul(matrix: torch.Tensor, transposed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """`matrix @ dense` for a fixed sparse `matrix` whose transpose `transposed` is given."""
    return _DirectedMatmul.apply(matrix, transposed, dense)


class LightGCNFields(TrainingFields):
    """LightGCN's config fields and defaults (its training defaults override `TrainingFields`'), shared
    by LightGCN's config and the configs of models on its backbone (RLMRec)."""

    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 3  # K propagation layers; 0 is plain matrix factorisation
    learning_rate: PositiveFloat = 5e-3
    reg: NonNegativeFloat = 5e-4  # times the batch's squared layer-0 embedding norms per example
    epochs: PositiveInt = 300  # a maximum: early stopping usually ends training before
    batch_size: PositiveInt = 2048
    n_negatives: PositiveInt = 1
    init_std: PositiveFloat = 0.1


class LightGCNNet(torch.nn.Module):
    """LightGCN's trainable part: free user and item embeddings E^(0) (users, then items) and the
    normalised graph; `propagate` is the layer mean. Shared by LightGCN and the models built on its
    backbone (SimGCL, RLMRec), which add their own losses and parts."""

    def __init__(self, adjacency: torch.Tensor, n_users: int, n_items: int, embedding_size: int,
                 n_layers: int, init_std: float) -> None:
        super().__init__()
        self.n_users, self.n_layers = n_users, n_layers
        self.embedding = torch.nn.Embedding(n_users + n_items, embedding_size)  # users, then items
        torch.nn.init.normal_(self.embedding.weight, std=init_std)
        self.register_buffer("adjacency", adjacency, persistent=False)

    def propagate(self) -> torch.Tensor:
        """(n_users + n_items, d): the mean of layers 0..K, one sparse @ dense product per layer."""
        return layer_mean(self.adjacency, self.embedding.weight, self.n_layers)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            final = self.propagate().to("cpu", torch.float32).numpy().copy()
        return final[:self.n_users], final[self.n_users:]


def triple_scores(final: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                  n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """<e_u, e_i> (B,) and <e_u, e_j> (B, n_negatives) from final embeddings (users, then items)."""
    e_u = gather_rows(final, users)
    e_i, e_j = gather_rows(final, n_users + pos), gather_rows(final, n_users + neg)  # e_j: (B, n_neg, d)
    return (e_u * e_i).sum(-1), (e_u.unsqueeze(1) * e_j).sum(-1)


def graph_bpr_loss(final: torch.Tensor, ego: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                   neg: torch.Tensor, n_users: int, reg: float) -> torch.Tensor:
    """BPR on the final embeddings plus reg * the batch's squared layer-0 (`ego`) norms per example."""
    pos_scores, neg_scores = triple_scores(final, users, pos, neg, n_users)
    penalty = l2_penalty(gather_rows(ego, users), gather_rows(ego, n_users + pos), gather_rows(ego, n_users + neg))
    return bpr_loss(pos_scores, neg_scores) + reg * penalty


class PropagatedFactors(DotProductScores, ScoresTrainedUsers):
    """Batches, export and scoring for a `TorchRecommender` trained on (user, positive, uniform
    negatives) batches whose module's `factors()` returns the final (user, item) embeddings as
    numpy: score(u, i) = <p_u, q_i> without torch. `build_module` calls `sample_pairs` first.
    Users without training events were never trained: their rows are zeroed so they score like
    unknown users, during validation and after `fit`."""

    def sample_pairs(self, train: Interactions, rng: np.random.Generator) -> sp.csr_matrix:
        """The training matrix; keeps its epoch batches and its never-trained users for this fit."""
        matrix = train.matrix()
        self._pairs = pair_batches(matrix, self.config.batch_size, self.config.n_negatives, rng)
        self._untrained_users = train.user_counts() == 0
        return matrix

    def batches(self):
        return self._pairs()

    def export(self, module: torch.nn.Module) -> dict[str, np.ndarray]:
        user_factors, item_factors = module.factors()
        user_factors[self._untrained_users] = 0.0
        return {"user_factors_": user_factors, "item_factors_": item_factors}

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_)


def edge_softmax(scores: torch.Tensor, head: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Softmax of edge `scores` over the edges sharing a head (each head's neighbours sum to 1)."""
    top = torch.full((n_nodes,), -torch.inf, dtype=scores.dtype, device=scores.device)
    top = top.scatter_reduce(0, head, scores, reduce="amax", include_self=True)
    weights = torch.exp(scores - top[head])
    total = torch.zeros(n_nodes, dtype=scores.dtype, device=scores.device).index_add_(0, head, weights)
    return weights / total[head]
