"""NBPO: matrix factorisation trained by noisy-label robust point-wise optimisation (Yu & Qin,
"Sampler Design for Implicit Feedback Data by Noisy-label Robust Learning", SIGIR 2020).

An unclicked item is only a noisy negative. The clean preference sigma(s_ui), s_ui = <p_u, q_i> (+ b_i),
reaches the observed label through a label-flip transition:

    P(obs = 1) = sigma(s) * (1 - rho_10) + (1 - sigma(s)) * rho_01,    P(obs = 0) = 1 - P(obs = 1)
    L = -mean [ obs * log P(obs = 1) + (1 - obs) * log P(obs = 0) ]  +  reg * ||touched embeddings||^2

rho_10 = P(unobserved | liked), rho_01 = P(clicked | not liked) (fixed, default 0). `noise` picks
rho_10: "low_rank" (the paper's) sigmoid(c + <g_u, h_i>), "global" one learned rate, "fixed".
Ranking uses the clean logit s_ui; with both rates 0 the loss is pointwise BCE.

Deviations: the full text could not be read, so the parametrisation is our reading of its method
summary; the paper's surrogate likelihood / gradient is not implemented (the exact log-likelihood,
in log space, trained with Adam); negatives are `n_negatives` uniform unclicked items per click.
Design notes and tuning record: `docs/models/nbpo.md`.
"""

from __future__ import annotations

import math
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from recstack.data.interactions import Interactions
from recstack.models.factorization.sampled_mf import sampled_logits
from recstack.models.kernels.scoring import DotProductScores, dot_scores
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted
from recstack.train.losses import l2_penalty
from recstack.train.sampling import EpochPairs, UniformNegativeSampler


class NBPOConfig(ModelConfig, TrainingFields):
    # tuned on ml-100k validation NDCG@10 (see the module docstring)
    embedding_size: PositiveInt = 64
    learning_rate: PositiveFloat = 2e-3
    reg: NonNegativeFloat = 1e-3  # times the batch's squared embedding norms per click
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 4096
    n_negatives: PositiveInt = 8  # uniformly sampled unclicked items per click
    item_bias: bool = True
    init_std: PositiveFloat = 0.01
    noise: Literal["fixed", "global", "low_rank"] = "low_rank"
    noise_rate: float = Field(0.1, ge=0.0, lt=1.0)  # rho_10: the fixed value, or the learned one's start
    positive_noise_rate: float = Field(0.0, ge=0.0, lt=1.0)  # rho_01, always fixed
    noise_embedding_size: PositiveInt = 8  # rank of the per-(user, item) flip model ("low_rank")
    noise_reg: NonNegativeFloat = 1e-3  # L2 weight on the flip model's factors

    @model_validator(mode="after")
    def _transition_is_invertible(self) -> Self:
        if self.noise_rate + self.positive_noise_rate >= 1.0:
            raise ValueError(
                f"noise_rate + positive_noise_rate must be < 1 (got {self.noise_rate} + {self.positive_noise_rate}); "
                "at 1 the observed label carries no information about the true one"
            )
        if self.noise != "fixed" and self.noise_rate == 0.0:
            raise ValueError("a learned noise model needs a starting noise_rate > 0 (its logit is -inf at 0)")
        return self


def noisy_label_probability(scores: np.ndarray, rho_10, rho_01=0.0) -> np.ndarray:
    """P(observed = 1) = sigma(s) (1 - rho_10) + (1 - sigma(s)) rho_01, in numpy (for inspection)."""
    clean = 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))
    return clean * (1.0 - np.asarray(rho_10)) + (1.0 - clean) * np.asarray(rho_01)


def noisy_nll(scores: torch.Tensor, observed: bool, flip_logit_10: torch.Tensor,
              flip_logit_01: torch.Tensor) -> torch.Tensor:
    """Element-wise -log P(observed label) under the noise transition, stably in log space.

    rho = sigmoid(flip_logit), so log rho = logsigmoid(logit) and log(1 - rho) = logsigmoid(-logit); a
    logit of -inf is a rate of exactly 0, which turns the term into plain BCE.
    """
    liked, not_liked = F.logsigmoid(scores), F.logsigmoid(-scores)
    if observed:
        log_p = torch.logaddexp(liked + F.logsigmoid(-flip_logit_10), not_liked + F.logsigmoid(flip_logit_01))
    else:
        log_p = torch.logaddexp(liked + F.logsigmoid(flip_logit_10), not_liked + F.logsigmoid(-flip_logit_01))
    return -log_p


def nbpo_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, pos_flip_logit: torch.Tensor,
              neg_flip_logit: torch.Tensor, flip_logit_01: torch.Tensor) -> torch.Tensor:
    """Noise-corrected point-wise log-loss, averaged over the B clicks and B * N sampled unclicked pairs."""
    pos = noisy_nll(pos_scores, True, pos_flip_logit, flip_logit_01).sum()
    neg = noisy_nll(neg_scores, False, neg_flip_logit, flip_logit_01).sum()
    return (pos + neg) / (pos_scores.numel() + neg_scores.numel())


def _logit(p: float) -> float:
    return -math.inf if p <= 0.0 else math.log(p / (1.0 - p))


class _Net(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, c: NBPOConfig) -> None:
        super().__init__()
        self.user_embedding = torch.nn.Embedding(n_users, c.embedding_size)
        self.item_embedding = torch.nn.Embedding(n_items, c.embedding_size)
        torch.nn.init.normal_(self.user_embedding.weight, std=c.init_std)
        torch.nn.init.normal_(self.item_embedding.weight, std=c.init_std)
        self.item_bias = None
        if c.item_bias:
            self.item_bias = torch.nn.Embedding(n_items, 1)
            torch.nn.init.zeros_(self.item_bias.weight)
        start = torch.tensor(_logit(c.noise_rate), dtype=torch.float32)
        self.noise_user = self.noise_item = None
        if c.noise == "fixed":
            self.register_buffer("noise_logit", start)
        else:
            self.noise_logit = torch.nn.Parameter(start)
        if c.noise == "low_rank":
            self.noise_user = torch.nn.Embedding(n_users, c.noise_embedding_size)
            self.noise_item = torch.nn.Embedding(n_items, c.noise_embedding_size)
            torch.nn.init.normal_(self.noise_user.weight, std=c.init_std)
            torch.nn.init.normal_(self.noise_item.weight, std=c.init_std)
        self.register_buffer("positive_noise_logit", torch.tensor(_logit(c.positive_noise_rate), dtype=torch.float32))

    def factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        bias = None if self.item_bias is None else _array(self.item_bias.weight[:, 0])
        return _array(self.user_embedding.weight), _array(self.item_embedding.weight), bias


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


class NBPO(DotProductScores, ScoresTrainedUsers, TorchRecommender):
    """Matrix factorisation trained with the noisy-label robust point-wise likelihood (NBPO)."""

    Config = NBPOConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        matrix = train.matrix()
        self._pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        self._sampler = UniformNegativeSampler(matrix, rng)
        self._untrained_users = train.user_counts() == 0
        return _Net(train.n_users, train.n_items, c)

    def batches(self):
        for users, items in self._pairs:
            yield users, items, self._sampler.sample(users, self.config.n_negatives)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        c = self.config
        users, pos, neg = batch
        pos_scores, neg_scores, penalised = sampled_logits(module, users, pos, neg)
        pos_flip = neg_flip = module.noise_logit
        noise_penalty = 0.0
        if module.noise_user is not None:
            g_u, h_i, h_j = module.noise_user(users), module.noise_item(pos), module.noise_item(neg)
            pos_flip = module.noise_logit + (g_u * h_i).sum(-1)
            neg_flip = module.noise_logit + (g_u.unsqueeze(1) * h_j).sum(-1)
            noise_penalty = c.noise_reg * l2_penalty(g_u, h_i, h_j)
        loss = nbpo_loss(pos_scores, neg_scores, pos_flip, neg_flip, module.positive_noise_logit)
        return loss + c.reg * l2_penalty(*penalised) + noise_penalty

    def export(self, module: _Net) -> dict:
        user_factors, item_factors, item_bias = module.factors()
        user_factors[self._untrained_users] = 0.0  # never updated: score like unknown users
        fitted = {"user_factors_": user_factors, "item_factors_": item_factors,
                  "noise_logit_": float(module.noise_logit.detach().cpu())}
        if item_bias is not None:
            fitted["item_bias_"] = item_bias
        if module.noise_user is not None:
            fitted["noise_user_factors_"] = _array(module.noise_user.weight)
            fitted["noise_item_factors_"] = _array(module.noise_item.weight)
        return fitted

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_, self.scoring_bias())

    def scoring_bias(self) -> np.ndarray | None:
        return getattr(self, "item_bias_", None)

    def flip_rate(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The learned rho_10 = P(unobserved | liked) for aligned (user, item) pairs, float32."""
        check_fitted(self, "user_factors_")
        logit = np.full(len(np.asarray(users)), self.noise_logit_, dtype=np.float64)
        if getattr(self, "noise_user_factors_", None) is not None:
            g = self.noise_user_factors_[np.asarray(users, dtype=np.int64)]
            h = self.noise_item_factors_[np.asarray(items, dtype=np.int64)]
            logit = logit + (g * h).sum(-1)
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
