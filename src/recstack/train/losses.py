"""Training losses as plain functions of score tensors (no state, no model code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking (Rendle et al., UAI 2009): -mean log sigmoid(pos - neg).

    `pos_scores` is (B,); `neg_scores` is (B,) or (B, n_negatives), each negative paired with its
    row's positive. Written as softplus(neg - pos) = -log sigmoid(pos - neg), which stays finite
    where a large margin would underflow sigmoid to 0 and its log to -inf.
    """
    if neg_scores.dim() == pos_scores.dim() + 1:
        pos_scores = pos_scores.unsqueeze(-1)
    return F.softplus(neg_scores - pos_scores).mean()


def l2_penalty(*tensors: torch.Tensor) -> torch.Tensor:
    """Sum of squared entries of `tensors` divided by the batch size (the first tensor's first dim).

    Used for L2 regularisation on the embeddings a batch touches, so its weight `reg` does not
    depend on the batch size.
    """
    batch_size = max(tensors[0].shape[0], 1)
    return sum(t.pow(2).sum() for t in tensors) / batch_size
