"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

A user is their last `max_seq_len` items, oldest to newest. Each item token is embedded (scaled
by sqrt(d)) plus a learned embedding of its slot, and passes through `n_layers` causal
self-attention blocks; the output at the last slot, h, scores every item by its inner product
with that item's (shared input) embedding: score(i) = <h, E_i>.

The block follows the authors' code rather than a textbook transformer: attention queries are
layer-normalised, keys and values are not, and the residual is added to the normalised queries;
the point-wise feed-forward net (two d x d layers, ReLU) reads and adds back its own
layer-normalised input; padded slots are zeroed after every block and a final layer norm closes
the stack. Attention has no output projection (the paper's equation); padded keys are masked,
padded queries give zero output; dropout on the embeddings, the attention weights and both
feed-forward layers. Sequences are left-padded, so the most recent item always sits in the last
slot and keeps one positional embedding.

Training (from `train` only, see `recstack.train.sequences`): one window per user of their last
max_seq_len + 1 training events, inputs = the window without its last event, targets = the window
shifted by one; every non-padded slot predicts its next item. `loss` selects:
- "ce" (default): full softmax cross-entropy over the catalogue at every slot. Much stronger than
  the paper's loss (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better
  than SASRec?", RecSys 2023; Petrov & Macdonald, gSASRec, RecSys 2023). Costs a (slots x n_items)
  logit matrix per batch: for very large catalogues use "sampled_softmax".
- "bce": the paper's loss, -log sigmoid(<h_t, E_pos>) - log(1 - sigmoid(<h_t, E_neg>)) with ONE
  uniform negative per slot drawn from items the user has not trained on, mean over slots.
- "sampled_softmax": softmax over the positive and `n_negatives` uniform negatives per sequence
  (shared by its slots, never one of the user's training items), the many-negatives regime of
  gSASRec. `n_negatives` applies to this loss only.

Scoring: `score(users, history)` builds each user's input from `history` at call time (the
evaluator passes train for validation and train + valid for test, so the test input is train +
validation history) and runs the network (torch without gradients, on the fitted numpy arrays)
on chunks of `score_batch_size` users, writing <h, E_i> straight into the returned block; that
block is exactly the users the caller asked for (the evaluator sizes it from its memory budget),
and nothing larger is materialised. Fitted weights are numpy arrays saved without pickle; unlike
the factor models, scoring needs torch (the transformer is evaluated with it: numpy's batched
matmul was several times slower here).

Differences from the paper's code: Adam with the trainer's betas (0.9, 0.999; the code uses
beta2 = 0.98), no L2 on embeddings (the code's default is 0 too), and training stops early on
validation NDCG@10 instead of after a fixed number of epochs.

Defaults: the paper's ml-1m settings (embedding_size 64 for its 50, n_layers 2, n_heads 1,
dropout 0.2, learning_rate 1e-3, batch_size 128) checked on ml-100k VALIDATION NDCG@10
(leave-last-one-out by time, all ratings positive, full ranking with history masked, seed 2020,
one run each, early stopping with patience 10): loss "ce" with max_seq_len 50 -> 0.1145 (best
epoch 40; 0.1212 with seed 1), max_seq_len 100 -> 0.1157 at twice the cost, dropout 0.5 -> 0.1137,
learning_rate 5e-4 -> 0.1167 (best epoch 79), embedding_size 128 with 2 heads -> 0.1106. The
differences are within noise (one standard error is about 0.008 on 943 users), so max_seq_len 50
is the default: four times cheaper than 100-200 in attention. Losses at those settings: "bce"
0.0991, "sampled_softmax" (256 negatives) 0.1287 (0.1282 with seed 1). On ml-100k many negatives
thus did slightly better than the full softmax; "ce" stays the default because it needs no
sampling choices and is the stronger loss on larger catalogues (Klenitskiy & Vasilev 2023).
`recstack run examples/sequential_ml100k.yaml` (these defaults) gives valid / test NDCG@10: ce
0.115 / 0.090, bce 0.101 / 0.083, sampled_softmax 0.130 / 0.101, against EASE 0.083 / 0.073,
ItemKNN 0.070 / 0.062 and Pop 0.035 / 0.045 (test figures for reference only); about 90-170 s
per SASRec fit on one busy CPU core.
"""

from __future__ import annotations

import math
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.attention import SASREC_PARAMS, sasrec_initial_params
from recstack.models.kernels.sequences import check_item_vocabulary, score_in_chunks, trim_padding
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.losses import sampled_softmax_loss
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, SequenceBatches, last_items
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

_MASKED = -1e9  # the authors' code fills masked attention logits with -2^32 + 1: finite, so no NaN
_EPS = 1e-8  # layer-norm epsilon of the authors' code
_N_NEGATIVES = 256  # sampled_softmax's negatives per sequence when n_negatives is not given


class SASRecConfig(ModelConfig):
    embedding_size: PositiveInt = 64
    n_layers: PositiveInt = 2  # self-attention blocks
    n_heads: PositiveInt = 1  # must divide embedding_size
    dropout: confloat(ge=0.0, lt=1.0) = 0.2
    max_seq_len: PositiveInt = 50  # the most recent events a user is represented by
    loss: Literal["ce", "bce", "sampled_softmax"] = "ce"
    n_negatives: PositiveInt | None = None  # negatives per sequence for loss="sampled_softmax" (None: 256)
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128  # sequences (users) per update
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    score_batch_size: PositiveInt = 256  # users per network pass when scoring (bounds the attention memory)
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "SASRecConfig":
        if self.embedding_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide embedding_size ({self.embedding_size})")
        if self.n_negatives is not None and self.loss != "sampled_softmax":
            raise ValueError(f"n_negatives applies to loss='sampled_softmax' only (loss is {self.loss!r}; "
                             "'bce' uses one negative per slot as in the paper, 'ce' uses the whole catalogue)")
        return self


# parameter name -> fitted attribute `name_` (the layout and initialisation live in the kernel that
# MQSA-TED shares)
_PARAMS = SASREC_PARAMS
_WEIGHTS = tuple(f"{name}_" for name in _PARAMS)


def _initial_params(n_items: int, c: SASRecConfig) -> dict[str, torch.Tensor]:
    return sasrec_initial_params(n_items, c)


def _forward(p: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int, dropout: float = 0.0,
             training: bool = False, last_only: bool = False) -> torch.Tensor:
    """(B, T) left-padded tokens, T <= max_seq_len -> hidden states (B, T, d), or (B, d) at the last
    slot with `last_only` (the top block then computes that one query only)."""
    batch, length = tokens.shape
    table, positions = p["item_embedding"], p["position_embedding"]
    d = table.shape[1]
    head_size = d // n_heads
    valid = tokens != PAD
    keep = valid.unsqueeze(-1).to(table.dtype)  # (B, T, 1)
    # padding_idx: the padding row gets no gradient; positions count from the end (left padding)
    x = F.embedding(tokens, table, padding_idx=PAD) * math.sqrt(d) + positions[len(positions) - length:]
    x = F.dropout(x, dropout, training) * keep
    allowed = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    allowed = allowed.unsqueeze(0) & valid.unsqueeze(1)  # (B, Tq, Tk): the past, padding excluded

    def norm(h: torch.Tensor, name: str, layer: int | None = None) -> torch.Tensor:
        w, b = (p[f"{name}_weight"], p[f"{name}_bias"]) if layer is None else \
            (p[f"{name}_weight"][layer], p[f"{name}_bias"][layer])
        return F.layer_norm(h, (d,), w, b, _EPS)

    def linear(h: torch.Tensor, name: str, layer: int) -> torch.Tensor:
        return h @ p[f"{name}_weight"][layer] + p[f"{name}_bias"][layer]

    # without attention dropout the fused kernel gives the same attention (to float rounding) about
    # 25% faster per forward; the additive mask stays finite, so a padded query gets no NaN, and
    # zeroing padded queries' outputs equals zeroing their attention weights
    fused = not (training and dropout > 0)
    additive_mask = torch.zeros(allowed.shape, dtype=table.dtype, device=tokens.device).masked_fill_(
        ~allowed, _MASKED) if fused else None

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.reshape(batch, h.shape[1], n_heads, head_size).transpose(1, 2)  # (B, heads, T, head_size)

    n_layers = len(p["query_weight"])
    for layer in range(n_layers):
        rows = slice(length - 1, length) if last_only and layer == n_layers - 1 else slice(0, length)
        q_in = norm(x[:, rows], "attn_norm", layer)
        q, k, v = heads(linear(q_in, "query", layer)), heads(linear(x, "key", layer)), heads(linear(x, "value", layer))
        if fused:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask[:, None, rows])
            attended = attended.transpose(1, 2).reshape(batch, q_in.shape[1], d) * keep[:, rows]
        else:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(head_size)
            weights = torch.softmax(logits.masked_fill(~allowed[:, None, rows], _MASKED), dim=-1)
            weights = weights * keep[:, None, rows]  # padded queries attend to nothing
            weights = F.dropout(weights, dropout, training)
            attended = (weights @ v).transpose(1, 2).reshape(batch, q_in.shape[1], d)
        x = q_in + attended  # padded queries attend to nothing
        f_in = norm(x, "ffn_norm", layer)
        f = F.dropout(torch.relu(linear(f_in, "ffn_1", layer)), dropout, training)
        x = (f_in + F.dropout(linear(f, "ffn_2", layer), dropout, training)) * keep[:, rows]
    x = norm(x, "final_norm")
    return x[:, -1] if last_only else x


class _Net(torch.nn.Module):
    """The trainable parameters; the computation is `_forward`, shared with scoring."""

    def __init__(self, n_items: int, c: SASRecConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = c.n_heads, c.dropout
        self.params = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(value) for name, value in _initial_params(n_items, c).items()})

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return _forward(dict(self.params), tokens, self.n_heads, self.dropout, self.training, last_only)

    def weights(self) -> dict[str, np.ndarray]:
        """float32 numpy copies named as the fitted attributes."""
        return {f"{name}_": value.detach().to("cpu", torch.float32).numpy().copy()
                for name, value in self.params.items()}


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


class _LiveScorer:
    """Scores from the module's current weights (the trainer's validation calls it)."""

    def __init__(self, net: _Net, config: SASRecConfig) -> None:
        self.net, self.config = net, config

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(dict(self.net.params), self.config.n_heads, users, history, items,
                             self.config.max_seq_len, self.config.score_batch_size)


class SASRec(SaveLoad):
    """Causal self-attention over the user's recent items; next-item scores from the last slot."""

    Config = SASRecConfig

    def __init__(self, config: SASRecConfig | None = None) -> None:
        self.config = config or SASRecConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("SASRec cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)  # before the module exists, so its initialisation repeats per seed
        rng = np.random.default_rng(c.seed)
        sequences = SequenceBatches(train, c.max_seq_len, c.batch_size, rng)
        if len(sequences.users) == 0:
            raise RecstackError("SASRec needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        sampler = None if c.loss == "ce" else UniformNegativeSampler(train.matrix(), rng)
        net = _Net(train.n_items, c)

        def batches():
            for users, inputs, targets in sequences:
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

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            inputs, targets = batch[0], batch[1]
            hidden = module(inputs)
            slots = targets != PAD
            h, positives = hidden[slots], targets[slots]  # (M, d), (M,)
            table = module.params["item_embedding"]
            if c.loss == "ce":
                return F.cross_entropy(h @ table[1:].T, positives - 1)
            pos_logits = (h * table[positives]).sum(-1)
            if c.loss == "bce":
                neg_logits = (h * table[batch[2][slots]]).sum(-1)
                return (F.softplus(-pos_logits) + F.softplus(neg_logits)).mean()
            neg_logits = torch.einsum("btd,bnd->btn", hidden, table[batch[2]])[slots]  # (M, n_negatives)
            return sampled_softmax_loss(pos_logits, neg_logits)

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net, c), train=train, valid=valid)

        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        self._replace_fitted({**net.weights(), "history_": history, "best_epoch_": best_epoch})
        return self

    def _params(self) -> dict[str, torch.Tensor]:
        check_fitted(self, *_WEIGHTS)
        return {name: torch.from_numpy(getattr(self, f"{name}_")) for name in _PARAMS}

    def input_sequences(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The (B, max_seq_len) tokens (item index + 1, 0 = padding) the model reads for `users`."""
        return last_items(history, users, self.config.max_seq_len)

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The user representation h (output at the last slot), (B, embedding_size), from `history`."""
        params = self._params()
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.config.embedding_size), dtype=np.float32)
        for start in range(0, len(users), self.config.score_batch_size):
            part = slice(start, start + self.config.score_batch_size)
            tokens = torch.from_numpy(trim_padding(self.input_sequences(users[part], history)))
            with torch.no_grad():
                out[part] = _forward(params, tokens, self.config.n_heads, last_only=True).numpy()
        return out

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._params(), self.config.n_heads, users, history, items, self.config.max_seq_len,
                             self.config.score_batch_size)
