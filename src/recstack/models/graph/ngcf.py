"""NGCF (Wang et al., "Neural Graph Collaborative Filtering", SIGIR 2019).

Layer: E^(k+1) = LeakyReLU((L + I) E^(k) W1 + b1 + ((L E^(k)) ⊙ E^(k)) W2 + b2), L = D^-1/2 A D^-1/2
over the user-item bipartite graph (the paper's message W1 e_i + W2 (e_i ⊙ e_u) summed over
neighbours, plus the self-connection); final e = [E^(0) | norm(E^(1)) | ... | norm(E^(K))]
(each propagated layer L2-normalised per row, as in the reference code); score(u, i) = <e_u, e_i>;
loss = -mean log sigmoid(score(u, i) - score(u, j)) + reg * (||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2) / B.

Notable choices: L is built once in `fit` (shared with LightGCN) and each training step propagates
the whole graph once, one sparse @ dense product per layer. Node dropout (`node_dropout`) drops
each edge of L with that probability per step and rescales the kept ones; message dropout
(`dropout`) is ordinary dropout on each layer's output before it propagates further (both only in
training). LeakyReLU slope 0.2 and Xavier-uniform initialisation as in the reference code, biases
zero. After `fit` the concatenated embeddings are plain numpy (`user_factors_`, `item_factors_`,
(embedding_size * (n_layers + 1)) columns), so scoring is `P[users] @ Q.T` without torch.
Users without training events score all zeros.

Defaults were chosen on ml-100k VALIDATION data (all ratings as positives, per-user random 8:1:1
split, seed 2020, full ranking, NDCG@10 on valid with train masked); tuning was brief (time ran
out): the paper's reg=1e-5, dropout=0.1, 3 layers of 64 with learning_rate=5e-3 reach validation
NDCG@10 0.239 (best epoch 24, about 70 s on one busy core; test 0.289, for reference only), below
LightGCN's 0.253 as in the LightGCN paper; learning_rate=1e-3 needs well over 100 epochs
(about 1.7 s each on one core).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import normalized_adjacency, sparse_tensor, symmetric_matmul
from recstack.models.kernels.live import LiveScorer
from recstack.models.kernels.scoring import dot_scores
from recstack.models.protocol import SaveLoad, ModelConfig, check_fitted, check_trainable
from recstack.train.indexing import gather_rows
from recstack.train.losses import bpr_loss, l2_penalty
from recstack.train.sampling import pair_batches
from recstack.train.trainer import Trainer, TrainerConfig, seed_everything


class NGCFConfig(ModelConfig):
    embedding_size: PositiveInt = 64  # also the width of every propagation layer
    n_layers: NonNegativeInt = 3
    learning_rate: PositiveFloat = 5e-3
    reg: NonNegativeFloat = 1e-5  # times the batch's squared layer-0 embedding norms per example
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # message dropout after each layer
    node_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # share of graph edges dropped per step
    epochs: PositiveInt = 300  # a maximum: early stopping usually ends training before
    batch_size: PositiveInt = 2048
    n_negatives: PositiveInt = 1
    early_stopping_patience: PositiveInt | None = 10
    eval_every: PositiveInt = 1
    valid_metric: str = "NDCG@10"
    device: str = "auto"  # cuda when available, else cpu
    verbose: bool = True


class _Net(torch.nn.Module):
    def __init__(self, laplacian: torch.Tensor, n_users: int, n_items: int, embedding_size: int,
                 n_layers: int, dropout: float, node_dropout: float) -> None:
        super().__init__()
        self.n_users, self.node_dropout = n_users, node_dropout
        self.embedding = torch.nn.Embedding(n_users + n_items, embedding_size)  # users, then items
        self.w1 = torch.nn.ModuleList(torch.nn.Linear(embedding_size, embedding_size) for _ in range(n_layers))
        self.w2 = torch.nn.ModuleList(torch.nn.Linear(embedding_size, embedding_size) for _ in range(n_layers))
        torch.nn.init.xavier_uniform_(self.embedding.weight)
        for linear in [*self.w1, *self.w2]:
            torch.nn.init.xavier_uniform_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
        self.dropout = torch.nn.Dropout(dropout)
        self.register_buffer("laplacian", laplacian, persistent=False)

    def _graph(self) -> torch.Tensor:
        """L, or in training with node dropout L with each edge kept with prob 1 - p and rescaled."""
        if not self.training or self.node_dropout == 0:
            return self.laplacian
        coo = self.laplacian.to_sparse_coo()
        keep = torch.rand(coo.values().shape, device=coo.device) >= self.node_dropout
        values = coo.values()[keep] / (1.0 - self.node_dropout)
        return torch.sparse_coo_tensor(coo.indices()[:, keep], values, coo.shape, is_coalesced=True,
                                       check_invariants=False).to_sparse_csr()

    def propagate(self) -> torch.Tensor:
        """(n_users + n_items, d * (K + 1)): layer 0 and the L2-normalised layers 1..K side by side."""
        graph = self._graph()
        layer = self.embedding.weight
        layers = [layer]
        for w1, w2 in zip(self.w1, self.w2):
            # L E: the neighbours' messages, one sparse product per layer (L is symmetric unless
            # node dropout removed edges independently in each direction)
            side = symmetric_matmul(graph, layer) if graph is self.laplacian else graph @ layer
            layer = F.leaky_relu(w1(side + layer) + w2(side * layer), negative_slope=0.2)
            layer = self.dropout(layer)
            layers.append(F.normalize(layer, p=2, dim=1))
        return torch.cat(layers, dim=1)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                final = self.propagate().to("cpu", torch.float32).numpy().copy()
        finally:
            self.train(was_training)
        return final[:self.n_users], final[self.n_users:]


class NGCF(SaveLoad):
    """Graph convolution with feature transforms and user-item affinity messages, layers concatenated."""

    Config = NGCFConfig

    def __init__(self, config: NGCFConfig | None = None) -> None:
        self.config = config or NGCFConfig()

    def fit(self, train: Interactions, valid: Interactions | None = None) -> Self:
        c = self.config
        check_trainable("NGCF", train)
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        matrix = train.matrix()
        laplacian = sparse_tensor(normalized_adjacency(matrix))
        net = _Net(laplacian, train.n_users, train.n_items, c.embedding_size, c.n_layers, c.dropout, c.node_dropout)
        scorer = LiveScorer(net)
        n_users = train.n_users

        def batch_loss(module: _Net, batch) -> torch.Tensor:
            users, pos, neg = batch
            scorer.cache = None  # the weights are about to change
            final = module.propagate()  # the whole graph once per step
            e_u = gather_rows(final, users)
            e_i, e_j = gather_rows(final, n_users + pos), gather_rows(final, n_users + neg)  # e_j: (B, n_neg, d')
            pos_scores = (e_u * e_i).sum(-1)
            neg_scores = (e_u.unsqueeze(1) * e_j).sum(-1)
            weight = module.embedding.weight
            penalty = l2_penalty(gather_rows(weight, users), gather_rows(weight, n_users + pos),
                                 gather_rows(weight, n_users + neg))
            return bpr_loss(pos_scores, neg_scores) + c.reg * penalty

        trainer = Trainer(TrainerConfig.from_model(c, optimizer="adam"))
        history = trainer.fit(net, batch_loss, pair_batches(matrix, c.batch_size, c.n_negatives, rng),
                              scorer, train=train, valid=valid)

        user_factors, item_factors = net.factors()
        user_factors[train.user_counts() == 0] = 0.0  # never trained: score like unknown users
        self.user_factors_ = user_factors
        self.item_factors_ = item_factors
        self.history_ = history
        self.best_epoch_ = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        return self

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        check_fitted(self, "user_factors_", "item_factors_")
        return dot_scores(users, items, self.user_factors_, self.item_factors_)
