"""LIRDRec (Zhou, Zhang, Niyato & Shen, "Learning Item Representations Directly from Multimodal Features
for Effective Recommendation", arXiv 2505.04960, 2025; reference code enoche/LIRDRec `src/models/lirdrec.py`).

No item-ID embedding: an item is what its features say. Channels c = each modality m plus one shared
channel built from the concatenated DCT-II spectra of all modalities (the "multimodal transformation").
Item side: x_i^c = W2_c leaky_relu(W1_c f_i^c + b1_c); user side: a free preference p_u^c per channel.
Node inputs are the row-L2-normalised channels concatenated, X = [norm(p^c); norm(x^c)]_c, propagated
on the LightGCN graph with the layers summed: E = sum_{l=0..L} A_hat^l X. Items: e_i + S^{L_ii} e_i with
S FREEDOM's frozen kNN graph of the raw features. Users: progressive weight copying fusion,
alpha_u = softmax(w1 a_u + w2 theta_u), a_u^c = MLP_c(e_u^c) (d -> d/4 -> 1), theta_u a free per-user
vector overwritten at each epoch start with the previous epoch's last alpha_u, w1 decayed as
w1 <- w1 base^t / (w1 base^t + w2) (then w2 <- 1 - w1) at epoch t; e_u = [alpha_u^c e_u^c]_c.
score(u, i) = <e_u, e_i + S^{L_ii} e_i>. Loss = BPR + reg (mean(E_users^2) + mean(E_items^2)) over the
whole final tables, as the reference.

Modalities: `use_dataset(dataset)` or `set_modalities` as FREEDOM (recstack.data.modalities). Defaults
and every deviation (1-D DCT as the reference code, not the paper's 2-D; no edge pruning, the reference's
dropout 0; n modalities, not exactly image + text; scoring with the current weights): docs/models/lirdrec.md.
"""

from __future__ import annotations


import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Field

from recstack.data.interactions import Interactions
from recstack.models.kernels.graph import (PropagatedFactors, directed_matmul, layer_mean, modality_graph,
                                           normalized_adjacency, sparse_tensor, triple_scores)
from recstack.models.kernels.side import ItemModalityInput, ModalityFields
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig
from recstack.train.losses import bpr_loss


class LIRDRecConfig(ModelConfig, TrainingFields, ModalityFields):
    modalities: list[str] = ["text"]  # at least one: items have no ID embedding
    graph_weights: dict[str, NonNegativeFloat] | None = None  # None: image 0.1 / text 0.9 (reference), else equal
    knn_k: PositiveInt = 10
    embedding_size: PositiveInt = 64  # d per channel; users and items are (n_modalities + 1) * d wide
    n_layers: NonNegativeInt = 2  # L, user-item graph (reference grid 2, 3, 4)
    n_item_layers: NonNegativeInt = 1  # L_ii, frozen item-item graph
    reg: NonNegativeFloat = 1e-3  # times mean(E_users^2) + mean(E_items^2) (reference grid 1e-2, 1e-3, 1e-4)
    attention_weight: float = Field(0.9, gt=0.0, le=1.0)  # initial w1 (reference decay_weight, grid .9/.95/.99)
    decay_base: float = Field(0.9, gt=0.0, le=1.0)  # w1 shrinks by base^epoch before renormalising
    weight_decay: NonNegativeFloat = 0.0  # Adam's (reference grid 0, 1e-6, 1e-5)
    learning_rate: PositiveFloat = 1e-4  # the reference's
    epochs: PositiveInt = 1000  # a maximum: early stopping ends training before
    batch_size: PositiveInt = 2048
    early_stopping_patience: PositiveInt | None = 20
    n_negatives: PositiveInt = 1


# ---- the pieces, as plain functions (tested by hand) -------------------------------------------------
def spectral_features(features: list[np.ndarray]) -> np.ndarray:
    """The shared channel's input: each modality's orthonormal DCT-II along its feature axis, concatenated."""
    return np.concatenate([scipy.fft.dct(np.asarray(f, dtype=np.float64), type=2, norm="ortho", axis=1)
                           for f in features], axis=1).astype(np.float32)


def copy_weights(w1: float, w2: float, epoch: int, base: float) -> tuple[float, float]:
    """Progressive weight copying's schedule at the start of epoch `epoch` (1-based): the attention's
    weight w1 shrinks by base^epoch, then both are renormalised to sum 1."""
    w1 = w1 * base ** epoch
    return w1 / (w1 + w2), w2 / (w1 + w2)


def fuse(channels: list[torch.Tensor], logits: torch.Tensor, theta: torch.Tensor, w1: float,
         w2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = softmax(w1 logits + w2 theta) over the channels, (n, C); fused = [alpha_c x_c]_c."""
    alpha = torch.softmax(w1 * logits + w2 * theta, dim=1)
    return torch.cat([alpha[:, c:c + 1] * x for c, x in enumerate(channels)], dim=1), alpha


# ---- network -----------------------------------------------------------------------------------------
def _mlp(n_in: int, hidden: int, n_out: int, bias_out: bool) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.LeakyReLU(),
                               torch.nn.Linear(hidden, n_out, bias=bias_out))


class _Net(torch.nn.Module):
    def __init__(self, adjacency: torch.Tensor, item_graph, features: list[np.ndarray], n_users: int,
                 c: LIRDRecConfig) -> None:
        super().__init__()
        d = c.embedding_size
        inputs = [*features, spectral_features(features)]  # modality channels, then the shared one
        self.n_users, self.d, self.n_channels = n_users, d, len(inputs)
        self.n_layers, self.n_item_layers = c.n_layers, c.n_item_layers
        for index, x in enumerate(inputs):  # frozen: the reference's forward reads the raw features
            self.register_buffer(f"input_{index}", torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                                 persistent=False)
        self.encoders = torch.nn.ModuleList(_mlp(x.shape[1], 4 * d, d, bias_out=False) for x in inputs)
        self.preferences = torch.nn.ParameterList(
            torch.nn.Parameter(torch.nn.init.xavier_normal_(torch.empty(n_users, d))) for _ in inputs)
        self.attention = torch.nn.ModuleList(_mlp(d, max(1, d // 4), 1, bias_out=True) for _ in inputs)
        self.theta = torch.nn.Parameter(torch.nn.init.xavier_normal_(torch.empty(n_users, len(inputs))))
        # the copying state travels with the weights, so the best-epoch restore and resume restore it too
        self.register_buffer("mix", torch.tensor([c.attention_weight, 1.0 - c.attention_weight], dtype=torch.float64))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_alpha", self.theta.detach().clone())
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.register_buffer("item_graph", sparse_tensor(item_graph), persistent=False)
        self.register_buffer("item_graph_t", sparse_tensor(item_graph.T.tocsr()), persistent=False)

    def start_epoch(self, base: float) -> None:
        """Advance the schedule of w1, w2 and copy the last training alpha into theta."""
        with torch.no_grad():
            self.epoch += 1
            w1, w2 = copy_weights(float(self.mix[0]), float(self.mix[1]), int(self.epoch), base)
            self.mix.copy_(torch.tensor([w1, w2], dtype=torch.float64))
            self.theta.copy_(self.last_alpha)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users (n_users, C d), items (n_items, C d), alpha (n_users, C))."""
        nodes = torch.cat([F.normalize(torch.cat([p, encoder(getattr(self, f"input_{index}"))]), dim=1)
                           for index, (p, encoder) in enumerate(zip(self.preferences, self.encoders))], dim=1)
        final = layer_mean(self.adjacency, nodes, self.n_layers) * (self.n_layers + 1)  # the layer sum
        users, items = final[:self.n_users], final[self.n_users:]
        h = items
        for _ in range(self.n_item_layers):
            h = directed_matmul(self.item_graph, self.item_graph_t, h)
        channels = list(users.split(self.d, dim=1))
        logits = torch.cat([score(x) for score, x in zip(self.attention, channels)], dim=1)
        fused, alpha = fuse(channels, logits, self.theta, float(self.mix[0]), float(self.mix[1]))
        return fused, items + h, alpha

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            users, items, _ = self()
        return users.to("cpu", torch.float32).numpy().copy(), items.to("cpu", torch.float32).numpy().copy()


class LIRDRec(ItemModalityInput, PropagatedFactors, TorchRecommender):
    """Items from their multimodal features only (modality MLPs + a DCT channel), LightGCN layer sum,
    frozen kNN item graph, users fused by progressive weight copying; BPR + L2 on the final tables."""

    Config = LIRDRecConfig

    # ---- training ---------------------------------------------------------------------------------
    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        c = self.config
        features = self.modality_features(train, required="learns items from their features only")
        matrix = self.sample_pairs(train, rng)
        graph = modality_graph(features, c.knn_k, c.graph_weights, model="LIRDRec")
        self._net = _Net(sparse_tensor(normalized_adjacency(matrix)), graph, list(features.values()),
                         train.n_users, c)
        return self._net

    def trainer_settings(self) -> dict:
        return {"weight_decay": self.config.weight_decay}

    def batches(self):
        self._net.start_epoch(self.config.decay_base)  # the reference's pre_epoch_processing
        return self._pairs()

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        user_table, item_table, alpha = module()
        module.last_alpha.copy_(alpha.detach())  # what the next epoch copies into theta
        loss = bpr_loss(*triple_scores(torch.cat([user_table, item_table]), users, pos, neg, module.n_users))
        if self.config.reg > 0:
            loss = loss + self.config.reg * ((user_table ** 2).mean() + (item_table ** 2).mean())
        return loss
