"""Learning-rate schedules, gradient clipping, bf16 autocast, the epoch log, checkpoint/resume and console progress."""

import json
import math

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.train import Trainer, TrainerConfig
from test_trainer import TRAIN, VALID, Counter, PeaksAtTwo, counter_loss, one_batch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(options=None, **config) -> Trainer:
    defaults = dict(epochs=4, learning_rate=1.0, optimizer="sgd", early_stopping_patience=None, verbose=False)
    return Trainer(TrainerConfig(**{**defaults, **config}), options)


def test_step_schedule_halves_the_rate_and_the_steps():
    module = Counter()
    trainer = _trainer(lr_schedule="step", lr_step_size=2, lr_gamma=0.5)
    history = trainer.fit(module, counter_loss, one_batch)
    # loss = -w has gradient -1: SGD adds the learning rate each epoch; rates 1, 1, 0.5, 0.5
    assert module.w.item() == pytest.approx(3.0)
    assert [h["learning_rate"] for h in history] == pytest.approx([1.0, 0.5, 0.5, 0.25])  # after each epoch's step


def test_cosine_schedule_reaches_zero_at_the_last_epoch():
    module = Counter()
    history = _trainer(lr_schedule="cosine").fit(module, counter_loss, one_batch)
    expected_rates = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # rate used in epoch e+1
    assert module.w.item() == pytest.approx(sum(expected_rates))
    assert history[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-12)


def test_gradient_clipping_bounds_each_step():
    module = Counter()

    def steep(mod, batch):
        return -10.0 * mod.w  # gradient -10

    _trainer(max_grad_norm=0.5).fit(module, steep, one_batch)
    assert module.w.item() == pytest.approx(4 * 0.5)  # four steps of the clipped norm
    unclipped = Counter()
    _trainer().fit(unclipped, steep, one_batch)
    assert unclipped.w.item() == pytest.approx(40.0)


def test_bf16_autocast_runs_matmuls_in_bfloat16():
    seen = []
    linear = torch.nn.Linear(4, 1)

    def loss(mod, batch):
        out = mod(torch.ones(2, 4))
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    _trainer(epochs=1, precision="bf16", learning_rate=0.01).fit(linear, loss, one_batch)
    assert seen == [torch.bfloat16]


def test_epoch_log_is_json_lines(tmp_path):
    log = tmp_path / "logs" / "train.jsonl"
    history = _trainer(log_path=str(log)).fit(Counter(), counter_loss, one_batch)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == json.loads(json.dumps(history))


def test_resume_continues_where_the_checkpoint_left_off(tmp_path):
    full_module = Counter()
    full = _trainer(epochs=6, early_stopping_patience=None)
    full_history = full.fit(full_module, counter_loss, one_batch, PeaksAtTwo(full_module), train=TRAIN, valid=VALID)

    first = Counter()
    _trainer(epochs=3, checkpoint_dir=str(tmp_path)).fit(first, counter_loss, one_batch, PeaksAtTwo(first),
                                                         train=TRAIN, valid=VALID)
    assert (tmp_path / "last.pt").exists()
    resumed_module = Counter()  # a fresh process would build a fresh module
    resumed = _trainer(epochs=6, checkpoint_dir=str(tmp_path), resume=True, early_stopping_patience=None)
    history = resumed.fit(resumed_module, counter_loss, one_batch, PeaksAtTwo(resumed_module), train=TRAIN, valid=VALID)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["NDCG@10"] for h in history] == pytest.approx([h["NDCG@10"] for h in full_history])
    assert resumed.best_epoch == full.best_epoch == 2
    assert resumed_module.w.item() == full_module.w.item() == 2.0  # best state restored across the restart


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    module = Counter()
    history = _trainer(checkpoint_dir=str(tmp_path / "none"), resume=True).fit(module, counter_loss, one_batch)
    assert len(history) == 4 and module.w.item() == 4.0


def test_after_step_sees_each_steps_gradient_and_can_change_the_weights():
    seen = []

    def halve(module, optimizer, step):
        seen.append((step, module.w.grad.item()))
        with torch.no_grad():
            module.w.mul_(0.5)  # e.g. a pruning mask applied between steps

    module = Counter()
    _trainer().fit(module, counter_loss, one_batch, after_step=halve)
    assert seen == [(1, -1.0), (2, -1.0), (3, -1.0), (4, -1.0)]
    # w: (0+1)/2 = 0.5, (0.5+1)/2 = 0.75, 0.875, 0.9375
    assert module.w.item() == pytest.approx(0.9375)


def test_trainer_config_from_a_model_config_takes_the_shared_settings():
    from recstack.models.factorization.bpr import BPRConfig

    model = BPRConfig(epochs=7, learning_rate=0.02, batch_size=64, early_stopping_patience=None, seed=3,
                      verbose=False, valid_metric="Recall@20", eval_every=2, device="cpu")
    config = TrainerConfig.from_fields(model, model.seed, optimizer="sgd")
    assert (config.epochs, config.learning_rate, config.batch_size, config.seed) == (7, 0.02, 64, 3)
    assert config.early_stopping_patience is None and config.verbose is False and config.eval_every == 2
    assert (config.valid_metric, config.device, config.optimizer) == ("Recall@20", "cpu", "sgd")
    with pytest.raises(TypeError, match="TrainingFields"):
        TrainerConfig.from_fields(object(), 0)


def test_adam_betas_reach_the_optimizer_and_bad_betas_name_the_field():
    trainer = Trainer(TrainerConfig(adam_betas=(0.9, 0.98), verbose=False))
    optimizer = trainer._optimizer(torch.nn.Linear(2, 1))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    with pytest.raises(ValueError, match="adam_betas"):
        TrainerConfig(adam_betas=(0.9, 1.0))


def test_without_an_optimizer_the_batch_function_updates_the_weights_itself(tmp_path):
    calls = []

    def add_one(module, batch):
        assert not torch.is_grad_enabled()  # the trainer runs closed-form steps under no_grad
        module.w.add_(1.0)
        calls.append(module.w.item())
        return -module.w.detach()

    module = Counter()
    trainer = _trainer(epochs=6, optimizer="none", learning_rate=0.5, checkpoint_dir=str(tmp_path))
    history = trainer.fit(module, add_one, one_batch, PeaksAtTwo(module), train=TRAIN, valid=VALID)
    assert calls == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert trainer.best_epoch == 2 and module.w.item() == 2.0  # early-stopping state restore still works
    assert [h["learning_rate"] for h in history] == [0.5] * 6
    assert torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"] is None


@pytest.mark.parametrize("setting", [{"lr_schedule": "cosine"}, {"max_grad_norm": 1.0}, {"precision": "bf16"}])
def test_gradient_settings_without_an_optimizer_are_refused(setting):
    with pytest.raises(ValueError, match=f"optimizer='none'.*{next(iter(setting))}"):
        TrainerConfig(optimizer="none", **setting)


class _TrainItemFirst:
    """The train item 8 scores highest, the valid item 9 second, everything else lower."""

    def score(self, users, history, items=None):
        scores = np.tile(-np.arange(10, dtype=np.float32), (len(users), 1))
        scores[:, 8], scores[:, 9] = 2.0, 1.0
        return scores


def test_validation_follows_the_fit_options_history_masking():
    from recstack.train.options import FitOptions

    def first_value(**options):
        trainer = _trainer(epochs=1, options=FitOptions(**options) if options else None)
        trainer.fit(Counter(), counter_loss, one_batch, _TrainItemFirst(), train=TRAIN, valid=VALID)
        return trainer.history[0]["NDCG@10"]

    assert first_value() == first_value(mask_history=True) == 1.0  # item 8 masked: item 9 first
    assert first_value(mask_history=False) == pytest.approx(1 / math.log2(3))  # item 8 kept: item 9 second
    assert first_value() == 1.0  # one call's options do not outlive it


# users 0-1 have the train item 8; users 2-5 have no training history at all; everyone's valid item is 9
_WARM, _N_COLD_USERS = (0, 1), 4
_COLD_TRAIN = Interactions(np.array(_WARM), np.full(len(_WARM), 8), Vocab(np.arange(6), "user"),
                           Vocab(np.arange(10), "item"))
_COLD_VALID = Interactions(np.arange(6), np.full(6, 9), _COLD_TRAIN.users, _COLD_TRAIN.items)


def _ndcg_at_rank(rank: int) -> float:
    return 1 / math.log2(rank + 1)


class _WarmPeakTwoColdPeakSix:
    """The valid item 9 ranks 1 + |w - 2| for the warm users and 1 + |w - 6| for the cold ones: with
    every user counted the four cold users pull the best epoch to 6; the warm users alone choose 2."""

    def __init__(self, module: Counter) -> None:
        self.module = module

    def score(self, users, history, items=None):
        w = float(self.module.w)
        peak = np.where(np.isin(users, _WARM), 2.0, 6.0)
        scores = np.tile(-np.arange(10, dtype=np.float32), (len(users), 1))
        scores[:, 9] = 0.5 - np.abs(w - peak)  # 0.5: first; -0.5: after item 0; -1.5: after items 0 and 1 ...
        return scores


class _ValidItemSecond:
    """A fallback that ranks the valid item 9 second for everyone."""

    def score(self, users, history, items=None):
        scores = np.tile(-np.arange(10, dtype=np.float32), (len(users), 1))
        scores[:, 9] = -0.5
        return scores


@pytest.mark.parametrize("policy, best_epoch", [("include", 6), ("skip", 2), ("fallback", 2)])
def test_early_stopping_sees_the_cold_user_policy_of_the_fit_options(policy, best_epoch):
    from recstack.evaluate import ColdUsers
    from recstack.train.options import FitOptions

    cold_users = ColdUsers(policy, fallback=_ValidItemSecond() if policy == "fallback" else None)
    module = Counter()
    trainer = _trainer(epochs=8, options=FitOptions(cold_users=cold_users))
    trainer.fit(module, counter_loss, one_batch, _WarmPeakTwoColdPeakSix(module), train=_COLD_TRAIN, valid=_COLD_VALID)
    assert trainer.best_epoch == best_epoch and module.w.item() == best_epoch  # selected and restored
    warm_at_2 = 1.0  # epoch 2: the warm users rank item 9 first; the cold users rank it 1 + |2 - 6| = 5th
    expected = {"include": (len(_WARM) * warm_at_2 + _N_COLD_USERS * _ndcg_at_rank(5)) / 6, "skip": warm_at_2,
                "fallback": (len(_WARM) * warm_at_2 + _N_COLD_USERS * _ndcg_at_rank(2)) / 6}[policy]
    assert trainer.history[1]["NDCG@10"] == pytest.approx(expected)


# ---- console progress without a terminal --------------------------------------------------------

def _fit_printing(monkeypatch, tmp_path, every: float, progress: bool = True):
    """Fit the early-stopping Counter (stops after epoch 5 of 8) with stderr a pipe, not a terminal."""
    import io
    import sys

    import recstack.train.trainer as trainer_module
    from recstack.train.options import FitOptions

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(trainer_module, "PLAIN_PROGRESS_SECONDS", every)
    module = Counter()
    options = FitOptions(log_path=tmp_path / "logs" / "counter.jsonl", progress=progress)
    trainer = _trainer(epochs=8, early_stopping_patience=3, verbose=True, options=options)
    trainer.fit(module, counter_loss, one_batch, PeaksAtTwo(module), train=TRAIN, valid=VALID)
    return trainer, stream.getvalue().splitlines()


def test_without_a_terminal_each_epoch_prints_a_plain_line_named_after_the_model(monkeypatch, tmp_path):
    import re

    trainer, lines = _fit_printing(monkeypatch, tmp_path, every=0.0)
    assert len(lines) == len(trainer.history) == 5
    pattern = re.compile(r"counter: epoch (\d+)/8  loss (-?\d+\.\d{4})  NDCG@10 (\d\.\d{4})(.*)  \(\d+ s\)")
    for line, entry in zip(lines, trainer.history):
        match = pattern.fullmatch(line)
        assert match, line
        assert int(match[1]) == entry["epoch"]
        assert float(match[2]) == pytest.approx(entry["loss"], abs=1e-4)
        assert float(match[3]) == pytest.approx(entry["NDCG@10"], abs=1e-4)
    assert match[4] == "  (stopped early; best NDCG@10 1.0000 at epoch 2)"  # the last line says how it ended
    assert all("stopped early" not in line for line in lines[:-1])


def test_plain_progress_is_silent_for_short_fits_and_under_quiet(monkeypatch, tmp_path):
    _, lines = _fit_printing(monkeypatch, tmp_path, every=3600.0)  # the whole fit is shorter than that
    assert lines == []
    trainer, lines = _fit_printing(monkeypatch, tmp_path / "quiet", every=0.0, progress=False)
    assert lines == []  # `recstack run --quiet` prints nothing of training ...
    assert len((tmp_path / "quiet" / "logs" / "counter.jsonl").read_text().splitlines()) == len(trainer.history)


def test_plain_progress_prints_at_most_one_line_per_interval_and_the_last_epoch(monkeypatch, capsys):
    import types

    import recstack.train.trainer as trainer_module

    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    progress = trainer_module._PlainProgress("bpr", 10, every=10.0)
    for epoch in range(1, 11):  # 3 s per epoch: lines once 10 s have passed since the previous one
        clock[0] = 3.0 * epoch
        progress.epoch(epoch, f"loss {1 / epoch:.4f}", last=epoch == 10)
    printed = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in printed] == ["4/10", "8/10", "10/10"]
    assert printed[0] == "bpr: epoch 4/10  loss 0.2500  (12 s)"
