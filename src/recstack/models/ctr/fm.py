"""FM, factorisation machines (Rendle, ICDM 2010), for CTR with the binary cross-entropy loss.

y(x) = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j, computed in O(kn) as
0.5 * sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]. Here x is the one-hot (or weighted, for numeric
and multi-valued fields) encoding of the fields, so the pairwise term runs over the F field vectors
e_f = sum_l x_l v_l; within a multi-valued field the values' mutual interactions are left out, as
FuxiCTR and DeepCTR do. p = sigmoid(y); loss = BCE(p, label) (+ optional L2 on the batch's embeddings).
"""

from __future__ import annotations

import torch

from recstack.models.ctr.base import CTRFields, CTRModel, FieldEmbedding, ModelConfig


class FMConfig(ModelConfig, CTRFields):
    pass


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """Pairwise term over field vectors (B, F, k) -> (B,), the O(kF) form."""
    square_of_sum = fields.sum(1).pow(2)
    sum_of_square = fields.pow(2).sum(1)
    return 0.5 * (square_of_sum - sum_of_square).sum(1)


class _FM(torch.nn.Module):
    def __init__(self, n_ids: int, size: int) -> None:
        super().__init__()
        self.fields = FieldEmbedding(n_ids, size)

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.fields.first_order(index, weight) + fm_interaction(self.fields(index, weight))


class FM(CTRModel):
    """Factorisation machine: linear terms + factorised pairwise interactions."""

    Config = FMConfig

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        return _FM(n_ids, self.config.embedding_size)
