"""DCCF (Ren et al., "Disentangled Contrastive Collaborative Filtering", SIGIR 2023).

Each layer k maps E^(k) (users then items, n x d) to
    Z = A_hat E^(k)                                   local (graph) view, A_hat = D^-1/2 A D^-1/2
    R = [softmax(E_U^(k) C_U) C_U^T ; softmax(E_I^(k) C_I) C_I^T]   disentangled (intent) view,
        C_U, C_I: d x K global intent prototypes
    G_Z E^(k), G_R E^(k)                              adaptive-augmented views, where G_M is the
        learned edge mask: on every edge (h, t) of A, alpha_ht = (cos(M_h, M_t) + 1) / 2,
        row-normalised G_M[h, t] = alpha_ht / sum_t' alpha_ht'  (zero off the edges)
    E^(k+1) = Z + R + G_Z E^(k) + G_R E^(k) + E^(k),
and the final embedding is e = sum_{k=0..K} E^(k); score(u, i) = <e_u, e_i>. The loss is

    L = BPR(e_u, e_i, e_j) + ssl_weight * sum_k sum_{V in {R, G_Z E, G_R E}} [InfoNCE_tau(Z_U, V_U)
        + InfoNCE_tau(Z_I, V_I)] + reg * (||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2) / B
        + intent_reg * (||C_U||^2 + ||C_I||^2),

with InfoNCE (cosine similarity / tau, in-batch negatives) over the batch's distinct users U and
distinct positive items I, as in the authors' code (HKUDS/DCCF, model.py): the local view Z is the
anchor of every pair; gradients flow through the edge masks.

Deviation: the L2 term on layer-0 embeddings is per example (the authors sum over the batch
instead; reg here ~ their emb_reg times their batch size: 2.5e-5 * 10240 = 0.26). No fold-in for
new users. Implementation notes and tuning record: docs/models/dccf.md.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import PropagatedFactors, sparse_tensor, symmetric_matmul, triple_scores
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss, info_nce_loss, l2_penalty


class DCCFConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 32
    n_layers: NonNegativeInt = 2
    n_intents: PositiveInt = 128  # K global intent prototypes, for users and for items
    learning_rate: PositiveFloat = 2e-3
    reg: NonNegativeFloat = 0.1  # times the batch's squared layer-0 embedding norms per example
    intent_reg: NonNegativeFloat = 5e-3  # times the squared norms of all prototypes
    ssl_weight: NonNegativeFloat = 0.01  # paper: 0.1
    temperature: PositiveFloat = 1.0  # tau of InfoNCE
    batch_size: PositiveInt = 10240
    n_negatives: PositiveInt = 1


def bipartite_adjacency(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Binary A = [[0, R], [R^T, 0]] of a (users x items) matrix R, nodes ordered users then items."""
    r = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()
    r.data[:] = 1.0
    n = r.shape[0] + r.shape[1]
    adjacency = sp.bmat([[None, r], [r.T, None]], format="csr") if r.nnz else sp.csr_matrix((n, n))
    adjacency.sort_indices()
    return adjacency


def normalized_adjacency(adjacency: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with zero rows and columns for zero-degree nodes."""
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    scale = sp.diags(inv_sqrt)
    normalized = sp.csr_matrix(scale @ adjacency @ scale)
    normalized.sort_indices()
    return normalized


class _EdgeMatmul(torch.autograd.Function):
    """M @ x for a sparse M on the (symmetric) pattern of A with values carrying gradients.

    Forward is one CSR @ dense product; backward is M^T @ g (the same pattern, values permuted by
    `transpose`, the index of edge (t, h) for edge (h, t)) and d values_e = <g_h, x_t>. Cheaper than
    torch's COO backward, which builds the masked product through sparse_mask."""

    @staticmethod
    def forward(ctx, values, dense, crow, heads, tails, transpose):
        ctx.save_for_backward(values, dense, crow, heads, tails, transpose)
        return _csr(crow, tails, values, len(dense)) @ dense

    @staticmethod
    def backward(ctx, grad):
        values, dense, crow, heads, tails, transpose = ctx.saved_tensors
        grad_values = grad_dense = None
        if ctx.needs_input_grad[0]:
            grad_values = (grad[heads] * dense[tails]).sum(1)
        if ctx.needs_input_grad[1]:
            grad_dense = _csr(crow, tails, values[transpose], len(dense)) @ grad
        return grad_values, grad_dense, None, None, None, None


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, values, size=(n, n), check_invariants=False)




def edge_mask_values(z: torch.Tensor, heads: torch.Tensor, tails: torch.Tensor,
                     transpose: torch.Tensor) -> torch.Tensor:
    """DCCF's learned edge weights on the edge list (heads, tails) of A from node representations z:
    alpha = (cos(z_h, z_t) + 1) / 2, divided by the sum of alpha over the head's edges (D^-1 alpha).

    The edge list is A's in CSR order with users before items, so its first half are the user -> item
    edges; the cosine is computed there once and mirrored onto the item -> user half via `transpose`
    (the position of edge (t, h) for each edge (h, t))."""
    z = F.normalize(z, dim=1)
    half = len(heads) // 2
    alpha = ((gather_rows(z, heads[:half]) * gather_rows(z, tails[:half])).sum(1) + 1.0) / 2.0
    alpha = torch.cat([alpha, gather_rows(alpha, transpose[half:])])
    row_sum = torch.zeros(len(z), dtype=alpha.dtype, device=alpha.device).index_add(0, heads, alpha)
    return alpha / gather_rows(row_sum, heads).clamp_min(1e-12)  # alpha is 0 only for opposite vectors


def intent_aggregation(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """softmax(E C) C^T: each row a mixture of the d x K prototypes C, weighted by its attention."""
    return torch.softmax(embeddings @ prototypes, dim=1) @ prototypes.T


def _xavier_normal(rows: int, cols: int) -> torch.Tensor:
    return torch.nn.init.xavier_normal_(torch.empty(rows, cols))


class _Net(torch.nn.Module):
    def __init__(self, adjacency: sp.csr_matrix, n_users: int, n_items: int, embedding_size: int,
                 n_layers: int, n_intents: int) -> None:
        super().__init__()
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        self.user_embedding = torch.nn.Parameter(_xavier_normal(n_users, embedding_size))
        self.item_embedding = torch.nn.Parameter(_xavier_normal(n_items, embedding_size))
        self.user_intent = torch.nn.Parameter(_xavier_normal(embedding_size, n_intents))
        self.item_intent = torch.nn.Parameter(_xavier_normal(embedding_size, n_intents))
        self.register_buffer("normalized", sparse_tensor(normalized_adjacency(adjacency)), persistent=False)
        # A's edge list in CSR order (by head, then tail) and, per edge (h, t), the position of (t, h)
        heads = np.repeat(np.arange(adjacency.shape[0]), np.diff(adjacency.indptr))
        tails = adjacency.indices.astype(np.int64)
        transpose = sp.csr_matrix((np.arange(1, len(tails) + 1), (tails, heads)), shape=adjacency.shape)
        transpose.sort_indices()  # A is symmetric, so this has A's pattern: entry k sits at (h_k, t_k)
        for name, array in [("crow", adjacency.indptr), ("heads", heads), ("tails", tails),
                            ("transpose", transpose.data - 1)]:
            self.register_buffer(name, torch.from_numpy(np.asarray(array, dtype=np.int64)), persistent=False)

    def ego(self) -> torch.Tensor:
        return torch.cat([self.user_embedding, self.item_embedding], dim=0)

    def masked_matmul(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """M @ dense for the sparse M with `values` on A's edges (in CSR order)."""
        return _EdgeMatmul.apply(values, dense, self.crow, self.heads, self.tails, self.transpose)

    def layer(self, layer: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One DCCF layer: (next layer, local Z, intent R, graph-augmented, intent-augmented)."""
        heads, tails = self.heads, self.tails
        local = symmetric_matmul(self.normalized, layer)
        users, items = layer[:self.n_users], layer[self.n_users:]
        intent = torch.cat([intent_aggregation(users, self.user_intent), intent_aggregation(items, self.item_intent)])
        graph_aug = self.masked_matmul(edge_mask_values(local, heads, tails, self.transpose), layer)
        intent_aug = self.masked_matmul(edge_mask_values(intent, heads, tails, self.transpose), layer)
        return local + intent + graph_aug + intent_aug + layer, local, intent, graph_aug, intent_aug

    def propagate(self) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """Final embeddings (sum of layers 0..K) and each layer's (local, intent, graph-aug, intent-aug)."""
        layer = self.ego()
        total, views = layer, []
        for _ in range(self.n_layers):
            layer, *layer_views = self.layer(layer)
            total = total + layer
            views.append(tuple(layer_views))
        return total, views

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            final = self.propagate()[0].to("cpu", torch.float32).numpy().copy()
        return final[:self.n_users], final[self.n_users:]


def contrastive_loss(views: list[tuple[torch.Tensor, ...]], users: torch.Tensor, items: torch.Tensor,
                     n_users: int, temperature: float) -> torch.Tensor:
    """Sum over layers of InfoNCE(local, other view) for each other view, over distinct users and items."""
    nodes = [torch.unique(users), torch.unique(items) + n_users]
    loss = torch.zeros((), device=users.device)
    for local, *others in views:
        for other in others:
            for index in nodes:
                loss = loss + info_nce_loss(gather_rows(local, index), gather_rows(other, index), temperature)
    return loss


class DCCF(PropagatedFactors, TorchRecommender):
    """Graph CF with intent prototypes, learned edge masks and InfoNCE between local, intent and augmented views."""

    Config = DCCFConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        return _Net(bipartite_adjacency(self.sample_pairs(train, rng)), train.n_users, train.n_items,
                    c.embedding_size, c.n_layers, c.n_intents)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        final, views = module.propagate()
        pos_scores, neg_scores = triple_scores(final, users, pos, neg, module.n_users)
        penalty = l2_penalty(gather_rows(module.user_embedding, users), gather_rows(module.item_embedding, pos),
                             gather_rows(module.item_embedding, neg))
        prototypes = module.user_intent.pow(2).sum() + module.item_intent.pow(2).sum()
        loss = bpr_loss(pos_scores, neg_scores) + c.reg * penalty + c.intent_reg * prototypes
        if c.ssl_weight > 0 and views:
            loss = loss + c.ssl_weight * contrastive_loss(views, users, pos, module.n_users, c.temperature)
        return loss
