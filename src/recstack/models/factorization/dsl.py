"""DSL (Wang et al., "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation", WSDM 2024).

A BPR-MF or LightGCN backbone trained from scratch under a fixed parameter budget: only
`density * n_entries` entries of the embedding table E (users then items, (n_users + n_items, d))
may be non-zero at any step. The mask M starts uniformly at random with exactly that many ones
(E' = M ⊙ E), is re-applied after every optimiser step, and every `update_every` steps t (while
t < T_end = `update_stop`) it is explored: with p_t = alpha / 2 * (1 + cos(pi t / T_end)) and
k = ceil(p_t * |M|), prune the k active entries of smallest |E| (element-wise over the whole
table, so the split of the budget between users, items and dimensions moves freely) and regrow
the k inactive entries (the just-pruned ones included, as in the authors' code) with the largest
|dL/dE| of that step's batch; regrown entries start at zero. Loss as the backbone's:
-mean log sigmoid(s_ui - s_uj) + reg * (||e_u||^2 + ||e_i||^2 + ||e_j||^2) / B on layer-0 rows,
uniform negatives; s = <e_u, e_i> on E (mf) or on LightGCN's mean of K propagations of E.

Notable choices: the mask is element-wise and global over one table as in the authors' code (which
masks LightGCN's single user+item table); the initial mask holds exactly floor(density *
n_entries) ones (a random permutation, not the authors' Bernoulli draws), so the count never
exceeds the budget and prune/grow keeps it constant. Adam's moments are zeroed wherever the mask
is off, so a regrown weight starts from a clean optimiser state, as in a truly sparse
implementation that holds no state for inactive entries (the authors' code masks only SGD
momentum). Ties (many inactive entries share a zero gradient) are broken at random, seeded.
Exploration uses the trainer's `after_step` hook (the step's gradients are still on the table).
density=1.0 trains the dense backbone (no mask). Early stopping restores the best epoch's weights,
which were masked, so the budget holds for the kept model too.

After `fit`: `user_embedding_` / `item_embedding_` are the learned sparse tables (scipy CSR),
`density_` their actual non-zero fraction, `mask_updates_` one entry per exploration (step,
update fraction, entries moved); scoring uses plain numpy `user_factors_` / `item_factors_`
(the sparse tables themselves for mf, LightGCN's propagated - dense - embeddings for lightgcn), so
`score` needs no torch. Users without training events score all zeros, as in BPR and LightGCN.

Defaults: learning_rate, reg, init_std, batch_size (and n_layers) are None and resolve per
backbone to the tuned dense defaults of recstack's BPR (2e-3, 3e-3, 0.01, 4096) and LightGCN
(5e-3, 5e-4, 0.1, 2048, 3 layers). The DSL settings were chosen on ml-100k VALIDATION data (all
ratings positive, per-user random 8:1:1 split, seed 2020, NDCG@10 on valid, model seed 0, one
thread), mostly with the mf backbone at density 0.2 (dense mf: 0.245). The authors' code uses
alpha=0.5 and Delta T=3000 steps on Yelp2018 (about 2.5 epochs); on ml-100k (20 steps an epoch)
updates every 100 steps gave 0.187 (T_end the whole run) and every 500 gave 0.134 (T_end 3000),
while more frequent ones kept helping (T_end 2000): every 20 steps 0.203, 10: 0.206, 5: 0.214, 2:
0.216, 1: 0.205, so update_every=5. With it, T_end at half the planned run (2000 steps) beat 1000
(0.204) and, at Delta T=20, 3000 (0.194); alpha=0.5 beat 0.2 (0.198). A fixed random mask
(update_fraction=0) reaches only 0.074, and keeping Adam's moments for inactive entries (as the
authors' code does) 0.188 instead of 0.214. LightGCN at density 0.2: update_every=5 gives 0.240,
40 (once an epoch) 0.223. Validation NDCG@10 against density (mf / lightgcn),
`benchmarks/dsl_density.py`: 1.0 (dense) 0.245 / 0.253, 0.5: 0.217 / 0.250, 0.2: 0.214 / 0.240,
0.1: 0.206 / 0.222 (test, reference only: mf 0.293, 0.262, 0.245, 0.229; lightgcn 0.315, 0.302,
0.290, 0.268). mf at 0.5 stays below dense whatever was tried (T_end=1000: 0.226, Delta T=20:
0.225, alpha=0.2: 0.217, reg=1e-3: 0.206; a fixed mask 0.164). The tuned settings are small-data
ones: on a catalogue with thousands of steps an epoch, tune update_every and update_stop on
validation data.
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
from recstack.models.kernels.scoring import dot_scores
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted, check_trainable
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import pair_batches
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

# the dense backbones' tuned defaults (BPR-MF and LightGCN on ml-100k validation data)
_BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mf": {"learning_rate": 2e-3, "reg": 3e-3, "init_std": 0.01, "batch_size": 4096, "n_layers": 0},
    "lightgcn": {"learning_rate": 5e-3, "reg": 5e-4, "init_std": 0.1, "batch_size": 2048, "n_layers": 3},
}


class DSLConfig(ModelConfig):
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
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True

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


class _LiveScorer:
    """Scores from the current weights for the trainer's validation (propagated once per validation)."""

    def __init__(self, net: _Net) -> None:
        self.net, self.cache = net, None

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        if self.cache is None:
            self.cache = self.net.factors()
        return dot_scores(users, items, *self.cache)


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


class DSL(SaveLoad):
    """BPR-MF or LightGCN trained with a fixed budget of non-zero embedding entries, pruned and regrown."""

    Config = DSLConfig

    def __init__(self, config: DSLConfig | None = None) -> None:
        self.config = config or DSLConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        check_trainable("DSL", train)
        batch_size, reg = c.resolved("batch_size"), c.resolved("reg")
        n_layers = c.resolved("n_layers") if c.backbone == "lightgcn" else 0
        seed_everything(c.seed)  # before the module exists, so its initialisation repeats per seed
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix()
        adjacency = sparse_tensor(normalized_adjacency(matrix)) if n_layers > 0 else None
        net = _Net(adjacency, train.n_users, train.n_items, c.embedding_size, n_layers, c.resolved("init_std"))
        weight = net.embedding.weight
        scorer = _LiveScorer(net)
        n_users = train.n_users

        mask = None
        if c.density < 1.0:
            mask = SparseMask(tuple(weight.shape), c.density, torch.Generator().manual_seed(c.seed))
            mask.apply(weight.data)  # sparse from the first forward pass
        batches = pair_batches(matrix, batch_size, c.n_negatives, rng)
        steps_per_epoch = -(-matrix.nnz // batch_size)  # one pair per distinct (user, item), as pair_batches
        stop = c.update_stop if c.update_stop is not None else max(1, c.epochs * steps_per_epoch // 2)
        updates: list[dict[str, Any]] = []

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            users, pos, neg = batch
            scorer.cache = None  # the weights are about to change
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
            return bpr_loss(pos_scores, neg_scores) + reg * penalty

        def after_step(module: _Net, optimizer: torch.optim.Optimizer, step: int) -> None:
            table = module.embedding.weight
            mask.apply(table, optimizer)  # the optimiser step touched inactive entries: zero them again
            if step % c.update_every == 0 and step < stop:
                fraction = update_fraction(step, c.update_fraction, stop)
                moved = mask.prune_and_grow(table, math.ceil(fraction * mask.n_active))
                mask.apply(table, optimizer)  # pruned entries lose their optimiser state, grown ones start clean
                updates.append({"step": step, "update_fraction": fraction, "moved": moved})

        trainer = Trainer(TrainerConfig(
            epochs=c.epochs, learning_rate=c.resolved("learning_rate"), batch_size=batch_size, optimizer="adam",
            early_stopping_patience=c.early_stopping_patience, valid_metric=c.valid_metric,
            eval_every=c.eval_every, seed=c.seed, device=c.device, verbose=c.verbose,
        ))
        history = trainer.fit(net, batch_loss, batches, scorer, train=train, valid=valid,
                              after_step=after_step if mask is not None else None)

        table = weight.detach().to("cpu", torch.float32).numpy().copy()
        table[:n_users][train.user_counts() == 0] = 0.0  # never trained, only initialised: not part of the model
        self.user_embedding_ = sp.csr_matrix(table[:n_users])
        self.item_embedding_ = sp.csr_matrix(table[n_users:])
        self.density_ = float(np.count_nonzero(table)) / table.size
        user_factors, item_factors = net.factors()
        user_factors[train.user_counts() == 0] = 0.0  # never trained: score like unknown users
        self.user_factors_ = user_factors
        self.item_factors_ = item_factors
        self.mask_updates_ = updates
        self.history_ = history
        self.best_epoch_ = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_)
