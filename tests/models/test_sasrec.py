"""SASRec: the causal/padding mechanics of the network, the three losses learning a sequence rule,
test-time input = train + valid, block-wise scoring, and a 1M-item catalogue scored in bounded blocks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.evaluate.evaluator import block_size_for
from recstack.models import ConfigError, make_config
from recstack.models.sequential.sasrec import SASRec, SASRecConfig, _forward, _initial_params
from recstack.models.kernels.attention import SASREC_PARAMS
from recstack.models.kernels.sequences import trim_padding as _trim
from recstack.split import make_split
from recstack.testing import assert_scores_equivalent


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cyclic(n_users: int = 60, n_items: int = 25, length: int = 14, seed: int = 0) -> Interactions:
    """Each user walks the items in a cycle from a random start: the next item is (last + 1) mod n_items."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    user = np.repeat(np.arange(n_users), length)
    item = (starts[:, None] + np.arange(length)[None, :]).ravel() % n_items
    return Interactions(user, item, Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item"),
                        timestamp=np.tile(np.arange(length), n_users))


@pytest.fixture(scope="module")
def cycle_split():
    return make_split(cyclic(), "leave_last", seed=0)


FAST = dict(embedding_size=16, max_seq_len=8, batch_size=32, learning_rate=5e-3, epochs=40, verbose=False)


@pytest.fixture(scope="module")
def cycle_model(cycle_split):
    return SASRec(SASRecConfig(**FAST)).fit(cycle_split.train, cycle_split.valid)


def hit_at_1(model, history, truth) -> float:
    return evaluate(model, history, truth, metrics=["Hit@1"])["Hit@1"]


def test_learns_the_next_item_rule_and_reads_valid_at_test_time(cycle_model, cycle_split):
    # ranking the test item: with train + valid as input the newest input item is the valid one,
    # whose successor is the test item; with train only the model would predict the valid item
    assert hit_at_1(cycle_model, cycle_split.history("test"), cycle_split.test) > 0.95
    assert hit_at_1(cycle_model, cycle_split.history("valid"), cycle_split.valid) > 0.95
    assert hit_at_1(cycle_model, cycle_split.history("valid"), cycle_split.test) < 0.1
    assert cycle_model.best_epoch_ >= 1 and len(cycle_model.history_) >= cycle_model.best_epoch_



def test_the_fitted_state_is_the_named_state_dict_and_survives_saving(cycle_model, cycle_split, tmp_path):
    assert set(cycle_model.weights_) == set(SASREC_PARAMS)  # named, never by parameter order
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in cycle_model.weights_.values())
    cycle_model.save(tmp_path / "m")
    loaded = SASRec.load(tmp_path / "m")
    history, users = cycle_split.history("test"), np.arange(10)
    assert_scores_equivalent(loaded.score(users, history), cycle_model.score(users, history))

@pytest.mark.parametrize("loss, extra", [("bce", {}), ("sampled_softmax", {"n_negatives": 8})])
def test_the_other_losses_learn_the_rule_too(cycle_split, loss, extra):
    model = SASRec(SASRecConfig(**{**FAST, "loss": loss, **extra, "learning_rate": 1e-2}))
    model.fit(cycle_split.train, cycle_split.valid)
    assert hit_at_1(model, cycle_split.history("test"), cycle_split.test) > 0.8


def net_params(n_items: int = 12, **config):
    torch.manual_seed(0)
    return _initial_params(n_items, SASRecConfig(**{"embedding_size": 8, "n_heads": 2, "max_seq_len": 6, **config}))


def test_attention_is_causal():
    p = net_params()
    tokens = torch.tensor([[3, 5, 7, 2, 9, 4]])
    changed = tokens.clone()
    changed[0, 4] = 11  # only slot 4 changes: slots 0..3 must not see it
    a, b = _forward(p, tokens, n_heads=2), _forward(p, changed, n_heads=2)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_order_matters_through_the_positional_embeddings():
    # one block: without positions the last slot would attend to a set, blind to the order before it
    p = net_params(n_layers=1)
    a = _forward(p, torch.tensor([[0, 3, 5, 7]]), n_heads=2)[:, -1]
    b = _forward(p, torch.tensor([[0, 5, 3, 7]]), n_heads=2)[:, -1]
    assert not torch.allclose(a, b, atol=1e-4)
    p["position_embedding"] = torch.zeros_like(p["position_embedding"])
    torch.testing.assert_close(_forward(p, torch.tensor([[0, 3, 5, 7]]), n_heads=2)[:, -1],
                               _forward(p, torch.tensor([[0, 5, 3, 7]]), n_heads=2)[:, -1])


def test_left_padding_and_trimming_do_not_change_the_output():
    # padded keys are masked and positions count from the end, so [pad, pad, 4, 6] == [4, 6]
    p = net_params()
    full = _forward(p, torch.tensor([[0, 0, 0, 4, 6, 1], [2, 3, 4, 6, 1, 8]]), n_heads=2)[:, -1]
    short = _forward(p, torch.tensor([[0, 4, 6, 1]]), n_heads=2)[:, -1]
    torch.testing.assert_close(full[0], short[0])
    trimmed = torch.from_numpy(_trim(np.array([[0, 0, 0, 4, 6, 1], [0, 0, 3, 4, 6, 1]])))
    assert trimmed.shape == (2, 4)
    torch.testing.assert_close(_forward(p, trimmed, n_heads=2)[0, -1], full[0])
    # an empty history scores without NaN (all slots padding)
    assert torch.isfinite(_forward(p, torch.zeros(1, 3, dtype=torch.long), n_heads=2)).all()


def test_last_only_equals_the_last_slot_of_the_full_pass():
    p = net_params(n_layers=3)
    tokens = torch.tensor([[0, 0, 5, 2, 7, 1], [9, 8, 7, 6, 5, 4]])
    torch.testing.assert_close(_forward(p, tokens, 2, last_only=True), _forward(p, tokens, 2)[:, -1])


def test_scores_are_the_last_slot_against_the_shared_item_table(cycle_model, cycle_split):
    history = cycle_split.history("test")
    users = np.array([3, 0, 7, 3])
    scores = cycle_model.score(users, history)
    np.testing.assert_allclose(scores, cycle_model.embed(users, history) @ cycle_model.weights_["item_embedding"][1:].T,
                               rtol=1e-5, atol=1e-5)
    chunked = SASRec(cycle_model.config.model_copy(update={"score_batch_size": 3}))
    for name, value in vars(cycle_model).items():
        if name.endswith("_"):
            setattr(chunked, name, value)
    np.testing.assert_allclose(chunked.score(users, history), scores, rtol=1e-5, atol=1e-6)


def test_history_with_another_catalogue_is_refused(cycle_model):
    with pytest.raises(RecstackError, match="fitted on 25"):
        cycle_model.score(np.array([0]), cyclic(n_items=30))


def test_config_checks():
    with pytest.raises(ConfigError, match="n_heads"):
        make_config(SASRecConfig, {"embedding_size": 10, "n_heads": 3})
    with pytest.raises(ConfigError, match="n_negatives applies to loss='sampled_softmax'"):
        make_config(SASRecConfig, {"loss": "bce", "n_negatives": 4})
    with pytest.raises(ConfigError, match="loss"):
        make_config(SASRecConfig, {"loss": "bpr"})
    assert SASRecConfig().loss == "ce"
    with pytest.raises(RecstackError, match="two or more training events"):
        SASRec(SASRecConfig(**FAST)).fit(cyclic(length=1))


def test_a_million_item_catalogue_is_scored_in_bounded_blocks():
    n_items, n_users, d = 1_000_000, 24, 8
    config = SASRecConfig(embedding_size=d, n_layers=1, max_seq_len=4, score_batch_size=2)
    model = SASRec(config)
    torch.manual_seed(0)
    model.weights_ = {name: value.numpy() for name, value in _initial_params(n_items, config).items()}
    rng = np.random.default_rng(0)
    history = Interactions(np.repeat(np.arange(n_users), 3), rng.integers(0, n_items, 3 * n_users),
                           Vocab(np.arange(n_users), "user"), Vocab(np.arange(n_items), "item"))
    test = Interactions(np.arange(n_users), rng.integers(0, n_items, n_users), history.users, history.items)

    blocks = []

    class Recording:
        def score(self, users, history, items=None):
            blocks.append(len(users))
            return model.score(users, history, items)

    budget_mb = 32.0  # 4 users x 1M items x 8 bytes
    tracemalloc.start()
    try:
        result = evaluate(Recording(), history, test, metrics=["Hit@10"], memory_budget_mb=budget_mb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.protocol["n_users_evaluated"] == n_users
    assert max(blocks) <= block_size_for(n_items, budget_mb) == 4
    all_scores = n_users * n_items * 4
    assert peak < all_scores / 2  # far below one (users x items) matrix: only blocks ever exist


def test_fused_attention_at_inference_matches_the_explicit_path():
    torch.manual_seed(0)
    params = _initial_params(9, SASRecConfig(embedding_size=8, n_heads=2, max_seq_len=6))
    for value in params.values():
        value.normal_(0, 0.5)
    tokens = torch.tensor([[0, 0, 3, 4, 6, 1], [2, 5, 3, 4, 6, 1], [0, 0, 0, 0, 0, 7]])
    with torch.no_grad():
        fused = _forward(params, tokens, n_heads=2)  # no dropout: the fused kernel
        explicit = _forward(params, tokens, n_heads=2, dropout=1e-12, training=True)  # explicit softmax path
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("windows", ["latest", "prefixes"])
def test_latest_and_prefix_windows_learn_the_rule_too(cycle_split, windows):
    model = SASRec(SASRecConfig(**{**FAST, "train_windows": windows}))
    model.fit(cycle_split.train, cycle_split.valid)
    assert hit_at_1(model, cycle_split.history("test"), cycle_split.test) > 0.95
    assert SASRecConfig().train_windows == "sliding"  # the default, chosen by time to accuracy


def test_every_model_on_sequence_batches_shares_the_one_train_windows_field():
    from pathlib import Path

    import recstack.models as models_package
    from recstack.models import resolve
    from recstack.models.kernels.sequences import SequenceWindowFields

    root = Path(models_package.__file__).parent
    users = sorted(p.stem for p in (root / "sequential").glob("*.py") if "SequenceBatches(" in p.read_text())
    assert {"sasrec", "gru4rec", "bert4rec", "mqsated", "hcn", "m2trec"} <= set(users)
    for name in users:
        config = resolve(name).Config
        assert issubclass(config, SequenceWindowFields), name
        assert "train_windows" not in vars(config).get("__annotations__", {}), f"{name} restates train_windows"
    with pytest.raises(ConfigError, match="train_windows"):
        make_config(SASRecConfig, {"train_windows": "all"})
    # the stride is one more field of the same mixin, checked against the windows and the length, and
    # every model hands both to SequenceBatches (no model reads train_windows alone and drops the stride)
    for name in users:
        source = (root / "sequential" / f"{name}.py").read_text()
        assert "**c.window_options()" in source and "windows=c.train_windows" not in source, name
    with pytest.raises(ConfigError, match="train_stride applies to train_windows='sliding' only"):
        make_config(SASRecConfig, {"train_windows": "latest", "train_stride": 5})
    with pytest.raises(ConfigError, match=r"train_stride \(60\) must be at most max_seq_len \(50\)"):
        make_config(SASRecConfig, {"train_stride": 60})
    assert make_config(SASRecConfig, {"train_stride": 10}).window_options() == {"windows": "sliding", "stride": 10}
