"""OptInter (Lyu et al., ICDE 2022, "Memorize, Factorize, or be Naive"): a searched method per field pair.

Each field pair (i, j) is modelled by one of three methods: memorise, a cross-product embedding
m_ij = M[hash(x_i, x_j)]; factorise, the Hadamard product v_i * v_j of two field embeddings from their
own table (as the paper, not the MLP's input table); naive, nothing. y = MLP([e_1; ...; e_F; the kept
pair vectors]), loss = BCE. Search: the pair vector is sum_o w_o(ij) o_ij with Gumbel-softmax weights
w(ij) = softmax((alpha_ij + g) / tau) (tau annealed per step), alpha trained jointly with the network
by the same optimiser (the paper's one-level variant); stopped on validation AUC. Then each pair keeps
argmax alpha_ij and the model is retrained from scratch with that fixed architecture (`architecture_`).
Deviations: crosses are hashed into `hash_size` buckets (bucket = (x_i * n_ids + x_j) * 2654435761 mod
hash_size) instead of the paper's exact vocabulary; its count threshold applies to buckets (one seen
in fewer than `min_count` training crosses reads its pair's OOV row); multi-valued and numeric
fields cross value by value, weighted by the product of the two values' weights; the MLP has no
LayerNorm; naive pairs are dropped from the retrained MLP's input rather than fed as zeros.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from itertools import combinations
from typing import Self

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.ctr import CTRData
from recstack.models.ctr.base import CTRFields, CTRModel, FieldEmbedding, ModelConfig, mlp
from recstack.models.protocol import check_fitted
from recstack.train.options import FitOptions

logger = logging.getLogger(__name__)

METHODS = ("memorise", "factorise", "naive")
_GOLDEN = 2654435761  # Knuth's multiplicative hashing constant


class OptInterConfig(ModelConfig, CTRFields):
    hidden_units: list[int] = Field(default_factory=lambda: [400, 400, 400], min_length=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    cross_embedding_size: PositiveInt | None = None  # pair vectors' size (memorised, factorised); None: embedding_size
    hash_size: PositiveInt = 2 ** 18  # buckets of the memorised cross-product table
    min_count: NonNegativeInt = 50  # a bucket seen in fewer training crosses reads its pair's OOV row (0: off)
    search_epochs: PositiveInt = 10
    temperature: PositiveFloat = 1.0  # Gumbel-softmax tau at the first search step
    temperature_decay: float = Field(1e-3, ge=0.0)  # tau_t = max(min_temperature, temperature - decay * t)
    min_temperature: PositiveFloat = 0.01


def field_pairs(n_fields: int) -> list[tuple[int, int]]:
    """Field pairs (i < j) in the order of `architecture_`."""
    return list(combinations(range(n_fields), 2))


def field_widths(index_blocks: list[np.ndarray]) -> list[int]:
    """Per field, the number of id slots it uses (1 for a categorical or numeric field)."""
    blocks = np.concatenate([b.reshape(-1, *b.shape[-2:]).astype(bool).any(0) for b in index_blocks if b.size], 0)
    return [int(np.flatnonzero(row).max()) + 1 if row.any() else 1 for row in blocks]


def cross_buckets(a: torch.Tensor, b: torch.Tensor, n_ids: int, hash_size: int) -> torch.Tensor:
    """Bucket of each (a, b) id cross; ids of different fields never coincide, so pairs share one table."""
    return torch.remainder((a * n_ids + b) * _GOLDEN, hash_size)


def pair_buckets(index: torch.Tensor, weight: torch.Tensor, i: int, j: int, widths: list[int], n_ids: int,
                 hash_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets (B, w_i, w_j) of every value cross of fields i and j, and their weights w_a w_b."""
    a, b = index[:, i, :widths[i]], index[:, j, :widths[j]]
    w = weight[:, i, :widths[i]].unsqueeze(2) * weight[:, j, :widths[j]].unsqueeze(1)
    return cross_buckets(a.unsqueeze(2), b.unsqueeze(1), n_ids, hash_size), w


def memorised(table: torch.nn.Embedding, index: torch.Tensor, weight: torch.Tensor, pairs: list[tuple[int, int]],
              widths: list[int], n_ids: int, hash_size: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(B, P, c): per pair, sum over value crosses of w_a w_b M[bucket(a, b)]; with `keep` (hash_size,),
    a bucket not kept reads row hash_size + i * F + j, the pair's OOV row."""
    n_fields = index.shape[1]
    out = []
    for i, j in pairs:
        buckets, w = pair_buckets(index, weight, i, j, widths, n_ids, hash_size)
        if keep is not None:
            buckets = torch.where(keep[buckets] > 0, buckets, hash_size + i * n_fields + j)
        out.append((table(buckets) * w.unsqueeze(-1)).sum((1, 2)))
    return torch.stack(out, 1)


def frequent_buckets(data: CTRData, widths: list[int], min_count: int, hash_size: int,
                     chunk: int = 65536) -> np.ndarray:
    """(hash_size,) float32, 1 where the bucket holds at least `min_count` value crosses of training rows."""
    counts = torch.zeros(hash_size, dtype=torch.long)
    n_ids = data.features.n_ids
    for start in range(0, len(data), chunk):
        index, weight = (torch.from_numpy(x) for x in data.encode(slice(start, start + chunk)))
        for i, j in field_pairs(index.shape[1]):
            buckets, w = pair_buckets(index, weight, i, j, widths, n_ids, hash_size)
            counts += torch.bincount(buckets[w != 0], minlength=hash_size)
    return (counts >= min_count).numpy().astype(np.float32)


def factorised(vectors: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """(B, P, c): Hadamard products v_i * v_j of the field vectors (B, F, c)."""
    rows = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    cols = torch.tensor([j for _, j in pairs], dtype=torch.long)
    return vectors[:, rows] * vectors[:, cols]


class _OptInter(torch.nn.Module):
    """`architecture=None`: the search network (all three methods, mixed by alpha); else the fixed one."""

    def __init__(self, n_ids: int, n_fields: int, widths: list[int], c: OptInterConfig,
                 architecture: list[str] | None, keep: np.ndarray | None = None) -> None:
        super().__init__()
        pairs = field_pairs(n_fields)
        size = c.cross_embedding_size or c.embedding_size
        self.n_ids, self.widths, self.architecture, self.hash_size = n_ids, widths, architecture, c.hash_size
        self.fields = FieldEmbedding(n_ids, c.embedding_size)
        if architecture is None:
            self.memorise = self.factorise = pairs
            self.alpha = torch.nn.Parameter(torch.zeros(len(pairs), len(METHODS)))
            self.temperature = (c.temperature, c.temperature_decay, c.min_temperature)
            self.step = 0
            n_kept = len(pairs)
        else:
            self.memorise = [p for p, m in zip(pairs, architecture) if m == "memorise"]
            self.factorise = [p for p, m in zip(pairs, architecture) if m == "factorise"]
            # the MLP reads the kept pairs in pair order
            kept = [p for p, m in zip(pairs, architecture) if m != "naive"]
            order = {p: n for n, p in enumerate(self.memorise + self.factorise)}
            self.register_buffer("order", torch.tensor([order[p] for p in kept], dtype=torch.long), persistent=False)
            n_kept = len(kept)
        self.cross = torch.nn.Embedding(c.hash_size + n_fields ** 2, size) if self.memorise else None
        if self.memorise and c.min_count > 0:  # fitted with the model: a loaded net gets it from the state dict
            self.register_buffer("keep", torch.from_numpy(keep) if keep is not None else torch.ones(c.hash_size))
        else:
            self.keep = None
        self.factor = torch.nn.Embedding(n_ids, size, padding_idx=0) if self.factorise else None
        for table in (self.cross, self.factor):
            if table is not None:
                torch.nn.init.normal_(table.weight, std=1e-2)
        self.dnn = mlp([n_fields * c.embedding_size + n_kept * size, *c.hidden_units], c.dropout)

    def mixture(self) -> torch.Tensor:
        """(P, 3) weights of memorise / factorise / naive: Gumbel-softmax in training, softmax in eval."""
        tau0, decay, floor = self.temperature
        tau = max(floor, tau0 - decay * self.step)
        if self.training:
            self.step += 1
            return torch.nn.functional.gumbel_softmax(self.alpha, tau=tau, hard=False, dim=-1)
        return torch.softmax(self.alpha / tau, dim=-1)

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        e = self.fields(index, weight)
        parts = []
        if self.memorise:
            parts.append(memorised(self.cross, index, weight, self.memorise, self.widths, self.n_ids,
                                   self.hash_size, self.keep))
        if self.factorise:
            v = (self.factor(index) * weight.unsqueeze(-1)).sum(2)
            parts.append(factorised(v, self.factorise))
        if self.architecture is None:
            w = self.mixture()
            pairs = w[:, 0, None] * parts[0] + w[:, 1, None] * parts[1]  # naive adds w_2 * 0
        else:
            pairs = torch.cat(parts, 1)[:, self.order] if parts else e[:, :0]
        return self.dnn(torch.cat([e.flatten(1), pairs.flatten(1)], 1)).squeeze(-1)


class OptInter(CTRModel):
    """Search memorise / factorise / naive per field pair, fix the argmax, retrain from scratch."""

    Config = OptInterConfig

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        stage = getattr(self, "_stage", None)
        if stage is not None:  # inside fit: (widths, None, keep) to search, (widths, architecture, keep) to retrain
            return _OptInter(n_ids, n_fields, stage[0], self.config, stage[1], stage[2])
        return _OptInter(n_ids, n_fields, list(self.field_widths_), self.config, list(self.architecture_))

    def fit(self, train: CTRData, valid: CTRData | None = None, *, options: FitOptions | None = None) -> Self:
        if not isinstance(train, CTRData):
            return super().fit(train, valid, options=options)  # raises the shared message
        f = train.features
        widths = field_widths([f.user_index, f.item_index])
        config = self.config
        keep = frequent_buckets(train, widths, config.min_count, config.hash_size) if config.min_count > 0 else None
        try:
            # the search is a fit of its own, with its own epoch budget; the shared loop reads self.config
            self.config = config.model_copy(update={"epochs": config.search_epochs})
            self._stage = (widths, None, keep)
            # progress lines say which stage runs; the epoch log (if any) gets the search epochs first
            search_options = replace(options or FitOptions(), label=f"{(options or FitOptions()).name} search")
            super().fit(train, valid, options=search_options)
            alpha = self.weights_["alpha"]
            search_history, search_epoch = self.history_, self.best_epoch_
            architecture = [METHODS[m] for m in alpha.argmax(1)]
            self.config = config
            self._stage = (widths, architecture, keep)
            super().fit(train, valid, options=options)
        finally:
            self.config = config
            self.__dict__.pop("_stage", None)
        self.architecture_ = architecture
        self.architecture_weights_ = np.exp(alpha - alpha.max(1, keepdims=True))
        self.architecture_weights_ /= self.architecture_weights_.sum(1, keepdims=True)
        self.field_widths_ = widths
        self.search_history_, self.search_best_epoch_ = search_history, search_epoch
        counts = {m: architecture.count(m) for m in METHODS}
        logger.info("OptInter architecture over %d field pairs: %s; %s", len(architecture), counts,
                    ", ".join(f"{k}: {v}" for k, v in self.interactions().items()))
        return self

    def interactions(self) -> dict[str, str]:
        """The searched method of each field pair, e.g. {"user_id x item_id": "factorise", ...}."""
        check_fitted(self, "architecture_", "fields_")
        pairs = field_pairs(len(self.fields_))
        return {f"{self.fields_[i]} x {self.fields_[j]}": m for (i, j), m in zip(pairs, self.architecture_)}


__all__ = ["METHODS", "OptInter", "OptInterConfig", "cross_buckets", "factorised", "field_pairs", "frequent_buckets",
           "memorised"]
