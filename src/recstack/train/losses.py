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


def bce_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Pointwise binary cross-entropy on logits: positives labelled 1, sampled negatives 0.

    Averaged over all B positives and B * n_negatives negatives (He et al., NCF, WWW 2017).
    """
    pos = F.softplus(-pos_scores).sum()  # -log sigmoid(s)
    neg = F.softplus(neg_scores).sum()  # -log (1 - sigmoid(s))
    return (pos + neg) / (pos_scores.numel() + neg_scores.numel())


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full softmax cross-entropy over all items: `logits` (B, n_items), `targets` (B,) item indices."""
    return F.cross_entropy(logits, targets)


def sampled_softmax_loss(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    neg_log_q: torch.Tensor | None = None,
    pos_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the positive and sampled negatives, with the logQ correction (Bengio & Senecal 2008;
    Yi et al., RecSys 2019): each logit is reduced by log Q(item), the log-probability that the sampler
    draws it, which makes the sampled softmax an unbiased estimate of the full one as samples grow.

    pos_scores (B,), neg_scores (B, N); log-probabilities broadcast to those shapes (None = uniform,
    where the correction is a constant and cancels).
    """
    if neg_log_q is not None:
        neg_scores = neg_scores - neg_log_q
    if pos_log_q is not None:
        pos_scores = pos_scores - pos_log_q
    logits = torch.cat([pos_scores.unsqueeze(1), neg_scores], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def info_nce_loss(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018) with in-batch negatives: row b of `anchor` should match row b of
    `positive` among all rows of `positive`; cosine similarity / temperature (as in SGL and SimGCL)."""
    anchor = F.normalize(anchor, dim=1)
    positive = F.normalize(positive, dim=1)
    logits = anchor @ positive.T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


def in_batch_softmax_loss(query: torch.Tensor, keys: torch.Tensor, key_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over in-batch negatives (row b's positive is key b; every other key is a negative),
    optionally logQ-corrected with the in-batch sampling probability of each key (Yi et al. 2019)."""
    logits = query @ keys.T
    if key_log_q is not None:
        logits = logits - key_log_q.unsqueeze(0)
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def squared_loss(scores: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pointwise (optionally weighted) squared error, mean over entries (the WMF / ALS objective)."""
    error = (scores - targets).pow(2)
    return (error * weights).mean() if weights is not None else error.mean()
