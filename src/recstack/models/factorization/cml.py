"""CML (Hsieh et al., "Collaborative Metric Learning", WWW 2017).

Users and items are points in one Euclidean space and score(u, v) = -||u - v||^2, so an item
close to a user is recommended (and, by the triangle inequality, items liked by the same users
cluster). For a positive (u, i) and U uniform negatives j (redrawn every epoch), the WARP-style
loss with the paper's approximate-rank weight is

    L = w_ui * [m + d(u,i)^2 - min_j d(u,j)^2]_+,   w_ui = log(1 + J * M / U)

with M the number of sampled impostors (m + d(u,i)^2 - d(u,j)^2 > 0), J the number of items and
w_ui treated as a constant; plus `cov_reg` times the covariance regulariser: the sum of squared
off-diagonal entries of the covariance of the batch's user and positive-item embeddings (the
paper's ||C||_F - ||diag C||^2 written as squares, which de-correlates the dimensions).

Notable choices:
- Norm clipping ||u||, ||v|| <= 1 as in the paper: all rows are renormalised (torch.renorm under
  no_grad) before every batch's forward pass, which is the same as clipping after every step;
  the stored arrays are clipped once more after training.
- Initialisation N(0, 1/d) per coordinate (rows of norm about 1), Adam via the shared Trainer
  (the authors used AdaGrad), early stopping on validation NDCG@10.
- `score` is numpy: -(|u|^2 - 2 u.v + |v|^2), one matmul per block. Users without training events
  (or outside the vocabulary) sit at the origin and get -|v|^2. No fold-in.
- The paper's item-feature loss and dropout (for items with features) are not implemented.

Defaults tuned briefly on ml-100k VALIDATION (random 8:1:1 split seed 2020, full ranking, NDCG@10
with train masked; 12 settings of learning_rate, margin, cov_reg, n_negatives, embedding_size):
embedding_size=64, margin=1.0, n_negatives=10, learning_rate=3e-3, batch_size=1024, cov_reg=1,
patience 10 -> validation NDCG@10 = 0.262 (seed 0, best epoch 22, ~18 s on one shared core;
0.261 with seed 1); test NDCG@10 0.308 (seed 0), for information. The margin mattered most: the
paper's 0.5 gave 0.241 (margin 1.5: 0.259, 2.0: 0.248); cov_reg 0 / 1 / 10 at margin 0.5 gave
0.241 / 0.241 / 0.232; 20 negatives 0.214, 5 negatives 0.257; lr 1e-3 0.263 but needs 60+ epochs.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.sampling import EpochPairs, UniformNegativeSampler
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything


class CMLConfig(ModelConfig):
    embedding_size: PositiveInt = 64
    margin: PositiveFloat = 1.0  # m in the hinge (paper: 0.5; 1.0 was better on validation)
    n_negatives: PositiveInt = 10  # U, sampled negatives per positive
    cov_reg: NonNegativeFloat = 1.0  # weight of the covariance regulariser
    max_norm: PositiveFloat = 1.0  # norm clipping radius of every embedding
    learning_rate: PositiveFloat = 3e-3
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 1024
    init_std: PositiveFloat | None = None  # None: 1/sqrt(embedding_size), rows of norm about 1
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"
    verbose: bool = True


def cml_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float, n_items: int) -> torch.Tensor:
    """Mean over the batch of log(1 + J*M/U) * [m + d(u,i)^2 - min_j d(u,j)^2]_+ (weights constant).

    user (B, d), pos (B, d), neg (B, U, d).
    """
    d_pos = (user - pos).pow(2).sum(-1)  # (B,)
    d_neg = (user.unsqueeze(1) - neg).pow(2).sum(-1)  # (B, U)
    with torch.no_grad():
        impostors = (margin + d_pos.unsqueeze(1) - d_neg > 0).sum(1).to(d_pos.dtype)
        weight = torch.log1p(n_items * impostors / neg.shape[1])
    hinge = torch.relu(margin + d_pos - d_neg.min(dim=1).values)
    return (weight * hinge).mean()


def covariance_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries of the covariance of the stacked rows (N, d)."""
    x = torch.cat(embeddings, dim=0)
    x = x - x.mean(dim=0, keepdim=True)
    cov = x.T @ x / max(len(x), 1)
    return cov.pow(2).sum() - cov.diagonal().pow(2).sum()


class _Net(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, embedding_size: int, init_std: float) -> None:
        super().__init__()
        self.user_embedding = torch.nn.Embedding(n_users, embedding_size)
        self.item_embedding = torch.nn.Embedding(n_items, embedding_size)
        torch.nn.init.normal_(self.user_embedding.weight, std=init_std)
        torch.nn.init.normal_(self.item_embedding.weight, std=init_std)

    @torch.no_grad()
    def clip(self, max_norm: float) -> None:
        for weight in (self.user_embedding.weight, self.item_embedding.weight):
            weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))

    def factors(self, max_norm: float) -> tuple[np.ndarray, np.ndarray]:
        """Clipped float32 numpy copies of the user and item embeddings."""
        def array(t: torch.Tensor) -> np.ndarray:
            return _clip_rows(t.detach().to("cpu", torch.float32).numpy().copy(), max_norm)

        return array(self.user_embedding.weight), array(self.item_embedding.weight)


def _clip_rows(x: np.ndarray, max_norm: float) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x * np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))).astype(np.float32)


def _scores(user_factors: np.ndarray, item_factors: np.ndarray, users: np.ndarray,
            items: np.ndarray | None) -> np.ndarray:
    """-||u - v||^2 = 2 u.v - |u|^2 - |v|^2 for all items, candidates (C,) or per-user (B, C)."""
    users = np.asarray(users, dtype=np.int64)
    known = (users >= 0) & (users < len(user_factors))
    p = np.zeros((len(users), item_factors.shape[1]), dtype=np.float32)
    p[known] = user_factors[users[known]]  # untrained / unknown users sit at the origin
    p_sq = (p * p).sum(1)[:, None]
    if items is None:
        q = item_factors
        scores = 2.0 * (p @ q.T) - p_sq - (q * q).sum(1)[None, :]
    else:
        items = np.asarray(items, dtype=np.int64)
        q = item_factors[items]
        if items.ndim == 1:
            scores = 2.0 * (p @ q.T) - p_sq - (q * q).sum(1)[None, :]
        else:
            scores = 2.0 * np.einsum("bd,bcd->bc", p, q) - p_sq - (q * q).sum(-1)
    return scores.astype(np.float32, copy=False)


class _LiveScorer:
    def __init__(self, net: _Net, max_norm: float) -> None:
        self.net, self.max_norm = net, max_norm

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _scores(*self.net.factors(self.max_norm), users, items)


class CML(SaveLoad):
    """Collaborative metric learning: users and items in a unit ball, WARP-weighted hinge loss."""

    Config = CMLConfig

    def __init__(self, config: CMLConfig | None = None) -> None:
        self.config = config or CMLConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("CML cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix()
        pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        sampler = UniformNegativeSampler(matrix, rng)
        init_std = c.init_std if c.init_std is not None else 1.0 / np.sqrt(c.embedding_size)
        net = _Net(train.n_users, train.n_items, c.embedding_size, init_std)
        n_items = train.n_items

        def batches():
            negatives = sampler.sample(pairs.users, c.n_negatives)  # one vectorised draw per epoch
            for index, users, items in pairs.indexed():
                yield users, items, negatives[index]

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            module.clip(c.max_norm)  # = clipping after the previous step (the trainer owns the step)
            users, pos, neg = batch
            u = module.user_embedding(users)
            v_i = module.item_embedding(pos)
            v_j = module.item_embedding(neg)
            loss = cml_loss(u, v_i, v_j, c.margin, n_items)
            if c.cov_reg > 0:
                loss = loss + c.cov_reg * covariance_loss(u, v_i)
            return loss

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net, c.max_norm), train=train, valid=valid)

        user_factors, item_factors = net.factors(c.max_norm)
        user_factors[train.user_counts() == 0] = 0.0
        self.user_factors_ = user_factors
        self.item_factors_ = item_factors
        self.history_ = history
        self.best_epoch_ = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return _scores(self.user_factors_, self.item_factors_, users, items)
