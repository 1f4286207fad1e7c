"""`CTRModel`: the base of the pointwise CTR models (FM, DeepFM, AutoInt), on `TorchRecommender`.

A CTR model is fitted on labelled rows (`recstack.data.ctr.CTRData`: user, item, label and the
features that encode them), trained with binary cross-entropy on the label by the shared `Trainer`,
and stopped early on the validation rows' AUC (or LogLoss). It keeps the feature blocks of its
training data as fitted arrays, so that after `fit` it answers both

- `predict(data) -> probabilities (N,)` for labelled or unlabelled rows, and
- `score(users, history, items=None) -> logits (B, n_items or C)`, the structural scorer the
  full-ranking evaluator and a retrieve-then-rank chain read (features of a (user, item) pair
  depend on the pair only; `history` is not used).

A model file supplies `build_net(n_ids, n_fields, width) -> torch.nn.Module` whose forward maps
`(index (B, F, L), weight (B, F, L))` to logits (B,). A behaviour model (`reads_sequences = True`,
e.g. DiffuMIN) also gets the rows' sequence fields, one `(B, max_len)` id block each after `weight`
(ids of the item_id field, 0 = padding, the latest last); `score` gives a (user, candidate) pair the
user's latest training items. The other models refuse a sequence field with one error naming it:
pooling a 50-to-1,000-long field into every field-interaction model would multiply their memory by
the sequence length, and a model entry's `features` can leave the field out.

`FieldEmbedding` is the shared input layer: each field's vector is `sum_l weight * E[index]` (a
categorical value, a numeric value's scaled embedding, or the mean of a multi-valued field's
embeddings) and its first-order weight likewise.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveInt, field_validator

from recstack.data.ctr import CTRData, CTRFeatures, FeatureError
from recstack.evaluate.ctr import auc, log_loss
from recstack.models.neural import TorchRecommender, TrainingFields
from recstack.models.protocol import ModelConfig, ScoresEveryUser, check_fitted
from recstack.train.options import FitOptions
from recstack.train.trainer import Trainer, TrainerConfig

CTR_VALID_METRICS = ("AUC", "LogLoss")


def _ctr_metric(value: str) -> str:
    canonical = {m.lower(): m for m in CTR_VALID_METRICS}.get(str(value).strip().lower())
    if canonical is None:
        raise ValueError(f"valid_metric {value!r} is not a CTR metric; use 'AUC' or 'LogLoss'")
    return canonical


class CTRFields(TrainingFields):
    """`TrainingFields` with CTR defaults: validation AUC (or LogLoss), short patience, big batches."""

    epochs: PositiveInt = 30
    batch_size: PositiveInt = 2048
    early_stopping_patience: PositiveInt | None = 2  # as FuxiCTR's BARS settings
    valid_metric: str = "AUC"
    embedding_size: PositiveInt = 16
    reg: NonNegativeFloat = 0.0  # L2 on the embeddings of each batch's ids, per row

    @field_validator("valid_metric")
    @classmethod
    def _one_metric_with_cutoff(cls, value: str) -> str:  # replaces the ranking check of TrainingFields
        return _ctr_metric(value)


class _CTRTrainerConfig(TrainerConfig):
    @field_validator("valid_metric")
    @classmethod
    def _one_metric_with_cutoff(cls, value: str) -> str:
        return _ctr_metric(value)


class _RowsTrainer(Trainer):
    """The shared loop, validated on labelled rows: AUC, or -LogLoss (the loop maximises)."""

    def __init__(self, config: TrainerConfig, options: FitOptions | None, valid: CTRData, predict) -> None:
        super().__init__(config, options)
        self._valid, self._predict = valid, predict

    def validate(self, scorer, train, valid, module) -> float:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                p = self._predict(module, self._valid)
        finally:
            module.train(was_training)
        if self.config.valid_metric == "AUC":
            return auc(self._valid.label, p)
        return -log_loss(self._valid.label, p)


class FieldEmbedding(torch.nn.Module):
    """Ids (B, F, L) with weights -> field vectors (B, F, k) and first-order terms (B,)."""

    def __init__(self, n_ids: int, size: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(n_ids, size, padding_idx=0)
        self.linear = torch.nn.Embedding(n_ids, 1, padding_idx=0)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        # N(0, 0.01); FuxiCTR draws N(0, 1e-4), which tested no better for DeepFM on ml-100k (BENCHMARKS)
        torch.nn.init.normal_(self.embedding.weight, std=1e-2)
        torch.nn.init.zeros_(self.linear.weight)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (self.embedding(index) * weight.unsqueeze(-1)).sum(2)

    def first_order(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (self.linear(index).squeeze(-1) * weight).sum((1, 2)) + self.bias


DropoutPosition = Literal["after_activation", "before_linear"]


def mlp(sizes: list[int], dropout: float, position: DropoutPosition = "after_activation") -> torch.nn.Sequential:
    """sizes[0] -> ... -> sizes[-1] with ReLU, then a linear to 1. Dropout goes after each hidden layer's
    ReLU (`after_activation`: the papers' code, FuxiCTR, DeepCTR) or before each hidden linear layer
    (`before_linear`: RecBole's MLPLayers), which also drops the field embeddings entering the network
    and leaves the last hidden layer's output whole; the second regularises the embeddings more."""
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        if dropout > 0 and position == "before_linear":
            layers.append(torch.nn.Dropout(dropout))
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        if dropout > 0 and position == "after_activation":
            layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(sizes[-1], 1))
    return torch.nn.Sequential(*layers)


class CTRModel(ScoresEveryUser, TorchRecommender):
    """Fit on labelled rows with BCE; `predict` rows, `score` (user, item) pairs."""

    Config: Any

    predict_batch_size = 65536
    reads_sequences = False  # True: forward takes the sequence fields' id blocks after `weight`

    def check_sequences(self, features: CTRFeatures) -> None:
        """Refuse sequence fields a model cannot read (a behaviour model checks how many it reads)."""
        if features.sequences and not self.reads_sequences:
            name = features.sequences[0].name
            raise FeatureError(f"feature {name!r} is a sequence field, which {type(self).__name__} does not read; "
                               f"leave it out of this model's features (a model entry's features: [...]) or use a "
                               "behaviour model (diffumin)")

    def _inputs(self, data: CTRData, rows) -> tuple[np.ndarray, ...]:
        """The network's inputs for `rows` of `data`: (index, weight) plus, for a behaviour model, its
        sequence blocks."""
        index, weight = data.encode(rows)
        return (index, weight, *data.sequences(rows)) if self.reads_sequences else (index, weight)

    def build_net(self, n_ids: int, n_fields: int, width: int) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define build_net(n_ids, n_fields, width)")

    # ---- fit --------------------------------------------------------------------------------------

    def fit(self, train: CTRData, valid: CTRData | None = None, *, options: FitOptions | None = None) -> Self:
        if not isinstance(train, CTRData):
            raise TypeError(f"{type(self).__name__} is a CTR model: fit it on recstack.data.ctr.CTRData rows "
                            "(make_ctr_split), not on interactions")
        rng = self.start_fit(train)  # refuses empty rows, seeds everything
        features = train.features
        self.check_sequences(features)
        width = features.user_index.shape[2]
        self._layout = self.sequence_layout(features) if self.reads_sequences else {}
        module = self.build_net(features.n_ids, features.n_fields, width)
        order_rng = rng
        size = self.config.batch_size

        def batches():
            order = order_rng.permutation(len(train))
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                yield (*self._inputs(train, rows), train.label[rows])

        config = _CTRTrainerConfig.from_fields(self.config, self.config.seed, **self.trainer_settings())
        validating = valid is not None and len(valid) > 0
        trainer = _RowsTrainer(config, options, valid if validating else None, self._predict_rows)
        history = trainer.fit(module, self.batch_loss, batches, scorer=lambda: None,
                              train=train if validating else None, valid=valid if validating else None,
                              after_step=self.after_step)  # None unless a model hooks in (DNIS-FM's alpha step)
        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        with torch.no_grad():
            fitted = {"weights_": {k: v.detach().cpu().float().numpy().copy()
                                   for k, v in module.state_dict().items()}}
        self._replace_fitted({
            **fitted, "history_": history, "best_epoch_": best_epoch, "n_ids_": int(features.n_ids),
            "user_index_": features.user_index, "user_weight_": features.user_weight,
            "item_index_": features.item_index, "item_weight_": features.item_weight,
            "fields_": list(features.fields), **self._sequence_state(features)})
        self.__dict__.pop("_layout", None)
        self._cached_net = None
        return self

    def sequence_layout(self, features: CTRFeatures) -> dict[str, Any]:
        """What a behaviour model's network is built from: the item_id field's position on the F axis
        (`item_field`) and each sequence field's `max_len` (`lengths`)."""
        first = features.sequences[0] if features.sequences else None
        return {"item_field": features.fields.index(first.item_field) if first else -1,
                "lengths": [s.max_len for s in features.sequences]}

    def layout(self) -> dict[str, Any]:
        """`sequence_layout` of the fit under way, else of the fitted model."""
        layout = getattr(self, "_layout", None)
        if layout is not None:
            return layout
        check_fitted(self, "sequence_latest_")
        return {"item_field": int(self.item_field_), "lengths": [int(n) for n in self.sequence_lengths_]}

    def _sequence_state(self, features: CTRFeatures) -> dict[str, Any]:
        """A behaviour model keeps each user's latest training items per sequence field: what a
        (user, candidate) pair of `score` sees, the time after training."""
        if not self.reads_sequences:
            return {}
        users = np.arange(features.user_index.shape[0])
        layout = self.sequence_layout(features)
        return {"item_field_": layout["item_field"], "sequence_lengths_": np.asarray(layout["lengths"], np.int64),
                "sequence_fields_": [s.name for s in features.sequences],
                "sequence_latest_": {s.name: s.gather(users) for s in features.sequences}}

    def batch_loss(self, module: torch.nn.Module, batch) -> torch.Tensor:
        *inputs, label = batch
        index, weight = inputs[0], inputs[1]
        logits = module(*inputs)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label)
        if self.config.reg > 0:
            vectors = module.fields.embedding(index) * (weight > 0).unsqueeze(-1)
            loss = loss + self.config.reg * vectors.pow(2).sum() / len(label)
        return loss

    # ---- inference -------------------------------------------------------------------------------

    def _predict_rows(self, module: torch.nn.Module, data: CTRData) -> np.ndarray:
        device = next(module.parameters()).device
        out = np.empty(len(data), dtype=np.float32)
        for start in range(0, len(data), self.predict_batch_size):
            rows = slice(start, start + self.predict_batch_size)
            inputs = self._inputs(data, rows)
            logits = module(*(torch.from_numpy(x).to(device) for x in inputs))
            out[rows] = torch.sigmoid(logits).float().cpu().numpy()
        return out

    def _net(self) -> torch.nn.Module:
        check_fitted(self, "weights_", "user_index_", "item_index_")
        cached = getattr(self, "_cached_net", None)
        if cached is not None and cached[0] is self.weights_:
            return cached[1]
        self.__dict__.pop("_layout", None)  # a fitted model builds from its fitted layout
        net = self.build_net(int(self.n_ids_), len(self.fields_), self.user_index_.shape[2])
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.weights_.items()})
        net.eval()
        self._cached_net = (self.weights_, net)
        return net

    def predict(self, data: CTRData) -> np.ndarray:
        """Click probabilities of the rows of `data` (float32, (N,))."""
        net = self._net()
        with torch.no_grad():
            return self._predict_rows(net, data)

    def pair_logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Logits of aligned (user, item) pairs, (N,)."""
        net = self._net()
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        out = np.empty(len(users), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(users), self.predict_batch_size):
                u, i = users[start:start + self.predict_batch_size], items[start:start + self.predict_batch_size]
                index = np.concatenate([self.user_index_[u], self.item_index_[i]], axis=1)
                weight = np.concatenate([self.user_weight_[u], self.item_weight_[i]], axis=1)
                sequences = ([self.sequence_latest_[name][u] for name in self.sequence_fields_]
                             if self.reads_sequences else [])
                out[start:start + len(u)] = net(*(torch.from_numpy(x) for x in (index, weight, *sequences))).numpy()
        return out

    def score(self, users: np.ndarray, history: Any = None, items: np.ndarray | None = None) -> np.ndarray:
        """Logits of every (user, candidate) pair: (B, n_items) or (B, C)."""
        check_fitted(self, "weights_")
        users = np.asarray(users, dtype=np.int64)
        n_items = self.item_index_.shape[0]
        if items is None:
            grid = np.broadcast_to(np.arange(n_items), (len(users), n_items))
        else:
            items = np.asarray(items, dtype=np.int64)
            grid = np.broadcast_to(items, (len(users), items.shape[-1])) if items.ndim == 1 else items
        flat_users = np.repeat(users, grid.shape[1])
        return self.pair_logits(flat_users, grid.reshape(-1)).reshape(grid.shape)


__all__ = ["CTRFields", "CTRModel", "FieldEmbedding", "ModelConfig", "mlp"]
