"""OptInter: the three pair methods by hand, the search, the fixed-architecture retrain, save/load.

The shared checks (pinned AUC on the planted split, score = logit of predict) run in test_ctr_models.py.
"""

import numpy as np
import pytest
import torch

from recstack.data import Interactions, Vocab
from recstack.data.ctr import FieldSpec, make_ctr_split
from recstack.data.dataset import Dataset
from recstack.evaluate.ctr import auc
from recstack.models.ctr import build_ctr
from recstack.models.ctr.optinter import (METHODS, OptInter, OptInterConfig, _OptInter, cross_buckets, factorised,
                                          field_pairs, frequent_buckets, memorised)

FAST = {"learning_rate": 1e-2, "batch_size": 256, "verbose": False, "embedding_size": 4, "hidden_units": [16],
        "dropout": 0.0, "hash_size": 1024, "min_count": 2}


def crossed_dataset(n_values: int = 12, n_users: int = 240, n_items: int = 240, n_rows: int = 8000,
                    seed: int = 0) -> Dataset:
    """Users carry `a` (12 values) and a noise field, items `b` (12 values); the label is a random
    table of (a, b): no field alone and no low-rank product says much, the (a, b) cross says all."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n_values, n_users), rng.integers(0, n_values, n_items)
    table = rng.random((n_values, n_values)) < 0.5
    noise = rng.integers(0, 4, n_users)
    keys = rng.choice(n_users * n_items, size=n_rows, replace=False)
    users, items = keys // n_items, keys % n_items
    value = np.where(table[a[users], b[items]], 5.0, 1.0).astype(np.float32)
    inter = Interactions(users, items, Vocab(np.arange(n_users), name="user"), Vocab(np.arange(n_items), name="item"),
                         value=value, timestamp=np.arange(n_rows))
    as_tokens = lambda prefix, v: np.array([f"{prefix}{x}" for x in v], dtype=object)  # noqa: E731
    return Dataset(inter, item_table={"b": as_tokens("b", b)},
                   user_table={"a": as_tokens("a", a), "noise": as_tokens("n", noise)}, provenance={"name": "crossed"})


@pytest.fixture(scope="module")
def crossed_split():
    return make_ctr_split(crossed_dataset(), [FieldSpec("a"), FieldSpec("noise"), FieldSpec("b")], seed=0)


@pytest.fixture(scope="module")
def searched(crossed_split):
    model = build_ctr("optinter", {**FAST, "search_epochs": 5, "epochs": 3})
    return model.fit(crossed_split.train, crossed_split.valid)


def test_the_three_methods_by_hand():
    # 3 fields: two categorical (ids 1..2, 3..4) and one multi-valued of width 2 (ids 5..6), batch of 2
    index = torch.tensor([[[1, 0], [3, 0], [5, 6]], [[2, 0], [4, 0], [6, 0]]])
    weight = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.7, 0.0], [1.0, 0.0]]])
    n_ids, table = 7, torch.nn.Embedding(50, 3)
    pairs = field_pairs(3)
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    got = memorised(table, index, weight, pairs, [1, 1, 2], n_ids, 50)
    m = lambda a, b: table.weight[int(cross_buckets(torch.tensor(a), torch.tensor(b), n_ids, 50))]  # noqa: E731
    expected = torch.stack([
        torch.stack([m(1, 3), 0.5 * m(1, 5) + 0.5 * m(1, 6), 0.5 * m(3, 5) + 0.5 * m(3, 6)]),
        torch.stack([0.7 * m(2, 4), m(2, 6), 0.7 * m(4, 6)])])
    torch.testing.assert_close(got, expected)
    assert int(cross_buckets(torch.tensor(1), torch.tensor(3), n_ids, 50)) == (1 * 7 + 3) * 2654435761 % 50
    # a bucket below the count threshold reads the pair's OOV row, hash_size + i * F + j
    keep = torch.ones(40)
    keep[int(cross_buckets(torch.tensor(1), torch.tensor(3), n_ids, 40))] = 0
    rare = memorised(table, index, weight, [(0, 1)], [1, 1, 2], n_ids, 40, keep)
    torch.testing.assert_close(rare[0, 0], table.weight[40 + 0 * 3 + 1])
    torch.testing.assert_close(rare[1, 0], 0.7 * table.weight[int(cross_buckets(torch.tensor(2), torch.tensor(4),
                                                                                  n_ids, 40))])

    v = torch.randn(2, 3, 4)
    torch.testing.assert_close(factorised(v, pairs), torch.stack([v[:, 0] * v[:, 1], v[:, 0] * v[:, 2],
                                                                   v[:, 1] * v[:, 2]], 1))

    # naive: the pair adds nothing; a net with every pair naive reads the field embeddings only
    config = OptInterConfig(**FAST)
    naive = _OptInter(n_ids, 3, [1, 1, 2], config, ["naive"] * 3)
    assert naive.cross is None and naive.factor is None and naive.dnn[0].in_features == 3 * 4
    mixed = _OptInter(n_ids, 3, [1, 1, 2], config, ["factorise", "naive", "memorise"])
    assert mixed.dnn[0].in_features == 3 * 4 + 2 * 4
    mixed.eval()
    with torch.no_grad():
        e = mixed.fields(index, weight)
        fac = factorised((mixed.factor(index) * weight.unsqueeze(-1)).sum(2), [(0, 1)])
        mem = memorised(mixed.cross, index, weight, [(1, 2)], [1, 1, 2], n_ids, mixed.hash_size, mixed.keep)
        manual = mixed.dnn(torch.cat([e.flatten(1), fac.flatten(1), mem.flatten(1)], 1)).squeeze(-1)
        torch.testing.assert_close(mixed(index, weight), manual)


def test_search_memorises_the_pair_that_decides_the_label(searched, crossed_split):
    chosen = searched.interactions()
    assert set(chosen) == {"a x noise", "a x b", "noise x b"} and set(chosen.values()) <= set(METHODS)
    assert chosen["a x b"] == "memorise"
    weights = dict(zip(chosen, searched.architecture_weights_))
    # memorising (a, b) is preferred well beyond the pairs that carry nothing of the cross
    assert weights["a x b"][0] > 0.5
    assert weights["a x b"][0] > max(weights["a x noise"][0], weights["noise x b"][0]) + 0.1
    assert auc(crossed_split.test.label, searched.predict(crossed_split.test)) > 0.95


def test_retrain_uses_the_fixed_architecture(searched, crossed_split):
    assert not any("alpha" in key for key in searched.weights_)
    net = searched._net()
    assert net.architecture == searched.architecture_
    assert not any("alpha" in name for name, _ in net.named_parameters())
    kept = sum(m != "naive" for m in searched.architecture_)
    assert net.dnn[0].in_features == 3 * 4 + kept * 4
    assert searched.search_history_ and searched.search_best_epoch_ >= 1
    assert len(searched.history_) <= 3 and searched.best_epoch_ >= 1
    # the retrain starts from scratch: same seed, same fixed architecture -> the same model
    again = OptInter(searched.config)
    keep = frequent_buckets(crossed_split.train, list(searched.field_widths_), 2, searched.config.hash_size)
    again._stage = (list(searched.field_widths_), list(searched.architecture_), keep)
    super(OptInter, again).fit(crossed_split.train, crossed_split.valid)
    del again._stage
    again.architecture_, again.field_widths_ = searched.architecture_, searched.field_widths_
    np.testing.assert_allclose(again.predict(crossed_split.test), searched.predict(crossed_split.test),
                               rtol=1e-4, atol=1e-5)


def test_rare_crosses_are_counted_on_the_training_rows(crossed_split):
    widths = [1, 1, 1]
    keep = frequent_buckets(crossed_split.train, widths, 2, 1 << 20)
    index, weight = (torch.from_numpy(x) for x in crossed_split.train.encode())
    crosses = torch.cat([cross_buckets(index[:, i, 0], index[:, j, 0], crossed_split.train.features.n_ids, 1 << 20)
                         for i, j in field_pairs(3)]).numpy()
    values, counts = np.unique(crosses, return_counts=True)
    assert keep.shape == (1 << 20,) and set(np.flatnonzero(keep)) == set(values[counts >= 2])


def test_save_and_load_keep_the_architecture(searched, crossed_split, tmp_path):
    searched.save(tmp_path / "m")
    again = OptInter.load(tmp_path / "m")
    assert again.architecture_ == searched.architecture_ and again.interactions() == searched.interactions()
    assert list(again.field_widths_) == list(searched.field_widths_)
    np.testing.assert_allclose(again.architecture_weights_, searched.architecture_weights_)
    np.testing.assert_allclose(again.predict(crossed_split.test), searched.predict(crossed_split.test),
                               rtol=1e-5, atol=1e-6)
