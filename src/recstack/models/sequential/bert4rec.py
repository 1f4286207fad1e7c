"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019).

A user is their last items, oldest to newest. Each token is embedded plus a learned embedding of
its slot, layer-normalised, and passes through `n_layers` BIDIRECTIONAL transformer blocks (BERT's
post-norm block: x = LN(x + MultiHead(x)), x = LN(x + FFN(x)), FFN = GELU between a d x 4d and a
4d x d layer). A slot's output h scores every item through a projection tied to the input table:
score(i) = <LN(GELU(h W_P + b_P)), E_i> + b_i (the paper's eq. 8 with BERT's masked-LM head norm).
Cloze training: a share `mask_prob` of each window's items becomes [MASK] and is predicted by a
full softmax; inference appends [MASK] after the user's last max_seq_len - 1 items and ranks by
the output there. Fitted state: `weights_`, the network's named arrays.

Differences from the paper's code: Adam with the trainer's defaults (the code: Adam with linear
decay and warm-up, L2 0.01), always [MASK] for a chosen token, masked windows redrawn every epoch
instead of a fixed pre-generated set with a dupe factor, training stops early on validation NDCG@10.
Design notes, the tuning record and costs: docs/models/bert4rec.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.models.kernels.attention import NamedParameters, torch_params
from recstack.models.kernels.sequences import (SequenceWindowFields, check_item_vocabulary, embed_in_chunks,
                                               require_sequences, score_in_chunks, trim_padding)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted
from recstack.train.sequences import PAD, SequenceBatches, last_items

_MASKED = -1e9  # masked attention logits: finite, so a row without keys gives no NaN
_EPS = 1e-12  # BERT's layer-norm epsilon


class BERT4RecConfig(ModelConfig, TrainingFields, SequenceWindowFields):
    embedding_size: PositiveInt = 64
    n_layers: PositiveInt = 2  # transformer blocks
    n_heads: PositiveInt = 2  # must divide embedding_size
    dropout: confloat(ge=0.0, lt=1.0) = 0.1
    mask_prob: confloat(gt=0.0, lt=1.0) = 0.2  # share of a training window's items replaced by [MASK]
    max_seq_len: PositiveInt = 50  # slots: the most recent max_seq_len - 1 items + [MASK] at inference
    learning_rate: PositiveFloat = 3e-3
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 400  # a maximum: early stopping usually ends training well before
    early_stopping_patience: PositiveInt | None = 20  # Cloze training improves slowly and noisily
    score_batch_size: PositiveInt = 256  # users per network pass when scoring

    @model_validator(mode="after")
    def _consistent(self) -> "BERT4RecConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        if self.train_windows == "prefixes":
            raise ValueError("train_windows='prefixes' does not apply to BERT4Rec: it trains each prefix on its "
                             "last slot only, and Cloze training masks items anywhere in a window; use 'latest' "
                             "or 'sliding' (every training event in one window per epoch)")
        if self.train_stride is not None and self.train_stride != self.max_seq_len:
            raise ValueError("train_stride does not apply to BERT4Rec: overlapping windows would mask and learn "
                             "an event more than once per epoch; leave it unset")
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2 (at least one item and the [MASK] slot), "
                             f"got {self.max_seq_len}")
        return self


# parameter names, keys of `weights_`; per-block tensors are stacked over blocks (first dim),
# linear maps are stored (in, out) so that a layer is x @ W + b
_PARAMS = (
    "item_embedding", "position_embedding", "embedding_norm_weight", "embedding_norm_bias",
    "query_weight", "query_bias", "key_weight", "key_bias", "value_weight", "value_bias",
    "attn_out_weight", "attn_out_bias", "attn_norm_weight", "attn_norm_bias",
    "ffn_1_weight", "ffn_1_bias", "ffn_2_weight", "ffn_2_bias", "ffn_norm_weight", "ffn_norm_bias",
    "head_weight", "head_bias", "head_norm_weight", "head_norm_bias", "output_bias",
)


def _initial_params(n_items: int, c: BERT4RecConfig) -> dict[str, torch.Tensor]:
    """BERT's initialisation: truncated normal (std 0.02) tables and matrices, zero biases, unit norms."""
    d, n = c.embedding_size, c.n_layers

    def normal(*shape: int) -> torch.Tensor:
        return torch.nn.init.trunc_normal_(torch.empty(*shape), std=0.02, a=-0.04, b=0.04)

    params = {"item_embedding": normal(n_items + 2, d), "position_embedding": normal(c.max_seq_len, d),
              "head_weight": normal(d, d), "head_bias": torch.zeros(d), "output_bias": torch.zeros(n_items)}
    params["item_embedding"][PAD] = 0.0
    for name in ("embedding_norm", "head_norm"):
        params[f"{name}_weight"], params[f"{name}_bias"] = torch.ones(d), torch.zeros(d)
    for name in ("attn_norm", "ffn_norm"):
        params[f"{name}_weight"], params[f"{name}_bias"] = torch.ones(n, d), torch.zeros(n, d)
    for name in ("query", "key", "value", "attn_out"):
        params[f"{name}_weight"], params[f"{name}_bias"] = normal(n, d, d), torch.zeros(n, d)
    params["ffn_1_weight"], params["ffn_1_bias"] = normal(n, d, 4 * d), torch.zeros(n, 4 * d)
    params["ffn_2_weight"], params["ffn_2_bias"] = normal(n, 4 * d, d), torch.zeros(n, d)
    return params


def _forward(p: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int, dropout: float = 0.0,
             training: bool = False, last_only: bool = False) -> torch.Tensor:
    """(B, T) left-padded tokens, T <= max_seq_len -> encoder outputs (B, T, d), or (B, d) at the last
    slot with `last_only` (the top block then computes that one query only)."""
    batch, length = tokens.shape
    table, positions = p["item_embedding"], p["position_embedding"]
    d = table.shape[1]
    head_size = d // n_heads
    valid = tokens != PAD
    # positions count from the end (left padding), so the newest slot always has the same embedding
    x = F.embedding(tokens, table, padding_idx=PAD) + positions[len(positions) - length:]
    x = F.dropout(F.layer_norm(x, (d,), p["embedding_norm_weight"], p["embedding_norm_bias"], _EPS), dropout, training)
    blocked = ~valid[:, None, None, :]  # (B, 1, 1, Tk): padded keys, for every head and query

    def linear(h: torch.Tensor, name: str, layer: int) -> torch.Tensor:
        return h @ p[f"{name}_weight"][layer] + p[f"{name}_bias"][layer]

    def norm(h: torch.Tensor, name: str, layer: int) -> torch.Tensor:
        return F.layer_norm(h, (d,), p[f"{name}_weight"][layer], p[f"{name}_bias"][layer], _EPS)

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.reshape(batch, h.shape[1], n_heads, head_size).transpose(1, 2)  # (B, heads, T, head_size)

    n_layers = len(p["query_weight"])
    for layer in range(n_layers):
        rows = slice(length - 1, length) if last_only and layer == n_layers - 1 else slice(0, length)
        q = heads(linear(x[:, rows], "query", layer))
        k, v = heads(linear(x, "key", layer)), heads(linear(x, "value", layer))
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(head_size)
        weights = F.dropout(torch.softmax(logits.masked_fill(blocked, _MASKED), dim=-1), dropout, training)
        attended = (weights @ v).transpose(1, 2).reshape(batch, -1, d)
        x = norm(x[:, rows] + F.dropout(linear(attended, "attn_out", layer), dropout, training), "attn_norm", layer)
        f = linear(F.gelu(linear(x, "ffn_1", layer)), "ffn_2", layer)
        x = norm(x + F.dropout(f, dropout, training), "ffn_norm", layer)
    return x[:, -1] if last_only else x


def _head(p: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """Encoder outputs (..., d) -> the vectors that meet the item table, LN(GELU(h W_P + b_P))."""
    z = F.gelu(hidden @ p["head_weight"] + p["head_bias"])
    return F.layer_norm(z, (z.shape[-1],), p["head_norm_weight"], p["head_norm_bias"], _EPS)


def cloze_mask(tokens: np.ndarray, mask_prob: float, mask_token: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) for Cloze training from (B, T) left-padded tokens.

    Each non-padded token becomes `mask_token` with probability `mask_prob`; a row with items but no
    draw gets its newest (last-slot) item masked. labels holds the original token at masked slots and
    PAD elsewhere. Padding is never masked.
    """
    items = tokens != PAD
    chosen = (rng.random(tokens.shape) < mask_prob) & items
    forced = items.any(1) & ~chosen.any(1)
    chosen[forced, -1] = True  # left padding: the last slot of a non-empty row is an item
    return np.where(chosen, mask_token, tokens), np.where(chosen, tokens, PAD)


def _inference_tokens(history: Interactions, users: np.ndarray, max_seq_len: int, mask_token: int) -> np.ndarray:
    """(B, <= max_seq_len) tokens: the last max_seq_len - 1 items of `history`, then [MASK]."""
    items = last_items(history, users, max_seq_len - 1)
    return trim_padding(np.concatenate([items, np.full((len(items), 1), mask_token, dtype=items.dtype)], axis=1))


def _score_blocks(params: dict[str, torch.Tensor], n_heads: int, users: np.ndarray, history: Interactions,
                  items: np.ndarray | None, max_seq_len: int, chunk: int) -> np.ndarray:
    """Scores at the appended [MASK] for `users` (all items, candidates (C,) or per-user (B, C)),
    `chunk` users a pass."""
    table_t = params["item_embedding"]
    n_items = table_t.shape[0] - 2
    check_item_vocabulary(history, n_items)

    def encode(part: np.ndarray) -> np.ndarray:
        tokens = torch.from_numpy(_inference_tokens(history, part, max_seq_len, n_items + 1)).to(table_t.device)
        with torch.no_grad():
            return _head(params, _forward(params, tokens, n_heads, last_only=True)).to("cpu", torch.float32).numpy()

    table = table_t.detach().to("cpu", torch.float32).numpy()[1:n_items + 1]
    bias = params["output_bias"].detach().to("cpu", torch.float32).numpy()
    return score_in_chunks(encode, users, table, items, bias, chunk)


class _Net(NamedParameters):
    """The trainable parameters, named as `_PARAMS`; the computation is `_forward` and `_head`, shared
    with scoring."""

    def __init__(self, n_items: int, c: BERT4RecConfig) -> None:
        super().__init__(_initial_params(n_items, c))
        self.n_heads, self.dropout = c.n_heads, c.dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _forward(self.params, tokens, self.n_heads, self.dropout, self.training)


class BERT4Rec(ScoresFromHistory, TorchRecommender):
    """Bidirectional self-attention trained by Cloze; next-item scores at an appended [MASK]."""

    Config = BERT4RecConfig

    # ---- training (the base's fit calls these) ------------------------------------------------

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        # the windows (max_seq_len items each) and their order per epoch; the Cloze masks draw from the same
        # generator
        self._sequences = require_sequences("BERT4Rec", SequenceBatches(train, c.max_seq_len, c.batch_size, rng,
                                                                         **c.window_options(), objective="cloze"))
        self._train, self._rng = train, rng
        return _Net(train.n_items, c)

    def trainer_settings(self) -> dict[str, Any]:
        return {"optimizer": "adam"}

    def batches(self):
        c, train = self.config, self._train
        for _, tokens, _ in self._sequences:  # "latest": tokens = last_items(train, users, max_seq_len)
            yield cloze_mask(tokens, c.mask_prob, train.n_items + 1, self._rng)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        inputs, labels = batch
        slots = labels != PAD
        params = module.params
        mask_token = params["output_bias"].shape[0] + 1
        z = _head(params, module(inputs)[slots])  # (M, d) at the masked slots
        logits = z @ params["item_embedding"][1:mask_token].T + params["output_bias"]
        return F.cross_entropy(logits, labels[slots] - 1)

    # ---- the fitted model ---------------------------------------------------------------------

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, "weights_")
        return torch_params(self.weights_, _PARAMS)

    def input_sequences(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The tokens the model reads for `users` at inference: the last max_seq_len - 1 items of
        `history` (item index + 1, 0 = padding), then [MASK] (= n_items + 1); leading all-padding
        columns are dropped."""
        check_fitted(self, "weights_")
        return _inference_tokens(history, users, self.config.max_seq_len, len(self.weights_["output_bias"]) + 1)

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The vector that meets the item table at the [MASK] slot, (B, embedding_size), from `history`."""
        params = self._params()

        def encode(part: np.ndarray) -> np.ndarray:
            tokens = torch.from_numpy(self.input_sequences(part, history))
            with torch.no_grad():
                return _head(params, _forward(params, tokens, self.config.n_heads, last_only=True)).numpy()

        return embed_in_chunks(encode, users, self.config.embedding_size, self.config.score_batch_size)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._params(), self.config.n_heads, users, history, items, self.config.max_seq_len,
                             self.config.score_batch_size)
