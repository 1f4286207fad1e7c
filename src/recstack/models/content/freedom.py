"""FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation", ACM MM 2023; reference code enoche/FREEDOM, MMRec `models/freedom.py`).

Two graphs. (1) Frozen item-item graph: per modality m, the kNN graph of the raw item features
(cosine, top-k per row, self included as in the reference), normalised S_m = D^-1/2 A_m D^-1/2 with
D the row degrees, and summed S = sum_m w_m S_m; built once before training, never learnt.
(2) Denoised user-item graph: each epoch keeps a share (1 - rho) of the training edges, drawn
without replacement with probability proportional to 1 / sqrt(d_u d_i) (so edges of hub users and
items are pruned first), and re-normalises the kept graph; scoring uses the full graph.

h = S^{L_ii} E_item_id; (e_u, e_i) = mean_{l=0..L_ui} A_hat^l [E_user; E_item_id]; item = e_i + h;
score(u, i) = <e_u, e_i + h>. Loss = BPR(e_u, item) + lambda * sum_m BPR(e_u, W_m f_m), the second
over the modality features f_m (initialised from the raw features and fine-tuned, as the reference)
through a linear projection W_m; the projections only shape training, scores use ID embeddings.

Modalities come from `use_dataset(dataset)` (`recstack.data.modalities.dataset_modalities`: "text"
by TF-IDF + SVD by default, `text_encoder="minilm"` for all-MiniLM-L6-v2, "structure", MMRec's
"image"/"text" files) or `set_modalities`. Defaults: the reference's (64-d, k=10, L_ui=2, L_ii=1,
rho=0.8 from its grid {0.8, 0.9}, lambda=1e-4 from {0, 1e-5, 1e-4, 1e-3}, Adam 1e-3, batch 2048,
patience 20). Deviations: docs/models/freedom.md.
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import (PropagatedFactors, directed_matmul, knn_graph, layer_mean, modality_graph,
                                           normalized_adjacency, sparse_tensor, triple_scores)
from recstack.models.kernels.side import ItemModalityInput, ModalityFields
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss

__all__ = ["FREEDOM", "FREEDOMConfig", "knn_graph", "modality_graph", "prune_edges"]  # the graphs live in kernels


class FREEDOMConfig(ModelConfig, TrainingFields, ModalityFields):
    modalities: list[str] = ["text"]  # item content graphs; [] is LightGCN with edge pruning
    graph_weights: dict[str, NonNegativeFloat] | None = None  # w_m; None: equal (image 0.1 / text 0.9 as MMRec)
    knn_k: PositiveInt = 10
    edge_prune_ratio: float = Field(0.8, ge=0.0, lt=1.0)  # rho: share of user-item edges dropped per epoch
    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 2  # L_ui, user-item graph
    n_item_layers: NonNegativeInt = 1  # L_ii, frozen item-item graph
    modal_loss_weight: NonNegativeFloat = 1e-4  # lambda (the reference's reg_weight)
    tune_features: bool = True  # fine-tune the raw modality features in the modality BPR (reference)
    learning_rate: PositiveFloat = 1e-3
    epochs: PositiveInt = 1000  # a maximum: early stopping ends training before
    batch_size: PositiveInt = 2048
    early_stopping_patience: PositiveInt | None = 20
    n_negatives: PositiveInt = 1


# ---- the denoised user-item graph (the frozen item graph: kernels.graph.modality_graph) ----------------
def prune_edges(users: np.ndarray, items: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Degree-sensitive pruning: the positions of the round((1 - ratio) * n) edges kept, drawn without
    replacement with probability proportional to 1 / sqrt(d_u d_i) (Efraimidis-Spirakis keys, the
    distribution of the reference's torch.multinomial without replacement)."""
    n = len(users)
    keep = max(1, int(n * (1.0 - ratio) + 1e-9))  # the reference's int(n * (1 - rho)), float-safe
    if keep >= n:
        return np.arange(n)
    weight = 1.0 / np.sqrt(np.bincount(users)[users] * np.bincount(items)[items].astype(np.float64))
    keys = np.log(rng.random(n)) / weight  # largest keys win: u^(1/w), in logs
    return np.sort(np.argpartition(-keys, keep - 1)[:keep])


# ---- network -----------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, adjacency: torch.Tensor, item_graph: sp.csr_matrix | None, features: list[np.ndarray],
                 n_users: int, n_items: int, c: FREEDOMConfig) -> None:
        super().__init__()
        self.n_users, self.n_layers, self.n_item_layers = n_users, c.n_layers, c.n_item_layers
        self.user = torch.nn.Embedding(n_users, c.embedding_size)
        self.item = torch.nn.Embedding(n_items, c.embedding_size)
        torch.nn.init.xavier_uniform_(self.user.weight)
        torch.nn.init.xavier_uniform_(self.item.weight)
        self.features = torch.nn.ModuleList(
            torch.nn.Embedding.from_pretrained(torch.from_numpy(f), freeze=not c.tune_features) for f in features)
        self.projections = torch.nn.ModuleList(torch.nn.Linear(f.shape[1], c.embedding_size) for f in features)
        self.register_buffer("adjacency", adjacency, persistent=False)  # full graph: scoring
        self.register_buffer("train_adjacency", adjacency, persistent=False)  # this epoch's pruned graph
        self.has_item_graph = item_graph is not None
        if self.has_item_graph:
            self.register_buffer("item_graph", sparse_tensor(item_graph), persistent=False)
            self.register_buffer("item_graph_t", sparse_tensor(item_graph.T.tocsr()), persistent=False)

    def propagate(self, adjacency: torch.Tensor) -> torch.Tensor:
        """(n_users + n_items, d): LightGCN layer mean on `adjacency`, items plus h = S^L_ii E_item."""
        final = layer_mean(adjacency, torch.cat([self.user.weight, self.item.weight]), self.n_layers)
        if not self.has_item_graph:
            return final
        h = self.item.weight
        for _ in range(self.n_item_layers):
            h = directed_matmul(self.item_graph, self.item_graph_t, h)
        return torch.cat([final[:self.n_users], final[self.n_users:] + h])

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            final = self.propagate(self.adjacency).to("cpu", torch.float32).numpy().copy()
        return final[:self.n_users], final[self.n_users:]


class FREEDOM(ItemModalityInput, PropagatedFactors, TorchRecommender):
    """Frozen multimodal kNN item graph + degree-pruned LightGCN, BPR on IDs and on modality features."""

    Config = FREEDOMConfig

    # ---- training ---------------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        features = self.modality_features(train)
        matrix = self.sample_pairs(train, rng).tocoo()
        self._edges = (matrix.row.astype(np.int64), matrix.col.astype(np.int64), matrix.shape)
        self._rng = rng
        graph = modality_graph(features, c.knn_k, c.graph_weights)
        self._net = _Net(sparse_tensor(normalized_adjacency(matrix)), graph, list(features.values()),
                         train.n_users, train.n_items, c)
        return self._net

    def batches(self):
        # the user-item graph is denoised afresh each epoch (the reference's pre_epoch_processing)
        users, items, shape = self._edges
        if self.config.edge_prune_ratio > 0:
            kept = prune_edges(users, items, self.config.edge_prune_ratio, self._rng)
            pruned = sp.csr_matrix((np.ones(len(kept)), (users[kept], items[kept])), shape=shape)
            device = self._net.user.weight.device
            self._net.train_adjacency = sparse_tensor(normalized_adjacency(pruned)).to(device)
        return self._pairs()

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        final = module.propagate(module.train_adjacency)
        loss = bpr_loss(*triple_scores(final, users, pos, neg, module.n_users))
        if len(module.features) and self.config.modal_loss_weight > 0:
            e_u = gather_rows(final, users)
            modal = 0.0
            for table, projection in zip(module.features, module.projections):
                f_i, f_j = projection(table(pos)), projection(table(neg))  # (B, d), (B, n_negatives, d)
                modal = modal + bpr_loss((e_u * f_i).sum(-1), (e_u.unsqueeze(1) * f_j).sum(-1))
            loss = loss + self.config.modal_loss_weight * modal
        return loss
