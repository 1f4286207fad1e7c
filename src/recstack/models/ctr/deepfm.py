"""DeepFM (Guo et al., IJCAI 2017): an FM and a DNN over one shared embedding layer, trained jointly.

y = sigmoid(y_FM + y_DNN) with y_FM = w0 + sum_f w_f + sum_{f<g} <e_f, e_g> (the O(kF) form of `fm.py`)
and y_DNN = MLP([e_1; ...; e_F]); loss = BCE on the label. The paper's network is 400-400-400 with
ReLU and dropout 0.5 (its Criteo setting); both are configurable.
"""

from __future__ import annotations

import torch
from pydantic import Field

from recstack.models.ctr.base import CTRFields, CTRModel, DropoutPosition, FieldEmbedding, ModelConfig, mlp
from recstack.models.ctr.fm import fm_interaction


class DeepFMConfig(ModelConfig, CTRFields):
    hidden_units: list[int] = Field(default_factory=lambda: [400, 400, 400], min_length=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    dropout_position: DropoutPosition = "after_activation"  # or before_linear, as RecBole (base.mlp)


class _DeepFM(torch.nn.Module):
    def __init__(self, n_ids: int, n_fields: int, size: int, hidden: list[int], dropout: float,
                 dropout_position: DropoutPosition = "after_activation") -> None:
        super().__init__()
        self.fields = FieldEmbedding(n_ids, size)  # shared by the FM and the DNN part
        self.dnn = mlp([n_fields * size, *hidden], dropout, dropout_position)

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        e = self.fields(index, weight)
        y_fm = self.fields.first_order(index, weight) + fm_interaction(e)
        return y_fm + self.dnn(e.flatten(1)).squeeze(-1)


class DeepFM(CTRModel):
    """FM + DNN over shared field embeddings."""

    Config = DeepFMConfig

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        c = self.config
        return _DeepFM(n_ids, n_fields, c.embedding_size, list(c.hidden_units), c.dropout, c.dropout_position)
