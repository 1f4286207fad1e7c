"""DNIS on FM (Cheng, Shen and Huang, "Differentiable Neural Input Search for Recommender Systems",
arXiv 2006.04466, 2020): mixed embedding dimensions per frequency block of feature values, for CTR.

The logit is FM's (`fm.py`), y = w0 + sum_f w_f + sum_{f<g} <e~_f, e~_g> in the O(kF) form, on
*selected* field vectors e~_f = sum_l x_l (v_l * alpha[block(l)]): a soft selection layer scales
every embedding dimension of a feature value by its block's weight in [0, 1]. Blocks (`blocks`):
"field" (default) sorts the values of each field by their training-row frequency and cuts them into
`n_blocks` blocks (alpha: (n_fields, n_blocks, embedding_size)), so each field gets its own
dimensions; "global" sorts all feature values together (alpha: (1, n_blocks, embedding_size)).
The padding id 0 has a zero embedding and weight 0, whatever its block. Loss: BCE on the label.

Search (first-order DARTS, xi = 0): every optimiser step of the weights on the training rows is
followed (`after_step`) by one Adam step of alpha on the BCE of a batch of *search* rows
(`search_data`: a held-out share of the training rows, or the validation rows as the paper) with
the weights held, each (group, block) gradient divided by its look-ups in the batch (gradient
normalisation), alpha clipped to [0, 1]. Cells with alpha < `prune_threshold` are then removed (or
the largest kept within `target_parameters`), and the pruned model is fine-tuned with alpha frozen
(`retrain="finetune"`) or retrained from its initialisation with the 0/1 mask (`"scratch"`). Both
stages stop early on validation AUC through the CTR trainer. Fitted: `alpha_` (searched), `mask_`,
`block_sizes_`, `block_dimensions_`, `parameters_kept_`, `search_history_`, `search_best_epoch_`.

Deviations (details in `docs/models/dnis_fm.md`): the clip to [0, 1], equal-count blocks, the
train-holdout default for the search rows and look-up-count gradient normalisation follow
`recstack.models.factorization.dnis`; the first-order weights w_x are not searched and not counted
in `parameters_kept_` (the share of embedding cells of the ids the feature tables hold).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from recstack.data.ctr import CTRData
from recstack.errors import RecstackError
from recstack.models.ctr.base import CTRFields, CTRModel, FieldEmbedding, ModelConfig
from recstack.models.ctr.fm import fm_interaction
from recstack.models.kernels.dimension_search import block_column_scale, frequency_blocks, prune_cells
from recstack.train.options import FitOptions

DEFAULT_THRESHOLD = 0.5  # dnis.py's (chosen there on ml-100k validation NDCG)


class DNISFMConfig(ModelConfig, CTRFields):
    n_blocks: PositiveInt = 8  # frequency blocks per field ("field") or over all values ("global")
    blocks: Literal["field", "global"] = "field"
    search_epochs: PositiveInt = 30  # a maximum for the search stage; early stopping ends it sooner
    arch_learning_rate: PositiveFloat = 1e-2  # Adam on the selection weights
    arch_batch_size: PositiveInt = 2048  # search rows per architecture step (one per training step)
    search_data: Literal["train_holdout", "valid"] = "train_holdout"
    search_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # share of training rows held out for alpha
    gradient_normalization: bool = True  # divide each block's alpha gradient by its look-ups
    # keep the (block, dimension) cells where alpha >= prune_threshold (None: 0.5), or, with
    # target_parameters, the largest alpha within that share of the embedding cells; not both
    prune_threshold: float | None = Field(None, ge=0.0, le=1.0)
    target_parameters: float | None = Field(None, gt=0.0, le=1.0)
    retrain: Literal["finetune", "scratch"] = "finetune"
    retrain_learning_rate: PositiveFloat | None = None  # None: learning_rate

    @model_validator(mode="after")
    def _one_pruning_rule(self) -> Self:
        if self.target_parameters is not None and self.prune_threshold is not None:
            raise ValueError("give prune_threshold or target_parameters, not both (a parameter budget "
                             "replaces the threshold)")
        return self


def feature_blocks(data: CTRData, n_blocks: int, scope: str = "field"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block layout of the shared id space from the training rows `data`.

    Returns `cell (n_ids,)`: the row of alpha.reshape(-1, d) each id reads (group * n_blocks + block;
    group = the id's field, or 0 with scope "global"), -1 for the padding id 0 and ids no user or
    item holds (never looked up, in no block); `block_sizes (G, n_blocks)`: ids per block;
    `counts (n_ids,)`: training-row occurrences of each id (a multi-valued field's values once per
    row each).
    """
    f = data.features
    counts = np.zeros(f.n_ids, dtype=np.int64)
    field_of = np.full(f.n_ids, -1, dtype=np.int64)
    start = 0
    for table, entity in ((f.user_index, data.user), (f.item_index, data.item)):
        rows = np.bincount(entity, minlength=len(table))  # training rows per user (item)
        for j in range(table.shape[1]):
            column = table[:, j, :]
            held = column > 0
            field_of[column[held]] = start + j
            counts += np.bincount(column[held], weights=np.broadcast_to(rows[:, None], column.shape)[held],
                                  minlength=f.n_ids).round().astype(np.int64)
        start += table.shape[1]
    groups = [np.flatnonzero(field_of == g) for g in range(f.n_fields)] if scope == "field" \
        else [np.flatnonzero(field_of >= 0)]
    cell = np.full(f.n_ids, -1, dtype=np.int64)
    sizes = np.zeros((len(groups), n_blocks), dtype=np.int64)
    for g, ids in enumerate(groups):
        block = frequency_blocks(counts[ids], n_blocks)  # 0 = the most frequent values
        cell[ids] = g * n_blocks + block
        sizes[g] = np.bincount(block, minlength=n_blocks)
    return cell, sizes, counts


class _DNISFM(torch.nn.Module):
    """FM on selected embeddings v_x * alpha[cell(x)]; alpha and cell travel in the state dict."""

    def __init__(self, n_ids: int, n_groups: int, n_blocks: int, size: int, cell: np.ndarray | None = None,
                 alpha: np.ndarray | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedding(n_ids, size)
        alpha = np.ones((n_groups, n_blocks, size), np.float32) if alpha is None else alpha
        # not trained by the Trainer's optimiser (it takes the parameters that require grad): the
        # search stage turns the gradient on only inside its own architecture step
        self.alpha = torch.nn.Parameter(torch.as_tensor(alpha, dtype=torch.float32), requires_grad=False)
        # ids in no block (padding: zero embedding, weight 0; ids no entity holds: never looked up) read row 0
        cell = np.zeros(n_ids, np.int64) if cell is None else np.maximum(cell, 0)
        self.register_buffer("cell", torch.as_tensor(cell, dtype=torch.long))

    def selection(self, index: torch.Tensor) -> torch.Tensor:
        """alpha[cell(index)], (B, F, L, d). An embedding look-up rather than advanced indexing: its
        backward sums repeated rows in a fixed order, so the alpha gradient repeats exactly."""
        return F.embedding(self.cell[index], self.alpha.reshape(-1, self.alpha.shape[-1]))

    def field_vectors(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        selected = self.fields.embedding(index) * self.selection(index)
        return (selected * weight.unsqueeze(-1)).sum(2)

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.fields.first_order(index, weight) + fm_interaction(self.field_vectors(index, weight))


class DNISFM(CTRModel):
    """FM whose embedding dimensions are searched per frequency block (DNIS), pruned, then retrained."""

    Config = DNISFMConfig

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        c = self.config
        groups = n_fields if c.blocks == "field" else 1
        stage = getattr(self, "_stage", None)
        if stage is None:  # a fitted model: shapes only, `_net()` loads alpha and cell from weights_
            return _DNISFM(n_ids, groups, c.n_blocks, c.embedding_size)
        cell, alpha, start = stage
        net = _DNISFM(n_ids, groups, c.n_blocks, c.embedding_size, cell, alpha)
        if start is not None:  # fine-tuning: the searched embeddings and first-order weights
            net.fields.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in start.items()})
        return net

    def fit(self, train: CTRData, valid: CTRData | None = None, *, options: FitOptions | None = None) -> Self:
        if not isinstance(train, CTRData):
            return super().fit(train, valid, options=options)  # raises the shared message
        c = self.config
        has_valid = valid is not None and len(valid) > 0
        if c.search_data == "valid" and not has_valid:
            raise RecstackError("DNIS-FM with search_data='valid' trains alpha on the validation rows: pass "
                                "fit(train, valid) or set search_data='train_holdout'")
        cell, sizes, _ = feature_blocks(train, c.n_blocks, c.blocks)
        rng = np.random.default_rng([c.seed, 1])  # the holdout and the search batches, apart from torch's seed
        if c.search_data == "valid":
            weights_rows, search_rows = train, valid
        else:
            order = rng.permutation(len(train))
            n_out = int(np.floor(len(train) * c.search_fraction + 0.5))
            if n_out == 0 or n_out == len(train):
                raise RecstackError(f"search_fraction={c.search_fraction} of {len(train)} training rows leaves no "
                                    "rows for the architecture step or for the weights; change search_fraction "
                                    "or use search_data='valid'")
            weights_rows, search_rows = train.take(np.sort(order[n_out:])), train.take(np.sort(order[:n_out]))
        options = options or FitOptions()
        try:
            # the search is a fit of its own, with its own epoch budget; the shared loop reads self.config
            self.config = c.model_copy(update={"epochs": c.search_epochs})
            self._stage = (cell, None, None)
            self._search = {"rows": search_rows, "rng": rng, "cell": cell, "adam": None}
            super().fit(weights_rows, valid, options=replace(options, label=f"{options.name} search"))
            searched = self.weights_
            search_history, search_epoch = self.history_, self.best_epoch_
            self._search = None

            alpha = searched["alpha"]  # the best validation epoch's (the trainer restores it)
            scale = _block_scale(searched["fields.embedding.weight"], cell, sizes)
            # many weights stay at the upper bound 1: a budget breaks those ties by the block's column norm
            threshold = DEFAULT_THRESHOLD if c.prune_threshold is None else c.prune_threshold
            keep = prune_cells(alpha, sizes, threshold, c.target_parameters, scale) & (sizes[..., None] > 0)
            if c.retrain == "finetune":
                final_alpha, start = np.where(keep, alpha, 0.0).astype(np.float32), {
                    k[len("fields."):]: v for k, v in searched.items() if k.startswith("fields.")}
            else:  # the same seed re-draws the search's initial weights; the mask is the architecture
                final_alpha, start = keep.astype(np.float32), None
            self.config = c.model_copy(update={"learning_rate": c.retrain_learning_rate or c.learning_rate})
            self._stage = (cell, final_alpha, start)
            super().fit(train, valid, options=options)
        finally:
            self.config = c
            self.__dict__.pop("_stage", None)
            self.__dict__.pop("_search", None)
        block_dimensions = keep.sum(axis=2)
        self.alpha_, self.mask_ = alpha, keep
        self.block_sizes_, self.block_dimensions_ = sizes, block_dimensions
        self.parameters_kept_ = float((block_dimensions * sizes).sum() / (c.embedding_size * sizes.sum()))
        self.search_history_, self.search_best_epoch_ = search_history, search_epoch
        return self

    def after_step(self, module: _DNISFM, optimizer: torch.optim.Optimizer, step: int) -> None:
        """First-order DARTS step (search stage only): alpha descends the search rows' BCE at the
        current weights."""
        search, c = getattr(self, "_search", None), self.config
        if search is None:
            return
        if search["adam"] is None:
            search["adam"] = torch.optim.Adam([module.alpha], lr=c.arch_learning_rate)
        data: CTRData = search["rows"]
        rows = search["rng"].integers(0, len(data), size=min(c.arch_batch_size, len(data)))
        index, weight = data.encode(rows)
        device = module.alpha.device
        module.alpha.requires_grad_(True)
        try:
            logits = module(torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device))
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(data.label[rows]).to(device))
            (grad,) = torch.autograd.grad(loss, module.alpha)  # the weights get no gradient here
        finally:
            module.alpha.requires_grad_(False)
        if c.gradient_normalization:
            # a frequent block is looked up in many more rows of a batch than a rare one, and its summed
            # gradient is that much larger: average each block's gradient over its own look-ups instead
            looked_up = np.bincount(search["cell"][index[index > 0]], minlength=module.alpha[..., 0].numel())
            per_block = np.maximum(looked_up, 1).reshape(module.alpha.shape[:2])[..., None]
            grad = grad * len(rows) / torch.as_tensor(per_block, dtype=grad.dtype, device=device)
        module.alpha.grad = grad
        search["adam"].step()
        module.alpha.grad = None
        with torch.no_grad():
            # a soft selection: 1 keeps a dimension whole, 0 removes it; unbounded weights would only
            # rescale the embeddings (and undo any L2 on them) instead of selecting dimensions
            module.alpha.clamp_(0.0, 1.0)


def _block_scale(embedding: np.ndarray, cell: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(G, K, d) root-mean-square of each embedding column within each block (its ids only)."""
    in_block = cell >= 0
    return block_column_scale(embedding[in_block], cell[in_block], sizes.size).reshape(*sizes.shape, -1)


__all__ = ["DNISFM", "DNISFMConfig", "feature_blocks"]
