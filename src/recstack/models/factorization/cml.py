"""CML (Hsieh et al., "Collaborative Metric Learning", WWW 2017).

Users and items are points in one Euclidean space and score(u, v) = -||u - v||^2. For a positive
(u, i) and U uniform negatives j (redrawn every epoch), the WARP-style loss with the paper's
approximate-rank weight is

    L = w_ui * [m + d(u,i)^2 - min_j d(u,j)^2]_+,   w_ui = log(1 + J * M / U)

with M the number of sampled impostors, J the number of items and w_ui a constant; plus `cov_reg`
times the sum of squared off-diagonal entries of the covariance of the batch's user and
positive-item embeddings. Every row is clipped to norm <= `max_norm` (torch.renorm) before each
batch's forward pass, which equals clipping after every step.

Item features (the paper's "Integrating item features", `content` != "none"): an MLP f (Linear ->
ReLU -> dropout -> Linear, `feature_hidden` wide, output clipped to `max_norm` as in the authors'
code) maps item features x_j (`recstack.data.modalities`: text and/or structure) into the space,
and `feature_weight` * mean_j ||f(x_j) - v_j||^2 over the items with training events joins the
loss (the paper's sum, divided by J once per batch). Items without training events (cold items)
are placed at v_j := f(x_j) when the model exports its vectors; trained items keep their own.

Deviations: Adam (the authors used AdaGrad), initialisation N(0, 1/d), margin 1.0 (paper 0.5); the
feature loss averages over the trained items every batch, item vectors are not initialised at
f(x_j). Users without training events sit at the origin (no fold-in). Design notes and tuning
record: docs/models/cml.md.
"""

from __future__ import annotations

from typing import Literal, Mapping, Self

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, confloat

from recstack.data.dataset import Dataset
from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.factorization.sampled_mf import FactorNet, epoch_triples, factor_arrays, training_triples
from recstack.models.kernels.side import ItemModalityInput, ModalityFields
from recstack.models.neural import TorchRecommender, TrainingFields, module_arrays
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted


class CMLConfig(ModelConfig, TrainingFields, ModalityFields):
    embedding_size: PositiveInt = 64
    margin: PositiveFloat = 1.0  # m in the hinge (paper: 0.5; 1.0 was better on validation)
    n_negatives: PositiveInt = 10  # U, sampled negatives per positive
    cov_reg: NonNegativeFloat = 1.0  # weight of the covariance regulariser
    max_norm: PositiveFloat = 1.0  # norm clipping radius of every embedding
    learning_rate: PositiveFloat = 3e-3
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    init_std: PositiveFloat | None = None  # None: 1/sqrt(embedding_size), rows of norm about 1
    # item features (the paper's feature loss); "none" is plain CML, with the same random draws
    content: Literal["none", "text", "structure", "text+structure"] = "none"
    feature_weight: NonNegativeFloat = 1.0  # lambda_f, on the mean over trained items
    feature_hidden: PositiveInt = 256  # hidden width of the MLP f
    dropout: confloat(ge=0.0, lt=1.0) = 0.2  # on f's hidden layer, training only

    @property
    def modalities(self) -> list[str]:
        return [] if self.content == "none" else self.content.split("+")


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


def feature_loss(projected: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """mean_j ||f(x_j) - v_j||^2 over the rows: projected features f(x) (N, d), item vectors v (N, d)."""
    return (projected - items).pow(2).sum(-1).mean()


@torch.no_grad()
def clip_embeddings(net: FactorNet, max_norm: float) -> None:
    """Renormalise every user and item row to norm <= max_norm, in place."""
    for weight in (net.user_embedding.weight, net.item_embedding.weight):
        weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))


class _ContentNet(FactorNet):
    """CML's embeddings plus the MLP f that maps item features into the same space."""

    def __init__(self, n_users: int, n_items: int, features: np.ndarray, c: CMLConfig, init_std: float) -> None:
        super().__init__(n_users, n_items, c.embedding_size, False, init_std)  # first: the same draws as plain CML
        self.max_norm = c.max_norm
        self.mlp = torch.nn.Sequential(torch.nn.Linear(features.shape[1], c.feature_hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(c.dropout), torch.nn.Linear(c.feature_hidden, c.embedding_size))
        self.register_buffer("features", torch.from_numpy(np.ascontiguousarray(features)), persistent=False)

    def project(self, items: torch.Tensor) -> torch.Tensor:
        """f(x_j) for item indices (N,), each row clipped to norm <= max_norm (differentiably)."""
        out = self.mlp(self.features[items])
        norms = out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return out * (self.max_norm / norms).clamp(max=1.0)


def _clip_rows(x: np.ndarray, max_norm: float) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x * np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))).astype(np.float32)


def _project(mlp: Mapping[str, np.ndarray], features: np.ndarray, max_norm: float) -> np.ndarray:
    """f(x) in numpy from `_ContentNet.mlp`'s state dict (dropout off), rows clipped to max_norm."""
    hidden = np.maximum(features @ mlp["0.weight"].T + mlp["0.bias"], 0.0)
    return _clip_rows(hidden @ mlp["3.weight"].T + mlp["3.bias"], max_norm)


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


class CML(ItemModalityInput, ScoresTrainedUsers, TorchRecommender):
    """Collaborative metric learning: users and items in a unit ball, WARP-weighted hinge loss; with
    `content`, item features pull item vectors towards f(x_j) and place the cold items."""

    Config = CMLConfig

    # ---- side information (only with `content`; set_modalities from ItemModalityInput) ---------
    def use_dataset(self, dataset: Dataset) -> Self:
        """Build the item features `content` names from the dataset (`recstack run` calls this);
        nothing to do with content "none"."""
        from recstack.data.modalities import ModalityError

        try:
            return super().use_dataset(dataset)
        except ModalityError as exc:
            raise RecstackError(f"CML with content={self.config.content!r} cannot read its item features: {exc}; "
                                "or set content: none") from None

    def _features(self, train: Interactions) -> np.ndarray:
        """x_j for every item of the vocabulary: the content's modalities side by side."""
        found = self.modality_features(train, who=f"CML with content={self.config.content!r}",
                                       hint="; or set content: none")
        return np.concatenate(list(found.values()), axis=1).astype(np.float32)

    # ---- training -----------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> FactorNet:
        c = self.config
        features = self._features(train) if c.modalities else None  # before any draw: it may raise
        self._pairs, self._sampler = training_triples(train.matrix(), c.batch_size, rng)
        self._untrained_users = train.user_counts() == 0
        init_std = c.init_std if c.init_std is not None else 1.0 / np.sqrt(c.embedding_size)
        if features is None:
            return FactorNet(train.n_users, train.n_items, c.embedding_size, False, init_std)
        counts = train.item_counts()
        self._warm = torch.from_numpy(np.flatnonzero(counts > 0))
        self._cold = np.flatnonzero(counts == 0)
        self._item_features = features
        return _ContentNet(train.n_users, train.n_items, features, c, init_std)

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
        if isinstance(module, _ContentNet) and c.feature_weight > 0:
            warm = self._warm.to(u.device)
            loss = loss + c.feature_weight * feature_loss(module.project(warm), module.item_embedding(warm))
        return loss

    def export(self, module: FactorNet) -> dict[str, np.ndarray]:
        # the stored rows are clipped once more: the last step may have moved them out of the ball
        fitted = {name: _clip_rows(value, self.config.max_norm)
                  for name, value in factor_arrays(module, self._untrained_users).items()}
        if isinstance(module, _ContentNet):
            mlp = module_arrays(module.mlp)
            fitted["item_factors_"][self._cold] = _project(mlp, self._item_features[self._cold], self.config.max_norm)
            placed = np.zeros(module.item_embedding.num_embeddings, dtype=bool)
            placed[self._cold] = True
            fitted["content_items_"] = placed  # items whose vector is f(x_j), not a trained one
            fitted["feature_mlp_"] = mlp
        return fitted

    def place_items(self, features: np.ndarray) -> np.ndarray:
        """f(x) (N, embedding_size) for item feature rows laid out as `content` builds them (the
        modalities side by side): where the model puts an item without training events."""
        if self.config.content == "none":
            raise RecstackError("this CML was configured with content: none and has no feature map f; "
                                "fit it with content: text, structure or text+structure to place items")
        check_fitted(self, "feature_mlp_")
        features = np.asarray(features, dtype=np.float32)
        expected = self.feature_mlp_["0.weight"].shape[1]
        if features.ndim != 2 or features.shape[1] != expected:
            raise RecstackError(f"CML.place_items needs (n_items, {expected}) features, as in fit; got {features.shape}")
        return _project(self.feature_mlp_, features, self.config.max_norm)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return _scores(self.user_factors_, self.item_factors_, users, items)
