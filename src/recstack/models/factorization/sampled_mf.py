"""Parts the sampled-negative factorisation models (BPR, Rel-MF, CML, NeuMF) share.

- `FactorNet`: free user and item embeddings, normally initialised, with optional item biases;
- `training_triples`: the (user, positive) epoch order and the uniform negative sampler, drawn
  from the fit's numpy generator in the order every one of these models used;
- `sampled_logits`: the logits of a batch's positives and sampled negatives, and the rows to penalise;
- `factor_scores`: <p_u, q_i> (+ b_i) from the fitted factors;
- `epoch_triples`: one epoch of (users, positives, negatives) batches with all the epoch's
  negatives drawn in one vectorised call (per-batch calls cost a third of an epoch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from recstack.models.kernels.scoring import DotProductScores, dot_scores
from recstack.models.protocol import check_fitted
from recstack.train.sampling import EpochPairs, UniformNegativeSampler


class FactorNet(torch.nn.Module):
    """User and item embeddings ~ N(0, init_std^2), plus zero-initialised item biases if asked."""

    def __init__(self, n_users: int, n_items: int, embedding_size: int, item_bias: bool, init_std: float) -> None:
        super().__init__()
        self.user_embedding = torch.nn.Embedding(n_users, embedding_size)
        self.item_embedding = torch.nn.Embedding(n_items, embedding_size)
        torch.nn.init.normal_(self.user_embedding.weight, std=init_std)
        torch.nn.init.normal_(self.item_embedding.weight, std=init_std)
        self.item_bias = None
        if item_bias:
            self.item_bias = torch.nn.Embedding(n_items, 1)
            torch.nn.init.zeros_(self.item_bias.weight)

    def factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The current weights as float32 numpy arrays (copies, on the cpu)."""
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        bias = None if self.item_bias is None else array(self.item_bias.weight[:, 0])
        return array(self.user_embedding.weight), array(self.item_embedding.weight), bias


def sampled_logits(module: torch.nn.Module, users: torch.Tensor, pos: torch.Tensor,
                   neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """<p_u, q_i> (+ b_i) for (B,) positives and (B, N) negatives of a module with `FactorNet`'s
    embeddings, and the embeddings and biases the batch touched (for an L2 penalty)."""
    p_u, q_i, q_j = module.user_embedding(users), module.item_embedding(pos), module.item_embedding(neg)
    pos_scores = (p_u * q_i).sum(-1)
    neg_scores = (p_u.unsqueeze(1) * q_j).sum(-1)
    penalised = [p_u, q_i, q_j]
    if module.item_bias is not None:
        b_i, b_j = module.item_bias(pos)[:, 0], module.item_bias(neg)[..., 0]
        pos_scores, neg_scores = pos_scores + b_i, neg_scores + b_j
        penalised += [b_i, b_j]  # unpenalised biases of rare clicked items would run off to +inf
    return pos_scores, neg_scores, penalised


def factor_arrays(net: FactorNet, untrained_users: np.ndarray) -> dict[str, np.ndarray]:
    """`user_factors_`, `item_factors_` (and `item_bias_` when the net has biases) as fitted
    attributes; users without training events were never updated: zeroed, so they score like
    unknown users."""
    user_factors, item_factors, item_bias = net.factors()
    user_factors[untrained_users] = 0.0
    fitted = {"user_factors_": user_factors, "item_factors_": item_factors}
    if item_bias is not None:
        fitted["item_bias_"] = item_bias
    return fitted


class FactorScores(DotProductScores):
    """The dot-product ability of the sampled MF models (`factor_scores`): their bias is added only when
    the config has one."""

    def scoring_bias(self) -> np.ndarray | None:
        if not self.config.item_bias:
            return None
        check_fitted(self, "item_bias_")
        return self.item_bias_


def factor_scores(model, users: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """<p_u, q_i> (+ b_i) from `model`'s fitted factors. The biases are read only when the model's
    config has them: while a refit validates, the model still holds an earlier fit's arrays beside
    the ones this fit exported, and an old `item_bias_` must not leak into its scores."""
    names = ["user_factors_", "item_factors_"] + (["item_bias_"] if model.config.item_bias else [])
    check_fitted(model, *names)
    bias = model.item_bias_ if model.config.item_bias else None
    return dot_scores(users, items, model.user_factors_, model.item_factors_, bias)


def training_triples(matrix: sp.spmatrix, batch_size: int,
                     rng: np.random.Generator) -> tuple[EpochPairs, UniformNegativeSampler]:
    """The epoch's (user, positive) batches and the uniform negative sampler, both drawing from `rng`."""
    pairs = EpochPairs.from_matrix(matrix, batch_size, rng)
    return pairs, UniformNegativeSampler(matrix, rng)


def epoch_triples(pairs: EpochPairs, sampler: UniformNegativeSampler,
                  n_negatives: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of (users, positives, negatives (B, n_negatives)) batches."""
    # one vectorised draw of the epoch's negatives: per-batch calls cost a third of an epoch
    negatives = sampler.sample(pairs.users, n_negatives)
    for index, users, items in pairs.indexed():
        yield users, items, negatives[index]
