"""Rel-MF (Saito et al., "Unbiased Recommender Learning from Missing-Not-At-Random Implicit
Feedback", WSDM 2020) and its naive counterpart (pointwise BCE matrix factorisation).

A click Y_ui = O_ui * R_ui needs exposure O and relevance R. Rel-MF weights each click by the
inverse of the item's exposure propensity theta_i and minimises the unbiased relevance log-loss

    L = -sum_(u,i) [ Y_ui / theta_i * log sigma(s_ui) + (1 - Y_ui / theta_i) * log(1 - sigma(s_ui)) ]

with s_ui = <p_u, q_i> (+ b_i), plus `reg` times the squared L2 norm of the batch's embeddings and
biases per click (the objective is bounded below only with `reg` > 0, as in the paper). Propensities
are the paper's popularity estimate theta_i = (n_i / max_j n_j) ** propensity_power, clipped below
at `propensity_clip`; n_i counts the distinct training users of item i.

Deviations: instead of the sum over all user x item pairs, each batch takes clicks and
`n_negatives` uniformly drawn unclicked items per click (weight 1, as in the full sum) and averages
over the B * (1 + n_negatives) entries. `NaiveMF` (or `unbiased=False`) sets theta = 1: plain
pointwise BCE, the paper's naive baseline. Ranking uses the logit s_ui; no fold-in of new users.
Tuning record and findings: docs/models/relmf.md.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.factorization.sampled_mf import (FactorNet, FactorScores, factor_arrays, factor_scores, sampled_logits,
                                                        training_triples)
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers
from recstack.train.losses import l2_penalty


class RelMFConfig(ModelConfig, TrainingFields):
    # tuned on ml-100k validation NDCG@10 (docs/models/relmf.md)
    embedding_size: PositiveInt = 64
    learning_rate: PositiveFloat = 2e-3
    reg: NonNegativeFloat = 3e-4  # times the batch's squared embedding norms (and biases) per click
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 4096
    n_negatives: PositiveInt = 16  # uniformly sampled unclicked items per click
    unbiased: bool = True  # False: theta = 1, the naive pointwise BCE model
    propensity_power: NonNegativeFloat = 0.5  # theta_i = (n_i / max n) ** power
    propensity_clip: float = Field(0.1, gt=0.0, le=1.0)  # theta_i >= clip
    item_bias: bool = True
    init_std: PositiveFloat = 0.01


class NaiveMFConfig(RelMFConfig):
    unbiased: Literal[False] = False  # the naive model: every click has propensity 1
    reg: NonNegativeFloat = 1e-3
    n_negatives: PositiveInt = 8
    # the pointwise model sits at the popularity plateau (validation NDCG@10 ~0.13) for 15-20 epochs
    # before the factors take over; a patience of 10 stopped some seeds there
    early_stopping_patience: PositiveInt | None = 25


def item_propensities(item_counts: np.ndarray, power: float = 0.5, clip: float = 0.1) -> np.ndarray:
    """theta_i = max(clip, (n_i / max_j n_j) ** power) as float32; all ones when no item was clicked."""
    counts = np.asarray(item_counts, dtype=np.float64)
    top = counts.max(initial=0.0)
    if top <= 0:
        return np.ones(len(counts), dtype=np.float32)
    return np.maximum((counts / top) ** power, clip).astype(np.float32)


def relmf_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, pos_propensity: torch.Tensor | None) -> torch.Tensor:
    """The Rel-MF unbiased log-loss on logits, averaged over all B clicks and B * N sampled non-clicks.

    A click (Y = 1) with propensity theta contributes -(1/theta) log sigma(s) - (1 - 1/theta) log(1 - sigma(s));
    a non-click contributes -log(1 - sigma(s)). `pos_propensity=None` means theta = 1 (plain BCE).
    Written with softplus: -log sigma(s) = softplus(-s), -log(1 - sigma(s)) = softplus(s).
    """
    if pos_propensity is None:
        pos = F.softplus(-pos_scores).sum()
    else:
        weight = 1.0 / pos_propensity
        pos = (weight * F.softplus(-pos_scores) + (1.0 - weight) * F.softplus(pos_scores)).sum()
    neg = F.softplus(neg_scores).sum()
    return (pos + neg) / (pos_scores.numel() + neg_scores.numel())


class RelMF(FactorScores, ScoresTrainedUsers, TorchRecommender):
    """Matrix factorisation trained with the Rel-MF inverse-propensity-weighted pointwise log-loss."""

    Config = RelMFConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> FactorNet:
        c = self.config
        if c.unbiased and c.reg == 0:
            raise RecstackError(
                f"{type(self).__name__} with unbiased=True needs reg > 0: the inverse-propensity loss is unbounded "
                "below without the L2 term (set reg, e.g. 1e-3)"
            )
        matrix = train.matrix()
        clicks_per_item = np.bincount(matrix.indices, minlength=train.n_items)  # distinct users per item
        self._propensity = item_propensities(clicks_per_item, c.propensity_power, c.propensity_clip)
        self._theta = None  # the propensities on the batches' device, moved at the first batch
        self._pairs, self._sampler = training_triples(matrix, c.batch_size, rng)
        self._untrained_users = train.user_counts() == 0
        return FactorNet(train.n_users, train.n_items, c.embedding_size, c.item_bias, c.init_std)

    def batches(self):
        for users, items in self._pairs:
            yield users, items, self._sampler.sample(users, self.config.n_negatives)

    def batch_loss(self, module: FactorNet, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        pos_scores, neg_scores, penalised = sampled_logits(module, users, pos, neg)
        theta = None
        if c.unbiased:
            if self._theta is None:  # moved once, to wherever the trainer put the batch
                self._theta = torch.from_numpy(self._propensity).to(pos.device)
            theta = self._theta[pos]
        return relmf_loss(pos_scores, neg_scores, theta) + c.reg * l2_penalty(*penalised)

    def export(self, module: FactorNet) -> dict[str, np.ndarray]:
        propensity = self._propensity if self.config.unbiased else np.ones(len(self._propensity), dtype=np.float32)
        return {**factor_arrays(module, self._untrained_users), "propensity_": propensity}

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return factor_scores(self, users, items)


class NaiveMF(RelMF):
    """The naive counterpart of Rel-MF: the same model and sampling with theta = 1 (pointwise BCE)."""

    Config = NaiveMFConfig
