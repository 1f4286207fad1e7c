"""SASRec's self-attention stack as the authors' code lays it out: the parameter names and their
initialisation, shared by SASRec and MQSA-TED (whose long and short queries reuse W_Q/W_K/W_V), and
`NamedParameters`, the module that holds such a named parameter set (also BERT4Rec's)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from recstack.train.sequences import PAD

MASKED = -1e9  # the authors' code fills masked attention logits with -2^32 + 1: finite, so no NaN
EPS = 1e-8  # layer-norm epsilon of the authors' code

# parameter names (the keys of the module's state dict and of a fitted model's `weights_`); per-block
# tensors are stacked over blocks (first dim), linear maps are stored (in, out) so that a layer is x @ W + b
SASREC_PARAMS = (
    "item_embedding", "position_embedding",
    "attn_norm_weight", "attn_norm_bias", "query_weight", "query_bias", "key_weight", "key_bias",
    "value_weight", "value_bias", "ffn_norm_weight", "ffn_norm_bias", "ffn_1_weight", "ffn_1_bias",
    "ffn_2_weight", "ffn_2_bias", "final_norm_weight", "final_norm_bias",
)


def sasrec_initial_params(n_items: int, c, ffn_size: int | None = None) -> dict[str, torch.Tensor]:
    """The authors' TF initialisation: Glorot-uniform tables and matrices, zero biases, unit norms,
    and a zero padding row in the item table. `c` has `embedding_size`, `n_layers`, `max_seq_len`;
    `ffn_size` is the feed-forward layer's inner width (None: embedding_size, the paper's)."""
    d, n = c.embedding_size, c.n_layers
    inner = ffn_size or d

    def glorot(*shape: int) -> torch.Tensor:
        bound = math.sqrt(6.0 / (shape[-2] + shape[-1]))
        return torch.empty(*shape).uniform_(-bound, bound)

    params = {"item_embedding": glorot(n_items + 1, d), "position_embedding": glorot(c.max_seq_len, d),
              "final_norm_weight": torch.ones(d), "final_norm_bias": torch.zeros(d)}
    params["item_embedding"][PAD] = 0.0
    for name in ("attn_norm", "ffn_norm"):
        params[f"{name}_weight"], params[f"{name}_bias"] = torch.ones(n, d), torch.zeros(n, d)
    for name in ("query", "key", "value"):
        params[f"{name}_weight"], params[f"{name}_bias"] = glorot(n, d, d), torch.zeros(n, d)
    params["ffn_1_weight"], params["ffn_1_bias"] = glorot(n, d, inner), torch.zeros(n, inner)
    params["ffn_2_weight"], params["ffn_2_bias"] = glorot(n, inner, d), torch.zeros(n, d)
    return params


def sasrec_inputs(p: dict[str, torch.Tensor], tokens: torch.Tensor, dropout: float = 0.0,
                  training: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) left-padded tokens -> the first block's input x (B, T, d), `keep` (B, T, 1; 1 on real
    slots) and the attention mask `allowed` (B, Tq, Tk): the past, padding excluded."""
    length = tokens.shape[1]
    table, positions = p["item_embedding"], p["position_embedding"]
    d = table.shape[1]
    valid = tokens != PAD
    keep = valid.unsqueeze(-1).to(table.dtype)  # (B, T, 1)
    # padding_idx: the padding row gets no gradient; positions count from the end (left padding)
    x = F.embedding(tokens, table, padding_idx=PAD) * math.sqrt(d) + positions[len(positions) - length:]
    x = F.dropout(x, dropout, training) * keep
    allowed = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    allowed = allowed.unsqueeze(0) & valid.unsqueeze(1)  # (B, Tq, Tk): the past, padding excluded
    return x, keep, allowed


def sasrec_norm(p: dict[str, torch.Tensor], h: torch.Tensor, name: str, layer: int | None = None) -> torch.Tensor:
    """Layer norm `name` (of block `layer`, or the stack's own with None), the code's epsilon."""
    w, b = (p[f"{name}_weight"], p[f"{name}_bias"]) if layer is None else \
        (p[f"{name}_weight"][layer], p[f"{name}_bias"][layer])
    return F.layer_norm(h, (h.shape[-1],), w, b, EPS)


def sasrec_linear(p: dict[str, torch.Tensor], h: torch.Tensor, name: str, layer: int) -> torch.Tensor:
    """x @ W + b of block `layer`'s map `name`."""
    return h @ p[f"{name}_weight"][layer] + p[f"{name}_bias"][layer]


def sasrec_feed_forward(p: dict[str, torch.Tensor], x: torch.Tensor, layer: int, keep: torch.Tensor,
                        dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """The point-wise feed-forward sub-layer: it reads and adds back its own layer-normalised input;
    padded slots (keep = 0) are zeroed."""
    f_in = sasrec_norm(p, x, "ffn_norm", layer)
    f = F.dropout(torch.relu(sasrec_linear(p, f_in, "ffn_1", layer)), dropout, training)
    return (f_in + F.dropout(sasrec_linear(p, f, "ffn_2", layer), dropout, training)) * keep


class NamedParameters(torch.nn.Module):
    """Named tensors registered as parameters under their own names, in the given order (the order
    the optimiser sees them), so that the state dict, and the fitted `weights_` exported from it,
    is keyed by those names. A model's forward is a function of `params`, so scoring can run the
    same function on the fitted numpy arrays without rebuilding the module."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, value in tensors.items():
            self.register_parameter(name, torch.nn.Parameter(value))

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        """{name: parameter}, the mapping the functional forward reads."""
        return dict(self.named_parameters(recurse=False))


def torch_params(weights: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The arrays `names` of a fitted `weights_` as the {name: tensor} mapping a forward reads (no copy)."""
    return {name: torch.from_numpy(weights[name]) for name in names}
