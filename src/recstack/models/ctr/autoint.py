"""AutoInt and AutoInt+ (Song et al., CIKM 2019): multi-head self-attention over feature fields.

Each interacting layer attends field m over every field k, per head h:
a_mk = softmax_k(<W_Q e_m, W_K e_k>), e~_m = sum_k a_mk W_V e_k (the paper's inner product, unscaled);
heads are concatenated and a residual connection adds W_Res e_m: e_m <- ReLU([e~_m^1; ...; e~_m^H] + W_Res e_m).
After `n_layers` layers y = w^T [e_1; ...; e_F] + b; AutoInt+ adds a DNN over the raw field embeddings
to that logit (jointly trained). Loss = BCE on the label. Defaults: the paper's 3 layers, 2 heads,
attention size 32, embedding 16; AutoInt+'s DNN 2 x 200 (the paper's setting on its larger data).
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt

from recstack.models.ctr.base import CTRFields, CTRModel, DropoutPosition, FieldEmbedding, ModelConfig, mlp


class AutoIntConfig(ModelConfig, CTRFields):
    n_layers: PositiveInt = 3
    n_heads: PositiveInt = 2
    attention_size: PositiveInt = 32  # d' per head
    residual: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the DNN of AutoInt+
    dropout_position: DropoutPosition = "after_activation"  # or before_linear, as RecBole (base.mlp)
    hidden_units: list[int] = Field(default_factory=list)  # empty: AutoInt; AutoInt+ defaults to [200, 200]


class AutoIntPlusConfig(AutoIntConfig):
    hidden_units: list[int] = Field(default_factory=lambda: [200, 200], min_length=1)


class _Interacting(torch.nn.Module):
    """One multi-head self-attentive interacting layer with its residual connection."""

    def __init__(self, size: int, n_heads: int, head_size: int, residual: bool) -> None:
        super().__init__()
        self.n_heads, self.head_size = n_heads, head_size
        self.query = torch.nn.Linear(size, n_heads * head_size, bias=False)
        self.key = torch.nn.Linear(size, n_heads * head_size, bias=False)
        self.value = torch.nn.Linear(size, n_heads * head_size, bias=False)
        self.res = torch.nn.Linear(size, n_heads * head_size, bias=False) if residual else None

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        b, f, _ = e.shape
        split = lambda x: x.view(b, f, self.n_heads, self.head_size).transpose(1, 2)  # noqa: E731 (B, H, F, d')
        q, k, v = split(self.query(e)), split(self.key(e)), split(self.value(e))
        attention = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(b, f, self.n_heads * self.head_size)
        if self.res is not None:
            out = out + self.res(e)
        return torch.relu(out)


class _AutoInt(torch.nn.Module):
    def __init__(self, n_ids: int, n_fields: int, c: AutoIntConfig) -> None:
        super().__init__()
        self.fields = FieldEmbedding(n_ids, c.embedding_size)
        width = c.n_heads * c.attention_size
        self.layers = torch.nn.ModuleList(
            _Interacting(c.embedding_size if i == 0 else width, c.n_heads, c.attention_size, c.residual)
            for i in range(c.n_layers))
        self.output = torch.nn.Linear(n_fields * width, 1)
        self.dnn = (mlp([n_fields * c.embedding_size, *c.hidden_units], c.dropout, c.dropout_position)
                    if c.hidden_units else None)

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        e = self.fields(index, weight)
        h = e
        for layer in self.layers:
            h = layer(h)
        logit = self.output(h.flatten(1)).squeeze(-1)
        if self.dnn is not None:
            logit = logit + self.dnn(e.flatten(1)).squeeze(-1)
        return logit


class AutoInt(CTRModel):
    """Self-attentive interacting layers with residual connections, a linear output."""

    Config = AutoIntConfig

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        return _AutoInt(n_ids, n_fields, self.config)


class AutoIntPlus(AutoInt):
    """AutoInt + a jointly trained DNN over the field embeddings."""

    Config = AutoIntPlusConfig
