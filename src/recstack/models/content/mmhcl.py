"""MMHCL (Guo, Zhang, Wang et al., "MMHCL: Multi-Modal Hypergraph Contrastive Learning for Recommendation",
ACM TOMM 2025, arXiv 2504.16576; reference code Xu107/MMHCL `codes/Models.py`, `codes/utility/load_data.py`).

Two hypergraphs beside the user-item graph. Item-item (i2i): per modality m, each item's kNN set
(cosine, top-k, itself included) is a hyperedge; with H = [B_1 | ... | B_M] the binary incidence
(n_items, M n_items), G_i = D^-1/2 H H^T D^-1/2 (D the row sums). User-user (u2u): each item is a
hyperedge over the users who interacted with it, H = R, G_u = D^-1 (R R^T - diag(R R^T)) (row-normalised
shared-item counts, no self loops). Free embeddings per view: z_i = G_i^{L_i} E_ii, z_u = G_u^{L_u} E_uu,
and LightGCN's layer mean (e_u, e_i) = mean_{l=0..L} A_hat^l [E_user; E_item] on the user-item graph.
Final: u = e_u + norm(z_u), i = e_i + norm(z_i); score(u, i) = <u, i>.
Loss = BPR + reg/2 (|u|^2 + |i+|^2 + |i-|^2)/B + a_i NCE(items, z_i) + a_u NCE(users, z_u), NCE the
one-way InfoNCE of GRACE over all nodes (positive: the same node in the other view; negatives:
every other node in both views; cosine / temperature).

Modalities: `use_dataset(dataset)` or `set_modalities` as FREEDOM (recstack.data.modalities). Defaults:
the reference's (64-d, k=5, L=2, L_i=2, L_u=3, a_u=0.03, a_i=0.07, tau=0.6, reg=1e-3, Adam 1e-4, batch 1024).
Deviations (docs/models/mmhcl.md): the contrastive terms pair the fused tables with the hypergraph views
as the reference code does (the paper's text: hypergraph vs user-item view); views are fused even at loss
weight 0 (the reference then drops them); no learning-rate decay (the reference's 0.96^(epoch/50)); kNN keeps the top k even
when a similarity is <= 0 (the reference then drops it); epochs are full passes over the training pairs
(the reference samples one positive per random user); early stopping on the trainer's validation metric.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import (PropagatedFactors, directed_matmul, knn_graph, layer_mean,
                                           normalized_adjacency, sparse_tensor, symmetric_matmul, triple_scores)
from recstack.models.kernels.side import ItemModalityInput, ModalityFields
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss, l2_penalty


class MMHCLConfig(ModelConfig, TrainingFields, ModalityFields):
    modalities: list[str] = ["text"]  # at least one: they define the item-item hyperedges
    knn_k: PositiveInt = 5  # items per i2i hyperedge (reference topk)
    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 2  # L, user-item graph (LightGCN)
    n_item_layers: NonNegativeInt = 2  # L_i, item-item hypergraph
    n_user_layers: NonNegativeInt = 3  # L_u, user-user hypergraph
    item_loss_weight: NonNegativeFloat = 0.07  # a_i
    user_loss_weight: NonNegativeFloat = 0.03  # a_u
    temperature: PositiveFloat = 0.6  # tau of the InfoNCE terms
    reg: NonNegativeFloat = 1e-3  # times half the batch's squared final embeddings per example
    learning_rate: PositiveFloat = 1e-4  # the reference's
    epochs: PositiveInt = 1000  # a maximum: early stopping ends training before
    batch_size: PositiveInt = 1024
    early_stopping_patience: PositiveInt | None = 25  # the reference: 5 checks, one every 5 epochs
    n_negatives: PositiveInt = 1


# ---- the pieces, as plain functions (tested by hand) -------------------------------------------------
def item_hypergraph(features: list[np.ndarray], k: int) -> sp.csr_matrix:
    """G_i = D^-1/2 H H^T D^-1/2 with H = [B_1 | ... | B_M], B_m the binary kNN incidence of modality m
    (row i: the k items most similar to item i, itself included); D the row sums of H H^T."""
    incidence = sp.hstack([(knn_graph(f, k) > 0).astype(np.float64) for f in features], format="csr")
    product = (incidence @ incidence.T).tocsr()
    degree = np.asarray(product.sum(axis=1)).ravel()
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    out = (sp.diags(inv_sqrt) @ product @ sp.diags(inv_sqrt)).tocsr()
    out.sort_indices()
    return out


def user_hypergraph(matrix: sp.spmatrix) -> sp.csr_matrix:
    """G_u = D^-1 (R R^T - diag(R R^T)): items are hyperedges over their users; entry (u, v) counts the
    items u and v share, rows normalised to sum 1; users sharing nothing get an empty row."""
    r = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()
    r.data[:] = 1.0
    product = (r @ r.T).tolil()
    product.setdiag(0.0)
    product = product.tocsr()
    product.eliminate_zeros()
    degree = np.asarray(product.sum(axis=1)).ravel()
    inv = np.where(degree > 0, 1.0 / np.maximum(degree, 1e-12), 0.0)
    out = (sp.diags(inv) @ product).tocsr()
    out.sort_indices()
    return out


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, block: int = 4096) -> torch.Tensor:
    """GRACE's InfoNCE from view a to view b, mean over nodes n:
    -log exp(s(a_n, b_n)/t) / (sum_m exp(s(a_n, b_m)/t) + sum_{m != n} exp(s(a_n, a_m)/t)), s the cosine."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    losses = []
    for start in range(0, len(a), block):
        rows = a[start:start + block]
        index = torch.arange(start, start + len(rows), device=a.device)
        between = rows @ b.T / temperature  # (B, N)
        within = rows @ a.T / temperature
        within = within.scatter(1, index[:, None], float("-inf"))  # the node itself is no negative
        positive = between.gather(1, index[:, None]).squeeze(1)
        losses.append(torch.logsumexp(torch.cat([between, within], dim=1), dim=1) - positive)
    return torch.cat(losses).mean()


# ---- network -----------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, adjacency: torch.Tensor, item_graph: sp.csr_matrix, user_graph: sp.csr_matrix,
                 n_users: int, n_items: int, c: MMHCLConfig) -> None:
        super().__init__()
        self.n_users, self.n_layers = n_users, c.n_layers
        self.n_item_layers, self.n_user_layers = c.n_item_layers, c.n_user_layers
        d = c.embedding_size
        self.cf = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_users + n_items, d)))  # users, items
        self.user_hg = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_users, d)))
        self.item_hg = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_items, d)))
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.register_buffer("item_graph", sparse_tensor(item_graph), persistent=False)  # symmetric
        self.register_buffer("user_graph", sparse_tensor(user_graph), persistent=False)
        self.register_buffer("user_graph_t", sparse_tensor(user_graph.T.tocsr()), persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items) fused, then the hypergraph views (z_u, z_i)."""
        z_i = self.item_hg
        for _ in range(self.n_item_layers):
            z_i = symmetric_matmul(self.item_graph, z_i)
        z_u = self.user_hg
        for _ in range(self.n_user_layers):
            z_u = directed_matmul(self.user_graph, self.user_graph_t, z_u)
        cf = layer_mean(self.adjacency, self.cf, self.n_layers)
        users = cf[:self.n_users] + F.normalize(z_u, dim=1)
        items = cf[self.n_users:] + F.normalize(z_i, dim=1)
        return users, items, z_u, z_i

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            users, items, _, _ = self()
        return users.to("cpu", torch.float32).numpy().copy(), items.to("cpu", torch.float32).numpy().copy()


class MMHCL(ItemModalityInput, PropagatedFactors, TorchRecommender):
    """LightGCN plus a user-user and a multimodal item-item hypergraph view, fused by adding the normalised
    hypergraph embeddings; BPR + L2 + InfoNCE between each fused table and its hypergraph view."""

    Config = MMHCLConfig

    # ---- training ---------------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        features = list(self.modality_features(
            train, required="builds its item-item hypergraph from item modalities (without content: lightgcn)").values())
        matrix = self.sample_pairs(train, rng)
        return _Net(sparse_tensor(normalized_adjacency(matrix)), item_hypergraph(features, c.knn_k),
                    user_hypergraph(matrix), train.n_users, train.n_items, c)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        user_table, item_table, z_u, z_i = module()
        final = torch.cat([user_table, item_table])
        loss = bpr_loss(*triple_scores(final, users, pos, neg, module.n_users))
        if c.reg > 0:
            n = module.n_users
            loss = loss + c.reg / 2 * l2_penalty(gather_rows(final, users), gather_rows(final, n + pos),
                                                 gather_rows(final, n + neg))
        if c.item_loss_weight > 0:
            loss = loss + c.item_loss_weight * info_nce(item_table, z_i, c.temperature)
        if c.user_loss_weight > 0:
            loss = loss + c.user_loss_weight * info_nce(user_table, z_u, c.temperature)
        return loss
