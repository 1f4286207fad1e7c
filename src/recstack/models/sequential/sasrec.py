"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

A user is their last `max_seq_len` items, oldest to newest. Each item token is embedded (scaled
by sqrt(d)) plus a learned embedding of its slot, and passes through `n_layers` causal
self-attention blocks; the output at the last slot, h, scores every item by its inner product
with that item's (shared input) embedding: score(i) = <h, E_i>. Every non-padded training slot
predicts its next item; `loss` is "ce" (full softmax, the default), "bce" (the paper's loss, one
negative per slot) or "sampled_softmax" (gSASRec's many negatives). The block follows the authors'
code (normalised queries only, residual onto them, no attention output projection).
Fitted state: `weights_`, the network's named arrays (kernels/attention.py's layout).

Differences from the paper's code: Adam with the trainer's betas (0.9, 0.999; the code uses
beta2 = 0.98), no L2 on embeddings (the code's default is 0 too), and training stops early on
validation NDCG@10 instead of after a fixed number of epochs. Design notes, the losses, the
tuning record and costs: docs/models/sasrec.md.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.models.kernels.attention import (MASKED, SASREC_PARAMS, NamedParameters, sasrec_feed_forward,
                                               sasrec_initial_params, sasrec_inputs, sasrec_linear, sasrec_norm,
                                               torch_params)
from recstack.models.kernels.sequences import (SequenceWindowFields, check_item_vocabulary, embed_in_chunks,
                                               require_sequences, score_in_chunks, trim_padding)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted
from recstack.train.losses import sampled_softmax_loss
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, SequenceBatches, last_items

_N_NEGATIVES = 256  # sampled_softmax's negatives per sequence when n_negatives is not given


class SASRecConfig(ModelConfig, TrainingFields, SequenceWindowFields):
    embedding_size: PositiveInt = 64
    n_layers: PositiveInt = 2  # self-attention blocks
    n_heads: PositiveInt = 1  # must divide embedding_size
    dropout: confloat(ge=0.0, lt=1.0) = 0.2
    # the feed-forward layer's inner width; None = embedding_size, the paper's (RecBole's default is 256)
    ffn_size: PositiveInt | None = None
    max_seq_len: PositiveInt = 50  # the most recent events a user is represented by
    loss: Literal["ce", "bce", "sampled_softmax"] = "ce"
    n_negatives: PositiveInt | None = None  # negatives per sequence for loss="sampled_softmax" (None: 256)
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    score_batch_size: PositiveInt = 256  # users per network pass when scoring (bounds the attention memory)

    @model_validator(mode="after")
    def _consistent(self) -> "SASRecConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        if self.n_negatives is not None and self.loss != "sampled_softmax":
            raise ValueError(f"n_negatives applies to loss='sampled_softmax' only (loss is {self.loss!r}; "
                             "'bce' uses one negative per slot as in the paper, 'ce' uses the whole catalogue)")
        return self


# the parameter names, keys of `weights_` (the layout and initialisation live in the kernel that
# MQSA-TED shares)
_PARAMS = SASREC_PARAMS


def _initial_params(n_items: int, c: SASRecConfig) -> dict[str, torch.Tensor]:
    return sasrec_initial_params(n_items, c, c.ffn_size)


def _forward(p: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int, dropout: float = 0.0,
             training: bool = False, last_only: bool = False) -> torch.Tensor:
    """(B, T) left-padded tokens, T <= max_seq_len -> hidden states (B, T, d), or (B, d) at the last
    slot with `last_only` (the top block then computes that one query only)."""
    batch, length = tokens.shape
    table = p["item_embedding"]
    d = table.shape[1]
    head_size = d // n_heads
    x, keep, allowed = sasrec_inputs(p, tokens, dropout, training)

    # without attention dropout the fused kernel gives the same attention (to float rounding) about
    # 25% faster per forward; the additive mask stays finite, so a padded query gets no NaN, and
    # zeroing padded queries' outputs equals zeroing their attention weights
    fused = not (training and dropout > 0)
    additive_mask = torch.zeros(allowed.shape, dtype=table.dtype, device=tokens.device).masked_fill_(
        ~allowed, MASKED) if fused else None

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.reshape(batch, h.shape[1], n_heads, head_size).transpose(1, 2)  # (B, heads, T, head_size)

    n_layers = len(p["query_weight"])
    for layer in range(n_layers):
        rows = slice(length - 1, length) if last_only and layer == n_layers - 1 else slice(0, length)
        q_in = sasrec_norm(p, x[:, rows], "attn_norm", layer)
        q = heads(sasrec_linear(p, q_in, "query", layer))
        k, v = heads(sasrec_linear(p, x, "key", layer)), heads(sasrec_linear(p, x, "value", layer))
        if fused:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask[:, None, rows])
            attended = attended.transpose(1, 2).reshape(batch, q_in.shape[1], d) * keep[:, rows]
        else:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(head_size)
            weights = torch.softmax(logits.masked_fill(~allowed[:, None, rows], MASKED), dim=-1)
            weights = weights * keep[:, None, rows]  # padded queries attend to nothing
            weights = F.dropout(weights, dropout, training)
            attended = (weights @ v).transpose(1, 2).reshape(batch, q_in.shape[1], d)
        x = q_in + attended  # padded queries attend to nothing
        x = sasrec_feed_forward(p, x, layer, keep[:, rows], dropout, training)
    x = sasrec_norm(p, x, "final_norm")
    return x[:, -1] if last_only else x


class _Net(NamedParameters):
    """The trainable parameters, named as `_PARAMS`; the computation is `_forward`, shared with scoring."""

    def __init__(self, n_items: int, c: SASRecConfig) -> None:
        super().__init__(_initial_params(n_items, c))
        self.n_heads, self.dropout = c.n_heads, c.dropout

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return _forward(self.params, tokens, self.n_heads, self.dropout, self.training, last_only)


# ---- scoring ------------------------------------------------------------------------------------

def _score_blocks(params: dict[str, torch.Tensor], n_heads: int, users: np.ndarray, history: Interactions,
                  items: np.ndarray | None, max_seq_len: int, chunk: int) -> np.ndarray:
    """Scores <h_u, E_i> for `users` (all items, candidates (C,) or per-user (B, C)), `chunk` users a pass.

    The network runs in torch (no gradients) on the device of `params`; the item products are
    written straight into the returned array, so nothing beyond that (B, C) block is materialised.
    """
    table_t = params["item_embedding"]
    check_item_vocabulary(history, table_t.shape[0] - 1)

    def encode(part: np.ndarray) -> np.ndarray:
        # one row per distinct user: the fused attention kernel may round a row differently by its
        # position in the batch, and a user asked for twice must get identical scores
        distinct, inverse = np.unique(part, return_inverse=True)
        tokens = torch.from_numpy(trim_padding(last_items(history, distinct, max_seq_len))).to(table_t.device)
        with torch.no_grad():
            return _forward(params, tokens, n_heads, last_only=True).to("cpu", torch.float32).numpy()[inverse]

    table = table_t.detach().to("cpu", torch.float32).numpy()[1:]
    return score_in_chunks(encode, users, table, items, chunk=chunk)


class SASRec(ScoresFromHistory, TorchRecommender):
    """Causal self-attention over the user's recent items; next-item scores from the last slot."""

    Config = SASRecConfig

    # ---- training (the base's fit calls these) ------------------------------------------------

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        self._sequences = require_sequences("SASRec", SequenceBatches(train, c.max_seq_len, c.batch_size, rng,
                                                                       **c.window_options()))
        self._sampler = None if c.loss == "ce" else UniformNegativeSampler(train.matrix(), rng)
        return _Net(train.n_items, c)

    def trainer_settings(self) -> dict[str, Any]:
        # the trainer's default betas, stated: the authors' code uses beta2 = 0.98 (see the docstring)
        return {"optimizer": "adam", "adam_betas": (0.9, 0.999)}

    def batches(self):
        c, sampler = self.config, self._sampler
        for users, inputs, targets in self._sequences:
            if c.loss == "ce":
                yield inputs, targets
            elif c.loss == "bce":
                # one negative per non-padded slot, each avoiding the user's training items
                slots = targets != PAD
                negatives = np.zeros_like(targets)
                negatives[slots] = sampler.sample(np.repeat(users, slots.sum(1)), 1)[:, 0] + 1
                yield inputs, targets, negatives
            else:
                yield inputs, targets, sampler.sample(users, c.n_negatives or _N_NEGATIVES) + 1

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        loss = self.config.loss
        inputs, targets = batch[0], batch[1]
        hidden = module(inputs)
        slots = targets != PAD
        h, positives = hidden[slots], targets[slots]  # (M, d), (M,)
        table = module.params["item_embedding"]
        if loss == "ce":
            return F.cross_entropy(h @ table[1:].T, positives - 1)
        pos_logits = (h * table[positives]).sum(-1)
        if loss == "bce":
            neg_logits = (h * table[batch[2][slots]]).sum(-1)
            return (F.softplus(-pos_logits) + F.softplus(neg_logits)).mean()
        neg_logits = torch.einsum("btd,bnd->btn", hidden, table[batch[2]])[slots]  # (M, n_negatives)
        return sampled_softmax_loss(pos_logits, neg_logits)

    # ---- the fitted model ---------------------------------------------------------------------

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, "weights_")
        return torch_params(self.weights_, _PARAMS)

    def input_sequences(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The (B, max_seq_len) tokens (item index + 1, 0 = padding) the model reads for `users`."""
        return last_items(history, users, self.config.max_seq_len)

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The user representation h (output at the last slot), (B, embedding_size), from `history`."""
        params = self._params()

        def encode(part: np.ndarray) -> np.ndarray:
            tokens = torch.from_numpy(trim_padding(self.input_sequences(part, history)))
            with torch.no_grad():
                return _forward(params, tokens, self.config.n_heads, last_only=True).numpy()

        return embed_in_chunks(encode, users, self.config.embedding_size, self.config.score_batch_size)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._params(), self.config.n_heads, users, history, items, self.config.max_seq_len,
                             self.config.score_batch_size)
