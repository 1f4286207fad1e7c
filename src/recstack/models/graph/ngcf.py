"""NGCF (Wang et al., "Neural Graph Collaborative Filtering", SIGIR 2019).

Layer: E^(k+1) = LeakyReLU((L + I) E^(k) W1 + b1 + ((L E^(k)) ⊙ E^(k)) W2 + b2), L = D^-1/2 A D^-1/2
over the user-item bipartite graph (the paper's message W1 e_i + W2 (e_i ⊙ e_u) summed over
neighbours, plus the self-connection); final e = [E^(0) | norm(E^(1)) | ... | norm(E^(K))]
(each propagated layer L2-normalised per row, as in the reference code); score(u, i) = <e_u, e_i>;
loss = -mean log sigmoid(score(u, i) - score(u, j)) + reg * (||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2) / B.

Notable choices: L is built once in `fit` (shared with LightGCN) and each training step propagates
the whole graph once, one sparse @ dense product per layer. Node dropout (`node_dropout`) drops
each edge of L with that probability per step and rescales the kept ones; message dropout
(`dropout`) is ordinary dropout on each layer's output before it propagates further (both only in
training). LeakyReLU slope 0.2 and Xavier-uniform initialisation as in the reference code, biases
zero. After `fit` the concatenated embeddings are plain numpy (`user_factors_`, `item_factors_`,
(embedding_size * (n_layers + 1)) columns), so scoring is `P[users] @ Q.T` without torch.
Users without training events score all zeros. Tuning record: docs/models/ngcf.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import (PropagatedFactors, graph_bpr_loss, normalized_adjacency, sparse_tensor,
                                           symmetric_matmul)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig


class NGCFConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64  # also the width of every propagation layer
    n_layers: NonNegativeInt = 3
    learning_rate: PositiveFloat = 5e-3
    reg: NonNegativeFloat = 1e-5  # times the batch's squared layer-0 embedding norms per example
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # message dropout after each layer
    node_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # share of graph edges dropped per step
    epochs: PositiveInt = 300  # a maximum: early stopping usually ends training before
    batch_size: PositiveInt = 2048
    n_negatives: PositiveInt = 1


class _Net(torch.nn.Module):
    def __init__(self, laplacian: torch.Tensor, n_users: int, n_items: int, embedding_size: int,
                 n_layers: int, dropout: float, node_dropout: float) -> None:
        super().__init__()
        self.n_users, self.node_dropout = n_users, node_dropout
        self.embedding = torch.nn.Embedding(n_users + n_items, embedding_size)  # users, then items
        self.w1 = torch.nn.ModuleList(torch.nn.Linear(embedding_size, embedding_size) for _ in range(n_layers))
        self.w2 = torch.nn.ModuleList(torch.nn.Linear(embedding_size, embedding_size) for _ in range(n_layers))
        torch.nn.init.xavier_uniform_(self.embedding.weight)
        for linear in [*self.w1, *self.w2]:
            torch.nn.init.xavier_uniform_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
        self.dropout = torch.nn.Dropout(dropout)
        self.register_buffer("laplacian", laplacian, persistent=False)

    def _graph(self) -> torch.Tensor:
        """L, or in training with node dropout L with each edge kept with prob 1 - p and rescaled."""
        if not self.training or self.node_dropout == 0:
            return self.laplacian
        coo = self.laplacian.to_sparse_coo()
        keep = torch.rand(coo.values().shape, device=coo.device) >= self.node_dropout
        values = coo.values()[keep] / (1.0 - self.node_dropout)
        return torch.sparse_coo_tensor(coo.indices()[:, keep], values, coo.shape, is_coalesced=True,
                                       check_invariants=False).to_sparse_csr()

    def propagate(self) -> torch.Tensor:
        """(n_users + n_items, d * (K + 1)): layer 0 and the L2-normalised layers 1..K side by side."""
        graph = self._graph()
        layer = self.embedding.weight
        layers = [layer]
        for w1, w2 in zip(self.w1, self.w2):
            # L E: the neighbours' messages, one sparse product per layer (L is symmetric unless
            # node dropout removed edges independently in each direction)
            side = symmetric_matmul(graph, layer) if graph is self.laplacian else graph @ layer
            layer = F.leaky_relu(w1(side + layer) + w2(side * layer), negative_slope=0.2)
            layer = self.dropout(layer)
            layers.append(F.normalize(layer, p=2, dim=1))
        return torch.cat(layers, dim=1)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                final = self.propagate().to("cpu", torch.float32).numpy().copy()
        finally:
            self.train(was_training)
        return final[:self.n_users], final[self.n_users:]


class NGCF(PropagatedFactors, TorchRecommender):
    """Graph convolution with feature transforms and user-item affinity messages, layers concatenated."""

    Config = NGCFConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        matrix = self.sample_pairs(train, rng)
        laplacian = sparse_tensor(normalized_adjacency(matrix))
        return _Net(laplacian, train.n_users, train.n_items, c.embedding_size, c.n_layers, c.dropout, c.node_dropout)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        final = module.propagate()  # the whole graph once per step
        return graph_bpr_loss(final, module.embedding.weight, users, pos, neg, module.n_users, self.config.reg)
