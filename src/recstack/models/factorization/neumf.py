"""NeuMF (He et al., "Neural Collaborative Filtering", WWW 2017).

Two branches with their own embeddings: GMF, phi_gmf = p_u (*) q_i (element-wise), and an MLP,
phi_mlp = ReLU tower over [p'_u ; q'_i]; the prediction is
y_ui = sigmoid(h^T [phi_gmf ; phi_mlp] + b), trained with the pointwise log loss
L = -sum_{(u,i) in Y} log y_ui - sum_{(u,j) in Y-} log(1 - y_uj), with `n_negatives` uniform
negatives per positive redrawn every epoch (paper: 4), Adam, mini-batches.

As in the authors' code, mlp_layers[0] is the width of the MLP *input* (MLP embeddings of size
mlp_layers[0] // 2). Deviations: joint training from scratch (no GMF/MLP pre-training); optional L2
`reg` on the batch's embeddings and `dropout` in the tower. `score` returns the logit (the sigmoid
is monotone and saturates to ties in float32) and is plain numpy, with the first layer split into
user and item halves computed once per block. Users without training events get zero embeddings
(no fold-in). Design notes and tuning record: docs/models/neumf.md.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator

from recstack.data.interactions import Interactions
from recstack.models.factorization.sampled_mf import epoch_triples, training_triples
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresTrainedUsers, check_fitted
from recstack.train.losses import bce_loss, l2_penalty

# hidden values (floats) one scoring chunk may hold: users x items x widest hidden layer
_CHUNK_CELLS = 1 << 22


class NeuMFConfig(ModelConfig, TrainingFields):
    embedding_size: PositiveInt = 32  # GMF factors
    mlp_layers: list[PositiveInt] = Field(default_factory=lambda: [128, 64, 32])  # [input, hidden...]
    reg: NonNegativeFloat = 0.0  # times the batch's squared embedding norms per example
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)  # after each hidden ReLU of the MLP tower
    n_negatives: PositiveInt = 4
    init_std: PositiveFloat = 0.01  # normal init of all embeddings (as in the paper)

    @field_validator("mlp_layers")
    @classmethod
    def _tower(cls, value: list[int]) -> list[int]:
        if len(value) < 2:
            raise ValueError(f"mlp_layers needs the input width and at least one hidden layer, got {value}")
        if value[0] % 2:
            raise ValueError(f"mlp_layers[0] is the width of [user ; item] embeddings and must be even, got {value[0]}")
        return value


class _Net(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, c: NeuMFConfig) -> None:
        super().__init__()
        mlp_dim = c.mlp_layers[0] // 2
        self.user_gmf = torch.nn.Embedding(n_users, c.embedding_size)
        self.item_gmf = torch.nn.Embedding(n_items, c.embedding_size)
        self.user_mlp = torch.nn.Embedding(n_users, mlp_dim)
        self.item_mlp = torch.nn.Embedding(n_items, mlp_dim)
        for emb in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            torch.nn.init.normal_(emb.weight, std=c.init_std)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(c.mlp_layers[:-1], c.mlp_layers[1:])
        )
        for layer in self.layers:
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        self.dropout = torch.nn.Dropout(c.dropout)
        self.predict = torch.nn.Linear(c.embedding_size + c.mlp_layers[-1], 1)
        torch.nn.init.xavier_uniform_(self.predict.weight)
        torch.nn.init.zeros_(self.predict.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for (user, item) pairs of any matching shape (users broadcast against items)."""
        users, items = torch.broadcast_tensors(users, items)
        gmf = self.user_gmf(users) * self.item_gmf(items)
        h = torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=-1)
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h)))
        return self.predict(torch.cat([gmf, h], dim=-1)).squeeze(-1)

    def arrays(self) -> dict[str, np.ndarray]:
        """All weights as float32 numpy copies; linear weights transposed to (in, out)."""
        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        out = {
            "user_gmf_": array(self.user_gmf.weight), "item_gmf_": array(self.item_gmf.weight),
            "user_mlp_": array(self.user_mlp.weight), "item_mlp_": array(self.item_mlp.weight),
            "predict_weight_": array(self.predict.weight[0]), "predict_bias_": array(self.predict.bias),
        }
        for k, layer in enumerate(self.layers):
            out[f"mlp_weight_{k}_"] = np.ascontiguousarray(array(layer.weight).T)
            out[f"mlp_bias_{k}_"] = array(layer.bias)
        return out


def _scores(w: dict[str, np.ndarray], users: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """NeuMF logits in numpy for `users` against all items, candidates (C,), or per-user (B, C)."""
    n_layers = sum(1 for k in w if k.startswith("mlp_weight_"))
    weights = [w[f"mlp_weight_{k}_"] for k in range(n_layers)]
    biases = [w[f"mlp_bias_{k}_"] for k in range(n_layers)]
    user_gmf, user_mlp = w["user_gmf_"], w["user_mlp_"]
    d_gmf, d_mlp = user_gmf.shape[1], user_mlp.shape[1]
    h_gmf, h_mlp = w["predict_weight_"][:d_gmf], w["predict_weight_"][d_gmf:]
    users = np.asarray(users, dtype=np.int64)
    known = (users >= 0) & (users < len(user_gmf))
    pg = np.zeros((len(users), d_gmf), np.float32)
    pm = np.zeros((len(users), d_mlp), np.float32)
    pg[known], pm[known] = user_gmf[users[known]], user_mlp[users[known]]
    # first layer on [p ; q] = p @ W[:d] + q @ W[d:] (+ bias): user and item halves computed once
    user_first = pm @ weights[0][:d_mlp] + biases[0]  # (B, h1)
    item_first_all = w["item_mlp_"] @ weights[0][d_mlp:]  # (n_items, h1)
    pg_weighted = pg * h_gmf  # GMF part: sum_k h_k p_k q_k = (p * h) @ q
    item_gmf = w["item_gmf_"]

    n_items = len(item_gmf)
    if items is None:
        items = np.arange(n_items)
    items = np.asarray(items, dtype=np.int64)
    per_user = items.ndim == 2
    n_cand = items.shape[-1]
    out = np.empty((len(users), n_cand), dtype=np.float32)
    widest = max(b.shape[0] for b in biases)
    chunk = max(1, _CHUNK_CELLS // max(len(users) * widest, 1))
    for start in range(0, n_cand, chunk):
        cols = items[..., start:start + chunk]
        if per_user:  # (B, c): each user its own candidates
            h = user_first[:, None, :] + item_first_all[cols]
            gmf = np.einsum("bd,bcd->bc", pg_weighted, item_gmf[cols])
        else:
            h = user_first[:, None, :] + item_first_all[cols][None, :, :]
            gmf = pg_weighted @ item_gmf[cols].T
        np.maximum(h, 0.0, out=h)
        for weight, bias in zip(weights[1:], biases[1:]):
            h = h @ weight
            h += bias
            np.maximum(h, 0.0, out=h)
        out[:, start:start + cols.shape[-1]] = gmf + h @ h_mlp + w["predict_bias_"][0]
    return out


class NeuMF(ScoresTrainedUsers, TorchRecommender):
    """GMF and MLP branches fused by a final linear layer, trained with pointwise log loss."""

    Config = NeuMFConfig

    def build_module(self, train: Interactions, rng: np.random.Generator) -> _Net:
        self._pairs, self._sampler = training_triples(train.matrix(), self.config.batch_size, rng)
        self._untrained_users = train.user_counts() == 0
        return _Net(train.n_users, train.n_items, self.config)

    def batches(self):
        return epoch_triples(self._pairs, self._sampler, self.config.n_negatives)

    def batch_loss(self, module: _Net, batch) -> torch.Tensor:
        users, pos, neg = batch
        pos_logits = module(users, pos)
        neg_logits = module(users[:, None], neg)  # (B, n_negatives)
        loss = bce_loss(pos_logits, neg_logits)
        if self.config.reg > 0:
            loss = loss + self.config.reg * l2_penalty(
                module.user_gmf(users), module.user_mlp(users), module.item_gmf(pos), module.item_mlp(pos),
                module.item_gmf(neg), module.item_mlp(neg),
            )
        return loss

    def export(self, module: _Net) -> dict[str, np.ndarray]:
        """One fitted array per weight (`user_gmf_`, `mlp_weight_0_`...); a refit with another tower
        drops the old fit's layers (`_replace_fitted`)."""
        arrays = module.arrays()
        arrays["user_gmf_"][self._untrained_users] = 0.0
        arrays["user_mlp_"][self._untrained_users] = 0.0
        return arrays

    def _weights(self) -> dict[str, np.ndarray]:
        """The arrays of this config's tower: while a refit validates, the model still holds an
        earlier (perhaps deeper) fit's layers beside the ones this fit exported."""
        layers = [f"mlp_{kind}_{k}_" for k in range(len(self.config.mlp_layers) - 1) for kind in ("weight", "bias")]
        names = ["user_gmf_", "item_gmf_", "user_mlp_", "item_mlp_", "predict_weight_", "predict_bias_", *layers]
        check_fitted(self, *names)
        return {name: getattr(self, name) for name in names}

    def score(self, users: np.ndarray, history: Interactions, items: np.ndarray | None = None) -> np.ndarray:
        return _scores(self._weights(), users, items)
