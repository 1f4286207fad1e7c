"""DNIS (Cheng, Shen and Huang, "Differentiable Neural Input Search for Recommender Systems",
arXiv 2006.04466, 2020) on BPR matrix factorisation: mixed embedding dimensions per frequency block.

User and item ids are each sorted by training frequency and cut into `n_blocks` equal-sized blocks.
A soft selection layer scales every embedding by its block's weights, alpha in [0, 1]^(2 x K x d):
score(u, i) = <p_u * alpha_U[b(u)], q_i * alpha_I[b(i)]>, trained with BPR (uniform negatives) plus
`reg` times the raw embeddings' squared norms. Search stage (first-order DARTS): every optimiser step
of the embeddings is followed (`after_step`) by one Adam step of alpha on the BPR loss of *search*
triples (`search_data`: held-out training pairs, or the validation set as in the paper), each
block's gradient divided by its look-ups, alpha clipped to [0, 1]. Cells with |alpha| <
`prune_threshold` are then removed (or the largest kept within `target_parameters`), and a training
stage fine-tunes the pruned model with alpha frozen (`retrain="finetune"`) or retrains it from
scratch with the 0/1 mask. Both stages stop early on validation; `search_history_` /
`search_best_epoch_` record the search stage, `history_` / `best_epoch_` the training stage.

Deviations: the full text was not at hand; the clip to [0, 1], the equal-sized blocks and the
train-holdout search data are our choices. Fitted state, design notes and tuning record:
`docs/models/dnis.md`.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.dimension_search import block_column_scale, frequency_blocks, prune_cells
from recstack.models.kernels.scoring import DotProductScores, dot_scores
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.options import FitOptions
from recstack.train.sampling import EpochPairs, UniformNegativeSampler, positive_keys
from recstack.train.trainer import seed_everything

USERS, ITEMS = 0, 1  # the two feature fields, the first axis of the selection weights


class DNISConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 64  # the largest dimension a block can keep
    learning_rate: PositiveFloat = 2e-3
    reg: NonNegativeFloat = 3e-3  # times the batch's squared (unselected) embedding norms per example
    epochs: PositiveInt = 200  # a maximum for the retraining stage; early stopping ends it sooner
    search_epochs: PositiveInt = 200  # a maximum for the search stage; early stopping ends it sooner
    batch_size: PositiveInt = 4096
    n_negatives: PositiveInt = 1
    init_std: PositiveFloat = 0.01
    n_blocks: PositiveInt = 8  # frequency blocks per field (users, items), each with its own weights
    arch_learning_rate: PositiveFloat = 1e-2  # Adam on the selection weights
    arch_batch_size: PositiveInt = 4096  # search triples per architecture step (one step per training step)
    search_data: Literal["train_holdout", "valid"] = "train_holdout"
    search_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # share of each user's training pairs held out
    gradient_normalization: bool = True  # divide each block's weight gradient by its occurrences
    prune_threshold: float = Field(0.5, ge=0.0, le=1.0)  # keep (block, dimension) where |alpha| >= this
    target_parameters: float | None = Field(None, gt=0.0, le=1.0)  # or: keep this share of parameters
    retrain: Literal["finetune", "scratch"] = "finetune"
    retrain_learning_rate: PositiveFloat | None = 2e-4  # fine-tuning takes smaller steps; None: learning_rate


class _Net(torch.nn.Module):
    """Embeddings times a per-(block, dimension) weight: e_f[x] * alpha[f, block_f(x)]."""

    def __init__(self, n_users: int, n_items: int, embedding_size: int, init_std: float,
                 user_block: np.ndarray, item_block: np.ndarray, alpha: np.ndarray) -> None:
        super().__init__()
        self.user_embedding = torch.nn.Embedding(n_users, embedding_size)
        self.item_embedding = torch.nn.Embedding(n_items, embedding_size)
        torch.nn.init.normal_(self.user_embedding.weight, std=init_std)
        torch.nn.init.normal_(self.item_embedding.weight, std=init_std)
        # not trained by the Trainer's optimiser (it takes parameters that require grad); the search
        # stage turns the gradient on only inside its own architecture step
        self.alpha = torch.nn.Parameter(torch.as_tensor(alpha, dtype=torch.float32), requires_grad=False)
        self.register_buffer("user_block", torch.as_tensor(user_block, dtype=torch.long))
        self.register_buffer("item_block", torch.as_tensor(item_block, dtype=torch.long))

    def weights(self, field: int, index: torch.Tensor) -> torch.Tensor:
        """Selection weights alpha[field, block(index)], shaped like the embeddings of `index`."""
        block = self.user_block if field == USERS else self.item_block
        # an embedding look-up rather than advanced indexing: its backward accumulates repeated rows
        # in a fixed order, so the architecture gradient does not depend on thread scheduling
        return F.embedding(block[index], self.alpha[field])

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """The selected embeddings e * alpha[block] as float32 numpy arrays (copies, on the cpu)."""
        with torch.no_grad():
            users = self.user_embedding.weight * self.alpha[USERS][self.user_block]
            items = self.item_embedding.weight * self.alpha[ITEMS][self.item_block]
        return (users.to("cpu", torch.float32).numpy().copy(), items.to("cpu", torch.float32).numpy().copy())


def _triple_loss(module: _Net, users, pos, neg, reg: float, detach_embeddings: bool = False) -> torch.Tensor:
    """BPR on selected embeddings plus `reg` times the raw embeddings' squared norms per example."""
    with torch.no_grad() if detach_embeddings else torch.enable_grad():
        p, q_i, q_j = module.user_embedding(users), module.item_embedding(pos), module.item_embedding(neg)
    a_u, a_i, a_j = module.weights(USERS, users), module.weights(ITEMS, pos), module.weights(ITEMS, neg)
    s_u = p * a_u
    pos_scores = (s_u * q_i * a_i).sum(-1)
    neg_scores = (s_u.unsqueeze(1) * q_j * a_j).sum(-1)
    loss = bpr_loss(pos_scores, neg_scores)
    if reg > 0 and not detach_embeddings:
        # on the raw embeddings: alpha then acts as a per-(block, dimension) regularisation strength
        loss = loss + reg * l2_penalty(p, q_i, q_j)
    return loss


def block_occurrences(user_block: np.ndarray, item_block: np.ndarray, users: np.ndarray, pos: np.ndarray,
                      neg: np.ndarray, n_blocks: int) -> np.ndarray:
    """(2, n_blocks) embedding look-ups per block in a batch of triples: users once per triple, items
    once per positive and once per negative."""
    return np.stack([np.bincount(user_block[users], minlength=n_blocks),
                     np.bincount(item_block[np.concatenate([pos, np.ravel(neg)])], minlength=n_blocks)])


def _holdout_pairs(matrix: sp.csr_matrix, fraction: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Split the distinct (user, item) keys of `matrix` into (kept, held out) keys: per user a random
    `fraction` (rounded half up) is held out, always leaving at least one training pair."""
    keys = positive_keys(matrix)
    users = keys // matrix.shape[1]
    n = np.bincount(users, minlength=matrix.shape[0])
    rank = np.empty(len(keys), dtype=np.int64)
    order = np.lexsort((rng.random(len(keys)), users))
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    rank[order] = np.arange(len(keys)) - np.repeat(starts, n)
    n_out = np.minimum(np.floor(n * fraction + 0.5).astype(np.int64), np.maximum(n - 1, 0))
    held = rank < n_out[users]
    return keys[~held], keys[held]


class DNIS(DotProductScores, ScoresTrainedUsers, TorchRecommender):
    """BPR-MF whose user and item embedding dimensions are searched per frequency block (DNIS)."""

    Config = DNISConfig

    # ---- fit: a search stage, pruning, then a training stage ---------------------------------

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        private = set(vars(self))
        try:
            fitted = self._fit_stages(train, valid, options)
        finally:
            for name in [n for n in vars(self) if n.startswith("_") and n not in private]:
                delattr(self, name)  # samplers and search state of this fit: training-only
        self._replace_fitted(fitted)
        return self

    def _fit_stages(self, train: Interactions, valid: Interactions | None,
                    options: FitOptions | None) -> dict[str, Any]:
        c = self.config
        rng = self.start_fit(train)
        has_valid = valid is not None and len(valid) > 0
        if c.search_data == "valid" and not has_valid:
            raise RecstackError(
                "DNIS with search_data='valid' needs validation interactions for its architecture step: "
                "pass fit(train, valid) or set search_data='train_holdout'")
        matrix = train.matrix()
        n_users, n_items = train.n_users, train.n_items
        user_block = frequency_blocks(train.user_counts(), c.n_blocks)
        item_block = frequency_blocks(train.item_counts(), c.n_blocks)
        block_sizes = np.stack([np.bincount(user_block, minlength=c.n_blocks),
                                np.bincount(item_block, minlength=c.n_blocks)])
        self._untrained_users = train.user_counts() == 0

        # ---- data of the two levels: embeddings learn from `fit_keys`, alpha from `search_keys`
        if c.search_data == "valid":
            fit_keys = positive_keys(matrix)
            search_keys = positive_keys(valid.matrix())
            known = sp.csr_matrix(matrix + valid.matrix())  # negatives avoid train and valid positives
        else:
            fit_keys, search_keys = _holdout_pairs(matrix, c.search_fraction, rng)
            known = matrix
            if len(search_keys) == 0:
                raise RecstackError(
                    f"search_fraction={c.search_fraction} holds out no training pair for the architecture step "
                    "(users need at least two training items); raise search_fraction or use search_data='valid'")
        self._pairs = EpochPairs(fit_keys // n_items, fit_keys % n_items, c.batch_size, rng)
        self._sampler = UniformNegativeSampler(known, rng)
        arch_rng = np.random.default_rng([c.seed, 1])
        self._search = {"rng": arch_rng, "sampler": UniformNegativeSampler(known, arch_rng), "adam": None,
                        "users": search_keys // n_items, "items": search_keys % n_items,
                        "user_block": user_block, "item_block": item_block}

        alpha = np.ones((2, c.n_blocks, c.embedding_size), dtype=np.float32)
        net = _Net(n_users, n_items, c.embedding_size, c.init_std, user_block, item_block, alpha)
        search = self.train_module(net, train, valid, options=options,
                                   fields=c.model_copy(update={"epochs": c.search_epochs}))
        self._search = None  # the training stage keeps the selection frozen
        searched_alpha = net.alpha.detach().cpu().numpy().copy()

        # ---- prune, then retrain on all training pairs with the selection frozen
        scale = np.stack([block_column_scale(net.user_embedding.weight.detach().cpu().numpy(), user_block, c.n_blocks),
                          block_column_scale(net.item_embedding.weight.detach().cpu().numpy(), item_block, c.n_blocks)])
        keep = prune_cells(searched_alpha, block_sizes, c.prune_threshold, c.target_parameters, scale)
        if c.retrain == "finetune":
            final_alpha = np.where(keep, searched_alpha, 0.0).astype(np.float32)
        else:
            final_alpha = keep.astype(np.float32)
            seed_everything(c.seed + 1)  # a fresh initialisation, not the searched one
        final = _Net(n_users, n_items, c.embedding_size, c.init_std, user_block, item_block, final_alpha)
        if c.retrain == "finetune":
            final.user_embedding.weight.data.copy_(net.user_embedding.weight.data.cpu())
            final.item_embedding.weight.data.copy_(net.item_embedding.weight.data.cpu())
        self._pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        retrain_fields = c.model_copy(update={"learning_rate": c.retrain_learning_rate or c.learning_rate})
        fitted = self.train_module(final, train, valid, options=options, fields=retrain_fields)

        block_dimensions = keep.sum(axis=2)
        return {
            **fitted,  # user_factors_, item_factors_, history_, best_epoch_
            "user_block_": user_block, "item_block_": item_block, "block_sizes_": block_sizes,
            "selection_weights_": searched_alpha, "dimension_mask_": keep, "block_dimensions_": block_dimensions,
            "parameters_kept_": float((block_dimensions * block_sizes).sum() / (c.embedding_size * (n_users + n_items))),
            "search_history_": search["history_"], "search_best_epoch_": search["best_epoch_"],
        }

    def batches(self):
        pairs = self._pairs
        negatives = self._sampler.sample(pairs.users, self.config.n_negatives)
        for index, users, items in pairs.indexed():
            yield users, items, negatives[index]

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        return _triple_loss(module, *batch, reg=self.config.reg)

    def after_step(self, module: _Net, optimizer: torch.optim.Optimizer, step: int) -> None:
        """First-order DARTS step (search stage only): alpha descends the search loss at the current embeddings."""
        search, c = self._search, self.config
        if search is None:
            return
        if search["adam"] is None:
            search["adam"] = torch.optim.Adam([module.alpha], lr=c.arch_learning_rate)
        search_users = search["users"]
        pick = search["rng"].integers(0, len(search_users), size=min(c.arch_batch_size, len(search_users)))
        users, pos = search_users[pick], search["items"][pick]
        neg = search["sampler"].sample(users, c.n_negatives)
        device = module.alpha.device
        users_t, pos_t, neg_t = (torch.from_numpy(x).to(device) for x in (users, pos, neg))
        module.alpha.requires_grad_(True)
        try:
            loss = _triple_loss(module, users_t, pos_t, neg_t, reg=0.0, detach_embeddings=True)
            (grad,) = torch.autograd.grad(loss, module.alpha)
        finally:
            module.alpha.requires_grad_(False)
        if c.gradient_normalization:
            # frequent blocks appear in many more look-ups of a batch than rare ones: average each
            # block's gradient over its own look-ups so every block moves at a comparable rate
            counts = block_occurrences(search["user_block"], search["item_block"], users, pos, neg, c.n_blocks)
            grad = grad * len(users) / torch.as_tensor(np.maximum(counts, 1)[..., None], dtype=grad.dtype,
                                                       device=device)
        module.alpha.grad = grad
        search["adam"].step()
        module.alpha.grad = None
        with torch.no_grad():
            # a soft selection: 1 keeps a dimension whole, 0 removes it. Unbounded weights would
            # grow wherever the ranking is right (a larger scale always lowers the BPR loss)
            module.alpha.clamp_(0.0, 1.0)

    def export(self, module: _Net) -> dict[str, np.ndarray]:
        user_factors, item_factors = module.factors()
        user_factors[self._untrained_users] = 0.0  # never trained: score like unknown users
        return {"user_factors_": user_factors, "item_factors_": item_factors}

    # ---- score -----------------------------------------------------------------------------

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_)
