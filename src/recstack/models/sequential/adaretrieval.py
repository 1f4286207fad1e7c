"""Ada-Retrieval (Li et al., "Ada-Retrieval: An Adaptive Multi-Round Retrieval Paradigm for Sequential
Recommendations", AAAI 2024), a model-agnostic wrapper here over a SASRec or GRU4Rec backbone built by
the model registry. K items (`retrieval_size`) are retrieved in T rounds (`n_rounds`) of K/T, each
excluding the earlier rounds' items, which are fed back: the item adapter (IRA) passes each earlier
round's items through a learnable FMLP-Rec low-pass filter and lets the backbone's input embeddings
attend to them, x'_j = LN(x_j + Dropout(softmax(x_j C^T / sqrt(d)) C)), before the backbone re-reads
the sequence; the user adapter (URA) fuses a GRU state c over the earlier rounds' representations,
h' = LN(h + Dropout(W_2 ReLU(W_1 [h; c]))). Round t scores items by the backbone's output layer with h'_t.
Training follows the authors' code: stage 1 fits the backbone alone (`pretrain`), stage 2 fine-tunes
all with L = sum_t lambda^(t-1) L_t (`round_loss_decay`; `loss` "ce" or the code's sampled "bce").
`top_k` is the multi-round list; `score` ranks the same way (earlier rounds' items lifted above the
last round's scores in list order), so sorting it reproduces `top_k` for every k.

Differences from the authors' code: the adapter LayerNorm gains start at the RMS of the backbone's
item embeddings resp. round-1 user representations (theirs: 1); the retrieval feeding the IRA masks
the history at inference as the evaluated list does; `samples_per_user` random prefixes per user an
epoch instead of every prefix; Adam with the trainer's defaults, no gradient clipping; K = 20 (theirs
100) for NDCG@10/20. The full description and the tuning record: docs/models/adaretrieval.md.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt, confloat, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models import build, resolve
from recstack.models.kernels.sequences import trim_padding
from recstack.models.neural import TorchRecommender, TrainingFields, module_arrays
from recstack.models.protocol import ModelConfig, ScoresFromHistory, check_fitted, check_trainable, gather_items
from recstack.models.sequential import gru4rec as _gru4rec
from recstack.models.sequential import sasrec as _sasrec
from recstack.train.options import FitOptions
from recstack.train.sampling import UniformNegativeSampler
from recstack.train.sequences import PAD, last_items
from recstack.topk import top_k_items

_SHARED = ("seed", "device", "verbose")  # set on the backbone from this config unless backbone_params has them


class AdaRetrievalConfig(ModelConfig, TrainingFields):
    backbone: Literal["sasrec", "gru4rec"] = "sasrec"
    backbone_params: dict[str, Any] = {}  # the backbone's own config (embedding_size, max_seq_len, its loss...)
    pretrain: bool = True  # stage 1: fit the backbone alone first (the paper); False: end-to-end from scratch
    n_rounds: PositiveInt = 5  # T
    retrieval_size: PositiveInt = 20  # K, the multi-round list length; K / T items a round
    round_loss_decay: confloat(gt=0.0, le=1.0) = 1.0  # lambda: round t's loss weighs lambda^(t-1) (code: 0.3)
    loss: Literal["bce", "ce"] = "ce"  # "bce": the code's sampled loss
    n_negatives: PositiveInt = 100  # uniform negatives per example for loss="bce"
    dropout: confloat(ge=0.0, lt=1.0) | None = None  # adapters' dropout (None: the backbone's)
    samples_per_user: PositiveInt = 4  # random (prefix, next item) examples per user an epoch
    learning_rate: PositiveFloat = 1e-4  # fine-tuning (code: 1e-3); the backbone keeps its own
    batch_size: PositiveInt = 128  # examples per update
    early_stopping_patience: PositiveInt | None = 5  # of the fine-tuning (`epochs` bounds it; the backbone has its own)
    score_batch_size: PositiveInt = 256  # users per multi-round pass when scoring

    @model_validator(mode="after")
    def _consistent(self) -> "AdaRetrievalConfig":
        if self.retrieval_size % self.n_rounds:
            raise ValueError(f"n_rounds ({self.n_rounds}) must divide retrieval_size ({self.retrieval_size}): "
                             "each round retrieves retrieval_size / n_rounds items")
        self.backbone_config()  # raises on a bad backbone parameter
        return self

    @property
    def round_size(self) -> int:
        return self.retrieval_size // self.n_rounds

    def backbone_config(self) -> ModelConfig:
        config_cls = resolve(self.backbone).Config  # the registry's model: one way to build a model
        params = {**{name: getattr(self, name) for name in _SHARED}, **self.backbone_params}
        try:
            return config_cls(**params)
        except Exception as exc:
            raise ValueError(f"backbone_params for {self.backbone}: {exc}") from None


# ---- the network --------------------------------------------------------------------------------

class _LowFilter(torch.nn.Module):
    """FMLP-Rec's learnable filter along one round's retrieved items, then a dense layer and a residual norm."""

    def __init__(self, round_size: int, d: int, dropout: float) -> None:
        super().__init__()
        self.complex_weight = torch.nn.Parameter(torch.randn(1, round_size // 2 + 1, d, 2) * 0.02)
        self.dense = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d, eps=1e-12)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, k, d)
        spectrum = torch.fft.rfft(x, dim=1, norm="ortho") * torch.view_as_complex(self.complex_weight)
        filtered = torch.fft.irfft(spectrum, n=x.shape[1], dim=1, norm="ortho")
        return self.norm(x + F.dropout(self.dense(filtered), self.dropout, self.training))


class _Net(torch.nn.Module):
    """Backbone module + IRA + URA; `user(tokens, rounds_items, rounds_users)` is one round's h'."""

    def __init__(self, kind: str, backbone: torch.nn.Module, backbone_config: ModelConfig, round_size: int,
                 dropout: float) -> None:
        super().__init__()
        self.kind, self.backbone = kind, backbone
        d = backbone_config.embedding_size
        self.d, self.dropout = d, dropout
        self.ira_filter = _LowFilter(round_size, d, dropout)
        self.ira_norm = torch.nn.LayerNorm(d, eps=1e-12)
        self.ura_gru = torch.nn.GRU(d, d, 1, batch_first=True)
        self.ura_ffn_1 = torch.nn.Linear(2 * d, 2 * d)
        self.ura_ffn_2 = torch.nn.Linear(2 * d, d)
        self.ura_norm = torch.nn.LayerNorm(d, eps=1e-12)
        for module in (self.ira_filter.dense, self.ura_ffn_1, self.ura_ffn_2):  # the code's Xavier-normal init
            torch.nn.init.xavier_normal_(module.weight)
            torch.nn.init.zeros_(module.bias)

    def input_table(self) -> torch.Tensor:
        """(n_items + 1, d) input item embeddings, row 0 = padding."""
        return self.backbone.item_embedding

    def item_scores(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d) user representations -> (B, n_items) scores by the backbone's output layer."""
        if self.kind == "sasrec":
            return h @ self.backbone.item_embedding[1:].T
        return h @ self.backbone.output_table().T + self.backbone.output_bias

    def adapt_items(self, x: torch.Tensor, rounds_items: list[torch.Tensor]) -> torch.Tensor:
        """IRA: (B, L, d) input embeddings, earlier rounds' item indices [(B, k)] -> adapted (B, L, d)."""
        table = self.input_table()
        context = torch.cat([self.ira_filter(F.embedding(items + 1, table)) for items in rounds_items], dim=1)
        weights = torch.softmax(x @ context.transpose(1, 2) / math.sqrt(self.d), dim=-1)
        return self.ira_norm(x + F.dropout(weights @ context, self.dropout, self.training))

    def adapt_user(self, h: torch.Tensor, rounds_users: list[torch.Tensor]) -> torch.Tensor:
        """URA: (B, d) backbone output, earlier rounds' h' [(B, d)] -> this round's h'."""
        states, _ = self.ura_gru(torch.stack(rounds_users, dim=1))
        fused = self.ura_ffn_2(torch.relu(self.ura_ffn_1(torch.cat([h, states[:, -1]], dim=-1))))
        return self.ura_norm(h + F.dropout(fused, self.dropout, self.training))

    def user(self, tokens: torch.Tensor, rounds_items: list[torch.Tensor],
             rounds_users: list[torch.Tensor]) -> torch.Tensor:
        """One round's user representation from (B, L) backbone-layout tokens (SASRec left-padded,
        GRU4Rec right-aligned); with no earlier rounds it is exactly the backbone's output."""
        if rounds_items:
            # the backbone reads per-slot adapted vectors through its own forward: they become a
            # (B*L + 1, d) table that the slot numbers index (0 stays padding)
            x = self.adapt_items(F.embedding(tokens, self.input_table()), rounds_items)
            filled = tokens != PAD
            table = torch.cat([x.new_zeros(1, self.d), x.reshape(-1, self.d)])
            slots = torch.arange(1, tokens.numel() + 1, device=tokens.device).reshape(tokens.shape)
            tokens = torch.where(filled, slots, torch.zeros_like(slots))
        else:
            table = None
        # the backbone's own forward, with the adapted table in place of its item embeddings
        kwargs = {"last_only": True} if self.kind == "sasrec" else {}
        if table is None:
            hidden = self.backbone(tokens, **kwargs)
        else:
            hidden = torch.func.functional_call(self.backbone, {"item_embedding": table}, (tokens,), kwargs,
                                                strict=False, tie_weights=False)
        if self.kind == "sasrec":
            h = hidden
        else:
            last = ((tokens != PAD).sum(1) - 1).clamp(min=0)
            h = hidden[torch.arange(len(tokens), device=tokens.device), last]
        return self.adapt_user(h, rounds_users) if rounds_users else h


def _backbone_module(kind: str, config: ModelConfig, n_items: int, weights: dict[str, np.ndarray] | None
                     ) -> torch.nn.Module:
    """The backbone's torch module, fresh (weights None) or carrying a fitted backbone's `weights_` (its
    module's state dict, the `TorchRecommender` export). SASRec's module draws its initialisation before
    the weights overwrite it, GRU4Rec's does not (the fine-tuning's random stream depends on it)."""
    if kind == "sasrec":
        net = _sasrec._Net(n_items, config)
        if weights is not None:
            net.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
        return net
    if weights is None:
        return _gru4rec._Net(n_items, config)
    return _gru4rec._net_from(weights, config).train()


def _layout(kind: str, tokens: np.ndarray) -> np.ndarray:
    """Left-padded tokens -> the backbone's input layout."""
    return trim_padding(tokens) if kind == "sasrec" else _gru4rec._right_align(tokens)


def _retrieve(net: _Net, tokens: torch.Tensor, blocked: torch.Tensor, sizes: list[int]
              ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Run len(sizes) rounds without gradients; round t lists sizes[t] items.

    `blocked` (B, n_items) bool marks items never to retrieve (history); it is updated in place.
    Returns the rounds' items (B, sum(sizes)) in list order, a mask of the slots left empty because
    fewer unblocked items existed, and the last round's raw scores (B, n_items).
    """
    rounds_items: list[torch.Tensor] = []
    rounds_users: list[torch.Tensor] = []
    lists, empty = [], []
    scores = None
    for size in sizes:
        h = net.user(tokens, rounds_items, rounds_users)
        scores = net.item_scores(h).float()
        idx, values = top_k_items(scores.masked_fill(blocked, -torch.inf).cpu().numpy(), size)  # ties: lower index
        items = torch.from_numpy(idx.astype(np.int64)).to(tokens.device)
        blocked.scatter_(1, items, True)
        rounds_items.append(items)
        rounds_users.append(h)
        lists.append(idx)
        empty.append(values == -np.inf)
    return np.concatenate(lists, axis=1), np.concatenate(empty, axis=1), scores


class _Inference:
    """Multi-round lists and scores from a `_Net` rebuilt from the fitted weights (while training: the
    module's current weights, which the base exports into a copy of the model for each validation)."""

    def __init__(self, net: _Net, config: AdaRetrievalConfig, max_seq_len: int) -> None:
        self.net, self.config, self.max_seq_len = net, config, max_seq_len

    def _rounds(self, users: np.ndarray, history: Interactions, sizes: list[int], *, mask_history: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, sum(sizes)) multi-round lists, their empty-slot mask and the last round's (B, n_items) scores;
        with `mask_history` no round retrieves an item of the user's history."""
        net, c = self.net, self.config
        n_items = net.input_table().shape[0] - 1
        if history.n_items != n_items:
            raise RecstackError(f"the history has {history.n_items} items but the model was fitted on {n_items}; "
                                "score with interactions that share the training item vocabulary")
        users = np.asarray(users, dtype=np.int64)
        # one pass per distinct user: batched kernels may round a row differently by its position
        distinct, inverse = np.unique(users, return_inverse=True)
        lists = np.empty((len(distinct), sum(sizes)), dtype=np.int64)
        empty = np.empty((len(distinct), sum(sizes)), dtype=bool)
        last = np.empty((len(distinct), n_items), dtype=np.float32)
        device = net.input_table().device
        matrix = history.matrix()
        was_training = net.training
        net.eval()
        try:
            for start in range(0, len(distinct), c.score_batch_size):
                part = slice(start, start + c.score_batch_size)
                block = distinct[part]
                tokens = torch.from_numpy(_layout(net.kind, last_items(history, block, self.max_seq_len))).to(device)
                blocked = torch.from_numpy(matrix[block].toarray() > 0 if mask_history
                                           else np.zeros((len(block), n_items), dtype=bool)).to(device)
                with torch.no_grad():
                    lists[part], empty[part], scores = _retrieve(net, tokens, blocked, sizes)
                last[part] = scores.cpu().numpy()
        finally:
            net.train(was_training)
        return lists[inverse], empty[inverse], last[inverse]

    def _sizes(self, k: int) -> list[int]:
        """Items per round for a list of k: rounds of K/T until k, the T-th round taking any excess over K."""
        c = self.config
        n_rounds = min(c.n_rounds, -(-k // c.round_size))
        sizes = [c.round_size] * n_rounds
        sizes[-1] = k - c.round_size * (n_rounds - 1)
        return sizes

    def _compose(self, lists: np.ndarray, last: np.ndarray, n_rounds: int) -> np.ndarray:
        """The last round's scores with the earlier rounds' items lifted above all of them, in list order."""
        scores = last.copy()
        earlier = lists[:, :self.config.round_size * (n_rounds - 1)]
        if earlier.shape[1]:
            top = scores.max(axis=1, keepdims=True)
            lifted = top + np.arange(earlier.shape[1], 0, -1, dtype=np.float32)[None, :]
            np.put_along_axis(scores, earlier, lifted.astype(np.float32), axis=1)
        return scores

    def top_k(self, users: np.ndarray, history: Interactions, k: int, *,
              mask_history: bool) -> tuple[np.ndarray, np.ndarray]:
        if not 1 <= k <= history.n_items:
            raise RecstackError(f"k must lie in 1..{history.n_items} (the catalogue), got {k}")
        sizes = self._sizes(k)
        lists, empty, last = self._rounds(users, history, sizes, mask_history=mask_history)
        values = np.take_along_axis(self._compose(lists, last, len(sizes)), lists, axis=1).astype(np.float32)
        lists = lists.astype(np.int32)
        lists[empty], values[empty] = -1, -np.inf  # fewer unseen items than k
        return lists, values

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        c = self.config
        lists, _, last = self._rounds(users, history, [c.round_size] * c.n_rounds, mask_history=True)
        return np.ascontiguousarray(gather_items(self._compose(lists, last, c.n_rounds), items), dtype=np.float32)


# ---- training -----------------------------------------------------------------------------------

def _examples(train: Interactions, users: np.ndarray, max_seq_len: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """One (prefix, next item) pair per entry of `users`, ending at a random training event (not the
    first): (B, max_seq_len) left-padded tokens and (B,) target item indices."""
    start, end = train.indptr[users].astype(np.int64), train.indptr[users + 1].astype(np.int64)
    target_rows = start + 1 + (rng.random(len(users)) * (end - start - 1)).astype(np.int64)
    rows = target_rows[:, None] - max_seq_len + np.arange(max_seq_len)[None, :]
    valid = rows >= start[:, None]
    tokens = np.where(valid, train.item[np.where(valid, rows, 0)].astype(np.int64) + 1, PAD)
    return tokens, train.item[target_rows].astype(np.int64)


class AdaRetrieval(ScoresFromHistory, TorchRecommender):
    """Multi-round retrieval over a SASRec/GRU4Rec backbone with item and user representation adapters."""

    Config = AdaRetrievalConfig

    def fit(self, train: Interactions, valid: Interactions | None = None, *, options: FitOptions | None = None,
            backbone: Any = None) -> Self:
        """Stage 1 fits the backbone (unless `pretrain=False`, or a fitted `backbone` of the configured
        kind is given), stage 2 fine-tunes backbone + adapters on the multi-round loss."""
        c = self.config
        check_trainable("AdaRetrieval", train)
        backbone_cls = resolve(c.backbone)
        bc, weights = c.backbone_config(), None
        if backbone is not None:
            if not isinstance(backbone, backbone_cls) or getattr(backbone, "best_epoch_", None) is None:
                raise RecstackError(f"backbone must be a fitted {backbone_cls.__name__} (backbone={c.backbone!r}), "
                                    f"got {type(backbone).__name__}")
            bc, weights = backbone.config, backbone.weights_
        elif c.pretrain:
            weights = build(c.backbone, bc).fit(train, valid, options=options).weights_
        self._backbone_config, self._backbone_weights = bc, weights
        try:  # stage 2: the base's fit (seeding, build_module, the trainer, export)
            return super().fit(train, valid, options=options)
        finally:
            del self._backbone_config, self._backbone_weights

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c, bc = self.config, self._backbone_config
        users = np.flatnonzero(train.user_counts() >= 2).astype(np.int64)
        if len(users) == 0:
            raise RecstackError("AdaRetrieval needs at least one user with two or more training events "
                                "(one to read, one to predict); check the filters and split")
        if c.retrieval_size > train.n_items:
            raise RecstackError(f"retrieval_size ({c.retrieval_size}) exceeds the catalogue ({train.n_items} items)")
        dropout = bc.dropout if c.dropout is None else c.dropout
        net = _Net(c.backbone, _backbone_module(c.backbone, bc, train.n_items, self._backbone_weights), bc,
                   c.round_size, dropout)
        self._init_norms(net, train, users, bc.max_seq_len)
        self._sampler = UniformNegativeSampler(train.matrix(), rng) if c.loss == "bce" else None
        self._train, self._users, self._rng = train, users, rng
        return net

    def batches(self):
        c, rng, sampler = self.config, self._rng, self._sampler
        order = rng.permutation(np.repeat(self._users, c.samples_per_user))
        for start in range(0, len(order), c.batch_size):
            part = order[start:start + c.batch_size]
            tokens, targets = _examples(self._train, part, self._backbone_config.max_seq_len, rng)
            batch = [_layout(c.backbone, tokens), targets]
            if sampler is not None:
                batch.append(sampler.sample(part, c.n_negatives))
            yield tuple(batch)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        tokens, targets = batch[0], batch[1]
        blocked = torch.zeros(len(tokens), module.input_table().shape[0], dtype=torch.bool, device=tokens.device)
        blocked.scatter_(1, tokens, True)  # the prefix's items (and the padding column 0)
        blocked = blocked[:, 1:]
        rounds_items: list[torch.Tensor] = []
        rounds_users: list[torch.Tensor] = []
        total = tokens.new_zeros((), dtype=torch.float32)
        for t in range(c.n_rounds):
            weight = c.round_loss_decay ** t
            h = module.user(tokens, rounds_items, rounds_users)
            scores = module.item_scores(h)
            if c.loss == "ce":
                total = total + weight * F.cross_entropy(scores, targets)
            else:
                pos = scores.gather(1, targets[:, None])
                neg = scores.gather(1, batch[2])
                bce = torch.cat([F.softplus(-pos), F.softplus(neg)], dim=1).mean()
                total = total + weight * bce
            if t + 1 < c.n_rounds:
                with torch.no_grad():
                    chosen = scores.detach().masked_fill(blocked, -torch.inf).topk(c.round_size, dim=1).indices
                blocked = blocked.scatter(1, chosen, True)
                rounds_items.append(chosen)
                rounds_users.append(h)
        return total

    def export(self, module: _Net) -> dict[str, Any]:
        return {"weights_": module_arrays(module), "n_items_": int(module.input_table().shape[0] - 1),
                "backbone_config_": self._backbone_config.model_dump_json()}

    @staticmethod
    def _init_norms(net: _Net, train: Interactions, users: np.ndarray, max_seq_len: int) -> None:
        """Adapter LayerNorm gains = RMS of what they replace (see the module docstring)."""
        with torch.no_grad():
            table = net.input_table()[1:]
            net.ira_norm.weight.fill_(float(table.pow(2).mean().sqrt()))
            sample = users[:512]
            tokens = torch.from_numpy(_layout(net.kind, last_items(train, sample, max_seq_len)))
            was_training = net.training
            net.eval()
            h = net.user(tokens, [], [])
            net.train(was_training)
            net.ura_norm.weight.fill_(float(h.pow(2).mean().sqrt()))

    def _inference(self) -> _Inference:
        check_fitted(self, "weights_", "n_items_", "backbone_config_")
        c = self.config
        bc = resolve(c.backbone).Config.model_validate_json(self.backbone_config_)
        dropout = bc.dropout if c.dropout is None else c.dropout
        with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the global RNG alone
            net = _Net(c.backbone, _backbone_module(c.backbone, bc, self.n_items_, None), bc, c.round_size, dropout)
        net.load_state_dict({name: torch.from_numpy(value) for name, value in self.weights_.items()})
        return _Inference(net.eval(), c, bc.max_seq_len)

    def top_k(self, users: np.ndarray, history: Interactions, k: int, *,
              mask_history: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) multi-round lists and their scores; with `mask_history` no round lists an item of the
        user's history (-1 pads when fewer unseen items exist)."""
        return self._inference().top_k(users, history, k, mask_history=mask_history)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        """Scores whose order (history masked) is the multi-round list, then the last round's ranking."""
        return self._inference().score(users, history, items)
