"""`Trainer`: the shared torch training loop a neural model's `fit` calls.

The model supplies four things and keeps all model code to itself:

- `module`: a `torch.nn.Module` (the trainer moves it to the device and owns the optimiser);
- `batch_loss(module, batch) -> scalar tensor`: the loss of one batch;
- `batches() -> iterable of batches`: called once per epoch; a batch is a tuple of numpy arrays
  or tensors, which the trainer moves to the device before `batch_loss` sees it;
- `scorer`: anything with `score(users, history, items=None) -> numpy`, reading the module's current
  weights, used for validation with `recstack.evaluate.evaluate(scorer, history=train, test=valid)`.

Early stopping watches one validation metric (higher is better) and restores the weights of the
best evaluated epoch at the end; without validation data every epoch is trained and the last
weights are kept. Patience counts evaluations without improvement (epochs when `eval_every=1`).

>>> seed_everything(config.seed)                 # before building the module: fixes its init
>>> trainer = Trainer(TrainerConfig(epochs=50, learning_rate=1e-3, seed=config.seed))
>>> history = trainer.fit(net, loss_fn, make_batches, scorer, train=train, valid=valid)
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, field_validator
from pydantic import NonNegativeFloat

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import Scorer, evaluate, parse_metric_labels

logger = logging.getLogger(__name__)


class TrainingDivergedError(RecstackError):
    """The training loss became NaN or infinite."""


class TrainerConfig(BaseModel):
    """Loop settings; a model's config maps its own fields onto these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: PositiveInt = 10
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 1024  # informational for the loop; the model's batch factory uses it
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: NonNegativeFloat = 0.0
    early_stopping_patience: PositiveInt | None = 10
    valid_metric: str = "NDCG@10"
    eval_every: PositiveInt = 1
    seed: int = 0
    device: str = "auto"
    n_threads: PositiveInt | None = None  # None leaves torch's own default
    verbose: bool = True

    @field_validator("valid_metric")
    @classmethod
    def _one_metric_with_cutoff(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError(f"valid_metric needs a cut-off such as 'NDCG@10', got {value!r}")
        try:
            (name, k), = parse_metric_labels([value], [])
        except RecstackError as exc:  # pydantic reports ValueErrors with the field name
            raise ValueError(str(exc)) from None
        return f"{name}@{k}"


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; an explicit device that is missing is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise RecstackError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:index]'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RecstackError(f"device {device!r} was asked for but CUDA is not available; use device='auto' or 'cpu'")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global state and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """numpy arrays and tensors (possibly nested in tuples, lists, dicts) -> tensors on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(x, device) for x in batch)
    if isinstance(batch, dict):
        return {key: to_device(x, device) for key, x in batch.items()}
    return batch


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


class Trainer:
    """Epoch loop with Adam, early stopping on a validation metric, best-state restore and a history log.

    After `fit`: `history` (one JSON-able dict per epoch: `epoch`, `loss`, the metric label with
    its value or None when that epoch was not evaluated, `seconds`), `best_epoch`, `best_value`
    and `stopped_early`.
    """

    def __init__(self, config: TrainerConfig | None = None) -> None:
        self.config = config or TrainerConfig()
        self.device = resolve_device(self.config.device)
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.stopped_early = False

    def _optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in module.parameters() if p.requires_grad]
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.learning_rate, weight_decay=c.weight_decay)

    def validate(self, scorer: Scorer, train: Interactions, valid: Interactions, module: torch.nn.Module) -> float:
        """The validation metric of `scorer` ranking over the full catalogue with `train` masked."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                result = evaluate(scorer, history=train, test=valid, metrics=[self.config.valid_metric])
        finally:
            module.train(was_training)
        return float(result.metrics[self.config.valid_metric])

    def fit(
        self,
        module: torch.nn.Module,
        batch_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
        batches: Callable[[], Iterable[Any]],
        scorer: Scorer | None = None,
        *,
        train: Interactions | None = None,
        valid: Interactions | None = None,
    ) -> list[dict[str, Any]]:
        """Train `module` in place; return the per-epoch history."""
        c = self.config
        if c.n_threads is not None:
            torch.set_num_threads(c.n_threads)
        torch.manual_seed(c.seed)  # dropout and any torch-side sampling repeat per seed
        validating = valid is not None and len(valid) > 0
        if validating and (scorer is None or train is None):
            raise ValueError("validation needs both a scorer and the training interactions (the history to mask)")
        label = c.valid_metric
        module.to(self.device)
        module.train()
        optimizer = self._optimizer(module)
        self.history, self.best_epoch, self.best_value, self.stopped_early = [], None, None, False
        best_state: dict[str, torch.Tensor] | None = None
        evaluations_since_best = 0

        interactive = c.verbose and sys.stderr.isatty()
        with _progress(interactive) as progress:
            task = progress.add_task("training", total=c.epochs, status="")
            for epoch in range(1, c.epochs + 1):
                started = time.perf_counter()
                total, n_batches = torch.zeros((), device=self.device), 0
                for batch in batches():
                    loss = batch_loss(module, to_device(batch, self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                    n_batches += 1
                # one device sync per epoch, not per batch
                mean_loss = float(total) / max(n_batches, 1)
                if not math.isfinite(mean_loss):
                    raise TrainingDivergedError(
                        f"training loss became {mean_loss} at epoch {epoch}; lower learning_rate "
                        f"(now {c.learning_rate}) or raise the regularisation"
                    )
                value = None
                if validating and (epoch % c.eval_every == 0 or epoch == c.epochs):
                    value = self.validate(scorer, train, valid, module)
                    if self.best_value is None or value > self.best_value:
                        self.best_value, self.best_epoch = value, epoch
                        best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                        evaluations_since_best = 0
                    else:
                        evaluations_since_best += 1
                entry = {"epoch": epoch, "loss": mean_loss, label: value,
                         "seconds": round(time.perf_counter() - started, 4)}
                self.history.append(entry)
                status = f"loss {mean_loss:.4f}" + (f"  {label} {value:.4f}" if value is not None else "")
                progress.update(task, advance=1, status=status)
                logger.debug("epoch %d: %s", epoch, status)
                if c.early_stopping_patience is not None and evaluations_since_best >= c.early_stopping_patience:
                    self.stopped_early = True
                    break

        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        if validating and c.verbose:
            logger.info("best %s %.4f at epoch %s of %d", label, self.best_value, self.best_epoch, len(self.history))
        return self.history
