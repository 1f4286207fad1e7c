"""BPR-MF (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009).

score(u, i) = <p_u, q_i> (+ b_i); loss = -mean log sigmoid(score(u, i) - score(u, j)) over
(user, positive i, uniform negative j) triples, plus `reg` times the squared L2 norm of the
embeddings the batch touches (per example). Trained with Adam in mini-batches by the shared
`Trainer`, with early stopping on the validation metric.

Without item biases (the default) the loss and its gradient are computed by `bpr_mf_loss`, a
hand-written autograd function (30% faster steps than the same arithmetic through autograd; a
test checks the two against each other).

`solver="sgd"` trains with the paper's own algorithm instead, LearnBPR: stochastic gradient
ascent on each (user, positive i, sampled negative j) triple, theta += lr * (sigmoid(-x_uij)
dx_uij/dtheta - reg * theta), written out in closed form by `bpr_sgd_step` and applied to a
mini-batch of triples at a time: every triple reads the weights as they were before its batch and
the updates are summed into the rows (LearnBPR draws triples with replacement; here an epoch visits
every positive once, in a fresh order, as for Adam). No autograd and no optimiser state: a step is
three row gathers, a few passes over (B, d) arrays and three row scatters, 2.5-5x the triples per
second of the Adam path, and the same algorithm `implicit`'s BPR runs (BENCHMARKS.md).
`compile_step` fuses the step with torch.compile into one-thread loops (another 1.2-1.7x on CPU).
Training stays bit-reproducible per seed: a batch's updates are applied in one deterministic pass.
Its defaults, `learning_rate` 0.05 and `reg` 0.01 (batch 4096 and init_std 0.01 as for Adam), were
chosen on the same validation data as Adam's below (seed 2020 split; 17 settings of learning_rate
0.01-0.1, reg 0.001-0.04, batch 256-4096, init_std 0.01/0.1): validation NDCG@10 0.2476 at batch
1,024 and 0.2475 at 4,096 (the tie goes to the faster), 0.2381 with model seed 1; Adam reaches
0.2515 on that split, which is why Adam stays the default. Higher rates or lower reg overfit within
a few epochs (lr 0.1: 0.22).

After `fit` the factors are plain numpy (`user_factors_`, `item_factors_`, `item_bias_` when
`item_bias=True`), so scoring is `P[users] @ Q.T` without torch. BPR-MF cannot fold in new
users: a user without training events (or outside the training vocabulary) has zero factors and
gets only the item biases (all zeros without them), whatever their history says.

Defaults were chosen on ml-100k VALIDATION data (all 100k ratings as positives, per-user random
8:1:1 split, full ranking, NDCG@10 on valid with train masked; 20 settings of learning_rate, reg,
init_std, batch_size, item_bias): learning_rate=2e-3, reg=3e-3, init_std=0.01, batch_size=4096
reach validation NDCG@10 = 0.250 (seed 0; 0.245 with seed 1), best epoch 87, about 12 s on one
core. Small inits (0.01 rather than 0.1) and reg around 3e-3 mattered most (0.231 -> 0.250);
item biases did not help. For reference only, test NDCG@10 of that fit is 0.316 (RecBole's BPR
reports about 0.27 on this protocol).
"""

from __future__ import annotations

import copy
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.scoring import dot_scores
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import EpochPairs, UniformNegativeSampler
from recstack.train.trainer import Trainer, TrainerConfig, resolve_device, seed_everything


class BPRConfig(ModelConfig):
    embedding_size: PositiveInt = 64
    solver: Literal["adam", "sgd"] = "adam"  # "sgd": LearnBPR's closed-form per-triple updates (see above)
    learning_rate: PositiveFloat | None = None  # None: 2e-3 for adam, 0.05 for sgd
    # solver="sgd": fuse the update into a few loops with torch.compile (2-2.5x faster steps; needs a
    # C++ compiler on CPU, and compiling takes ~15 s once per process)
    compile_step: bool = False
    reg: NonNegativeFloat | None = None  # None: 3e-3 (adam: times the squared norms), 0.01 (sgd: LearnBPR's lambda)
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 4096
    n_negatives: PositiveInt = 1
    item_bias: bool = False
    init_std: PositiveFloat = 0.01  # std of the normal initialisation of both factor matrices
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True  # progress: a bar on a terminal, else a plain line at most every 10 s

    @model_validator(mode="after")
    def _compile_only_the_sgd_step(self) -> "BPRConfig":
        if self.compile_step and self.solver != "sgd":
            raise ValueError("compile_step compiles the closed-form SGD step: set solver='sgd' with it "
                             "(the Adam path has no such step)")
        return self

    @property
    def step_size(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return _SOLVER_DEFAULTS[self.solver]["learning_rate"]

    @property
    def weight_decay(self) -> float:
        if self.reg is not None:
            return float(self.reg)
        return _SOLVER_DEFAULTS[self.solver]["reg"]


_SOLVER_DEFAULTS = {"adam": {"learning_rate": 2e-3, "reg": 3e-3}, "sgd": {"learning_rate": 0.05, "reg": 0.01}}


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
        """The current weights as float32 numpy arrays (copies, on the cpu)."""
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        bias = None if self.item_bias is None else array(self.item_bias.weight[:, 0])
        return array(self.user_embedding.weight), array(self.item_embedding.weight), bias


class _LiveScorer:
    """Scores from the module's current weights; the trainer's validation calls it."""

    def __init__(self, net: _Net) -> None:
        self.net = net

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return dot_scores(users, items, *self.net.factors())


class _BPRMFLoss(torch.autograd.Function):
    """BPR loss + L2 on the touched rows, with the gradient written out by hand.

    The same value and gradients as `bpr_loss` + `reg * l2_penalty` through autograd (a test checks
    both against each other), in a third of the element-wise passes: autograd keeps every
    intermediate and runs one backward kernel per forward op, and for a dot-product model those
    memory-bound passes over (B, d) arrays are most of a step.
    """

    @staticmethod
    def forward(ctx, user_weight, item_weight, users, pos, neg, reg):
        p_u = user_weight.index_select(0, users)  # (B, d)
        q_i = item_weight.index_select(0, pos)  # (B, d)
        q_j = item_weight.index_select(0, neg.reshape(-1)).view(*neg.shape, -1)  # (B, N, d)
        margin = (p_u * q_i).sum(-1, keepdim=True) - (q_j * p_u.unsqueeze(1)).sum(-1)  # (B, N): pos - neg
        batch = max(len(users), 1)
        loss = F.softplus(-margin).mean()
        if reg:
            loss = loss + reg * (p_u.square().sum() + q_i.square().sum() + q_j.square().sum()) / batch
        ctx.save_for_backward(users, pos, neg, p_u, q_i, q_j, margin)
        ctx.reg, ctx.shapes = reg, (user_weight.shape, item_weight.shape)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        users, pos, neg, p_u, q_i, q_j, margin = ctx.saved_tensors
        (user_shape, item_shape), reg = ctx.shapes, ctx.reg
        batch = max(len(users), 1)
        # d softplus(-m) / d m = -sigmoid(-m); the mean runs over all B x N pairs
        weight = torch.sigmoid(-margin).mul_(-grad_loss / margin.numel())  # (B, N): dL / d margin
        decay = 2.0 * reg * grad_loss / batch
        w_pos = weight.sum(1, keepdim=True)  # (B, 1)
        grad_p = q_i * w_pos - (weight.unsqueeze(-1) * q_j).sum(1)
        grad_qi = p_u * w_pos
        grad_qj = -weight.unsqueeze(-1) * p_u.unsqueeze(1)
        if reg:
            grad_p.add_(p_u, alpha=decay)
            grad_qi.add_(q_i, alpha=decay)
            grad_qj.add_(q_j, alpha=decay)
        grad_user = p_u.new_zeros(user_shape).index_add_(0, users, grad_p)
        grad_item = q_i.new_zeros(item_shape).index_add_(0, pos, grad_qi)
        grad_item.index_add_(0, neg.reshape(-1), grad_qj.reshape(-1, grad_qj.shape[-1]))
        return grad_user, grad_item, None, None, None, None


def bpr_mf_loss(user_weight: torch.Tensor, item_weight: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                neg: torch.Tensor, reg: float) -> torch.Tensor:
    """-mean log sigmoid(<p_u, q_i> - <p_u, q_j>) + reg * (|p_u|^2 + |q_i|^2 + sum_j |q_j|^2) / B for
    (B,) users and positives and (B, N) negatives, differentiable in both weight tables."""
    return _BPRMFLoss.apply(user_weight, item_weight, users, pos, neg, float(reg))


def bpr_sgd_step(user_weight: torch.Tensor, item_weight: torch.Tensor, item_bias: torch.Tensor | None,
                 users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, learning_rate: float,
                 reg: float) -> torch.Tensor:
    """One mini-batch of LearnBPR (Rendle et al. 2009, Algorithm 1), in place; returns the batch's
    mean -log sigmoid(x_uij) before the update (the regulariser is not in the returned value).

    For every triple, x = <p_u, q_i - q_j> (+ b_i - b_j) and, with s = lr * sigmoid(-x):
    p_u += s (q_i - q_j) - lr reg p_u;  q_i += s p_u - lr reg q_i;  q_j += -s p_u - lr reg q_j;
    b_i += s - lr reg b_i;  b_j += -s - lr reg b_j. `neg` is (B,) or (B, N): N triples per positive.
    Call under `torch.no_grad()`.
    """
    if neg.dim() == 2 and neg.shape[1] == 1:
        neg = neg[:, 0]
    elif neg.dim() == 2:
        n_negatives = neg.shape[1]
        users, pos, neg = users.repeat_interleave(n_negatives), pos.repeat_interleave(n_negatives), neg.reshape(-1)
    p_u = user_weight.index_select(0, users)  # (T, d), copies: every triple reads the pre-batch rows
    q_i = item_weight.index_select(0, pos)
    q_j = item_weight.index_select(0, neg)
    diff = q_i.sub(q_j)
    x = (p_u * diff).sum(1)
    if item_bias is not None:
        b_i, b_j = item_bias.index_select(0, pos), item_bias.index_select(0, neg)
        x += b_i - b_j
    loss = F.softplus(-x).mean()
    step = torch.sigmoid(x.neg_()).mul_(learning_rate)  # (T,): lr * sigmoid(-x)
    decay = learning_rate * reg
    column = step.unsqueeze(1)
    user_update = diff.mul_(column).sub_(p_u, alpha=decay)  # diff's buffer is reused
    pos_update = p_u.mul(column)
    neg_update = pos_update.neg().sub_(q_j, alpha=decay)
    pos_update.sub_(q_i, alpha=decay)
    user_weight.index_add_(0, users, user_update)
    item_weight.index_add_(0, pos, pos_update)
    item_weight.index_add_(0, neg, neg_update)
    if item_bias is not None:
        item_bias.index_add_(0, pos, step - decay * b_i)
        item_bias.index_add_(0, neg, -step - decay * b_j)
    return loss


def _compiled_sgd_step(net: _Net, c: BPRConfig, device: torch.device):
    """`bpr_sgd_step` compiled by torch.compile for full mini-batches of `c.batch_size` (a short last
    batch runs eagerly rather than compiling a second shape). Inductor fuses the gathers, the
    element-wise update and the scatter-adds into a few loops over the triples: 2-2.5x faster steps
    on CPU. The loops are built for one thread: with more, the scatter-adds' atomics contend on the
    popular items' rows and a 2-thread step was 2.5x slower than a 1-thread one."""
    # one-thread loops (cpp.threads is part of inductor's cache key; the process's thread count is not)
    compiled = torch.compile(bpr_sgd_step, dynamic=False, options={"cpp.threads": 1})
    twin = copy.deepcopy(net).to(device)  # the same kinds of tensors as training passes: no recompile later
    index = torch.zeros(c.batch_size, dtype=torch.int64, device=device)
    with torch.no_grad():
        bias = None if twin.item_bias is None else twin.item_bias.weight[:, 0]
        compiled(twin.user_embedding.weight, twin.item_embedding.weight, bias, index, index.clone(),
                 torch.zeros(c.batch_size, c.n_negatives, dtype=torch.int64, device=device),
                 learning_rate=c.step_size, reg=c.weight_decay)

    def step(user_weight, item_weight, item_bias, users, pos, neg, learning_rate, reg):
        function = compiled if len(users) == c.batch_size else bpr_sgd_step
        return function(user_weight, item_weight, item_bias, users, pos, neg, learning_rate=learning_rate, reg=reg)

    return step


class BPR(SaveLoad):
    """Matrix factorisation trained with the BPR pairwise loss and uniform negative sampling."""

    Config = BPRConfig

    def __init__(self, config: BPRConfig | None = None) -> None:
        self.config = config or BPRConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("BPR cannot be fitted on empty training data; check the filters and split")
        seed_everything(c.seed)  # before the module exists, so its initialisation repeats per seed
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix()
        pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        sampler = UniformNegativeSampler(matrix, rng)
        net = _Net(train.n_users, train.n_items, c.embedding_size, c.item_bias, c.init_std)

        def batches():
            # one vectorised draw of the epoch's negatives: per-batch calls cost a third of an epoch
            negatives = sampler.sample(pairs.users, c.n_negatives)
            for index, users, items in pairs.indexed():
                yield users, items, negatives[index]

        step_function = bpr_sgd_step
        if c.compile_step:  # the config allows it only with solver="sgd"
            step_function = _compiled_sgd_step(net, c, resolve_device(c.device))

        def sgd_step(module: _Net, batch) -> torch.Tensor:
            bias = None if module.item_bias is None else module.item_bias.weight[:, 0]
            return step_function(module.user_embedding.weight, module.item_embedding.weight, bias, *batch,
                                 learning_rate=c.step_size, reg=c.weight_decay)

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            users, pos, neg = batch
            if module.item_bias is None:
                return bpr_mf_loss(module.user_embedding.weight, module.item_embedding.weight, users, pos, neg,
                                   c.weight_decay)
            p_u = gather_rows(module.user_embedding.weight, users)
            q_i = gather_rows(module.item_embedding.weight, pos)
            q_j = gather_rows(module.item_embedding.weight, neg)  # (B, n_negatives, d)
            b_i, b_j = gather_rows(module.item_bias.weight, pos)[:, 0], gather_rows(module.item_bias.weight, neg)[..., 0]
            pos_scores = (p_u * q_i).sum(-1) + b_i
            neg_scores = (p_u.unsqueeze(1) * q_j).sum(-1) + b_j
            # l2_penalty divides by the batch size B: each example's negatives add to its own norm
            penalty = l2_penalty(p_u, q_i, q_j, b_i, b_j)
            return bpr_loss(pos_scores, neg_scores) + c.weight_decay * penalty

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam" if c.solver == "adam" else "none",
                                                   learning_rate=c.step_size, batch_size=c.batch_size))
        history = trainer.fit(net, batch_loss if c.solver == "adam" else sgd_step, batches, _LiveScorer(net),
                              train=train, valid=valid)

        user_factors, item_factors, item_bias = net.factors()
        # users without training events were never updated: zero them so they score like unknown users
        user_factors[train.user_counts() == 0] = 0.0
        fitted = {"user_factors_": user_factors, "item_factors_": item_factors, "history_": history,
                  "best_epoch_": trainer.best_epoch if trainer.best_epoch is not None else len(history)}
        if item_bias is not None:
            fitted["item_bias_"] = item_bias
        self._replace_fitted(fitted)  # a refit without biases must not keep an old fit's
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_, getattr(self, "item_bias_", None))
