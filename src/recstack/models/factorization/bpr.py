"""BPR-MF (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009).

score(u, i) = <p_u, q_i> (+ b_i), trained on (user, positive i, uniform negative j) triples to
maximise log sigmoid(x_uij), x_uij = score(u, i) - score(u, j), with L2 regularisation. Three solvers:

- `learnbpr` (the default): the paper's LearnBPR (Algorithm 1), theta += lr * (sigmoid(-x_uij)
  dx_uij/dtheta - reg * theta), triple by triple, each reading the rows its predecessors left, in
  compiled code (numba, `models/kernels/learnbpr.py`, CPU). An epoch visits every positive once in a
  fresh order (LearnBPR draws with replacement); the step decays by `lr_decay` per epoch. With more
  than one thread the next epoch's triples are drawn on a second thread, in the same order, so a
  seed gives the same model with one thread or two.
- `adam`: mini-batch Adam on -mean log sigmoid(x_uij) + `reg` times the squared L2 norm of the
  embeddings the batch touches (per example); without item biases the loss and its gradient are the
  hand-written `bpr_mf_loss` (a test checks it against autograd). Runs on a GPU.
- `sgd`: LearnBPR's closed-form updates applied a mini-batch at a time (`bpr_sgd_step`, torch), each
  triple reading the weights as they were before its batch. Runs on a GPU; `compile_step` fuses the
  step with torch.compile.

After `fit` the factors are plain numpy (`user_factors_`, `item_factors_`, `item_bias_` when
`item_bias=True`); a user without training events has zero factors and gets only the item biases
(no fold-in). Defaults, tuning record and speeds: docs/models/bpr.md.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.factorization.sampled_mf import FactorNet, FactorScores, factor_scores, epoch_triples, factor_arrays, training_triples
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import gathered
from recstack.train.trainer import resolve_device


class BPRConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64
    # "sgd": LearnBPR's closed-form updates a mini-batch at a time (torch); "learnbpr": LearnBPR triple by
    # triple in compiled code (numba, CPU), the paper's algorithm exactly (see above)
    solver: Literal["adam", "sgd", "learnbpr"] = "learnbpr"
    learning_rate: PositiveFloat | None = None  # None: 0.1 for learnbpr, 2e-3 for adam, 0.05 for sgd
    # solver="sgd": fuse the update into a few loops with torch.compile (2-2.5x faster steps; needs a
    # C++ compiler on CPU, and compiling takes ~15 s once per process)
    compile_step: bool = False
    # None: 0.02 (learnbpr: LearnBPR's lambda), 3e-3 (adam: times the squared norms), 0.01 (sgd: lambda)
    reg: NonNegativeFloat | None = None
    epochs: PositiveInt = 200  # a maximum: early stopping usually ends training well before
    batch_size: PositiveInt = 4096
    n_negatives: PositiveInt = 1
    item_bias: bool = False
    # std of the normal initialisation of both factor matrices; None: 0.1 for learnbpr, 0.01 for adam and sgd
    init_std: PositiveFloat | None = None
    # solvers learnbpr and sgd: the step of epoch e (from 0) is learning_rate * lr_decay ** e; None: 0.95
    # for learnbpr, 1 for sgd (adam: its own schedule, lr_decay must stay None)
    lr_decay: PositiveFloat | None = None

    @model_validator(mode="after")
    def _compile_only_the_sgd_step(self) -> "BPRConfig":
        if self.compile_step and self.solver != "sgd":
            raise ValueError("compile_step compiles the closed-form SGD step: set solver='sgd' with it "
                             "(the Adam and learnbpr paths have no such step)")
        if self.lr_decay is not None and self.solver == "adam":
            raise ValueError("lr_decay is the step decay of the learnbpr and sgd solvers; with solver='adam' "
                             "leave it unset")
        return self

    @property
    def initial_std(self) -> float:
        return float(self.init_std) if self.init_std is not None else _SOLVER_DEFAULTS[self.solver]["init_std"]

    @property
    def step_decay(self) -> float:
        return float(self.lr_decay) if self.lr_decay is not None else _SOLVER_DEFAULTS[self.solver]["lr_decay"]

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


_SOLVER_DEFAULTS = {
    "learnbpr": {"learning_rate": 0.1, "reg": 0.02, "init_std": 0.1, "lr_decay": 0.95},
    "adam": {"learning_rate": 2e-3, "reg": 3e-3, "init_std": 0.01, "lr_decay": 1.0},
    "sgd": {"learning_rate": 0.05, "reg": 0.01, "init_std": 0.01, "lr_decay": 1.0},
}


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


def _compiled_sgd_step(net: FactorNet, c: BPRConfig, device: torch.device):
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


def _learnbpr_step(device: torch.device):
    """The compiled per-triple LearnBPR step (models/kernels/learnbpr.py); CPU only, needs numba."""
    if device.type != "cpu":
        raise RecstackError(f"BPR solver 'learnbpr' runs on the CPU (compiled per-triple updates), not on {device}; "
                            f"use solver 'adam' or 'sgd' on an accelerator")
    try:
        from recstack.models.kernels.learnbpr import learnbpr_step
    except ImportError as error:
        raise RecstackError("BPR solver 'learnbpr' needs numba: pip install 'recstack[fast]' "
                            "(or choose solver 'adam' or 'sgd')") from error
    return learnbpr_step


class BPR(FactorScores, ScoresTrainedUsers, TorchRecommender):
    """Matrix factorisation trained with the BPR pairwise loss and uniform negative sampling."""

    Config = BPRConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> FactorNet:
        c = self.config
        self._pairs, self._sampler = training_triples(train.matrix(), c.batch_size, rng)
        self._untrained_users = train.user_counts() == 0
        self._epoch = -1
        net = FactorNet(train.n_users, train.n_items, c.embedding_size, c.item_bias, c.initial_std)
        self._sgd_step = bpr_sgd_step
        if c.compile_step:  # the config allows it only with solver="sgd"
            self._sgd_step = _compiled_sgd_step(net, c, resolve_device(c.device))
        if c.solver == "learnbpr":
            self._sgd_step = _learnbpr_step(resolve_device(c.device) if c.device != "auto" else torch.device("cpu"))
        return net

    def fit(self, train: Interactions, valid: Interactions | None = None, *, options=None) -> "BPR":
        c = self.config
        # learnbpr with more than one thread: the next epoch's triples are drawn and gathered on a second
        # thread while the kernel (no GIL) trains on this epoch's; the draws keep their order, so a seed
        # gives the same model with one thread or two
        prefetch = (ThreadPoolExecutor(1, thread_name_prefix="recstack-bpr")
                    if c.solver == "learnbpr" and torch.get_num_threads() > 1 else None)
        self._prefetch = prefetch
        try:
            super().fit(train, valid, options=options)
        finally:
            del self._prefetch
            if prefetch is not None:
                prefetch.shutdown(wait=True, cancel_futures=True)
        return self

    def step_size(self, epoch: int) -> float:
        """The step of epoch `epoch` (from 1) of the learnbpr and sgd solvers, for the training log."""
        return self.config.step_size * self.config.step_decay ** (epoch - 1)

    def trainer_settings(self) -> dict:
        c = self.config  # LearnBPR updates the weights itself: no optimiser
        settings = {"optimizer": "adam" if c.solver == "adam" else "none", "learning_rate": c.step_size}
        if c.solver == "learnbpr" and c.device == "auto":
            settings["device"] = "cpu"  # compiled CPU updates: 'auto' must not move the tables to a GPU
        return settings

    def batches(self):
        self._epoch += 1  # the trainer asks for each epoch's batches once
        c = self.config
        if c.solver == "learnbpr":  # the epoch's triples gathered in order once; a batch is a range of them
            upcoming = getattr(self, "_upcoming", None)
            self._epoch_triples = upcoming.result() if upcoming is not None else self._draw_epoch()
            if self._prefetch is not None:
                self._upcoming = self._prefetch.submit(self._draw_epoch)
            n_pairs = len(self._epoch_triples[0])
            return ((start, start + c.batch_size) for start in range(0, n_pairs, c.batch_size))
        return epoch_triples(self._pairs, self._sampler, c.n_negatives)

    def _draw_epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One epoch of learnbpr triples: the negatives, then the order, gathered into training order."""
        pairs = self._pairs
        negatives = self._sampler.sample(pairs.users, self.config.n_negatives)
        order = pairs.order()  # as rng.permutation(n_pairs), in int32
        # 32-bit triples gathered in blocks: at 40M pairs, 64-bit gathers peaked at 4.7 GiB (issue 18);
        # the 64-bit negatives go first, so they are released before the other two are gathered
        negatives = gathered(negatives, order)
        return gathered(pairs.users, order), gathered(pairs.items, order), negatives

    def batch_loss(self, module: FactorNet, batch) -> torch.Tensor:
        c = self.config
        if c.solver != "adam":  # the trainer calls this under no_grad and takes no optimiser step
            bias = None if module.item_bias is None else module.item_bias.weight[:, 0]
            arrays = [part[slice(*batch)] for part in self._epoch_triples] if c.solver == "learnbpr" else batch
            return self._sgd_step(module.user_embedding.weight, module.item_embedding.weight, bias, *arrays,
                                  learning_rate=c.step_size * c.step_decay ** self._epoch, reg=c.weight_decay)
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

    def export(self, module: FactorNet) -> dict[str, np.ndarray]:
        return factor_arrays(module, self._untrained_users)

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return factor_scores(self, users, items)
