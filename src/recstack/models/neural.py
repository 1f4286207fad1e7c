"""`TorchRecommender`: the base of every model trained by gradient steps with the shared `Trainer`.

The base owns the plumbing so that a model file holds its paper's maths only. `fit` checks the
data, seeds Python, numpy and torch from `config.seed`, builds the module, runs the `Trainer`
(validation, early stopping, best-epoch restore, logs) and stores what `export` returns as the
fitted state, with `history_` and `best_epoch_`. A model supplies:

- `build_module(train, rng) -> torch.nn.Module`: the network, and whatever its batches need kept
  on private attributes (samplers, sequences); private attributes set during `fit` are
  training-only and are dropped when it ends;
- `batches() -> iterable`: one epoch of batches (tuples of numpy arrays or tensors);
- `batch_loss(module, batch) -> scalar tensor`;
- `export(module) -> dict`: the fitted attributes (names ending in `_`) that `score` reads; the
  default is `weights_`, the module's state dict as named float arrays (persisted under those
  keys in `state.npz`, never pickled, never by parameter order);
- optionally `trainer_settings()` (optimiser, betas, weight decay...) and `after_step`.

While training, validation scores through the model's own `score` on a copy of the model that
holds the module's current weights (exported once per validation): one scoring path, no
separate live scorer. A model that trains in stages (a pre-trained backbone, a search phase)
overrides `fit` and calls `start_fit` and `train_module` for each stage.

>>> class MyModel(TorchRecommender):
...     Config = MyConfig
...     def build_module(self, train, rng): ...
...     def batches(self): ...
...     def batch_loss(self, module, batch): ...
...     def export(self, module): return {"user_factors_": ..., "item_factors_": ...}
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Iterable, Self

import numpy as np
import torch

from recstack.data.interactions import Interactions
from recstack.models.protocol import ModelConfig, SaveLoad, ScoresTrainedUsers, check_trainable, is_fitted_name
from recstack.train.fields import TrainingFields
from recstack.train.options import DEFAULT_FIT_OPTIONS, FitOptions
from recstack.train.trainer import Trainer, TrainerConfig, data_parallel_group, seed_everything

__all__ = ["TorchRecommender", "TrainingFields", "module_arrays"]


def module_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict as float32 (or integer) numpy copies, keyed by state-dict name."""
    out = {}
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu")
        out[key] = (value.float() if value.is_floating_point() else value).numpy().copy()
    return out


class TorchRecommender(SaveLoad):
    """Fit = check, seed, `build_module`, `Trainer` over `batches`/`batch_loss`, `export`."""

    Config: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or self.Config()

    # ---- hooks a model implements -------------------------------------------------------------

    def build_module(self, train: Interactions, rng: np.random.Generator) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define build_module(train, rng)")

    def batches(self) -> Iterable[Any]:
        raise NotImplementedError(f"{type(self).__name__} must define batches()")

    def batch_loss(self, module: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define batch_loss(module, batch)")

    def export(self, module: torch.nn.Module) -> dict[str, Any]:
        """The fitted attributes `score` reads, from the module's current weights."""
        return {"weights_": module_arrays(module)}

    def trainer_settings(self) -> dict[str, Any]:
        """Loop settings the model fixes in code, beyond its `TrainingFields` (e.g. optimizer="adamw")."""
        return {}

    after_step = None  # optional `after_step(module, optimizer, step)`, run after each optimiser step
    # optional `step_size(epoch)`: a model that updates its own weights (optimizer="none") and decays its
    # step tells the log which step each epoch used
    step_size = None

    # ---- the fit every such model shares ------------------------------------------------------

    def fit(self, train: Interactions, valid: Interactions | None = None, *,
            options: FitOptions | None = None) -> Self:
        if getattr(self.config, "workers", 1) > 1 and data_parallel_group() is None:
            # `workers: N`: the same fit on N Ray Train workers, gradients averaged (recstack.cluster.ddp)
            from recstack.cluster.ddp import data_parallel_fit

            check_trainable(type(self).__name__, train)
            self._replace_fitted(data_parallel_fit(self, train, valid, options))
            return self
        rng = self.start_fit(train)
        private = set(vars(self))
        try:
            module = self.build_module(train, rng)
            fitted = self.train_module(module, train, valid, options=options)
        finally:
            for name in [n for n in vars(self) if n.startswith("_") and n not in private]:
                delattr(self, name)  # samplers and sequences of this fit: training-only state
        self._replace_fitted(fitted)
        return self

    def start_fit(self, train: Interactions, *, name: str | None = None) -> np.random.Generator:
        """Refuse empty data, seed Python, numpy and torch (before any module exists, so its
        initialisation repeats per seed) and return the numpy generator the samplers draw from."""
        check_trainable(name or type(self).__name__, train)
        seed_everything(self.config.seed)
        return np.random.default_rng(self.config.seed)

    def train_module(self, module: torch.nn.Module, train: Interactions, valid: Interactions | None, *,
                     options: FitOptions | None = None, batches: Any = None, batch_loss: Any = None,
                     export: Any = None, fields: TrainingFields | None = None, after_step: Any = None,
                     **settings: Any) -> dict[str, Any]:
        """Train `module` with the shared loop; return `export(module)` (best epoch restored) plus
        `history_` and `best_epoch_`. The hooks default to the model's own methods; a stage passes
        its own (and its own `fields`, e.g. a backbone's config, and `after_step`)."""
        fields = fields if fields is not None else self.config
        export = export or self.export
        config = TrainerConfig.from_fields(fields, self.config.seed, **{**self.trainer_settings(), **settings})
        trainer = Trainer(config, options or DEFAULT_FIT_OPTIONS)

        # which users got an embedding, for `ScoresTrainedUsers.can_score` (validation views included)
        coverage = {"trained_users_": train.user_counts() > 0} if isinstance(self, ScoresTrainedUsers) else {}

        def scorer():  # the model itself, holding the module's current weights and no earlier fit's state
            view = copy.copy(self)
            view.__dict__ = {name: value for name, value in vars(self).items() if not is_fitted_name(name)}
            view.__dict__.update(export(module), **coverage)
            return view

        history = trainer.fit(module, batch_loss or self.batch_loss, batches or self.batches, scorer,
                              train=train, valid=valid,
                              after_step=after_step or self.after_step,
                              **({"step_size": self.step_size} if self.step_size is not None else {}))
        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history)
        with torch.no_grad():  # the trainer leaves the module in eval mode with the best weights
            fitted = export(module)
        return {**fitted, **coverage, "history_": history, "best_epoch_": best_epoch}
