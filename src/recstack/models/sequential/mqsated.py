"""MQSA-TED (Zhu, Shi, Zhang, Wu, Mo & Nie, "Collaboration and Transition: Distilling Item Transitions
into Multi-Query Self-Attention for Sequential Recommendation", WSDM 2024, arXiv:2311.01056).

A SASRec network (same embedding, block layout, causal mask, shared input/output item table,
score(i) = <h_u, E_i>) with two changes from the paper:
1. Multi-query self-attention: the query at slot t is the mean of the normalised representations
   of the last L slots (eq. 7); a short (L = `short_query_len`) and a long (L = `long_query_len`)
   query share W_Q, W_K, W_V and each block mixes them, out_t = alpha * SA(q_short)_t +
   (1 - alpha) * SA(q_long)_t (eq. 8), each branch with its residual onto its own query.
2. Transition-aware embedding distillation: teacher labels y_ij = softmax over item i's observed
   successors j of (w_ij / sum_k w_ik) / tau (eq. 9), w counted within `transition_span` steps;
   the student p_ij = softmax_{j != i}(<E_i, E_j>) (eq. 10); loss L_rec + kd_weight * L_kd with
   L_kd = -sum_j y_ij log p_ij (eqs. 11-12), L_rec the full-softmax next-item loss.
Fitted state: `weights_`, SASRec's named arrays (kernels/attention.py's layout).

Choices where the stored sources lack the paper's text: the mix inside every block, eq. 9's
softmax over observed successors only, no j = i in the student, one short and one long window.
`alpha=1` or equal windows reduce the network to SASRec exactly (tested). Design notes, the
tuning record and costs: docs/models/mqsated.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.attention import (MASKED, SASREC_PARAMS, NamedParameters, sasrec_feed_forward,
                                               sasrec_initial_params, sasrec_inputs, sasrec_linear, sasrec_norm,
                                               torch_params)
from recstack.models.kernels.sequences import (SequenceWindowFields, check_item_vocabulary, embed_in_chunks,
                                               require_sequences, score_in_chunks, trim_padding)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted
from recstack.train.indexing import gather_rows
from recstack.train.sequences import PAD, SequenceBatches, last_items


class MQSATEDConfig(ModelConfig, TrainingFields, SequenceWindowFields):
    embedding_size: PositiveInt = 64
    n_layers: PositiveInt = 2  # self-attention blocks
    n_heads: PositiveInt = 1  # must divide embedding_size
    dropout: confloat(ge=0.0, lt=1.0) = 0.2
    max_seq_len: PositiveInt = 50
    short_query_len: PositiveInt = 1  # L of the short query (1: the latest item, as SASRec)
    long_query_len: PositiveInt = 2  # L of the long query: mean of the last L slots
    alpha: confloat(ge=0.0, le=1.0) = 0.5  # weight of the short-query branch; 1 - alpha for the long one
    kd_weight: NonNegativeFloat = 0.1  # lambda_kd of the transition distillation loss (0: no TED)
    kd_temperature: PositiveFloat = 0.1  # tau of the teacher pseudo-labels
    transition_span: PositiveInt = 1  # k: j counts as a transition of i when it follows within k steps
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    score_batch_size: PositiveInt = 256  # users per network pass when scoring

    @model_validator(mode="after")
    def _consistent(self) -> "MQSATEDConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        if self.short_query_len > self.long_query_len:
            raise ValueError(f"short_query_len ({self.short_query_len}) must not exceed long_query_len "
                             f"({self.long_query_len}); swap them")
        if self.long_query_len > self.max_seq_len:
            raise ValueError(f"long_query_len ({self.long_query_len}) cannot exceed max_seq_len ({self.max_seq_len})")
        return self


# MQSA-TED's parameters are SASRec's (the long and short queries share W_Q/W_K/W_V), with its
# initialisation: Glorot-uniform tables and matrices, zero biases, unit norms, zero padding row
_PARAMS = SASREC_PARAMS


def _initial_params(n_items: int, c: MQSATEDConfig) -> dict[str, torch.Tensor]:
    return sasrec_initial_params(n_items, c)


# ---- multi-query self-attention -----------------------------------------------------------------

def window_mean(h: torch.Tensor, keep: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, d) -> (B, T, d): at slot t the mean of h over the non-padded slots among t-window+1..t.

    `keep` is (B, T, 1), 1 for real slots. Prefix sums make it O(T) for any window; a padded slot
    (or one whose window holds no real slot) gets zeros.
    """
    if window == 1:
        return h * keep
    zero = h.new_zeros(h.shape[0], 1, h.shape[2])
    sums = torch.cat([zero, torch.cumsum(h * keep, dim=1)], dim=1)  # sums[:, t] = sum of slots < t
    counts = torch.cat([zero[..., :1], torch.cumsum(keep, dim=1)], dim=1)
    length = h.shape[1]
    ends = torch.arange(1, length + 1, device=h.device)
    starts = (ends - window).clamp(min=0)
    total = sums[:, ends] - sums[:, starts]
    n = counts[:, ends] - counts[:, starts]
    return total / n.clamp(min=1.0) * keep


def _forward(p: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int, short_len: int, long_len: int,
             alpha: float, dropout: float = 0.0, training: bool = False, last_only: bool = False) -> torch.Tensor:
    """(B, T) left-padded tokens -> hidden states (B, T, d), or (B, d) at the last slot with `last_only`."""
    batch, length = tokens.shape
    d = p["item_embedding"].shape[1]
    head_size = d // n_heads
    x, keep, allowed = sasrec_inputs(p, tokens, dropout, training)  # allowed: (B, Tq, Tk)
    # (weight, window) of each query branch; equal windows or alpha = 1 collapse to one branch (SASRec)
    if short_len == long_len or alpha >= 1.0:
        branches = [(1.0, short_len)]
    elif alpha <= 0.0:
        branches = [(1.0, long_len)]
    else:
        branches = [(alpha, short_len), (1.0 - alpha, long_len)]

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.reshape(batch, h.shape[1], n_heads, head_size).transpose(1, 2)

    n_layers = len(p["query_weight"])
    for layer in range(n_layers):
        rows = slice(length - 1, length) if last_only and layer == n_layers - 1 else slice(0, length)
        normed = sasrec_norm(p, x, "attn_norm", layer)
        k, v = heads(sasrec_linear(p, x, "key", layer)), heads(sasrec_linear(p, x, "value", layer))
        mask = ~allowed[:, None, rows]
        out = 0.0
        for weight, window in branches:
            # the query pools the window over the full sequence, then only the needed rows are kept
            q_in = normed[:, rows] if window == 1 else window_mean(normed, keep, window)[:, rows]
            q = heads(sasrec_linear(p, q_in, "query", layer))
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(head_size)
            attn = torch.softmax(logits.masked_fill(mask, MASKED), dim=-1) * keep[:, None, rows]
            attn = F.dropout(attn, dropout, training)
            out = out + weight * (q_in + (attn @ v).transpose(1, 2).reshape(batch, q_in.shape[1], d))
        x = sasrec_feed_forward(p, out, layer, keep[:, rows], dropout, training)
    x = sasrec_norm(p, x, "final_norm")
    return x[:, -1] if last_only else x


# ---- transition-aware embedding distillation ----------------------------------------------------

def transition_graph(train: Interactions, span: int = 1) -> sp.csr_matrix:
    """(n_items, n_items) float32 CSR: w_ij = times item j follows item i within `span` steps in one
    user's (time-ordered) training sequence; self-transitions are dropped."""
    if span < 1:
        raise RecstackError(f"transition span must be >= 1, got {span}")
    user, item = np.asarray(train.user), np.asarray(train.item)
    src, dst = [], []
    for step in range(1, span + 1):
        same = (user[:-step] == user[step:]) & (item[:-step] != item[step:])
        src.append(item[:-step][same])
        dst.append(item[step:][same])
    src, dst = np.concatenate(src).astype(np.int64), np.concatenate(dst).astype(np.int64)
    graph = sp.csr_matrix((np.ones(len(src), dtype=np.float32), (src, dst)), shape=(train.n_items, train.n_items))
    graph.sum_duplicates()
    return graph


def teacher_labels(graph: sp.csr_matrix, temperature: float) -> sp.csr_matrix:
    """Row-stochastic pseudo-labels on the graph's edges: softmax over each row's successors of the
    row-normalised weights divided by `temperature` (rows without successors stay empty)."""
    graph = sp.csr_matrix(graph, dtype=np.float64)
    graph.sum_duplicates()
    graph.eliminate_zeros()
    out_degree = np.diff(graph.indptr)
    filled = np.flatnonzero(out_degree)
    if len(filled) == 0:
        return sp.csr_matrix(graph.shape, dtype=np.float32)
    starts, sizes = graph.indptr[filled], out_degree[filled]

    def per_edge(row_values: np.ndarray) -> np.ndarray:
        return np.repeat(row_values, sizes)

    logits = graph.data / per_edge(np.add.reduceat(graph.data, starts)) / temperature
    weights = np.exp(logits - per_edge(np.maximum.reduceat(logits, starts)))
    weights /= per_edge(np.add.reduceat(weights, starts))
    return sp.csr_matrix((weights.astype(np.float32), graph.indices.copy(), graph.indptr.copy()), shape=graph.shape)


def distillation_loss(table: torch.Tensor, sources: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
    """Mean over `sources` of -sum_j y_ij log softmax_{j != i}(<E_i, E_j>).

    `table` is the (n_items + 1, d) token table (row 0 padding); `sources` (S,) item indices; the
    teacher's non-zeros are `labels` at (rows: position in `sources`, cols: item index)."""
    items = table[1:]
    logits = gather_rows(items, sources) @ items.T  # (S, n_items)
    logits = logits.scatter(1, sources[:, None], MASKED)  # the student cannot predict i -> i
    log_p = torch.log_softmax(logits, dim=-1)
    return -(labels * log_p[rows, cols]).sum() / len(sources)


def _batch_teacher(teacher: sp.csr_matrix, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct input items that have successors, and their teacher rows in coordinate form."""
    sources = np.unique(inputs[inputs != PAD]) - 1
    sources = sources[np.diff(teacher.indptr)[sources] > 0]
    block = teacher[sources].tocoo()
    return sources, block.row.astype(np.int64), block.col.astype(np.int64), block.data.astype(np.float32)


# ---- network, scoring, recommender --------------------------------------------------------------

class _Net(NamedParameters):
    """SASRec's parameters (`_PARAMS`); the computation is `_forward`, shared with scoring."""

    def __init__(self, n_items: int, c: MQSATEDConfig) -> None:
        super().__init__(_initial_params(n_items, c))
        self.c = c

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        c = self.c
        return _forward(self.params, tokens, c.n_heads, c.short_query_len, c.long_query_len, c.alpha,
                        c.dropout, self.training, last_only)


def _hidden(params: dict[str, torch.Tensor], c: MQSATEDConfig, users: np.ndarray,
            history: Interactions) -> torch.Tensor:
    tokens = torch.from_numpy(trim_padding(last_items(history, users, c.max_seq_len))).to(
        params["item_embedding"].device)
    with torch.no_grad():
        return _forward(params, tokens, c.n_heads, c.short_query_len, c.long_query_len, c.alpha, last_only=True)


def _score_blocks(params: dict[str, torch.Tensor], c: MQSATEDConfig, users: np.ndarray, history: Interactions,
                  items: np.ndarray | None) -> np.ndarray:
    """<h_u, E_i> for `users` (all items, candidates (C,) or per-user (B, C)), score_batch_size users a pass."""
    table_t = params["item_embedding"]
    check_item_vocabulary(history, table_t.shape[0] - 1)
    table = table_t.detach().to("cpu", torch.float32).numpy()[1:]
    return score_in_chunks(lambda part: _hidden(params, c, part, history).to("cpu", torch.float32).numpy(),
                           users, table, items, chunk=c.score_batch_size)


class MQSATED(ScoresFromHistory, TorchRecommender):
    """Multi-query (short + long window) causal self-attention, with item transitions distilled into
    the item table; next-item scores from the last slot."""

    Config = MQSATEDConfig

    # ---- training (the base's fit calls these) ------------------------------------------------

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        self._sequences = require_sequences("MQSA-TED", SequenceBatches(train, c.max_seq_len, c.batch_size, rng,
                                                                         **c.window_options()))
        self._teacher = teacher_labels(transition_graph(train, c.transition_span), c.kd_temperature)
        self._distil = c.kd_weight > 0 and self._teacher.nnz > 0
        return _Net(train.n_items, c)

    def trainer_settings(self) -> dict[str, Any]:
        return {"optimizer": "adam"}

    def batches(self):
        for _, inputs, targets in self._sequences:
            yield (inputs, targets, *_batch_teacher(self._teacher, inputs)) if self._distil else (inputs, targets)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        inputs, targets = batch[0], batch[1]
        hidden = module(inputs)
        slots = targets != PAD
        table = module.params["item_embedding"]
        loss = F.cross_entropy(hidden[slots] @ table[1:].T, targets[slots] - 1)
        if self._distil and len(batch[2]):
            loss = loss + self.config.kd_weight * distillation_loss(table, *batch[2:])
        return loss

    # ---- the fitted model ---------------------------------------------------------------------

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, "weights_")
        return torch_params(self.weights_, _PARAMS)

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The user representation h (output at the last slot), (B, embedding_size), from `history`."""
        params = self._params()
        return embed_in_chunks(lambda part: _hidden(params, self.config, part, history).numpy(), users,
                               self.config.embedding_size, self.config.score_batch_size)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._params(), self.config, users, history, items)
