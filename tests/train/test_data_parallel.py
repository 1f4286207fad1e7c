"""The trainer's data-parallel mode (issue 18), without Ray: two processes joined by torch.distributed
(gloo on loopback) train exactly as one process does on the pairs of their batches merged."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from recstack.train import Trainer, TrainerConfig

N_BATCHES, BATCH, DIM = 7, 16, 5  # seven batches: the last round is short (rank 1 has no batch in it)


def make_batches(merged: bool):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_BATCHES * BATCH, DIM)).astype(np.float32)
    y = (x @ np.arange(1, DIM + 1, dtype=np.float32) + rng.normal(size=len(x)).astype(np.float32))
    size = 2 * BATCH if merged else BATCH
    cut = len(x) - 5  # a short last batch: its step weighs examples, not workers
    return lambda: [(x[i:min(i + size, cut)], y[i:min(i + size, cut)]) for i in range(0, cut, size)]


def loss(module, batch):
    x, y = batch
    return ((module(x).squeeze(-1) - y) ** 2).mean()


def fit(batches, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[float]]:
    torch.manual_seed(seed)
    module = torch.nn.Linear(DIM, 1)
    torch.manual_seed(seed + 1 + (torch.distributed.get_rank() if torch.distributed.is_initialized() else 0))
    with torch.no_grad():  # rank 1 starts elsewhere: the trainer must broadcast rank 0's weights
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            module.weight.add_(1.0)
    trainer = Trainer(TrainerConfig(epochs=4, learning_rate=0.05, verbose=False, seed=seed))
    history = trainer.fit(module, loss, batches)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, [h["loss"] for h in history]


def _worker(rank: int, port: int, out: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        state, losses = fit(make_batches(merged=False))
        out[rank] = ({k: v.numpy() for k, v in state.items()}, losses)
    finally:
        torch.distributed.destroy_process_group()


def test_two_workers_train_as_one_process_on_merged_batch_pairs():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
        results = dict(out)
    single_state, single_losses = fit(make_batches(merged=True))
    for rank in (0, 1):
        state, losses = results[rank]
        for key, value in single_state.items():
            # one optimiser step on the mean of two batch means == one step on their union
            np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    assert not np.allclose(results[0][0]["weight"], fit(make_batches(merged=False))[0]["weight"].numpy())


def test_workers_reaching_the_trainer_outside_a_data_parallel_fit_are_refused():
    """A model that trains its own way (stages, its own loop) cannot silently ignore `workers: 2`."""
    import pytest

    from recstack.errors import RecstackError

    with pytest.raises(RecstackError, match="workers: 2 asks for data-parallel training"):
        Trainer(TrainerConfig(epochs=1, workers=2, verbose=False)).fit(torch.nn.Linear(DIM, 1), loss,
                                                                       make_batches(merged=False))
