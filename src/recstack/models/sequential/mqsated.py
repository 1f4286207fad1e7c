"""MQSA-TED (Zhu, Shi, Zhang, Wu, Mo & Nie, "Collaboration and Transition: Distilling Item Transitions
into Multi-Query Self-Attention for Sequential Recommendation", WSDM 2024, arXiv:2311.01056).

A SASRec network (see `recstack.models.sequential.sasrec`: same embedding, block layout, causal
mask, left padding, shared input/output item table) with two changes from the paper:

1. Multi-query self-attention (MQSA). SASRec's query at slot t is the (normalised) representation
   of the item at t alone. The L-query self-attention uses instead the mean of the representations
   of the last L slots t-L+1..t (the paper's eq. 7; padded slots are left out of the mean, so a
   sequence shorter than L averages what it has). Keys and values are unchanged and the mask stays
   causal, since every slot in the window is <= t. A short query (L = `short_query_len`, 1 = SASRec)
   and a long one (L = `long_query_len`) share W_Q, W_K, W_V, and each block mixes the two branches,
   out_t = alpha * SA(q_short)_t + (1 - alpha) * SA(q_long)_t (eq. 8): the long query pools
   collaborative context (lower variance, more bias), the short one keeps the latest item's
   transition (less bias). Each branch is SASRec's attention sub-layer with its residual added to
   its own query; the point-wise feed-forward net follows the mix.
2. Transition-aware embedding distillation (TED). A global item-transition graph is counted from
   the training sequences: w_ij = number of times item j follows item i within `transition_span`
   steps in one user's training sequence (the paper's span k, default 1; repeats i -> i left out).
   Teacher pseudo-labels (eq. 9): each row is normalised to sum to one and sharpened with a
   temperature, y_ij = softmax_{j in N(i)}(w_ij / sum_k w_ik / tau). The student (eq. 10) is the
   plain factorisation of the item table before self-attention, p_ij = softmax_{j != i}(<E_i, E_j>),
   and the distillation loss (eq. 11) is the cross-entropy -sum_j y_ij log p_ij, averaged over the
   source items i of the batch (the distinct items of its input sequences that have a successor in
   the graph). Total loss (eq. 12): L_rec + kd_weight * L_kd; L2 is left at 0 as in SASRec here.
   The item table thus learns the transitions, the self-attention output the collaborative signal,
   and both meet in score(i) = <h_u, E_i>.

Main loss: full softmax cross-entropy over the catalogue at every slot (the default loss of the
sequential models here, docs/decisions.md); the paper's L_rec is SASRec's next-item loss.
Training sequences, scoring in blocks of users from the `history` given at call time (train for
validation, train + valid for test), early stopping on validation NDCG@10 and saving (numpy arrays,
no pickle) are SASRec's.

Choices where the stored sources lack the paper's exact text: (a) the mix is applied inside every
attention block rather than once on the final representations; (b) the softmax of eq. 9 runs over
each item's observed successors only (a softmax over the whole catalogue would give the thousands
of never-observed items most of the mass at the paper's tau), (c) the student excludes j = i, matching
the teacher that has no self-loops; (d) the paper's "several L" is one short and one long window.
`kd_weight=0` turns TED off (MQSA alone), `alpha=1` or `long_query_len == short_query_len` reduces
the network to SASRec exactly (tested).

Defaults: the paper's (alpha 0.5, kd_weight 0.1, tau 0.1, span 1; L in [2, 4]) and SASRec's settings
here (embedding_size 64, 2 blocks, 1 head, dropout 0.2, max_seq_len 50, learning_rate 1e-3,
batch_size 128), with L chosen on ml-100k VALIDATION NDCG@10 (leave-last-one-out by time, all ratings
positive, full ranking with history masked, early stopping patience 10, seed 2020 unless said):
long_query_len 2 -> 0.1269 (seed 1: 0.1333), 3 -> 0.1239 (seed 1: 0.1328), 4 -> 0.1212; at L 3:
tau 0.05 -> 0.1234, no TED (kd_weight 0) -> 0.1241, alpha 1 (SASRec + TED) -> 0.1147; at L 2:
kd_weight 1.0 -> 0.1233, alpha 0.25 -> 0.1207. SASRec under the same run: 0.1147. One standard error
is about 0.008 on 943 users, so L 2 vs 3 is a tie (2 is the better mean); the multi-query attention
gives the gain over SASRec, while TED neither helps nor hurts on this dense catalogue (the paper too
reports its smallest TED gains on its least sequential dataset, Yelp); it stays on as the paper's
method.
`recstack run` with these defaults: valid / test NDCG@10 0.127 / 0.101 against SASRec's 0.115 / 0.090
(test for reference only); 250-400 s per fit on one busy CPU core, about 1.2x SASRec's time (two
query branches per block plus the distillation logits).
"""

from __future__ import annotations

import math
from typing import Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.attention import SASREC_PARAMS, sasrec_initial_params
from recstack.models.kernels.sequences import check_item_vocabulary, score_in_chunks, trim_padding
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.indexing import gather_rows
from recstack.train.sequences import PAD, SequenceBatches, last_items
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

_MASKED = -1e9  # finite fill for masked attention logits (as SASRec's code), so no NaN on empty rows
_EPS = 1e-8  # layer-norm epsilon of SASRec's code


class MQSATEDConfig(ModelConfig):
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
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    score_batch_size: PositiveInt = 256  # users per network pass when scoring
    device: str = "auto"
    verbose: bool = True

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
_WEIGHTS = tuple(f"{name}_" for name in _PARAMS)


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
    table, positions = p["item_embedding"], p["position_embedding"]
    d = table.shape[1]
    head_size = d // n_heads
    valid = tokens != PAD
    keep = valid.unsqueeze(-1).to(table.dtype)
    x = F.embedding(tokens, table, padding_idx=PAD) * math.sqrt(d) + positions[len(positions) - length:]
    x = F.dropout(x, dropout, training) * keep
    allowed = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    allowed = allowed.unsqueeze(0) & valid.unsqueeze(1)  # (B, Tq, Tk)
    # (weight, window) of each query branch; equal windows or alpha = 1 collapse to one branch (SASRec)
    if short_len == long_len or alpha >= 1.0:
        branches = [(1.0, short_len)]
    elif alpha <= 0.0:
        branches = [(1.0, long_len)]
    else:
        branches = [(alpha, short_len), (1.0 - alpha, long_len)]

    def norm(h: torch.Tensor, name: str, layer: int | None = None) -> torch.Tensor:
        w, b = (p[f"{name}_weight"], p[f"{name}_bias"]) if layer is None else \
            (p[f"{name}_weight"][layer], p[f"{name}_bias"][layer])
        return F.layer_norm(h, (d,), w, b, _EPS)

    def linear(h: torch.Tensor, name: str, layer: int) -> torch.Tensor:
        return h @ p[f"{name}_weight"][layer] + p[f"{name}_bias"][layer]

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.reshape(batch, h.shape[1], n_heads, head_size).transpose(1, 2)

    n_layers = len(p["query_weight"])
    for layer in range(n_layers):
        rows = slice(length - 1, length) if last_only and layer == n_layers - 1 else slice(0, length)
        normed = norm(x, "attn_norm", layer)
        k, v = heads(linear(x, "key", layer)), heads(linear(x, "value", layer))
        mask = ~allowed[:, None, rows]
        out = 0.0
        for weight, window in branches:
            # the query pools the window over the full sequence, then only the needed rows are kept
            q_in = normed[:, rows] if window == 1 else window_mean(normed, keep, window)[:, rows]
            q = heads(linear(q_in, "query", layer))
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(head_size)
            attn = torch.softmax(logits.masked_fill(mask, _MASKED), dim=-1) * keep[:, None, rows]
            attn = F.dropout(attn, dropout, training)
            out = out + weight * (q_in + (attn @ v).transpose(1, 2).reshape(batch, q_in.shape[1], d))
        f_in = norm(out, "ffn_norm", layer)
        f = F.dropout(torch.relu(linear(f_in, "ffn_1", layer)), dropout, training)
        x = (f_in + F.dropout(linear(f, "ffn_2", layer), dropout, training)) * keep[:, rows]
    x = norm(x, "final_norm")
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
    logits = logits.scatter(1, sources[:, None], _MASKED)  # the student cannot predict i -> i
    log_p = torch.log_softmax(logits, dim=-1)
    return -(labels * log_p[rows, cols]).sum() / len(sources)


def _batch_teacher(teacher: sp.csr_matrix, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct input items that have successors, and their teacher rows in coordinate form."""
    sources = np.unique(inputs[inputs != PAD]) - 1
    sources = sources[np.diff(teacher.indptr)[sources] > 0]
    block = teacher[sources].tocoo()
    return sources, block.row.astype(np.int64), block.col.astype(np.int64), block.data.astype(np.float32)


# ---- network, scoring, recommender --------------------------------------------------------------

class _Net(torch.nn.Module):
    def __init__(self, n_items: int, c: MQSATEDConfig) -> None:
        super().__init__()
        self.c = c
        self.params = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(value) for name, value in _initial_params(n_items, c).items()})

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        c = self.c
        return _forward(dict(self.params), tokens, c.n_heads, c.short_query_len, c.long_query_len, c.alpha,
                        c.dropout, self.training, last_only)

    def weights(self) -> dict[str, np.ndarray]:
        return {f"{name}_": value.detach().to("cpu", torch.float32).numpy().copy()
                for name, value in self.params.items()}


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


class _LiveScorer:
    """Scores from the module's current weights (the trainer's validation calls it)."""

    def __init__(self, net: _Net, config: MQSATEDConfig) -> None:
        self.net, self.config = net, config

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(dict(self.net.params), self.config, users, history, items)


class MQSATED(SaveLoad):
    """Multi-query (short + long window) causal self-attention, with item transitions distilled into
    the item table; next-item scores from the last slot."""

    Config = MQSATEDConfig

    def __init__(self, config: MQSATEDConfig | None = None) -> None:
        self.config = config or MQSATEDConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("MQSA-TED cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        sequences = SequenceBatches(train, c.max_seq_len, c.batch_size, rng)
        if len(sequences.users) == 0:
            raise RecstackError("MQSA-TED needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        teacher = teacher_labels(transition_graph(train, c.transition_span), c.kd_temperature)
        distil = c.kd_weight > 0 and teacher.nnz > 0
        net = _Net(train.n_items, c)

        def batches():
            for _, inputs, targets in sequences:
                yield (inputs, targets, *_batch_teacher(teacher, inputs)) if distil else (inputs, targets)

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            inputs, targets = batch[0], batch[1]
            hidden = module(inputs)
            slots = targets != PAD
            table = module.params["item_embedding"]
            loss = F.cross_entropy(hidden[slots] @ table[1:].T, targets[slots] - 1)
            if distil and len(batch[2]):
                loss = loss + c.kd_weight * distillation_loss(table, *batch[2:])
            return loss

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net, c), train=train, valid=valid)
        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        self._replace_fitted({**net.weights(), "history_": history, "best_epoch_": best_epoch})
        return self

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, *_WEIGHTS)
        return {name: torch.from_numpy(getattr(self, f"{name}_")) for name in _PARAMS}

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The user representation h (output at the last slot), (B, embedding_size), from `history`."""
        params = self._params()
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.config.embedding_size), dtype=np.float32)
        for start in range(0, len(users), self.config.score_batch_size):
            part = slice(start, start + self.config.score_batch_size)
            out[part] = _hidden(params, self.config, users[part], history).numpy()
        return out

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._params(), self.config, users, history, items)
