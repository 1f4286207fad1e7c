"""DNIS (Cheng, Shen and Huang, "Differentiable Neural Input Search for Recommender Systems",
arXiv 2006.04466, 2020) on BPR matrix factorisation: mixed embedding dimensions per frequency block.

The search space is a dimension per block of feature values: user ids and item ids are each
sorted by training frequency and cut into `n_blocks` equal-sized blocks (block 0 the most
frequent). A soft selection layer multiplies every embedding by its block's weights,
e~_x = e_x * alpha[f, block(x)] with alpha in [0, 1]^(2 x K x d), so that
score(u, i) = <p_u * alpha_U[b(u)], q_i * alpha_I[b(i)]>, trained with BPR (uniform negatives)
plus `reg` times the squared norms of the raw embeddings (alpha then acts as a per-block,
per-dimension regularisation strength: a weight near 0 switches a dimension off).

Two levels, alternated DARTS-style (first-order, xi = 0): every optimiser step of the embeddings
on the training loss (the shared `Trainer`) is followed, through `Trainer.fit(after_step=...)`,
by one Adam step of alpha on the BPR loss of a batch of *search* triples with the embeddings held
fixed. Gradient normalisation: a block's weight gradient is summed over its look-ups in the
batch, so frequent blocks would move faster; each block's gradient is divided by its number of
look-ups (users once per triple, items once per positive and per negative). After each step alpha
is clipped to [0, 1] (1 = dimension kept whole): unbounded weights grow wherever the ranking is
already right, because a larger scale always lowers the BPR loss, and that only undoes the
regularisation. After the search, cells with |alpha| < `prune_threshold` are removed (or, with
`target_parameters`, the largest weights are kept greedily within that share of the embedding
parameters), giving each block its own dimension; the pruned model is then fine-tuned on all
training pairs with alpha frozen (`retrain="finetune"`, the searched embeddings and weights,
pruned cells zeroed) or retrained from a fresh initialisation as a plain mixed-dimension MF
(`retrain="scratch"`, alpha replaced by the 0/1 mask). Both stages stop early on validation.

Which data the architecture step reads (`search_data`):
- "train_holdout" (default): a random `search_fraction` of each user's training pairs is held
  out of the embeddings' loss during the search and feeds the alpha step; the retraining stage
  then uses all training pairs. The validation part stays untouched by any gradient, so its
  metric (early stopping, model selection, the figures below) is a held-out one.
- "valid": the alpha step reads the validation interactions, as the paper does. Validation then
  is part of the search: the validation metric of such a fit (and any model selection on it) is
  optimistic, because the same interactions trained alpha.

Fitted state: `user_factors_`, `item_factors_` (selected, pruned embeddings; scoring is
P[users] @ Q.T without torch), `selection_weights_` (alpha after the search, (2, K, d): users,
items), `dimension_mask_` (the kept cells), `block_dimensions_` ((2, K) kept dimensions per
block), `block_sizes_`, `user_block_`, `item_block_`, `parameters_kept_` (kept embedding
parameters / (n_users + n_items) * embedding_size), `search_history_`/`search_best_epoch_` and
`history_`/`best_epoch_` of the two stages. Like BPR-MF, no fold-in: users without training
events score zero.

Defaults were chosen on ml-100k VALIDATION NDCG@10 (all ratings as positives, per-user random
8:1:1 split, seed 2020, full ranking, train masked; test figures only for reference). The
embedding settings are BPR-MF's tuned ones (64 dims, lr 2e-3, reg 3e-3, init 0.01, batch 4096).
Search and pruning (about 12 fits): arch_learning_rate 1e-2 (1e-3 hardly moved alpha: 99% of the
parameters kept; 3e-2 found nearly the same dimensions), n_blocks 8 (with fine-tuning at 2e-3,
4 / 8 / 16 blocks kept 94% / 88% / 82% of the parameters at validation 0.247 / 0.244 / 0.242: 8 is
the middle of that trade-off), fine-tuning at retrain_learning_rate 2e-4 (at 2e-3 the first
fine-tuning epoch was the best, validation 0.244; from scratch 0.246 in twice the time;
fine-tuning at 2e-4 0.248), prune_threshold 0.5 (0.1 gave the same validation NDCG,
0.2486 vs 0.2484, with 92% instead of 88% of the parameters; 0.9 and 0.99 trade accuracy for size,
see `benchmarks/dnis_tradeoff.py`). Without an upper clip alpha grew to 2-4 within 25 epochs
and validation NDCG@10 fell to 0.228. Gradient normalisation leaves the found dimensions unchanged
on ml-100k: Adam rescales each weight's step by its own gradient history, which absorbs a constant
per-block factor. At the defaults: 88% of the embedding parameters, validation NDCG@10 0.248
(BPR-MF, 64 dims: 0.245), test 0.298 (BPR-MF 0.293), about 60 s on one core.

Reading of the paper: the full text was not at hand while writing this; the layer, the frequency
blocks, the alternating first-order optimisation, the per-block gradient normalisation, threshold
pruning and retraining follow its description as summarised here, and the clip to [0, 1], the
equal-sized blocks and the train-holdout option are our choices.
"""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.models.kernels.scoring import dot_scores
from recstack.models.protocol import ModelConfig, SaveLoad, check_fitted
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import EpochPairs, UniformNegativeSampler, positive_keys
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything

USERS, ITEMS = 0, 1  # the two feature fields, the first axis of the selection weights


class DNISConfig(ModelConfig):
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
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"
    verbose: bool = True


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


def frequency_blocks(counts: np.ndarray, n_blocks: int) -> np.ndarray:
    """Block of each id: ids sorted by descending frequency (ties to the lower index), cut into
    `n_blocks` blocks of (nearly) equal numbers of ids; block 0 holds the most frequent."""
    order = np.lexsort((np.arange(len(counts)), -np.asarray(counts)))
    block = np.empty(len(counts), dtype=np.int64)
    for k, members in enumerate(np.array_split(order, n_blocks)):
        block[members] = k
    return block


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


def _prune(alpha: np.ndarray, block_sizes: np.ndarray, threshold: float, target: float | None,
           column_scale: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (2, K, d) of the (field, block, dimension) cells kept.

    With a parameter budget (`target`, a share of all embedding parameters) cells are taken greedily
    in order of |alpha|, each one kept if the rows it costs still fit the budget; many weights end at
    the upper bound 1, so ties go to the larger `column_scale` (the block's embedding column norm),
    then to the lower index.
    """
    magnitude = np.abs(alpha)
    if target is None:
        return magnitude >= threshold
    cost = np.broadcast_to(block_sizes[..., None], alpha.shape).ravel().astype(np.int64)
    scale = np.zeros(magnitude.size) if column_scale is None else -np.asarray(column_scale, dtype=np.float64).ravel()
    order = np.lexsort((np.arange(magnitude.size), scale, -magnitude.ravel()))
    budget, used = target * cost.sum(), 0
    keep = np.zeros(magnitude.size, dtype=bool)
    for cell in order:  # 2 * n_blocks * embedding_size cells, once per fit
        if used + cost[cell] <= budget + 1e-9:
            keep[cell] = True
            used += cost[cell]
    return keep.reshape(alpha.shape)


def _column_scale(embedding: np.ndarray, block: np.ndarray, n_blocks: int) -> np.ndarray:
    """(K, d) root-mean-square of each embedding column within each block."""
    one_hot = sp.csr_matrix((np.ones(len(block)), (block, np.arange(len(block)))), shape=(n_blocks, len(block)))
    sizes = np.maximum(np.bincount(block, minlength=n_blocks), 1)[:, None]
    return np.sqrt(np.asarray(one_hot @ (embedding.astype(np.float64) ** 2)) / sizes)


class _LiveScorer:
    def __init__(self, net: _Net) -> None:
        self.net = net

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return dot_scores(users, items, *self.net.factors())


class DNIS(SaveLoad):
    """BPR-MF whose user and item embedding dimensions are searched per frequency block (DNIS)."""

    Config = DNISConfig

    def __init__(self, config: DNISConfig | None = None) -> None:
        self.config = config or DNISConfig()

    # ---- fit -------------------------------------------------------------------------------

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        if len(train) == 0:
            raise RecstackError("DNIS cannot be fitted on empty training data; check the filters and split")
        has_valid = valid is not None and len(valid) > 0
        if c.search_data == "valid" and not has_valid:
            raise RecstackError(
                "DNIS with search_data='valid' needs validation interactions for its architecture step: "
                "pass fit(train, valid) or set search_data='train_holdout'")
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix()
        n_users, n_items = train.n_users, train.n_items
        user_block = frequency_blocks(train.user_counts(), c.n_blocks)
        item_block = frequency_blocks(train.item_counts(), c.n_blocks)
        block_sizes = np.stack([np.bincount(user_block, minlength=c.n_blocks),
                                np.bincount(item_block, minlength=c.n_blocks)])

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
        train_pairs = EpochPairs(fit_keys // n_items, fit_keys % n_items, c.batch_size, rng)
        sampler = UniformNegativeSampler(known, rng)
        arch_rng = np.random.default_rng([c.seed, 1])
        arch_sampler = UniformNegativeSampler(known, arch_rng)
        search_users, search_items = search_keys // n_items, search_keys % n_items

        alpha = np.ones((2, c.n_blocks, c.embedding_size), dtype=np.float32)
        net = _Net(n_users, n_items, c.embedding_size, c.init_std, user_block, item_block, alpha)
        arch: dict[str, torch.optim.Optimizer] = {}

        def batches(pairs: EpochPairs):
            def epoch():
                negatives = sampler.sample(pairs.users, c.n_negatives)
                for index, users, items in pairs.indexed():
                    yield users, items, negatives[index]
            return epoch

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            return _triple_loss(module, *batch, reg=c.reg)

        def architecture_step(module: _Net, optimizer: torch.optim.Optimizer, step: int) -> None:
            """First-order DARTS step: alpha descends the search loss at the current embeddings."""
            if "adam" not in arch:
                arch["adam"] = torch.optim.Adam([module.alpha], lr=c.arch_learning_rate)
            pick = arch_rng.integers(0, len(search_users), size=min(c.arch_batch_size, len(search_users)))
            users, pos = search_users[pick], search_items[pick]
            neg = arch_sampler.sample(users, c.n_negatives)
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
                counts = block_occurrences(user_block, item_block, users, pos, neg, c.n_blocks)
                grad = grad * len(users) / torch.as_tensor(np.maximum(counts, 1)[..., None], dtype=grad.dtype,
                                                           device=device)
            module.alpha.grad = grad
            arch["adam"].step()
            module.alpha.grad = None
            with torch.no_grad():
                # a soft selection: 1 keeps a dimension whole, 0 removes it. Unbounded weights would
                # grow wherever the ranking is right (a larger scale always lowers the BPR loss)
                module.alpha.clamp_(0.0, 1.0)

        trainer_config = dict(
            learning_rate=c.learning_rate, batch_size=c.batch_size, optimizer="adam",
            early_stopping_patience=c.early_stopping_patience, valid_metric=c.valid_metric,
            eval_every=c.eval_every, seed=c.seed, device=c.device, verbose=c.verbose,
        )
        search = Trainer(TrainerConfig(epochs=c.search_epochs, **trainer_config))
        search_history = search.fit(net, batch_loss, batches(train_pairs), _LiveScorer(net),
                                    train=train, valid=valid, after_step=architecture_step)
        searched_alpha = net.alpha.detach().cpu().numpy().copy()

        # ---- prune, then retrain on all training pairs with the selection frozen
        scale = np.stack([_column_scale(net.user_embedding.weight.detach().cpu().numpy(), user_block, c.n_blocks),
                          _column_scale(net.item_embedding.weight.detach().cpu().numpy(), item_block, c.n_blocks)])
        keep = _prune(searched_alpha, block_sizes, c.prune_threshold, c.target_parameters, scale)
        if c.retrain == "finetune":
            final_alpha = np.where(keep, searched_alpha, 0.0).astype(np.float32)
        else:
            final_alpha = keep.astype(np.float32)
            seed_everything(c.seed + 1)  # a fresh initialisation, not the searched one
        final = _Net(n_users, n_items, c.embedding_size, c.init_std, user_block, item_block, final_alpha)
        if c.retrain == "finetune":
            final.user_embedding.weight.data.copy_(net.user_embedding.weight.data.cpu())
            final.item_embedding.weight.data.copy_(net.item_embedding.weight.data.cpu())
        all_pairs = EpochPairs.from_matrix(matrix, c.batch_size, rng)
        trainer_config["learning_rate"] = c.retrain_learning_rate or c.learning_rate
        retrain = Trainer(TrainerConfig(epochs=c.epochs, **trainer_config))
        history = retrain.fit(final, batch_loss, batches(all_pairs), _LiveScorer(final), train=train, valid=valid)

        user_factors, item_factors = final.factors()
        user_factors[train.user_counts() == 0] = 0.0  # never trained: score like unknown users
        self.user_factors_ = user_factors
        self.item_factors_ = item_factors
        self.user_block_ = user_block
        self.item_block_ = item_block
        self.block_sizes_ = block_sizes
        self.selection_weights_ = searched_alpha
        self.dimension_mask_ = keep
        self.block_dimensions_ = keep.sum(axis=2)
        self.parameters_kept_ = float((self.block_dimensions_ * block_sizes).sum()
                                      / (c.embedding_size * (n_users + n_items)))
        self.search_history_ = search_history
        self.search_best_epoch_ = search.best_epoch if search.best_epoch is not None else len(search_history)
        self.history_ = history
        self.best_epoch_ = retrain.best_epoch if retrain.best_epoch is not None else len(history)
        return self

    # ---- score -----------------------------------------------------------------------------

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_)
