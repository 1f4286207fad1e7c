"""SASRec's self-attention stack as the authors' code lays it out: the parameter names and their
initialisation, shared by SASRec and MQSA-TED (whose long and short queries reuse W_Q/W_K/W_V)."""

from __future__ import annotations

import math

import torch

from recstack.train.sequences import PAD

# parameter name -> fitted attribute `name_`; per-block tensors are stacked over blocks (first dim),
# linear maps are stored (in, out) so that a layer is x @ W + b
SASREC_PARAMS = (
    "item_embedding", "position_embedding",
    "attn_norm_weight", "attn_norm_bias", "query_weight", "query_bias", "key_weight", "key_bias",
    "value_weight", "value_bias", "ffn_norm_weight", "ffn_norm_bias", "ffn_1_weight", "ffn_1_bias",
    "ffn_2_weight", "ffn_2_bias", "final_norm_weight", "final_norm_bias",
)


def sasrec_initial_params(n_items: int, c) -> dict[str, torch.Tensor]:
    """The authors' TF initialisation: Glorot-uniform tables and matrices, zero biases, unit norms,
    and a zero padding row in the item table. `c` has `embedding_size`, `n_layers`, `max_seq_len`."""
    d, n = c.embedding_size, c.n_layers

    def glorot(*shape: int) -> torch.Tensor:
        bound = math.sqrt(6.0 / (shape[-2] + shape[-1]))
        return torch.empty(*shape).uniform_(-bound, bound)

    params = {"item_embedding": glorot(n_items + 1, d), "position_embedding": glorot(c.max_seq_len, d),
              "final_norm_weight": torch.ones(d), "final_norm_bias": torch.zeros(d)}
    params["item_embedding"][PAD] = 0.0
    for name in ("attn_norm", "ffn_norm"):
        params[f"{name}_weight"], params[f"{name}_bias"] = torch.ones(n, d), torch.zeros(n, d)
    for name in ("query", "key", "value", "ffn_1", "ffn_2"):
        params[f"{name}_weight"], params[f"{name}_bias"] = glorot(n, d, d), torch.zeros(n, d)
    return params
