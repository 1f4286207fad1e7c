"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020).

E^(k+1) = A_hat E^(k) with A_hat = D^-1/2 A D^-1/2 over the user-item bipartite graph (no
weights, no non-linearity, no self-loop); final e = mean_{k=0..K} E^(k); score(u, i) = <e_u, e_i>;
loss = -mean log sigmoid(score(u, i) - score(u, j)) + reg * (||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2) / B
over (user, positive i, uniform negative j) triples, the L2 term on the batch's layer-0 embeddings
as in the authors' code (without their factor 1/2).

Deviations: the whole graph is propagated once per step (A_hat a sparse CSR buffer, zero rows for
nodes without edges) and the batch's rows gathered; users without training events score all zeros
(never trained, like BPR-MF, LightGCN cannot fold in new users). Tuning log: docs/models/lightgcn.md.
"""

from __future__ import annotations

import numpy as np
import torch

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import (
    LightGCNFields,
    LightGCNNet,
    PropagatedFactors,
    graph_bpr_loss,
    normalized_adjacency,
    sparse_tensor,
)
from recstack.models.neural import TorchRecommender
from recstack.models.protocol import ModelConfig


class LightGCNConfig(ModelConfig, LightGCNFields):
    """The fields and defaults live in kernels/graph.py (`LightGCNFields`): RLMRec's backbone shares them."""


_Net = LightGCNNet  # the embeddings and the graph (kernels/graph.py: SimGCL and RLMRec build on it too)


class LightGCN(PropagatedFactors, TorchRecommender):
    """Linear propagation of free user and item embeddings on the normalised interaction graph."""

    Config = LightGCNConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        adjacency = sparse_tensor(normalized_adjacency(self.sample_pairs(train, rng)))
        return _Net(adjacency, train.n_users, train.n_items, c.embedding_size, c.n_layers, c.init_std)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        final = module.propagate()  # the whole graph once per step
        return graph_bpr_loss(final, module.embedding.weight, users, pos, neg, module.n_users, self.config.reg)
