"""DNIS-FM: frequency blocks per field, alpha kept in [0, 1], pruning to a budget or a threshold, FM
logits by hand on selected embeddings, save/load, errors.

The shared checks (pinned AUC of the default fit on the planted split, score = logit of predict) run
in test_ctr_models.py.
"""

import numpy as np
import pytest
import torch

from recstack.errors import RecstackError
from recstack.evaluate.ctr import auc
from recstack.models.ctr import build_ctr
from recstack.models.ctr.dnis_fm import DNISFM, _DNISFM, feature_blocks
from recstack.models.protocol import ConfigError

FAST = {"epochs": 8, "learning_rate": 1e-2, "batch_size": 256, "verbose": False, "embedding_size": 8}
D = FAST["embedding_size"]


@pytest.fixture(scope="module")
def split(planted_split):
    return planted_split


@pytest.fixture(scope="module")
def budget(split):
    # alpha searched on the validation rows (it moves within a few search epochs), 30% of the cells kept
    return build_ctr("dnis-fm", {**FAST, "search_data": "valid", "search_epochs": 5, "target_parameters": 0.3}
                     ).fit(split.train, split.valid)


@pytest.fixture(scope="module")
def scratch(split):
    return build_ctr("dnis-fm", {**FAST, "search_data": "valid", "search_epochs": 5, "prune_threshold": 0.9,
                                 "retrain": "scratch", "epochs": 4}).fit(split.train, split.valid)


def test_blocks_follow_frequency_per_field(split):
    train, f = split.train, split.train.features
    cell, sizes, counts = feature_blocks(train, 4)
    # counts by hand: a user id occurs once per training row of its user, a genre once per row of an item with it
    for u in range(5):
        assert counts[f.user_index[u, 0, 0]] == (train.user == u).sum()
    genres = f.fields.index("genres") - f.user_index.shape[1]
    for g in np.unique(f.item_index[:, genres][f.item_index[:, genres] > 0]):
        assert counts[g] == (f.item_index[train.item, genres] == g).any(1).sum()
    assert cell[0] == -1 and sizes.shape == (f.n_fields, 4)
    user_id_ids = np.unique(f.user_index[:, 0, 0])
    for field in range(f.n_fields):
        ids = np.flatnonzero((cell >= 0) & (cell // 4 == field))
        block = cell[ids] % 4
        assert np.array_equal(np.bincount(block, minlength=4), sizes[field])
        for k in range(3):  # every value of block k is at least as frequent as every value of block k + 1
            if sizes[field, k] and sizes[field, k + 1]:
                assert counts[ids[block == k]].min() >= counts[ids[block == k + 1]].max()
        assert sizes[field].max() - sizes[field][sizes[field] > 0].min() <= 1  # equal numbers of values
    assert sizes[0].sum() == len(user_id_ids)
    # one global sort over every value instead
    cell, sizes, counts = feature_blocks(train, 4, "global")
    held = np.flatnonzero(cell >= 0)
    assert sizes.shape == (1, 4) and sizes.sum() == len(held)
    assert counts[held[cell[held] == 0]].min() >= counts[held[cell[held] == 1]].max()


def test_alpha_stays_in_the_unit_interval(budget, split):
    assert budget.alpha_.shape == (split.train.features.n_fields, 8, D)
    assert (budget.alpha_ >= 0).all() and (budget.alpha_ <= 1).all()
    assert budget.alpha_.min() < 0.5  # the search moved it (it starts at 1)
    assert budget.search_history_ and budget.search_best_epoch_ >= 1 and budget.best_epoch_ >= 1


def test_a_budget_keeps_that_share_of_the_cells(budget):
    sizes, mask = budget.block_sizes_, budget.mask_
    kept = (mask * sizes[..., None]).sum() / (D * sizes.sum())
    assert budget.parameters_kept_ == pytest.approx(kept) and 0.28 <= kept <= 0.3
    assert np.array_equal(budget.block_dimensions_, mask.sum(2)) and not mask[sizes == 0].any()
    # fine-tuning: the searched weights on kept cells, 0 elsewhere, frozen through the retraining stage
    np.testing.assert_array_equal(budget.weights_["alpha"], np.where(mask, budget.alpha_, 0.0))


def test_threshold_pruning_and_scratch_retraining(scratch):
    expected = (scratch.alpha_ >= 0.9) & (scratch.block_sizes_[..., None] > 0)
    assert 0 < expected.sum() < (scratch.block_sizes_ > 0).sum() * D
    np.testing.assert_array_equal(scratch.mask_, expected)
    np.testing.assert_array_equal(scratch.weights_["alpha"], expected.astype(np.float32))  # the 0/1 mask


def test_fm_logits_by_hand_on_selected_embeddings():
    # 3 fields (ids 1-2, 3-4, 5-6), two blocks each, one multi-valued field of width 2, a padding slot
    cell = np.array([-1, 0, 1, 2, 3, 4, 5])
    torch.manual_seed(0)
    alpha = np.random.default_rng(0).random((3, 2, 4)).astype(np.float32)
    alpha[1, 0, :2] = 0.0  # pruned cells
    net = _DNISFM(7, 3, 2, 4, cell, alpha)
    with torch.no_grad():
        net.fields.embedding.weight[1:].normal_()
        net.fields.linear.weight.normal_()
        net.fields.linear.weight[0] = 0.0
        net.fields.bias.fill_(0.3)
    index = torch.tensor([[[1, 0], [3, 0], [5, 6]], [[2, 0], [4, 0], [6, 0]]])
    weight = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.7, 0.0], [1.0, 0.0]]])
    E, w = net.fields.embedding.weight.detach(), net.fields.linear.weight.detach()[:, 0]
    a = torch.from_numpy(alpha).reshape(6, 4)
    v = lambda x: E[x] * a[cell[x]]  # noqa: E731  (the selected embedding of id x)
    fields = [[v(1), v(3), 0.5 * v(5) + 0.5 * v(6)], [v(2), 0.7 * v(4), v(6)]]
    first = [0.3 + w[1] + w[3] + 0.5 * w[5] + 0.5 * w[6], 0.3 + w[2] + 0.7 * w[4] + w[6]]
    expected = torch.stack([first[b] + sum(fields[b][i] @ fields[b][j] for i in range(3) for j in range(i + 1, 3))
                            for b in range(2)])
    torch.testing.assert_close(net(index, weight), expected)
    assert v(3)[:2].abs().sum() == 0  # id 3 (field 1, block 0) lost its first two dimensions


def test_predictions_use_the_pruned_embeddings(budget, split):
    rows = split.test.take(np.arange(20))
    s = budget.weights_
    E, w = s["fields.embedding.weight"], s["fields.linear.weight"][:, 0]
    alpha, cell = s["alpha"].reshape(-1, D), s["cell"].astype(np.int64)
    index, weight = rows.encode()
    e = (E[index] * alpha[cell[index]] * weight[..., None]).sum(2)
    n_fields = e.shape[1]
    pairs = sum((e[:, i] * e[:, j]).sum(-1) for i in range(n_fields) for j in range(i + 1, n_fields))
    logits = s["fields.bias"] + (w[index] * weight).sum((1, 2)) + pairs
    np.testing.assert_allclose(budget.predict(rows), 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(budget.pair_logits(rows.user, rows.item), logits, rtol=1e-4, atol=1e-5)


def test_the_pruned_model_learns_the_interaction(budget, split):
    # the planted label is the group x kind pair; 30% of the embedding cells still carry it (FM: 0.919)
    assert auc(split.test.label, budget.predict(split.test)) == pytest.approx(0.913, abs=0.02)


def test_save_and_load_keep_the_selection(budget, split, tmp_path):
    budget.save(tmp_path / "m")
    again = DNISFM.load(tmp_path / "m")
    np.testing.assert_array_equal(again.mask_, budget.mask_)
    np.testing.assert_allclose(again.alpha_, budget.alpha_)
    assert again.parameters_kept_ == budget.parameters_kept_ and again.search_history_ == budget.search_history_
    np.testing.assert_allclose(again.predict(split.test), budget.predict(split.test), rtol=1e-5, atol=1e-6)


def test_the_default_search_holds_out_training_rows_and_repeats(split):
    params = {**FAST, "epochs": 2, "search_epochs": 2, "early_stopping_patience": None}
    first = build_ctr("dnis-fm", params).fit(split.train, None)  # no validation rows needed
    again = build_ctr("dnis-fm", params).fit(split.train, None)
    assert len(first.search_history_) == 2 and len(first.history_) == 2
    np.testing.assert_array_equal(first.alpha_, again.alpha_)
    np.testing.assert_allclose(first.predict(split.test), again.predict(split.test), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params, message", [
    ({"prune_threshold": 0.5, "target_parameters": 0.5}, "not both"),
    ({"target_parameters": 1.5}, "target_parameters"),
    ({"search_fraction": 1.0}, "search_fraction"),
    ({"search_data": "test"}, "search_data"),
    ({"blocks": "fields"}, "blocks"),
    ({"n_blocks": 0}, "n_blocks"),
])
def test_bad_config_is_named(params, message):
    with pytest.raises(ConfigError, match=message):
        build_ctr("dnis-fm", params)


def test_bad_data_gives_one_clear_error(split, planted):
    with pytest.raises(RecstackError, match="search_data='valid' trains alpha on the validation rows"):
        build_ctr("dnis-fm", {**FAST, "search_data": "valid"}).fit(split.train, None)
    with pytest.raises(RecstackError, match="leaves no rows for the architecture step"):
        build_ctr("dnis-fm", FAST).fit(split.train.take(np.arange(3)), split.valid)
    with pytest.raises(TypeError, match="CTR model: fit it on recstack.data.ctr.CTRData"):
        build_ctr("dnis-fm", FAST).fit(planted.interactions)
