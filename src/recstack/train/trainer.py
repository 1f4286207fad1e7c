"""`Trainer`: the shared torch training loop a neural model's `fit` calls.

The model supplies four things and keeps all model code to itself:

- `module`: a `torch.nn.Module` (the trainer moves it to the device and owns the optimiser);
- `batch_loss(module, batch) -> scalar tensor`: the loss of one batch (with `optimizer="none"`, a
  function that updates the module's weights itself, under `torch.no_grad`, and returns the loss:
  closed-form SGD such as BPR-MF's needs no autograd and no optimiser state);
- `batches() -> iterable of batches`: called once per epoch; a batch is a tuple of numpy arrays
  or tensors, which the trainer moves to the device before `batch_loss` sees it;
- `scorer`: anything with `score(users, history, items=None) -> numpy`, reading the module's current
  weights, used for validation with `recstack.evaluate.evaluate(scorer, history=train, test=valid)`;
  or a zero-argument function returning one, called once per validation (`TorchRecommender` passes
  the model itself with the module's current weights exported into it).

Early stopping watches one validation metric (higher is better) and restores the weights of the
best evaluated epoch at the end; without validation data every epoch is trained and the last
weights are kept. Patience counts evaluations without improvement (epochs when `eval_every=1`).

Also: a learning-rate schedule stepped once per epoch (constant, cosine, step, exponential),
gradient-norm clipping, optional bf16 autocast, a JSON-lines log with one line per epoch
(`log_path`, else `FitOptions.log_path`: `recstack run` passes `<run>/logs/<label>.jsonl`), and a checkpoint after every epoch (`checkpoint_dir`) from which
`resume=True` continues: module, optimiser, schedule, history, early-stopping state and torch's RNG are
restored. The model's own numpy samplers are not in the checkpoint, so a resumed run follows a
different (equally valid) sample path than an uninterrupted one.

Per-call options (validation history masking and cold-user policy, epoch log, progress, device)
arrive as one explicit `FitOptions`, never as ambient state.

Progress goes to stderr, named after `FitOptions.name` (the run's model label): a rich bar on a
terminal; elsewhere (CI, nohup, a pipe) a plain line per epoch at most every
`PLAIN_PROGRESS_SECONDS` (nothing for a shorter fit), ending with the last epoch. `verbose=False`
or `FitOptions(progress=False)` (`recstack run --quiet`) silences both.

>>> seed_everything(config.seed)                 # before building the module: fixes its init
>>> trainer = Trainer(TrainerConfig(epochs=50, learning_rate=1e-3, seed=config.seed), options)
>>> history = trainer.fit(net, loss_fn, make_batches, scorer, train=train, valid=valid)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from pydantic import ConfigDict, PositiveFloat, PositiveInt, field_validator, model_validator
from pydantic import NonNegativeFloat

from recstack.data.interactions import Interactions
from recstack.errors import RecstackError
from recstack.evaluate.evaluator import Scorer, evaluate
from recstack.train.fields import TRAINING_FIELDS, TrainingFields, check_valid_metric  # noqa: F401  (re-exported)
from recstack.train.options import DEFAULT_FIT_OPTIONS, FitOptions

logger = logging.getLogger(__name__)


class TrainingDivergedError(RecstackError):
    """The training loss became NaN or infinite."""


class TrainerConfig(TrainingFields):
    """The shared `TrainingFields` plus the loop settings a model chooses in code (optimiser, schedule...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: PositiveInt = 10
    # "none": `batch_loss` applies its own closed-form update under no_grad and returns the loss
    # (BPR-MF's per-triple SGD); the trainer only runs the loop, validation and early stopping
    optimizer: Literal["adam", "adamw", "sgd", "none"] = "adam"
    weight_decay: NonNegativeFloat = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)  # SASRec's paper trains with beta2 = 0.98
    seed: int = 0
    lr_schedule: Literal["constant", "cosine", "step", "exponential"] = "constant"
    lr_step_size: PositiveInt = 30  # epochs between decays for "step"
    lr_gamma: PositiveFloat = 0.5  # decay factor for "step" and (per epoch) "exponential"
    max_grad_norm: PositiveFloat | None = None  # clip the global gradient norm when set
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 runs the batch loss under autocast
    checkpoint_dir: str | None = None  # write last.pt here after every epoch
    resume: bool = False  # continue from checkpoint_dir/last.pt when it exists
    log_path: str | None = None  # append one JSON line per epoch

    @classmethod
    def from_fields(cls, fields: TrainingFields, seed: int, **settings: Any) -> "TrainerConfig":
        """The loop a model's config describes: its `TrainingFields` and `seed`, plus `settings` the
        model fixes in code (e.g. optimizer="none", adam_betas=(0.9, 0.98))."""
        if not isinstance(fields, TrainingFields):
            raise TypeError(f"{type(fields).__name__} does not carry TrainingFields; derive the config from it")
        shared = {name: getattr(fields, name) for name in TRAINING_FIELDS}
        return cls(**{**shared, "seed": seed, **settings})

    @model_validator(mode="after")
    def _no_gradient_settings_without_optimizer(self) -> "TrainerConfig":
        if self.optimizer == "none":
            used = [name for name, off in (("lr_schedule", "constant"), ("max_grad_norm", None), ("precision", "fp32"))
                    if getattr(self, name) != off]
            if used:
                raise ValueError(f"optimizer='none' (the model updates its own weights) cannot honour {used}; "
                                 "leave them at their defaults or pick a gradient optimiser")
        return self

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_unit_interval(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"adam_betas must both lie in [0, 1), got {value}")
        return value


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
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise RecstackError(f"device {device!r} was asked for but this machine shows {count} CUDA device"
                            f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); use one of those or 'auto'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RecstackError(f"device {device!r} was asked for but MPS is not available; use device='auto' or 'cpu'")
    return resolved


def data_parallel_group() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several data-parallel workers (torch.distributed
    initialised by `recstack.cluster.ddp`), else None."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() < 2:
        return None
    return distributed.get_rank(), distributed.get_world_size()


class _DataParallel:
    """What the loop does differently on one of `world` data-parallel workers.

    Every worker builds the same module from the same seed and draws the same batches (the
    samplers are seeded alike); worker r trains on batches r, r + world, ... of each epoch, one
    round of `world` batches per optimiser step, the last round possibly short (a worker without a
    batch in it contributes nothing). After each backward pass the gradients are combined in one
    all-reduce, each worker's weighted by its batch's examples: the gradient of the mean loss over
    the round's examples, exactly what one process computes on those batches merged (every
    recstack batch loss is a mean over its batch). This is the arithmetic of torch's
    DistributedDataParallel, whose wrapper only hooks `forward`, while a recstack model's loss is
    `batch_loss(module, batch)`. The weights stay identical on every worker; rank 0 validates and
    sends the figure to the others, so all stop together and restore the same best epoch.
    """

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def own_batches(self, batches: Iterable[Any]) -> Iterable[Any]:
        """This worker's batch of each round; None in a short last round that has none for it."""
        round_: list[Any] = []
        for batch in batches:
            round_.append(batch)
            if len(round_) == self.world:
                yield round_[self.rank]
                round_ = []
        if round_:
            yield round_[self.rank] if self.rank < len(round_) else None

    def start(self, module: torch.nn.Module) -> None:
        for tensor in module.state_dict().values():  # the same start everywhere, whatever the init did
            torch.distributed.broadcast(tensor, src=0)

    def combine(self, module: torch.nn.Module, examples: int, loss: torch.Tensor | None) -> torch.Tensor:
        """Replace every gradient by the example-weighted mean over the workers (one all-reduce, the
        weights and losses riding along); return the round's mean loss, the same on every worker."""
        params = [p for p in module.parameters() if p.requires_grad]
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * examples for p in params]
        tail = torch.tensor([float(examples), 0.0 if loss is None else float(loss.detach()) * examples],
                            dtype=grads[0].dtype if grads else torch.float32, device=grads[0].device if grads else None)
        flat = torch.cat([*grads, tail])
        torch.distributed.all_reduce(flat)
        total = flat[-2]
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = (flat[offset:offset + n] / total).view_as(p).clone()
            offset += n
        return flat[-1] / total

    def shared_value(self, value: float | None) -> float:
        box = torch.tensor([math.nan if value is None else value], dtype=torch.float64)
        torch.distributed.broadcast(box, src=0)
        return float(box.item())


def batch_examples(batch: Any) -> int:
    """The examples in a batch: the leading size of its first array (tuples, lists, dicts nest)."""
    while isinstance(batch, (tuple, list, dict)) and len(batch):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 1


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


# without a terminal (CI, nohup, a pipe) a fit prints a plain line at most this often, and nothing
# when it is shorter: a bar cannot redraw there, and a line per epoch of a 1 s fit is noise
PLAIN_PROGRESS_SECONDS = 10.0


class _PlainProgress:
    """One stderr line per epoch, at most one per `every` seconds; a fit that printed any also
    prints its last epoch, so a log ends with where training stopped."""

    def __init__(self, name: str, total: int, every: float) -> None:
        self.name, self.total, self.every = name, total, every
        self.started = self.last = time.perf_counter()
        self.printed = False

    def epoch(self, epoch: int, status: str, last: bool) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every or (last and self.printed):
            print(f"{self.name}: epoch {epoch}/{self.total}  {status}  ({now - self.started:.0f} s)",
                  file=sys.stderr, flush=True)
            self.last, self.printed = now, True


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

    def __init__(self, config: TrainerConfig | None = None, options: FitOptions | None = None) -> None:
        self.config = config or TrainerConfig()
        self.options = options or DEFAULT_FIT_OPTIONS
        self.device = resolve_device(self.options.device or self.config.device)
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.stopped_early = False

    def _optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer | None:
        c = self.config
        if c.optimizer == "none":
            return None
        params = [p for p in module.parameters() if p.requires_grad]
        # the fused kernel does Adam's whole update in one pass over each tensor instead of about ten
        # element-wise ops: same arithmetic, 1.5-3x faster steps on embedding tables of 1M+ rows
        fused = bool(params) and self.device.type in {"cpu", "cuda"} and all(
            p.is_floating_point() and not p.is_sparse for p in params)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.learning_rate, betas=c.adam_betas, weight_decay=c.weight_decay,
                                    fused=fused or None)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.learning_rate, betas=c.adam_betas, weight_decay=c.weight_decay,
                                     fused=fused or None)
        return torch.optim.SGD(params, lr=c.learning_rate, weight_decay=c.weight_decay)

    def _scheduler(self, optimizer: torch.optim.Optimizer | None) -> torch.optim.lr_scheduler.LRScheduler | None:
        c = self.config
        if optimizer is None:
            return None
        if c.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs)
        if c.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.lr_step_size, gamma=c.lr_gamma)
        if c.lr_schedule == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=c.lr_gamma)
        return None

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.config.checkpoint_dir is None else Path(self.config.checkpoint_dir) / "last.pt"

    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint

    @property
    def log_path(self) -> Path | None:
        """The config's own log file, else the one the fit options name."""
        return Path(self.config.log_path) if self.config.log_path is not None else self.options.log_path

    def _log_epoch(self, entry: dict[str, Any]) -> None:
        path = self.log_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")

    def validate(self, scorer: Scorer | Callable[[], Scorer], train: Interactions, valid: Interactions,
                 module: torch.nn.Module) -> float:
        """The validation metric of `scorer` ranking over the full catalogue with `train` masked
        (over `valid.item_pool` only when it is set, as on a cold-item split; `train` stays
        rankable with `FitOptions(mask_history=False)`), users without history treated by
        `FitOptions.cold_users` as the final evaluation treats them. A scorer factory is called
        here, with the module in eval mode and gradients off."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                current = scorer if isinstance(scorer, Scorer) else scorer()
                result = evaluate(current, history=train, test=valid, metrics=[self.config.valid_metric],
                                  mask_history=self.options.mask_history, cold_users=self.options.cold_users)
        finally:
            module.train(was_training)
        return float(result.metrics[self.config.valid_metric])

    def fit(
        self,
        module: torch.nn.Module,
        batch_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
        batches: Callable[[], Iterable[Any]],
        scorer: Scorer | Callable[[], Scorer] | None = None,
        *,
        train: Interactions | None = None,
        valid: Interactions | None = None,
        after_step: Callable[[torch.nn.Module, torch.optim.Optimizer, int], None] | None = None,
        step_size: Callable[[int], float] | None = None,
    ) -> list[dict[str, Any]]:
        """Train `module` in place; return the per-epoch history.

        `step_size(epoch)`: with optimizer="none", the step the model's own update used in that epoch
        (from 1), for the log; without it the log shows `learning_rate`.

        `after_step(module, optimizer, step)` runs after every optimiser step, with this step's
        gradients still on the parameters (step counts from 1 across epochs); models that change
        the weights between steps (pruning and regrowing a sparse mask, a second optimiser over
        architecture weights) hook in here instead of writing their own loop.
        """
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
        group = data_parallel_group()
        if c.workers > 1 and group is None:  # only TorchRecommender.fit hands a fit to Ray Train
            raise RecstackError(f"workers: {c.workers} asks for data-parallel training, which recstack runs for models "
                                "trained by TorchRecommender's own fit; this model trains its own way (in stages, or "
                                "with its own loop), so train it with workers: 1")
        parallel = _DataParallel(*group) if group is not None else None
        if parallel is not None:
            if c.optimizer == "none":
                raise RecstackError("data-parallel training averages gradients, and this model updates its weights "
                                    "itself (optimizer 'none'); train it with workers: 1, or pick its gradient "
                                    "solver (e.g. BPR's solver: adam)")
            parallel.start(module)
        optimizer = self._optimizer(module)
        scheduler = self._scheduler(optimizer)
        self.history, self.best_epoch, self.best_value, self.stopped_early = [], None, None, False
        best_state: dict[str, torch.Tensor] | None = None
        evaluations_since_best = 0
        first_epoch, step = 1, 0
        if c.resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            saved = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
            module.load_state_dict(saved["module"])
            if optimizer is not None:
                optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["torch_rng"])
            self.history = json.loads(saved["history"])
            best_state = saved.get("best_state")
            self.best_value, self.best_epoch = saved["best_value"], saved["best_epoch"]
            evaluations_since_best = saved["evaluations_since_best"]
            first_epoch = int(saved["epoch"]) + 1
            step = int(saved.get("step", 0))
            if saved["stopped_early"]:
                first_epoch = c.epochs + 1  # that run had already finished

        log = self.log_path
        name = self.options.label or (log.stem if log is not None else "training")  # `recstack run`: the label
        shown = c.verbose and self.options.progress
        interactive = shown and sys.stderr.isatty()
        plain = _PlainProgress(name, c.epochs, PLAIN_PROGRESS_SECONDS) if shown and not interactive else None
        with _progress(interactive) as progress:
            task = progress.add_task(name, total=c.epochs, completed=first_epoch - 1, status="")
            for epoch in range(first_epoch, c.epochs + 1):
                started = time.perf_counter()
                total, n_batches = torch.zeros((), device=self.device), 0
                for batch in (batches() if parallel is None else parallel.own_batches(batches())):
                    if optimizer is None:  # the batch function updates the weights itself
                        with torch.no_grad():
                            loss = batch_loss(module, to_device(batch, self.device))
                    else:
                        optimizer.zero_grad(set_to_none=True)
                        if batch is not None:  # None: a data-parallel worker with no batch in the last round
                            with self._autocast():
                                loss = batch_loss(module, to_device(batch, self.device))
                            loss.backward()
                        if parallel is not None:
                            loss = parallel.combine(module, 0 if batch is None else batch_examples(batch),
                                                    None if batch is None else loss)
                        if c.max_grad_norm is not None:
                            torch.nn.utils.clip_grad_norm_(module.parameters(), c.max_grad_norm)
                        optimizer.step()
                    step += 1
                    if after_step is not None:
                        after_step(module, optimizer, step)
                    total += loss.detach().float()
                    n_batches += 1
                if scheduler is not None:
                    scheduler.step()
                # one device sync per epoch, not per batch
                mean_loss = float(total) / max(n_batches, 1)
                if not math.isfinite(mean_loss):
                    raise TrainingDivergedError(
                        f"training loss became {mean_loss} at epoch {epoch}; lower learning_rate "
                        f"(now {c.learning_rate}) or raise the regularisation"
                    )
                value = None
                if validating and (epoch % c.eval_every == 0 or epoch == c.epochs):
                    if parallel is None:
                        value = self.validate(scorer, train, valid, module)
                    else:  # rank 0 validates; every worker decides on its figure
                        value = parallel.shared_value(
                            self.validate(scorer, train, valid, module) if parallel.rank == 0 else None)
                    if self.best_value is None or value > self.best_value:
                        self.best_value, self.best_epoch = value, epoch
                        best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                        evaluations_since_best = 0
                    else:
                        evaluations_since_best += 1
                entry = {"epoch": epoch, "loss": mean_loss, label: value,
                         "learning_rate": (c.learning_rate if step_size is None else step_size(epoch)) if optimizer is None
                         else optimizer.param_groups[0]["lr"],
                         "seconds": round(time.perf_counter() - started, 4)}
                self.history.append(entry)
                self._log_epoch(entry)
                stop = c.early_stopping_patience is not None and evaluations_since_best >= c.early_stopping_patience
                if self.checkpoint_path is not None:
                    self._save_checkpoint({
                        "module": module.state_dict(),
                        "optimizer": None if optimizer is None else optimizer.state_dict(),
                        "scheduler": None if scheduler is None else scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(), "history": json.dumps(self.history),
                        "best_state": best_state, "best_value": self.best_value, "best_epoch": self.best_epoch,
                        "evaluations_since_best": evaluations_since_best, "epoch": epoch, "stopped_early": stop,
                        "step": step,
                    })
                status = f"loss {mean_loss:.4f}" + (f"  {label} {value:.4f}" if value is not None else "")
                progress.update(task, advance=1, status=status)
                logger.debug("epoch %d: %s", epoch, status)
                if plain is not None:
                    last = stop or epoch == c.epochs
                    best = (f"  ({'stopped early; ' if stop else ''}best {label} {self.best_value:.4f} at epoch "
                            f"{self.best_epoch})" if last and self.best_value is not None else "")
                    plain.epoch(epoch, status + best, last)
                if stop:
                    self.stopped_early = True
                    break

        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        if validating and c.verbose:
            logger.info("best %s %.4f at epoch %s of %d", label, self.best_value, self.best_epoch, len(self.history))
        return self.history

