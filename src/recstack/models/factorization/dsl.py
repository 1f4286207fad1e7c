"""DSL (Wang et al., "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation", WSDM 2024).

A BPR-MF or LightGCN backbone trained from scratch under a fixed parameter budget: only
`density * n_entries` entries of the embedding table E (users then items) may be non-zero. The mask
M starts uniformly at random with exactly that many ones (E' = M ⊙ E), is re-applied after every
optimiser step, and every `update_every` steps t < T_end = `update_stop` it explores: with
p_t = alpha / 2 * (1 + cos(pi t / T_end)) and k = ceil(p_t * |M|), prune the k active entries of
smallest |E| (element-wise over the whole table) and regrow, at zero, the k inactive ones with the
largest |dL/dE| of that step's batch. Loss as the backbone's: BPR plus reg * squared layer-0 norms.

Deviations from the authors' code: the initial mask is a random permutation with exactly the
budget (not Bernoulli draws); Adam's moments are zeroed where the mask is off (theirs masks only
SGD momentum); ties are broken at random, seeded. Exploration runs in `after_step`. After fit:
`user_embedding_` / `item_embedding_` (sparse tables), `density_`, `mask_updates_`; scoring uses
dense numpy `user_factors_` / `item_factors_`. Design notes and tuning record: `docs/models/dsl.md`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import normalized_adjacency, sparse_tensor, symmetric_matmul
from recstack.models.kernels.scoring import DotProductScores, dot_scores
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import pair_batches

# the dense backbones' tuned defaults (BPR-MF and LightGCN on ml-100k validation data)
_BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mf": {"learning_rate": 2e-3, "reg": 3e-3, "init_std": 0.01, "batch_size": 4096, "n_layers": 0},
    "lightgcn": {"learning_rate": 5e-3, "reg": 5e-4, "init_std": 0.1, "batch_size": 2048, "n_layers": 3},
}


class DSLConfig(ModelConfig, TrainingFields):
    backbone: Literal["mf", "lightgcn"] = "mf"
    density: float = Field(0.5, gt=0.0, le=1.0)  # share of embedding-table entries that may be non-zero
    update_every: PositiveInt = 5  # Delta T: optimiser steps between prune-and-grow updates
    update_fraction: float = Field(0.5, ge=0.0, le=1.0)  # alpha: share of active entries moved at step 0
    update_stop: PositiveInt | None = None  # T_end in steps; None = half the planned run (epochs x batches / 2)
    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt | None = None  # lightgcn only; None = 3
    learning_rate: PositiveFloat | None = None  # None = the backbone's default (see the docstring)
    reg: NonNegativeFloat | None = None
    init_std: PositiveFloat | None = None
    batch_size: PositiveInt | None = None
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training before
    n_negatives: PositiveInt = 1

    @model_validator(mode="after")
    def _layers_only_for_lightgcn(self) -> Self:
        if self.backbone == "mf" and self.n_layers not in (None, 0):
            raise ValueError(f"n_layers={self.n_layers} needs backbone='lightgcn'; the mf backbone has no "
                             "propagation layers (drop n_layers or set backbone='lightgcn')")
        return self

    def resolved(self, name: str) -> Any:
        """A backbone-dependent setting: the value given, else the backbone's default."""
        value = getattr(self, name)
        return _BACKBONE_DEFAULTS[self.backbone][name] if value is None else value


class _Net(torch.nn.Module):
    """One embedding table, users then items; `n_layers` LightGCN propagations (0 = matrix factorisation)."""

    def __init__(self, adjacency: torch.Tensor | None, n_users: int, n_items: int, embedding_size: int,
                 n_layers: int, init_std: float) -> None:
        super().__init__()
        self.n_users, self.n_layers = n_users, n_layers
        self.embedding = torch.nn.Embedding(n_users + n_items, embedding_size)
        torch.nn.init.normal_(self.embedding.weight, std=init_std)
        if adjacency is not None:
            self.register_buffer("adjacency", adjacency, persistent=False)

    def propagate(self) -> torch.Tensor:
        """(n_users + n_items, d): the mean of layers 0..K (layer 0 alone for mf)."""
        layer = total = self.embedding.weight
        for _ in range(self.n_layers):
            layer = symmetric_matmul(self.adjacency, layer)
            total = total + layer
        return total / (self.n_layers + 1)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            final = self.propagate().to("cpu", torch.float32).numpy().copy()
        return final[:self.n_users], final[self.n_users:]


def update_fraction(step: int, alpha: float, stop: int) -> float:
    """The paper's cosine decay of the prune/grow fraction: alpha/2 (1 + cos(pi step / stop)), 0 from `stop` on."""
    if step >= stop:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / stop))


class SparseMask:
    """An element-wise boolean mask over one weight tensor with a fixed number of active entries.

    `apply` zeroes the inactive weights (and their Adam moments); `prune_and_grow(k)` deactivates
    the k active entries of smallest magnitude and activates the k inactive ones of largest
    gradient magnitude, at zero, so the active count never changes.
    """

    def __init__(self, shape: tuple[int, ...], density: float, generator: torch.Generator) -> None:
        n_entries = math.prod(shape)
        self.budget = min(n_entries, max(1, math.floor(density * n_entries)))
        self.generator = generator  # also breaks ties at prune and grow
        active = torch.randperm(n_entries, generator=generator)[:self.budget]
        mask = torch.zeros(n_entries, dtype=torch.bool)
        mask[active] = True
        self.mask = mask.view(shape)

    def _top(self, values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
        """Indices of the k largest (smallest) values, ties broken uniformly at random but seeded: many
        inactive entries share a zero gradient (rows outside the batch), and breaking those ties by
        index would always regrow the lowest-numbered users first (and topk's choice varies by thread)."""
        order = torch.randperm(values.numel(), generator=self.generator).to(values.device)
        ranked = torch.sort(values[order], descending=largest, stable=True).indices[:k]
        return order[ranked]

    def _on(self, device: torch.device) -> torch.Tensor:
        if self.mask.device != device:
            self.mask = self.mask.to(device)
        return self.mask

    @property
    def n_active(self) -> int:
        return int(self.mask.sum())

    @torch.no_grad()
    def apply(self, weight: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        mask = self._on(weight.device)
        weight.mul_(mask)
        state = optimizer.state.get(weight, {}) if optimizer is not None else {}
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if isinstance(state.get(key), torch.Tensor):
                state[key].mul_(mask)

    @torch.no_grad()
    def prune_and_grow(self, weight: torch.Tensor, k: int) -> int:
        """Move k entries (fewer only if fewer are active); returns how many moved."""
        mask = self._on(weight.device).view(-1)
        k = min(k, int(mask.sum()))
        if k <= 0:
            return 0
        if weight.grad is None:
            raise RuntimeError("prune_and_grow needs the step's gradient on the weight (call it after backward)")
        flat = weight.view(-1)
        magnitude = flat.abs().masked_fill(~mask, math.inf)
        pruned = self._top(magnitude, k, largest=False)
        mask[pruned] = False
        flat[pruned] = 0.0
        gradient = weight.grad.view(-1).abs().masked_fill(mask, -1.0)  # active entries never regrow
        grown = self._top(gradient, k, largest=True)
        mask[grown] = True
        flat[grown] = 0.0  # regrown entries start at zero
        return k


class DSL(DotProductScores, ScoresTrainedUsers, TorchRecommender):
    """BPR-MF or LightGCN trained with a fixed budget of non-zero embedding entries, pruned and regrown."""

    Config = DSLConfig

    def trainer_settings(self) -> dict[str, Any]:
        c = self.config  # the backbone-dependent defaults, resolved
        return {"learning_rate": c.resolved("learning_rate"), "batch_size": c.resolved("batch_size")}

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        batch_size = c.resolved("batch_size")
        n_layers = c.resolved("n_layers") if c.backbone == "lightgcn" else 0
        matrix = train.matrix()
        adjacency = sparse_tensor(normalized_adjacency(matrix)) if n_layers > 0 else None
        net = _Net(adjacency, train.n_users, train.n_items, c.embedding_size, n_layers, c.resolved("init_std"))
        weight = net.embedding.weight
        self._mask = None
        if c.density < 1.0:
            self._mask = SparseMask(tuple(weight.shape), c.density, torch.Generator().manual_seed(c.seed))
            self._mask.apply(weight.data)  # sparse from the first forward pass
        self._pairs = pair_batches(matrix, batch_size, c.n_negatives, rng)
        steps_per_epoch = -(-matrix.nnz // batch_size)  # one pair per distinct (user, item), as pair_batches
        self._stop = c.update_stop if c.update_stop is not None else max(1, c.epochs * steps_per_epoch // 2)
        self._updates: list[dict[str, Any]] = []
        self._untrained_users = train.user_counts() == 0
        return net

    def batches(self):
        return self._pairs()

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        n_users = module.n_users
        rows = module.embedding(users), module.embedding(n_users + pos), module.embedding(n_users + neg)
        if module.n_layers > 0:
            final = module.propagate()
            # F.embedding rather than indexing: its backward sums in a fixed order, so a seed repeats exactly
            e_u, e_i, e_j = (F.embedding(idx, final) for idx in (users, n_users + pos, n_users + neg))
        else:
            e_u, e_i, e_j = rows  # e_j: (B, n_negatives, d)
        pos_scores = (e_u * e_i).sum(-1)
        neg_scores = (e_u.unsqueeze(1) * e_j).sum(-1)
        penalty = l2_penalty(*rows)
        return bpr_loss(pos_scores, neg_scores) + self.config.resolved("reg") * penalty

    def after_step(self, module: _Net, optimizer: torch.optim.Optimizer, step: int) -> None:
        mask, c = self._mask, self.config
        if mask is None:  # density 1: the dense backbone
            return
        table = module.embedding.weight
        mask.apply(table, optimizer)  # the optimiser step touched inactive entries: zero them again
        if step % c.update_every == 0 and step < self._stop:
            fraction = update_fraction(step, c.update_fraction, self._stop)
            moved = mask.prune_and_grow(table, math.ceil(fraction * mask.n_active))
            mask.apply(table, optimizer)  # pruned entries lose their optimiser state, grown ones start clean
            self._updates.append({"step": step, "update_fraction": fraction, "moved": moved})

    def export(self, module: _Net) -> dict[str, Any]:
        n_users = module.n_users
        table = module.embedding.weight.detach().to("cpu", torch.float32).numpy().copy()
        table[:n_users][self._untrained_users] = 0.0  # never trained, only initialised: not part of the model
        user_factors, item_factors = module.factors()
        user_factors[self._untrained_users] = 0.0  # never trained: score like unknown users
        return {"user_embedding_": sp.csr_matrix(table[:n_users]), "item_embedding_": sp.csr_matrix(table[n_users:]),
                "density_": float(np.count_nonzero(table)) / table.size,
                "user_factors_": user_factors, "item_factors_": item_factors, "mask_updates_": list(self._updates)}

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_)
