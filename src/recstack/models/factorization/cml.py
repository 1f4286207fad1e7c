"""CML (Hsieh et al., "Collaborative Metric Learning", WWW 2017).

Users and items are points in one Euclidean space and score(u, v) = -||u - v||^2. For a positive
(u, i) and U uniform negatives j (redrawn every epoch), the WARP-style loss with the paper's
approximate-rank weight is

    L = w_ui * [m + d(u,i)^2 - min_j d(u,j)^2]_+,   w_ui = log(1 + J * M / U)

with M the number of sampled impostors, J the number of items and w_ui a constant; plus `cov_reg`
times the sum of squared off-diagonal entries of the covariance of the batch's user and
positive-item embeddings. Every row is clipped to norm <= `max_norm` (torch.renorm) before each
batch's forward pass, which equals clipping after every step.

Deviations: Adam (the authors used AdaGrad), initialisation N(0, 1/d), margin 1.0 (paper 0.5); the
item-feature loss and dropout are not implemented. Users without training events sit at the origin
(no fold-in). Design notes and tuning record: docs/models/cml.md.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.factorization.sampled_mf import FactorNet, epoch_triples, factor_arrays, training_triples
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted


class CMLConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64
    margin: PositiveFloat = 1.0  # m in the hinge (paper: 0.5; 1.0 was better on validation)
    n_negatives: PositiveInt = 10  # U, sampled negatives per positive
    cov_reg: NonNegativeFloat = 1.0  # weight of the covariance regulariser
    max_norm: PositiveFloat = 1.0  # norm clipping radius of every embedding
    learning_rate: PositiveFloat = 3e-3
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    init_std: PositiveFloat | None = None  # None: 1/sqrt(embedding_size), rows of norm about 1


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

@torch.no_grad()
def clip_embeddings(net: FactorNet, max_norm: float) -> None:
    """Renormalise every user and item row to norm <= max_norm, in place."""
    for weight in (net.user_embedding.weight, net.item_embedding.weight):
        weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))


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


class CML(ScoresTrainedUsers, TorchRecommender):
    """Collaborative metric learning: users and items in a unit ball, WARP-weighted hinge loss."""

    Config = CMLConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> FactorNet:
        c = self.config
        self._pairs, self._sampler = training_triples(train.matrix(), c.batch_size, rng)
        self._untrained_users = train.user_counts() == 0
        init_std = c.init_std if c.init_std is not None else 1.0 / np.sqrt(c.embedding_size)
        return FactorNet(train.n_users, train.n_items, c.embedding_size, False, init_std)

    def batches(self):
        return epoch_triples(self._pairs, self._sampler, self.config.n_negatives)

    def batch_loss(self, module: FactorNet, batch) -> torch.Tensor:
        c = self.config
        clip_embeddings(module, c.max_norm)  # = clipping after the previous step (the trainer owns the step)
        users, pos, neg = batch
        u = module.user_embedding(users)
        v_i = module.item_embedding(pos)
        v_j = module.item_embedding(neg)
        loss = cml_loss(u, v_i, v_j, c.margin, module.item_embedding.num_embeddings)
        if c.cov_reg > 0:
            loss = loss + c.cov_reg * covariance_loss(u, v_i)
        return loss

    def export(self, module: FactorNet) -> dict[str, np.ndarray]:
        # the stored rows are clipped once more: the last step may have moved them out of the ball
        return {name: _clip_rows(value, self.config.max_norm)
                for name, value in factor_arrays(module, self._untrained_users).items()}

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return _scores(self.user_factors_, self.item_factors_, users, items)
