"""HCN (Yuan et al., "Hierarchical Multi-Interest Co-Network For Coarse-Grained Ranking",
arXiv:2210.10547, 2022): K interest vectors per user, read from the user's item sequence, and an item
scored by its best-matching interest, score(u, i) = max_k <v_uk, E_i>.

Only the paper's abstract and introduction were available; the forms below are INFERRED from them
(the reasoning and the tuning record are in docs/models/hcn.md):
- hierarchical extraction: `n_levels` centre updates in the manner of capsule routing; each
  behaviour h_i (scaled by sqrt(d)) is split among the K centres by a softmax over the centres of
  <c_k Wq, h_i Wk> / sqrt(d), each centre moves to its share's weighted mean, then LN(c + m) and a
  residual feed-forward step; level 0 is routed by K learned starting centres shared by all users;
- co-interest network: one extractor over the last `max_seq_len` events (long term), one over the
  last `short_seq_len` (short term); each long-term interest attends over the short-term ones,
  v_k = LN(L_k + sum_j softmax_j(<L_k Wq', S_j Wk'> / sqrt(d)) S_j Wv');
- training: next-item prediction from every prefix; `target_interest` "max" (default) trains the
  serving score max_k, "argmax" only the interest closest to the target (MIND/ComiRec's hard
  routing); `loss` "ce" (full softmax) or "sampled_softmax"; `diversity_reg` adds the mean squared
  cosine between a user's interests. The paper's coarse-grained ranking scores a candidate set;
  here the same score ranks the whole catalogue (or the candidates given to `score`), by user
  chunks and column blocks so that nothing beyond the caller's (B, n_items) block is held.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.sequences import SequenceWindowFields, check_item_vocabulary, trim_padding
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted
from recstack.train.losses import sampled_softmax_loss
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, SequenceBatches, last_items

_EPS = 1e-6
_N_NEGATIVES = 256  # sampled_softmax's negatives per sequence when n_negatives is not given
_SCRATCH = 1 << 20  # floats of the largest temporary product when scoring (4 MB)


class HCNConfig(ModelConfig, TrainingFields, SequenceWindowFields):
    embedding_size: PositiveInt = 64
    n_interests: PositiveInt = 4  # K interest vectors per user
    n_levels: PositiveInt = 2  # centre updates of each hierarchical extractor
    max_seq_len: PositiveInt = 50  # long-term sequence: the most recent events a user is represented by
    short_seq_len: PositiveInt = 10  # short-term sequence: the newest events of the long-term one
    dropout: confloat(ge=0.0, lt=1.0) = 0.2
    loss: Literal["ce", "sampled_softmax"] = "ce"
    n_negatives: PositiveInt | None = None  # negatives per sequence for loss="sampled_softmax" (None: 256)
    # which interest scores a training target: "argmax" = the one closest to it (MIND/ComiRec's hard
    # routing), "max" = every item by its best interest, the serving score (see the docstring)
    target_interest: Literal["argmax", "max"] = "max"
    diversity_reg: NonNegativeFloat = 0.0  # weight of the mean squared cosine between a user's interests
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    score_batch_size: PositiveInt = 256  # users per network pass when scoring

    @model_validator(mode="after")
    def _consistent(self) -> "HCNConfig":
        if self.short_seq_len > self.max_seq_len:
            raise ValueError(f"short_seq_len ({self.short_seq_len}) must not exceed max_seq_len "
                             f"({self.max_seq_len}): the short-term sequence is the newest part of the long-term one")
        if self.n_negatives is not None and self.loss != "sampled_softmax":
            raise ValueError(f"n_negatives applies to loss='sampled_softmax' only (loss is {self.loss!r}; "
                             "'ce' uses the whole catalogue)")
        return self


# parameter name -> fitted array `weights_["params.<name>"]` (the module's state-dict key). Extractor
# tensors are stacked (branch, level, ...) with branch 0 = long-term, 1 = short-term; linear maps are
# stored (in, out) so a layer is x @ W (+ b).
_PARAMS = (
    "item_embedding", "centres",
    "query_weight", "key_weight", "value_weight", "centre_norm_weight", "centre_norm_bias",
    "ffn_1_weight", "ffn_1_bias", "ffn_2_weight", "ffn_2_bias", "ffn_norm_weight", "ffn_norm_bias",
    "co_query_weight", "co_key_weight", "co_value_weight", "co_norm_weight", "co_norm_bias",
)


def _initial_params(n_items: int, c: HCNConfig) -> dict[str, torch.Tensor]:
    """Glorot-uniform tables and maps, zero biases, unit norms, unit-normal starting centres and a
    zero padding row in the item table."""
    d, k, levels = c.embedding_size, c.n_interests, c.n_levels

    def glorot(*shape: int) -> torch.Tensor:
        bound = math.sqrt(6.0 / (shape[-2] + shape[-1]))
        return torch.empty(*shape).uniform_(-bound, bound)

    p = {"item_embedding": glorot(n_items + 1, d), "centres": torch.randn(2, k, d)}
    p["item_embedding"][PAD] = 0.0
    for name in ("query", "key", "value", "ffn_1", "ffn_2"):
        p[f"{name}_weight"] = glorot(2, levels, d, d)
    for name in ("ffn_1", "ffn_2"):
        p[f"{name}_bias"] = torch.zeros(2, levels, d)
    for name in ("centre_norm", "ffn_norm"):
        p[f"{name}_weight"], p[f"{name}_bias"] = torch.ones(2, levels, d), torch.zeros(2, levels, d)
    for name in ("co_query", "co_key", "co_value"):
        p[f"{name}_weight"] = glorot(d, d)
    p["co_norm_weight"], p["co_norm_bias"] = torch.ones(d), torch.zeros(d)
    return p


def _refine(p: dict[str, torch.Tensor], branch: int, level: int, c: torch.Tensor | None,
            mean: torch.Tensor) -> torch.Tensor:
    """Move the centres to their behaviours' weighted mean, then a residual feed-forward step. The
    shared starting centres only route (they are the queries of level 0); from level 1 on, each level
    refines the user's own centres residually."""
    def w(name: str) -> torch.Tensor:
        return p[name][branch, level]

    d = mean.shape[-1]
    c = F.layer_norm(mean if c is None else c + mean, (d,), w("centre_norm_weight"), w("centre_norm_bias"))
    f = torch.relu(c @ w("ffn_1_weight") + w("ffn_1_bias")) @ w("ffn_2_weight") + w("ffn_2_bias")
    return F.layer_norm(c + f, (d,), w("ffn_norm_weight"), w("ffn_norm_bias"))


def _route(p: dict[str, torch.Tensor], branch: int, level: int, c: torch.Tensor | None, h: torch.Tensor,
           window: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One level of the hierarchical extractor for Tq query slots -> centres (B, Tq, K, d).

    `c` (B, Tq, K, d) are the previous level's centres (None at level 0: the shared starting centres
    route). Behaviours h (B, T, d) are either shared by the query slots, with window (B, Tq, T), or
    gathered per slot by `rows` (Tq, W), with window (B, Tq, W); `window` says which ones a slot reads.
    Each behaviour is split among the centres by a softmax over the centres; each centre takes the
    weighted mean of its share."""
    def w(name: str) -> torch.Tensor:
        return p[name][branch, level]

    batch, n_query, length = window.shape
    d = h.shape[-1]
    if c is None:
        c = p["centres"][branch].expand(batch, n_query, -1, -1)
    weight = window.to(h.dtype).unsqueeze(2)  # (B, Tq, 1, T)
    queries, keys, values = c @ w("query_weight"), h @ w("key_weight"), h @ w("value_weight")
    if rows is not None:  # project, then gather: (B, Tq, W, d)
        keys, values = keys[:, rows], values[:, rows]
    if rows is None:  # (B, Tq * K, ...) batched products: no copy of the behaviours per query slot
        logits = torch.bmm(queries.reshape(batch, -1, d), keys.transpose(1, 2)).view(batch, n_query, -1, length)
    else:
        logits = queries @ keys.transpose(-1, -2)
    share = torch.softmax(logits / math.sqrt(d), dim=2) * weight + _EPS * weight  # (B, Tq, K, T)
    if rows is None:
        mean = torch.bmm(share.reshape(batch, -1, length), values).view(batch, n_query, -1, d)
    else:
        mean = share @ values
    return _refine(p, branch, level, None if level == 0 else c,
                   mean / share.sum(-1, keepdim=True).clamp_min(_EPS))


def _route_prefixes(p: dict[str, torch.Tensor], branch: int, h: torch.Tensor, valid: torch.Tensor,
                    queries: torch.Tensor) -> torch.Tensor:
    """Level 0 for windows that are whole prefixes (slot q reads every event up to q): the starting
    centres are the same for every slot, so each behaviour's split among them is too, and the
    weighted sums of all prefixes are one cumulative sum (O(T K d) instead of O(T^2 K d)). Equal to
    `_route(p, branch, 0, None, h, prefix window)`."""
    d = h.shape[-1]
    w = {name: p[name][branch, 0] for name in ("query_weight", "key_weight", "value_weight")}
    logits = (h @ w["key_weight"]) @ (p["centres"][branch] @ w["query_weight"]).T  # (B, T, K)
    keep = valid.to(h.dtype).unsqueeze(-1)
    share = torch.softmax(logits / math.sqrt(d), dim=-1) * keep + _EPS * keep
    sums = torch.cumsum(share.unsqueeze(-1) * (h @ w["value_weight"]).unsqueeze(2), dim=1)[:, queries]
    mass = torch.cumsum(share, dim=1)[:, queries].unsqueeze(-1)
    return _refine(p, branch, 0, None, sums / mass.clamp_min(_EPS))


def _forward(p: dict[str, torch.Tensor], tokens: torch.Tensor, short_seq_len: int, dropout: float = 0.0,
             training: bool = False, last_only: bool = False) -> torch.Tensor:
    """(B, T) left-padded tokens -> interests (B, T, K, d) after every slot (each reads only the events up
    to it), or (B, K, d) after the last slot with `last_only`."""
    length = tokens.shape[1]
    table = p["item_embedding"]
    d = table.shape[1]
    n_levels = p["query_weight"].shape[1]
    valid = tokens != PAD
    # scaled by sqrt(d) as in SASRec, so a user's behaviours weigh as much as the unit-scale centres
    h = F.embedding(tokens, table, padding_idx=PAD) * math.sqrt(d)
    h = F.dropout(h, dropout, training) * valid.unsqueeze(-1)
    slots = torch.arange(length, device=tokens.device)
    queries = slots[-1:] if last_only else slots
    # long term: every event up to the slot
    long_term = _route_prefixes(p, 0, h, valid, queries)
    if n_levels > 1:
        long_window = (queries[:, None] >= slots[None, :]).unsqueeze(0) & valid.unsqueeze(1)  # (B, Tq, T)
        for level in range(1, n_levels):
            long_term = _route(p, 0, level, long_term, h, long_window)
    # short term: the last short_seq_len events up to the slot, gathered per slot (B, Tq, S, d)
    span = min(short_seq_len, length)
    rows = queries[:, None] - span + 1 + torch.arange(span, device=tokens.device)[None, :]  # (Tq, S)
    inside = rows >= 0
    rows = rows.clamp_min(0)
    short_window = inside.unsqueeze(0) & valid[:, rows]
    short_term = None
    for level in range(n_levels):
        short_term = _route(p, 1, level, short_term, h, short_window, rows)
    # co-interest: each long-term interest attends over the short-term ones
    logits = (long_term @ p["co_query_weight"]) @ (short_term @ p["co_key_weight"]).transpose(-1, -2)
    attended = torch.softmax(logits / math.sqrt(d), dim=-1) @ (short_term @ p["co_value_weight"])
    out = F.layer_norm(long_term + attended, (d,), p["co_norm_weight"], p["co_norm_bias"])
    return out[:, 0] if last_only else out


class _Net(torch.nn.Module):
    """The trainable parameters; the computation is `_forward`, shared with scoring."""

    def __init__(self, n_items: int, c: HCNConfig) -> None:
        super().__init__()
        self.short_seq_len, self.dropout = c.short_seq_len, c.dropout
        self.params = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(value) for name, value in _initial_params(n_items, c).items()})

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return _forward(dict(self.params), tokens, self.short_seq_len, self.dropout, self.training, last_only)


# ---- scoring ------------------------------------------------------------------------------------

def _interest_blocks(params: dict[str, torch.Tensor], users: np.ndarray, history: Interactions,
                     c: HCNConfig):
    """Yield (slice, interests (b, K, d) float32 numpy) for `users`, `score_batch_size` users at a time."""
    check_item_vocabulary(history, params["item_embedding"].shape[0] - 1)
    device = params["item_embedding"].device
    for start in range(0, len(users), c.score_batch_size):
        part = slice(start, start + c.score_batch_size)
        tokens = torch.from_numpy(trim_padding(last_items(history, users[part], c.max_seq_len))).to(device)
        with torch.no_grad():
            yield part, _forward(params, tokens, c.short_seq_len, last_only=True).to("cpu", torch.float32).numpy()


def _score_blocks(params: dict[str, torch.Tensor], users: np.ndarray, history: Interactions,
                  items: np.ndarray | None, c: HCNConfig) -> np.ndarray:
    """max_k <v_k, E_i> for `users` over all items, candidates (C,) or per-user candidates (B, C)."""
    table = params["item_embedding"].detach().to("cpu", torch.float32).numpy()
    users = np.asarray(users, dtype=np.int64)
    if items is not None:
        items = np.asarray(items, dtype=np.int64)
    width = table.shape[0] - 1 if items is None else items.shape[-1]
    out = np.empty((len(users), width), dtype=np.float32)
    for part, interests in _interest_blocks(params, users, history, c):
        if items is not None and items.ndim == 2:
            out[part] = np.einsum("bkd,bcd->bkc", interests, table[items[part] + 1]).max(axis=1)
            continue
        # column blocks bound the (b, K, columns) products to _SCRATCH floats whatever the catalogue
        step = max(1, _SCRATCH // (interests.shape[0] * interests.shape[1]))
        for lo in range(0, width, step):
            columns = table[1 + lo:1 + lo + step] if items is None else table[items[lo:lo + step] + 1]
            out[part, lo:lo + len(columns)] = (interests @ columns.T).max(axis=1)
    return out


def _diversity(interests: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between distinct interests of the same row: (M, K, d) -> scalar."""
    k = interests.shape[1]
    if k < 2:
        return interests.new_zeros(())
    unit = F.normalize(interests, dim=-1)
    cos = unit @ unit.transpose(-1, -2)
    off = ~torch.eye(k, dtype=torch.bool, device=cos.device)
    return cos[:, off].pow(2).mean()


def _next_item_loss(v: torch.Tensor, positives: torch.Tensor, table: torch.Tensor, c: HCNConfig,
                    negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of M next-item targets: interests v (M, K, d), target tokens (M,), the item table (padding row
    first), negative tokens (M, n_negatives) for loss="sampled_softmax"."""
    loss = c.diversity_reg * _diversity(v) if c.diversity_reg > 0 else v.new_zeros(())
    if c.target_interest == "argmax":
        with torch.no_grad():  # the interest closest to the target carries its loss (hard routing)
            chosen = torch.einsum("mkd,md->mk", v, table[positives]).argmax(-1)
        h = v[torch.arange(len(v), device=v.device), chosen]  # (M, d)
        if c.loss == "ce":
            return loss + F.cross_entropy(h @ table[1:].T, positives - 1)
        return loss + sampled_softmax_loss((h * table[positives]).sum(-1),
                                           torch.einsum("md,mnd->mn", h, table[negatives]))
    # "max": every item's logit is its serving score max_k <v_k, E_i>
    if c.loss == "ce":
        return loss + F.cross_entropy(torch.einsum("mkd,nd->mkn", v, table[1:]).amax(1), positives - 1)
    pos_logits = torch.einsum("mkd,md->mk", v, table[positives]).amax(1)
    return loss + sampled_softmax_loss(pos_logits, torch.einsum("mkd,mnd->mkn", v, table[negatives]).amax(1))


class HCN(ScoresFromHistory, TorchRecommender):
    """K interest vectors per user from a hierarchical, long/short-term extractor; score = max over them."""

    Config = HCNConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        self._sequences = SequenceBatches(train, c.max_seq_len, c.batch_size, rng, **c.window_options())
        if len(self._sequences.users) == 0:
            raise RecstackError("HCN needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        self._sampler = UniformNegativeSampler(train.matrix(), rng) if c.loss == "sampled_softmax" else None
        return _Net(train.n_items, c)

    def batches(self):
        c = self.config
        for users, inputs, targets in self._sequences:
            if c.loss == "ce":
                yield inputs, targets
            else:
                yield inputs, targets, self._sampler.sample(users, c.n_negatives or _N_NEGATIVES) + 1

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        inputs, targets = batch[0], batch[1]
        slots = targets != PAD
        negatives = batch[2][torch.nonzero(slots)[:, 0]] if len(batch) > 2 else None  # each slot: its row's
        return _next_item_loss(module(inputs)[slots], targets[slots], module.params["item_embedding"], self.config,
                               negatives)

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, "weights_")
        return {name: torch.from_numpy(self.weights_[f"params.{name}"]) for name in _PARAMS}

    def interests(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The (B, n_interests, embedding_size) interest vectors of `users`, read from `history`."""
        params = self._params()
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.config.n_interests, self.config.embedding_size), dtype=np.float32)
        for part, interests in _interest_blocks(params, users, history, self.config):
            out[part] = interests
        return out

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._params(), users, history, items, self.config)
