"""Rel-MF (Saito et al., "Unbiased Recommender Learning from Missing-Not-At-Random Implicit
Feedback", WSDM 2020) and its naive counterpart (pointwise BCE matrix factorisation).

A click Y_ui = O_ui * R_ui needs exposure O and relevance R; popular items are exposed more, so
treating every unclicked pair as irrelevant biases a pointwise model towards popularity. Rel-MF
weights each click by the inverse of the item's exposure propensity theta_i and minimises the
unbiased estimate of the relevance log-loss (negated, averaged over the pairs of a batch):

    L = -sum_(u,i) [ Y_ui / theta_i * log sigma(s_ui) + (1 - Y_ui / theta_i) * log(1 - sigma(s_ui)) ]

with s_ui = <p_u, q_i> (+ b_i). For a click the weight of the log(1 - sigma) term is negative
(1 - 1/theta_i < 0); the objective is still bounded below because of the L2 term, as in the
paper (keep `reg` > 0). Propensities follow the paper's popularity estimate:
theta_i = (n_i / max_j n_j) ** propensity_power (power 0.5), clipped below at `propensity_clip`
(clipping bounds the weights 1/theta_i <= 1/clip, trading a little bias for much less variance);
n_i counts the distinct training users of item i.

Notable choices: rather than summing over all n_users x n_items pairs, each batch takes clicked
pairs and `n_negatives` unclicked items per click drawn uniformly (the Y = 0 terms have weight 1,
exactly as in the full sum); the loss is averaged over the B * (1 + n_negatives) entries of a batch,
plus `reg` times the squared L2 norm of the embeddings the batch touches (per click, as in BPR).
`NaiveMF` (or `unbiased=False`) sets theta = 1, which is plain pointwise binary cross-entropy
(the "WMF"/naive baseline of the paper). The score used for ranking is the logit s_ui.

Defaults were chosen on ml-100k VALIDATION NDCG@10 (all ratings as positives, per-user random 8:1:1
split, seed 2020, full ranking, train masked; 10 RelMF and 4 naive settings of n_negatives, reg,
item_bias, propensity_clip, the power fixed at 0.5):
- RelMF: n_negatives=16, reg=3e-4, propensity_clip=0.1, item_bias, lr 2e-3, batch 4096 reach
  validation NDCG@10 = 0.219 (best epoch 18, about 50 s on one busy core); test 0.246 for reference.
- NaiveMF: n_negatives=8, reg=1e-3, early-stopping patience 25 reach validation NDCG@10 = 0.269
  (best epoch 92, about 95 s; with seed 2020, 0.268 at epoch 89; patience 10 stopped that seed on the
  popularity plateau of the first 15-20 epochs at 0.134);
  test 0.326 for reference (BPR-MF: 0.304 test).
On this random (popularity-biased, missing-not-at-random) test split the unbiased estimator loses
to the naive one, also on tail items (test NDCG@10 restricted to items outside the head that makes
up half of all events: 0.006 vs 0.037): the paper's gains are measured on missing-at-random test
data (Yahoo! R3, Coat), which ml-100k does not have. Notes from tuning: the loss averages over
B * (1 + n_negatives) entries while the penalty is per click, so more negatives need a smaller
`reg` (n_negatives=16 with reg=1e-3 shrinks the factors to nothing); without a penalty on the item
biases, rare clicked items' biases ran off and RelMF collapsed after 2 epochs, hence biases are
penalised too. Like BPR-MF, neither model folds in new users: a user without training events has
zero factors and gets only the item biases.
"""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.scoring import dot_scores
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.losses import l2_penalty
from recstack.train.sampling import EpochPairs, UniformNegativeSampler
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything


class RelMFConfig(ModelConfig):
    # tuned on ml-100k validation NDCG@10 (see the module docstring)
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
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True


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


class _Net(torch.nn.Module):
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
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        bias = None if self.item_bias is None else array(self.item_bias.weight[:, 0])
        return array(self.user_embedding.weight), array(self.item_embedding.weight), bias


class _LiveScorer:
    def __init__(self, net: _Net) -> None:
        self.net = net

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return dot_scores(users, items, *self.net.factors())


class RelMF(SaveLoad):
    """Matrix factorisation trained with the Rel-MF inverse-propensity-weighted pointwise log-loss."""

    Config = RelMFConfig

    def __init__(self, config: RelMFConfig | None = None) -> None:
        self.config = config or self.Config()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        name = type(self).__name__
        if len(train) == 0:
            raise RecstackError(f"{name} cannot be fitted on empty training data; check the filters and split")
        if c.unbiased and c.reg == 0:
            raise RecstackError(
                f"{name} with unbiased=True needs reg > 0: the inverse-propensity loss is unbounded below "
                "without the L2 term (set reg, e.g. 1e-3)"
            )
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix()
        clicks_per_item = np.bincount(matrix.indices, minlength=train.n_items)  # distinct users per item
        propensity = item_propensities(clicks_per_item, c.propensity_power, c.propensity_clip)
        pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        sampler = UniformNegativeSampler(matrix, rng)
        net = _Net(train.n_users, train.n_items, c.embedding_size, c.item_bias, c.init_std)
        device_propensity: dict[str, torch.Tensor] = {}

        def batches():
            for users, items in pairs:
                yield users, items, sampler.sample(users, c.n_negatives)

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            users, pos, neg = batch
            p_u, q_i, q_j = module.user_embedding(users), module.item_embedding(pos), module.item_embedding(neg)
            pos_scores = (p_u * q_i).sum(-1)
            neg_scores = (p_u.unsqueeze(1) * q_j).sum(-1)
            penalised = [p_u, q_i, q_j]
            if module.item_bias is not None:
                b_i, b_j = module.item_bias(pos)[:, 0], module.item_bias(neg)[..., 0]
                pos_scores, neg_scores = pos_scores + b_i, neg_scores + b_j
                penalised += [b_i, b_j]  # unpenalised biases of rare clicked items would run off to +inf
            theta = None
            if c.unbiased:
                if "theta" not in device_propensity:  # moved once, to wherever the trainer put the batch
                    device_propensity["theta"] = torch.from_numpy(propensity).to(pos.device)
                theta = device_propensity["theta"][pos]
            return relmf_loss(pos_scores, neg_scores, theta) + c.reg * l2_penalty(*penalised)

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, batches, _LiveScorer(net), train=train, valid=valid)

        user_factors, item_factors, item_bias = net.factors()
        user_factors[train.user_counts() == 0] = 0.0  # never updated: score like unknown users
        fitted = {"user_factors_": user_factors, "item_factors_": item_factors,
                  "propensity_": propensity if c.unbiased else np.ones(train.n_items, dtype=np.float32),
                  "history_": history,
                  "best_epoch_": trainer.best_epoch if trainer.best_epoch is not None else len(history)}
        if item_bias is not None:
            fitted["item_bias_"] = item_bias
        self._replace_fitted(fitted)  # a refit without biases must not keep an old fit's
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_, getattr(self, "item_bias_", None))


class NaiveMF(RelMF):
    """The naive counterpart of Rel-MF: the same model and sampling with theta = 1 (pointwise BCE)."""

    Config = NaiveMFConfig

    def __init__(self, config: NaiveMFConfig | None = None) -> None:
        super().__init__(config or NaiveMFConfig())
