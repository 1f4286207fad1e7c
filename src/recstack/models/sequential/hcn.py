"""HCN (Yuan, Xu, Chen, Zhuang, Chen, Li & Ge, "Hierarchical Multi-Interest Co-Network For
Coarse-Grained Ranking", arXiv:2210.10547, 2022): several interest vectors per user, read from the
user's item sequence, and an item scored by its best-matching interest,

    score(u, i) = max_k <v_uk, E_i>.

What the paper states (abstract and introduction, the only parts of the text available to this
implementation): one vector cannot hold a user's diverse preferences; the interest vectors of earlier
multi-interest extractors (MIND's capsule routing, ComiRec's self-attention) are too similar to each
other; a *hierarchical multi-interest extraction layer* updates the user's interest centres
iteratively so that the vectors carry more distinct information; a *Co-Interest Network* integrates
long-term and short-term interests, which earlier methods modelled together. Everything below that
goes beyond those sentences is INFERRED, chosen to be the closest faithful reading, and marked so:

- Hierarchical extraction (inferred form). Each of `n_levels` levels is one centre update, in the
  manner of capsule routing / slot attention: every behaviour h_i (item embedding, scaled by sqrt(d))
  is split among the K centres c_k by a softmax over the CENTRES of <c_k Wq, h_i Wk> / sqrt(d), so
  the centres compete for behaviours (what keeps them apart; ComiRec-SA's softmax over behaviours
  lets every interest attend to the same items); each centre moves to the weighted mean of its
  share, m_k = sum_i a_ik h_i Wv / sum_i a_ik, then c_k <- LN(c_k + m_k) and a residual feed-forward
  step with layer norm. Level 0 is routed by K learned starting centres shared by all users (MIND
  starts its routing from random logits; learned starts make the extractor deterministic) and sets
  c_k = LN(m_k); every level has its own maps, so the levels form a coarse-to-fine hierarchy of
  updates of the user's own centres.
- Co-Interest Network (inferred form). Two such extractors, one over the long-term sequence (the
  last `max_seq_len` items) and one over the short-term sequence (the last `short_seq_len`); each
  long-term interest then attends over the K short-term interests (softmax over them) and adds the
  result back, v_k = LN(L_k + sum_j softmax_j(<L_k Wq', S_j Wk'> / sqrt(d)) S_j Wv'). The extractors
  read item embeddings without positions: recency enters through the short-term branch. Dropout
  applies to the behaviour embeddings only.
- Training: next-item prediction from every prefix of the user's training sequence
  (`recstack.train.sequences`; the interests at slot t read only events up to t). `target_interest`
  says which interest scores a target. "argmax" is the rule of the multi-interest models HCN builds
  on (MIND's label-aware attention in its hard limit, ComiRec), which the available text does not
  say HCN changes: the interest closest to the target, k* = argmax_k <v_k, E_target>, chosen
  without gradient, carries the loss. "max" (default, chosen on validation, see below) scores every
  item by max_k <v_k, E_i>, the serving score, so training and retrieval agree. `loss` "ce"
  (default) is the full softmax over the catalogue ("max" then holds a (slots x K x n_items) logit
  tensor per batch: large catalogues want the other loss), "sampled_softmax" a softmax over the
  positive and `n_negatives` uniform negatives per sequence (never the user's training items).
  `diversity_reg`
  (inferred from the paper's redundancy argument; 0 by default) adds the mean squared cosine
  similarity between a user's interest vectors.
- Coarse-grained ranking in the paper scores a pre-selected candidate set; here the same score
  ranks the whole catalogue (the library's protocol), or the candidates given to `score`.

Cost: the long-term extractor's level 0 is a cumulative sum over the sequence (its routing does not
depend on the slot), later levels are O(T^2 K d) per sequence for the T training slots, the
short-term extractor O(T S K d); training is several times SASRec's cost per epoch.

Scoring: `score(users, history)` builds the input from `history` at call time (train for
validation, train + valid for test), extracts the interests at the last slot on chunks of
`score_batch_size` users (torch without gradients, from the fitted numpy arrays) and writes
max_k <v_k, E_i> into the returned block by column blocks, so nothing beyond the caller's
(B, n_items) block and a 4 MB scratch product is held. `interests(users, history)` returns the
(B, K, d) vectors. Fitted weights are numpy arrays saved without pickle.

Defaults: SASRec's settings where the two share a meaning (embedding_size 64, max_seq_len 50,
dropout 0.2, learning_rate 1e-3, batch_size 128, Adam, early stopping on validation NDCG@10 with
patience 10), ComiRec's 4 interests, 2 levels, a short-term window of 10, checked on ml-100k
VALIDATION NDCG@10 (leave-last-one-out by time, all ratings positive, full ranking with history
masked, one run each, seed 0, one busy CPU thread; test figures only for reference):
target_interest "argmax" 0.0988 (test 0.0744, best epoch 38, 11 min), "max" 0.1156 (test 0.0871,
best epoch 42, 25 min); with "max": n_interests 2 -> 0.1106 (test 0.0762), n_levels 1 -> 0.1136
(test 0.0850, half the cost), loss "sampled_softmax" with 256 negatives -> 0.1365 (test 0.1010,
best epoch 60, 11 min). One standard error is about 0.008 on 943 users. "max" is the default: better on validation by two standard errors
and, on a fixture of users with two item topics (tests/models/test_hcn.py), the only rule of the
two whose interests split each user's topics (about half the users with "argmax", all of them
with "max"). n_levels 1 and 2 are within noise; 2 stays, as the smallest extractor that is
hierarchical. Many sampled negatives beat the full softmax here, as they do for SASRec (0.130 vs
0.115); "ce" stays the default for the same reason as SASRec's (no sampling choices), but on large
catalogues, where "max" with "ce" is costly, use loss "sampled_softmax". SASRec with its defaults on
the same split: 0.115 valid / 0.090 test.
"""

from __future__ import annotations

import math
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.sequences import check_item_vocabulary, trim_padding
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.losses import sampled_softmax_loss
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, SequenceBatches, last_items
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

_EPS = 1e-6
_N_NEGATIVES = 256  # sampled_softmax's negatives per sequence when n_negatives is not given
_SCRATCH = 1 << 20  # floats of the largest temporary product when scoring (4 MB)


class HCNConfig(ModelConfig):
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
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    score_batch_size: PositiveInt = 256  # users per network pass when scoring
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "HCNConfig":
        if self.short_seq_len > self.max_seq_len:
            raise ValueError(f"short_seq_len ({self.short_seq_len}) must not exceed max_seq_len "
                             f"({self.max_seq_len}): the short-term sequence is the newest part of the long-term one")
        if self.n_negatives is not None and self.loss != "sampled_softmax":
            raise ValueError(f"n_negatives applies to loss='sampled_softmax' only (loss is {self.loss!r}; "
                             "'ce' uses the whole catalogue)")
        return self


# parameter name -> fitted attribute `name_`. Extractor tensors are stacked (branch, level, ...) with
# branch 0 = long-term, 1 = short-term; linear maps are stored (in, out) so a layer is x @ W (+ b).
_PARAMS = (
    "item_embedding", "centres",
    "query_weight", "key_weight", "value_weight", "centre_norm_weight", "centre_norm_bias",
    "ffn_1_weight", "ffn_1_bias", "ffn_2_weight", "ffn_2_bias", "ffn_norm_weight", "ffn_norm_bias",
    "co_query_weight", "co_key_weight", "co_value_weight", "co_norm_weight", "co_norm_bias",
)
_WEIGHTS = tuple(f"{name}_" for name in _PARAMS)


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

    def weights(self) -> dict[str, np.ndarray]:
        return {f"{name}_": value.detach().to("cpu", torch.float32).numpy().copy()
                for name, value in self.params.items()}


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


class _LiveScorer:
    """Scores from the module's current weights (the trainer's validation calls it)."""

    def __init__(self, net: _Net, config: HCNConfig) -> None:
        self.net, self.config = net, config

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(dict(self.net.params), users, history, items, self.config)


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


class HCN(SaveLoad):
    """K interest vectors per user from a hierarchical, long/short-term extractor; score = max over them."""

    Config = HCNConfig

    def __init__(self, config: HCNConfig | None = None) -> None:
        self.config = config or HCNConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("HCN cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        sequences = SequenceBatches(train, c.max_seq_len, c.batch_size, rng)
        if len(sequences.users) == 0:
            raise RecstackError("HCN needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        sampler = UniformNegativeSampler(train.matrix(), rng) if c.loss == "sampled_softmax" else None
        net = _Net(train.n_items, c)

        def batches():
            for users, inputs, targets in sequences:
                if c.loss == "ce":
                    yield inputs, targets
                else:
                    yield inputs, targets, sampler.sample(users, c.n_negatives or _N_NEGATIVES) + 1

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            inputs, targets = batch[0], batch[1]
            slots = targets != PAD
            negatives = batch[2][torch.nonzero(slots)[:, 0]] if len(batch) > 2 else None  # each slot: its row's
            return _next_item_loss(module(inputs)[slots], targets[slots], module.params["item_embedding"], c,
                                   negatives)

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net, c), train=train, valid=valid)

        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        self._replace_fitted({**net.weights(), "history_": history, "best_epoch_": best_epoch})
        return self

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, *_WEIGHTS)
        return {name: torch.from_numpy(getattr(self, f"{name}_")) for name in _PARAMS}

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
