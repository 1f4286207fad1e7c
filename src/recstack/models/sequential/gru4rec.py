"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016;
Hidasi & Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-based
Recommendations", CIKM 2018).

A user is their last `max_seq_len` items, oldest to newest. Each item is embedded, passes through
`n_layers` GRU layers (hidden size = `embedding_size`), and the hidden state after the newest item,
h, scores every item: score(i) = <h, W_i> + b_i. With `tied_embedding` (the 2018 code's
"constrained embedding", the default here) W is the input item table E; otherwise W is a separate
output table. Dropout acts on the embeddings and on the GRU output.

The recurrence is causal, so the sequences are fed RIGHT-aligned (oldest item in slot 0, padding
after the newest): the padding after the last item never reaches an output that is read, and a
state never passes through padding. (`recstack.train.sequences` left-pads; `_right_align` moves
each row's items to the front.)

Training (from `train` only, see `recstack.train.sequences`): one window per user of their last
max_seq_len + 1 training events; every non-padded slot predicts its next item (the 2016 paper's
session-parallel mini-batches also train on every position; here a user is one sequence and the
state starts from zero). `loss` selects:
- "ce" (default): full softmax cross-entropy over the catalogue at every slot (the 2016 paper's
  cross-entropy, without sampling: cheap at MovieLens scale).
- "bpr_max": the 2018 paper's BPR-max over `n_negatives` uniform negatives per sequence (shared by
  its slots, never one of the user's training items), with its score regularisation:
  L = -log sum_j s_j sigmoid(r_i - r_j) + bpr_max_reg * sum_j s_j r_j^2, s = softmax(r_neg).
  The official code adds the other mini-batch targets as negatives and samples by popularity^0.75;
  here negatives are uniform, as for SASRec's sampled losses.

Scoring: `score(users, history)` builds each user's input from `history` at call time (train for
validation, train + valid for test) and runs the GRU (torch, no gradients) on chunks of
`score_batch_size` users, writing the scores straight into the returned block. Fitted weights are
numpy arrays saved without pickle.

Differences from the papers' code: Adam with the trainer's defaults instead of Adagrad, one
training window per user per epoch instead of session-parallel batches over the whole log, no
final ELU for BPR-max, training stops early on validation NDCG@10.

Defaults (embedding_size 64, one GRU layer, dropout 0.2, batch_size 128, max_seq_len 50, tied
embeddings: SASRec's budget) checked on ml-100k VALIDATION NDCG@10 (leave-last-one-out by time, all
ratings positive, full ranking with history masked, seed 2020, one run each, early stopping with
patience 10): loss "ce" with learning_rate 1e-3 -> 0.1006 (best epoch 85), 3e-3 -> 0.1075 (best
epoch 67), hence 3e-3. loss "bpr_max" (256 negatives, bpr_max_reg 1.0, learning_rate 1e-3) -> 0.1300
(best epoch 117): on ml-100k, as for SASRec's sampled softmax, the sampled loss did better than the
full softmax (one standard error is about 0.008 on 943 users); "ce" stays the default because it
needs no sampling choices. Test NDCG@10 for reference only: ce 0.094, bpr_max 0.113 (SASRec ce
0.090, Pop 0.045). About 3-6 minutes a fit on one busy CPU core.
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
from recstack.models.kernels.sequences import check_item_vocabulary, score_in_chunks
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, SequenceBatches, last_items
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

_N_NEGATIVES = 256  # bpr_max's negatives per sequence when n_negatives is not given


class GRU4RecConfig(ModelConfig):
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
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    score_batch_size: PositiveInt = 256  # users per network pass when scoring
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True

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


def _right_align(tokens: np.ndarray) -> np.ndarray:
    """Left-padded (B, T) tokens -> the same items from slot 0 on, padding after them; trailing columns
    that are padding in every row are dropped (at least one column stays)."""
    tokens = np.asarray(tokens)
    length = tokens.shape[1]
    lengths = (tokens != PAD).sum(1)
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

    def weights(self) -> dict[str, np.ndarray]:
        return {f"{name.replace('.', '_')}_": value.detach().to("cpu", torch.float32).numpy().copy()
                for name, value in self.named_parameters()}


def _net_from(arrays: dict[str, np.ndarray], c: GRU4RecConfig) -> _Net:
    """A `_Net` (eval mode, cpu) carrying fitted numpy weights."""
    n_items = arrays["output_bias_"].shape[0]
    with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the global RNG alone
        net = _Net(n_items, c)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(torch.from_numpy(arrays[f"{name.replace('.', '_')}_"]))
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


class _LiveScorer:
    """Scores from the module's current weights (the trainer's validation calls it)."""

    def __init__(self, net: _Net, config: GRU4RecConfig) -> None:
        self.net, self.config = net, config

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self.net, users, history, items, self.config.max_seq_len, self.config.score_batch_size)


class GRU4Rec(SaveLoad):
    """A GRU over the user's recent items; next-item scores from the state after the newest one."""

    Config = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig | None = None) -> None:
        self.config = config or GRU4RecConfig()

    def _weight_names(self) -> list[str]:
        c = self.config
        names = ["item_embedding_", "output_bias_"] + (["output_embedding_"] if not c.tied_embedding else [])
        for layer in range(c.n_layers):
            names += [f"gru_{kind}_l{layer}_" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return names

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("GRU4Rec cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        sequences = SequenceBatches(train, c.max_seq_len, c.batch_size, rng)
        if len(sequences.users) == 0:
            raise RecstackError("GRU4Rec needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        sampler = UniformNegativeSampler(train.matrix(), rng) if c.loss == "bpr_max" else None
        reg = 1.0 if c.bpr_max_reg is None else c.bpr_max_reg
        net = _Net(train.n_items, c)

        def batches():
            for users, inputs, targets in sequences:
                inputs, targets = _right_align(inputs), _right_align(targets)
                if c.loss == "ce":
                    yield inputs, targets
                else:
                    yield inputs, targets, sampler.sample(users, c.n_negatives or _N_NEGATIVES)

        def batch_loss(module: _Net, batch) -> torch.Tensor:
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
            return bpr_max_loss(pos, neg[slots], reg)

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net, c), train=train, valid=valid)

        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        self._replace_fitted({**net.weights(), "history_": history, "best_epoch_": best_epoch})
        return self

    def _net(self) -> _Net:
        names = self._weight_names()
        check_fitted(self, *names)
        return _net_from({name: getattr(self, name) for name in names}, self.config)

    def input_sequences(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The (B, max_seq_len) left-padded tokens (item index + 1, 0 = padding) the model reads for `users`."""
        return last_items(history, users, self.config.max_seq_len)

    def embed(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        """The user representation h (GRU output after the newest item), (B, embedding_size), from `history`."""
        net = self._net()
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.config.embedding_size), dtype=np.float32)
        for start in range(0, len(users), self.config.score_batch_size):
            part = slice(start, start + self.config.score_batch_size)
            tokens = torch.from_numpy(_right_align(self.input_sequences(users[part], history)))
            with torch.no_grad():
                out[part] = net.last(tokens).numpy()
        return out

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _score_blocks(self._net(), users, history, items, self.config.max_seq_len,
                             self.config.score_batch_size)
