"""SimGCL (Yu et al., "Are Graph Augmentations Necessary? Simple Graph Contrastive Learning for
Recommendation", SIGIR 2022).

Propagation as LightGCN, E^(k+1) = A_hat E^(k) with A_hat = D^-1/2 A D^-1/2 over the user-item
bipartite graph, but the final embedding is the mean of layers 1..K (the layer-0 term is left out,
as in the paper and the authors' SELFRec code). Two extra perturbed passes per step add, after every
layer, delta = sign(E^(k)) * normalize(U(0, 1) noise) * eps, so each row's noise has norm eps and
lies in E's orthant. The loss is

    L = BPR(e_u, e_i, e_j) + ssl_weight * [InfoNCE_tau(z'_U, z''_U) + InfoNCE_tau(z'_I, z''_I)]
        + reg * (||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2) / B,

with BPR on the unperturbed final embeddings, InfoNCE (cosine similarity / tau, in-batch
negatives) between the two perturbed views of the batch's distinct users and distinct positive
items, and the L2 term on the batch's layer-0 embeddings (per example, like LightGCN here).
Scores are <e_u, e_i> of the unperturbed final embeddings.

No fold-in for new users (they score zeros). Implementation notes and tuning record:
docs/models/simgcl.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.graph import lightgcn
from recstack.models.kernels.graph import (PropagatedFactors, graph_bpr_loss, normalized_adjacency, sparse_tensor,
                                           symmetric_matmul)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.indexing import gather_rows
from recstack.train.losses import info_nce_loss


class SimGCLConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64
    n_layers: PositiveInt = 2
    learning_rate: PositiveFloat = 1e-2
    reg: NonNegativeFloat = 1e-4  # times the batch's squared layer-0 embedding norms per example
    ssl_weight: NonNegativeFloat = 0.01  # lambda, the weight of the contrastive loss (paper: 0.2-0.5)
    temperature: PositiveFloat = 0.2  # tau of InfoNCE
    noise_eps: NonNegativeFloat = 0.1  # eps, the norm of each row's noise per layer
    batch_size: PositiveInt = 2048
    n_negatives: PositiveInt = 1
    init_std: PositiveFloat = 0.1


def perturbation(layer: torch.Tensor, eps: float) -> torch.Tensor:
    """SimGCL's noise: sign(E) * normalize(U(0, 1)) * eps, row-wise (torch's global RNG)."""
    noise = torch.rand_like(layer)
    return torch.sign(layer) * F.normalize(noise, dim=-1) * eps


class _Net(lightgcn._Net):
    """LightGCN's embeddings and graph; only the propagation differs."""

    def propagate(self, eps: float = 0.0) -> torch.Tensor:
        """(n_users + n_items, d): mean of layers 1..K, each perturbed by noise of norm eps when eps > 0."""
        layer = self.embedding.weight
        total = torch.zeros_like(layer)
        for _ in range(self.n_layers):
            layer = symmetric_matmul(self.adjacency, layer)
            if eps > 0:
                layer = layer + perturbation(layer, eps)
            total = total + layer
        return total / self.n_layers


def contrastive_loss(view1: torch.Tensor, view2: torch.Tensor, users: torch.Tensor, items: torch.Tensor,
                     n_users: int, temperature: float) -> torch.Tensor:
    """InfoNCE between two views over the batch's distinct users plus the same over its distinct items."""
    users, items = torch.unique(users), torch.unique(items) + n_users
    return (info_nce_loss(gather_rows(view1, users), gather_rows(view2, users), temperature)
            + info_nce_loss(gather_rows(view1, items), gather_rows(view2, items), temperature))


class SimGCL(PropagatedFactors, TorchRecommender):
    """LightGCN-style propagation trained with BPR plus InfoNCE between two noise-perturbed views."""

    Config = SimGCLConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        adjacency = sparse_tensor(normalized_adjacency(self.sample_pairs(train, rng)))
        return _Net(adjacency, train.n_users, train.n_items, c.embedding_size, c.n_layers, c.init_std)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        final = module.propagate()
        loss = graph_bpr_loss(final, module.embedding.weight, users, pos, neg, module.n_users, c.reg)
        if c.ssl_weight > 0:
            view1, view2 = module.propagate(c.noise_eps), module.propagate(c.noise_eps)
            loss = loss + c.ssl_weight * contrastive_loss(view1, view2, users, pos, module.n_users, c.temperature)
        return loss
