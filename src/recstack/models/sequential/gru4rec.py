"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016;
Hidasi & Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-based
Recommendations", CIKM 2018).

A user is their last `max_seq_len` items, oldest to newest. Each item is embedded, passes through
`n_layers` GRU layers (hidden size = `embedding_size`), and the hidden state after the newest item,
h, scores every item: score(i) = <h, W_i> + b_i. With `tied_embedding` (the 2018 code's
"constrained embedding", the default here) W is the input item table E; otherwise W is a separate
output table. Dropout acts on the embeddings and on the GRU output. Sequences are fed right-aligned
(the recurrence is causal). Every non-padded training slot predicts its next item; `loss` is "ce"
(full softmax, the default) or "bpr_max" (the 2018 paper's BPR-max over uniform negatives).
Fitted state: `weights_`, the network's state dict as named arrays.

Differences from the papers' code: Adam with the trainer's defaults instead of Adagrad, training
windows per user (`train_windows`: the latest one by default, or every event once per epoch with
"sliding") instead of session-parallel batches over the whole log, no final ELU for BPR-max, uniform negatives, training stops early on validation NDCG@10. Design
notes, the tuning record and costs: docs/models/gru4rec.md.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.models.kernels.sequences import (SequenceWindowFields, check_item_vocabulary, embed_in_chunks,
                                               require_sequences, score_in_chunks)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, SequenceBatches, last_items

_N_NEGATIVES = 256  # bpr_max's negatives per sequence when n_negatives is not given


class GRU4RecConfig(ModelConfig, TrainingFields, SequenceWindowFields):
    embedding_size: PositiveInt = 64  # item embedding and GRU hidden size
    n_layers: PositiveInt = 1  # stacked GRU layers
    dropout: confloat(ge=0.0, lt=1.0) = 0.2
    tied_embedding: bool = True  # output item vectors = input item embeddings (2018 "constrained embedding")
    max_seq_len: PositiveInt = 50  # the most recent events a user is represented by
    loss: Literal["ce", "bpr_max"] = "ce"
    n_negatives: PositiveInt | None = None  # negatives per sequence for loss="bpr_max" (None: 256)
    bpr_max_reg: NonNegativeFloat | None = None  # BPR-max score regularisation (None: 1.0)
    learning_rate: PositiveFloat = 3e-3
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    score_batch_size: PositiveInt = 256  # users per network pass when scoring

    @model_validator(mode="after")
    def _consistent(self) -> "GRU4RecConfig":
        if self.loss != "bpr_max":
            for name in ("n_negatives", "bpr_max_reg"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to loss='bpr_max' only (loss is {self.loss!r}; "
                                     "'ce' uses the whole catalogue)")
        return self


def bpr_max_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, reg: float) -> torch.Tensor:
    """BPR-max (Hidasi & Karatzoglou 2018), mean over rows: pos (M,), neg (M, N).

    -log sum_j s_j sigmoid(r_i - r_j) + reg * sum_j s_j r_j^2 with s = softmax over the row's negative
    scores; the first term is a log-sum-exp of log s_j + log sigmoid(r_i - r_j), finite at any margin.
    """
    log_weights = torch.log_softmax(neg_scores, dim=-1)
    ranking = -torch.logsumexp(log_weights + F.logsigmoid(pos_scores.unsqueeze(-1) - neg_scores), dim=-1)
    penalty = (log_weights.exp() * neg_scores.pow(2)).sum(-1)
    return (ranking + reg * penalty).mean()


def _right_align(tokens: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """Left-padded (B, T) tokens -> the same items from slot 0 on, padding after them; trailing columns
    that are padding in every row are dropped (at least one column stays). With `like` (B, T), the
    columns move as `like`'s do (targets follow their inputs, whatever their own padding)."""
    tokens = np.asarray(tokens)
    length = tokens.shape[1]
    lengths = (np.asarray(tokens if like is None else like) != PAD).sum(1)
    source = np.arange(length)[None, :] + (length - lengths)[:, None]
    aligned = np.where(source < length, np.take_along_axis(tokens, np.minimum(source, length - 1), 1), PAD)
    return aligned[:, :max(int(lengths.max(initial=0)), 1)]


class _Net(torch.nn.Module):
    def __init__(self, n_items: int, c: GRU4RecConfig) -> None:
        super().__init__()
        d = c.embedding_size
        bound = math.sqrt(6.0 / (n_items + 1 + d))  # Glorot-uniform, as the official code's init
        table = torch.empty(n_items + 1, d).uniform_(-bound, bound)
        table[PAD] = 0.0
        self.item_embedding = torch.nn.Parameter(table)
        self.gru = torch.nn.GRU(d, d, c.n_layers, batch_first=True, dropout=c.dropout if c.n_layers > 1 else 0.0)
        self.output_embedding = None if c.tied_embedding else \
            torch.nn.Parameter(torch.empty(n_items, d).uniform_(-bound, bound))
        self.output_bias = torch.nn.Parameter(torch.zeros(n_items))
        self.dropout = c.dropout

    def output_table(self) -> torch.Tensor:
        """(n_items, d) output item vectors (row i = item i)."""
        return self.item_embedding[1:] if self.output_embedding is None else self.output_embedding

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) right-aligned tokens -> GRU outputs (B, T, d); slot t has read tokens[:, :t+1]."""
        x = F.dropout(F.embedding(tokens, self.item_embedding, padding_idx=PAD), self.dropout, self.training)
        hidden, _ = self.gru(x)
        return F.dropout(hidden, self.dropout, self.training)

    def last(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) right-aligned tokens -> the output after each row's newest item (B, d) (slot 0 if empty)."""
        last = ((tokens != PAD).sum(1) - 1).clamp(min=0)
        return self(tokens)[torch.arange(len(tokens), device=tokens.device), last]


def _net_from(weights: dict[str, np.ndarray], c: GRU4RecConfig) -> _Net:
    """A `_Net` (eval mode, cpu) carrying a fitted `weights_` (its state dict as named numpy arrays)."""
    n_items = weights["output_bias"].shape[0]
    with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the global RNG alone
        net = _Net(n_items, c)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(torch.from_numpy(weights[name]))
    return net.eval()


def _score_blocks(net: _Net, users: np.ndarray, history: Interactions, items: np.ndarray | None,
                  max_seq_len: int, chunk: int) -> np.ndarray:
    """Scores <h_u, W_i> + b_i for `users` (all items, candidates (C,) or per-user (B, C)), `chunk` users a pass."""
    check_item_vocabulary(history, net.output_bias.shape[0])
    device = net.output_bias.device

    def encode(part: np.ndarray) -> np.ndarray:
        # one pass per distinct user: the GRU's batched kernels may round a row differently by its
        # position in the batch, and a user asked for twice must get identical scores
        distinct, inverse = np.unique(part, return_inverse=True)
        tokens = torch.from_numpy(_right_align(last_items(history, distinct, max_seq_len))).to(device)
        with torch.no_grad():
            return net.last(tokens).to("cpu", torch.float32).numpy()[inverse]

    with torch.no_grad():
        table = net.output_table().detach().to("cpu", torch.float32).numpy()
        bias = net.output_bias.detach().to("cpu", torch.float32).numpy()
    return score_in_chunks(encode, users, table, items, bias, chunk)


class GRU4Rec(ScoresFromHistory, TorchRecommender):
    """A GRU over the user's recent items; next-item scores from the state after the newest one."""

    Config = GRU4RecConfig

    # ---- training (the base's fit calls these) ------------------------------------------------

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        self._sequences = require_sequences("GRU4Rec", SequenceBatches(train, c.max_seq_len, c.batch_size, rng,
                                                                        **c.window_options()))
        self._sampler = UniformNegativeSampler(train.matrix(), rng) if c.loss == "bpr_max" else None
        return _Net(train.n_items, c)

    def trainer_settings(self) -> dict[str, Any]:
        return {"optimizer": "adam"}

    def batches(self):
        c = self.config
        for users, inputs, targets in self._sequences:
            inputs, targets = _right_align(inputs), _right_align(targets, like=inputs)
            if c.loss == "ce":
                yield inputs, targets
            else:
                yield inputs, targets, self._sampler.sample(users, c.n_negatives or _N_NEGATIVES)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        inputs, targets = batch[0], batch[1]
        hidden = module(inputs)
        slots = targets != PAD
        h, positives = hidden[slots], targets[slots] - 1  # (M, d), (M,) item indices
        table = module.output_table()
        if c.loss == "ce":
            return F.cross_entropy(h @ table.T + module.output_bias, positives)
        pos = (h * table[positives]).sum(-1) + module.output_bias[positives]
        negatives = batch[2]  # (B, N) item indices, shared by a sequence's slots
        neg = torch.einsum("btd,bnd->btn", hidden, table[negatives]) + module.output_bias[negatives][:, None]
        return bpr_max_loss(pos, neg[slots], 1.0 if c.bpr_max_reg is None else c.bpr_max_reg)

    # ---- the fitted model ---------------------------------------------------------------------

    def _net(self) -> _Net:
        check_fitted(self, "weights_")
        return _net_from(self.weights_, self.config)

    def input_sequences(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The (B, max_seq_len) left-padded tokens (item index + 1, 0 = padding) the model reads for `users`."""
        return last_items(history, users, self.config.max_seq_len)

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The user representation h (GRU output after the newest item), (B, embedding_size), from `history`."""
        net = self._net()

        def encode(part: np.ndarray) -> np.ndarray:
            tokens = torch.from_numpy(_right_align(self.input_sequences(part, history)))
            with torch.no_grad():
                return net.last(tokens).numpy()

        return embed_in_chunks(encode, users, self.config.embedding_size, self.config.score_batch_size)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._net(), users, history, items, self.config.max_seq_len,
                             self.config.score_batch_size)
