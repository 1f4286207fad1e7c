import json
import math

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.train import Trainer, TrainerConfig, bpr_loss, l2_penalty, resolve_device
from recstack.train.trainer import TrainingDivergedError

N_USERS, N_ITEMS = 3, 10


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # tiny tensors: a second thread only adds synchronisation, and on a busy shared machine a lot of it
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _log(item: int) -> Interactions:
    users, items = Vocab(np.arange(N_USERS), "user"), Vocab(np.arange(N_ITEMS), "item")
    return Interactions(np.arange(N_USERS), np.full(N_USERS, item), users, items)


TRAIN, VALID = _log(8), _log(9)


class Counter(torch.nn.Module):
    """One weight w; loss = -w, so plain SGD with learning rate 1 adds exactly 1 to w per step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def counter_loss(module: Counter, batch) -> torch.Tensor:
    return -module.w


def one_batch():
    return [(np.zeros(1),)]


class PeaksAtTwo:
    """Every user's valid item 9 ranks first when w = 2 and one place lower per unit of |w - 2|.

    Base scores are -item (item 0 best); item 9 scores 0.5 - |w - 2|, so at w = 1 or 3 it comes
    second (after item 0), at w = 4 third, at w = 5 fourth. Item 8 (the train item) is masked.
    """

    def __init__(self, module: Counter) -> None:
        self.module = module

    def score(self, users, history, items=None):
        scores = np.tile(-np.arange(N_ITEMS, dtype=np.float32), (len(users), 1))
        scores[:, 9] = 0.5 - abs(float(self.module.w) - 2.0)
        return scores


def _fit(module=None, valid=VALID, **config):
    module = module or Counter()
    defaults = dict(epochs=8, learning_rate=1.0, optimizer="sgd", early_stopping_patience=3, verbose=False)
    trainer = Trainer(TrainerConfig(**{**defaults, **config}))
    history = trainer.fit(module, counter_loss, one_batch, PeaksAtTwo(module), train=TRAIN, valid=valid)
    return trainer, history, module


def test_early_stopping_stops_after_patience_and_restores_the_best_state():
    trainer, history, module = _fit()
    # NDCG@10 with one relevant item at rank r is 1 / log2(r + 1): ranks 2, 1, 2, 3, 4 in epochs 1..5
    expected = [1 / math.log2(3), 1.0, 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(5)]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # three evaluations without gain after epoch 2
    assert [h["NDCG@10"] for h in history] == pytest.approx(expected)
    assert [h["loss"] for h in history] == [0.0, -1.0, -2.0, -3.0, -4.0]  # the loss before each epoch's step
    assert trainer.best_epoch == 2 and trainer.best_value == pytest.approx(1.0) and trainer.stopped_early
    assert module.w.item() == 2.0  # the weights of epoch 2, not of epoch 5
    assert all(h["seconds"] >= 0 for h in history)
    json.dumps(history)  # reports store it as JSON


def test_without_patience_all_epochs_run_and_the_best_is_still_restored():
    trainer, history, module = _fit(early_stopping_patience=None, epochs=6)
    assert len(history) == 6 and not trainer.stopped_early
    assert module.w.item() == 2.0


def test_without_validation_data_every_epoch_trains_and_the_last_state_stays():
    trainer, history, module = _fit(valid=None, epochs=6)
    assert len(history) == 6 and module.w.item() == 6.0
    assert all(h["NDCG@10"] is None for h in history) and trainer.best_epoch is None


def test_eval_every_skips_epochs_but_evaluates_the_last_one():
    trainer, history, module = _fit(eval_every=2, epochs=5, early_stopping_patience=None)
    evaluated = [h["epoch"] for h in history if h["NDCG@10"] is not None]
    assert evaluated == [2, 4, 5]
    assert trainer.best_epoch == 2 and module.w.item() == 2.0


def test_other_metric_labels_are_used_as_given():
    _, history, _ = _fit(valid_metric="hit@1", epochs=3, early_stopping_patience=None)
    assert [h["Hit@1"] for h in history] == [0.0, 1.0, 0.0]


def test_config_rejects_bad_metrics_and_keys():
    with pytest.raises(ValueError, match="cut-off"):
        TrainerConfig(valid_metric="NDCG")
    with pytest.raises(ValueError, match="'NDGC@10' is unknown; did you mean 'NDCG@10'"):
        TrainerConfig(valid_metric="NDGC@10")
    with pytest.raises(ValueError, match="cut-off k >= 1"):
        TrainerConfig(valid_metric="NDCG@0")
    with pytest.raises(ValueError, match="epoch"):
        TrainerConfig(epoch=3)


def test_diverging_loss_is_a_clear_error():
    trainer = Trainer(TrainerConfig(epochs=2, verbose=False))
    with pytest.raises(TrainingDivergedError, match="epoch 1; lower learning_rate"):
        trainer.fit(Counter(), lambda m, b: m.w * float("nan"), one_batch)
    assert issubclass(TrainingDivergedError, RecstackError)


def test_device_auto_and_missing_cuda():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RecstackError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(RecstackError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_a_gpu_index_past_the_last_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(RecstackError, match=r"^device 'cuda:7' was asked for but this machine shows 2 CUDA devices "
                                            r"\(cuda:0 to cuda:1\)"):
        resolve_device("cuda:7")


def test_batches_reach_the_loss_as_tensors_on_the_device():
    seen = []

    def loss(module, batch):
        seen.append(batch)
        return -module.w

    Trainer(TrainerConfig(epochs=1, verbose=False)).fit(
        Counter(), loss, lambda: [(np.arange(3), {"x": np.ones(2, np.float32)}, "tag")])
    users, extra, tag = seen[0]
    assert isinstance(users, torch.Tensor) and users.tolist() == [0, 1, 2]
    assert isinstance(extra["x"], torch.Tensor) and tag == "tag"


def test_same_seed_same_torch_draws_inside_training():
    def draws(seed):
        out = []

        def loss(module, batch):
            out.append(torch.rand(3))
            return -module.w

        Trainer(TrainerConfig(epochs=2, seed=seed, verbose=False)).fit(Counter(), loss, one_batch)
        return torch.stack(out)

    assert torch.equal(draws(1), draws(1)) and not torch.equal(draws(1), draws(2))


# ---- losses -------------------------------------------------------------------------------

def test_bpr_loss_by_hand():
    # -log sigmoid(x) = log(1 + e^-x); margins 1 and 0
    loss = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, rel=1e-6)
    # several negatives per positive: margins 0 and -2 for the single row
    loss = bpr_loss(torch.tensor([1.0]), torch.tensor([[1.0, 3.0]]))
    assert float(loss) == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-6)


def test_bpr_loss_is_finite_for_huge_margins_and_has_the_right_gradient():
    pos = torch.tensor([0.0, 1000.0], requires_grad=True)
    loss = bpr_loss(pos, torch.tensor([1000.0, 0.0]))
    assert loss.item() == pytest.approx(500.0)
    loss.backward()
    # d/dpos of mean softplus(neg - pos) = -sigmoid(neg - pos) / B
    assert pos.grad.tolist() == pytest.approx([-0.5, 0.0])


def test_l2_penalty_divides_by_the_batch_size():
    a, b = torch.ones(4, 3), torch.full((4, 2, 3), 2.0)
    assert float(l2_penalty(a, b)) == pytest.approx((12 + 4 * 24) / 4)
