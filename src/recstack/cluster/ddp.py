"""Data-parallel training through Ray Train: a model config with `workers: N` (N > 1) fits on N
Ray Train workers (torch.distributed: gloo on CPU, NCCL when every worker has a GPU).

`TorchRecommender.fit` hands the fit here. Each worker builds the same model from the same config
and seed and runs the model's own `fit`; the shared `Trainer` sees torch.distributed initialised
and trains data-parallel (`train.trainer._DataParallel`: each worker on its share of every
epoch's batches, gradients averaged in one all-reduce per step, rank 0 validating for all).
Rank 0 saves the fitted model in recstack's own format into a Ray Train checkpoint; the driver
loads it back into the model it was asked to fit. So the same config trains on one process or
N, and what comes back is an ordinary fitted model (its training curve included).

`batch_size` stays the batch of one optimiser step: each worker draws batches of
`batch_size // N` and a step averages one from every worker, so an epoch has as many steps of
the same size as in one process (what changes is which examples share a step). The learning
rate therefore needs no rescaling.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recstack.cluster import RaySettings, connect
from recstack.errors import RecstackError


def _worker_loop(setup: dict[str, Any]) -> None:
    """One Ray Train worker: fit the model data-parallel, rank 0 reports it as a checkpoint."""
    import ray
    import ray.train

    model, train, valid, options = ray.get(setup["inputs"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if rank != 0 and options is not None:  # one training log and one progress line: rank 0's
        options = options.for_worker()
    model.fit(train, valid, options=options)
    if rank != 0:
        ray.train.report({"rank": rank})
        return
    with tempfile.TemporaryDirectory(prefix="recstack-ddp-") as folder:
        model.save(Path(folder) / "model")
        ray.train.report({"rank": rank, "best_epoch": int(getattr(model, "best_epoch_", 0))},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def data_parallel_fit(model: Any, train: Any, valid: Any, options: Any) -> dict[str, Any]:
    """Fit `model` (its config's `workers` > 1) on Ray Train workers; return its fitted attributes."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recstack.models.protocol import is_fitted_name
    from recstack.train.trainer import TrainerConfig

    workers = int(model.config.workers)
    loop = TrainerConfig.from_fields(model.config, model.config.seed, **model.trainer_settings())
    if loop.optimizer == "none":
        raise RecstackError(f"{type(model).__name__} with workers: {workers}: data-parallel training averages "
                            "gradients, and this configuration updates its weights itself (no optimiser); use "
                            "workers: 1, or its gradient solver (e.g. BPR's solver: adam)")
    ray = connect(RaySettings(workers=workers))
    use_gpu = torch.cuda.is_available() and model.config.device in ("auto", "cuda")
    # what each worker fits: the config only (no earlier fit's state), with its share of the batch, so
    # that one step of all workers averages `batch_size` examples as one process's step does
    per_worker = max(1, int(model.config.batch_size) // workers)
    blank = type(model)(model.config.model_copy(update={"batch_size": per_worker}))
    with tempfile.TemporaryDirectory(prefix="recstack-ray-train-") as storage:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"inputs": ray.put((blank, train, valid, options))},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(storage_path=storage, name=f"fit-{type(model).__name__}-{time.strftime('%H%M%S')}"),
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray wraps the worker's error; the first line names it
            cause = exc
            while getattr(cause, "__cause__", None) is not None:
                cause = cause.__cause__
            if isinstance(cause, RecstackError):
                raise type(cause)(str(cause)) from None
            raise
        if result.checkpoint is None:
            raise RecstackError(f"data-parallel training of {type(model).__name__} returned no model; see Ray's "
                                f"logs ({result.error or 'no error reported'})")
        with result.checkpoint.as_directory() as folder:
            fitted = type(model).load(Path(folder) / "model")
    return {name: value for name, value in vars(fitted).items() if is_fitted_name(name)}
