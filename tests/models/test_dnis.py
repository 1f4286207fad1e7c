import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.data import Interactions
from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.models import build
from recstack.models.factorization.dnis import DNIS, DNISConfig, _holdout_pairs, block_occurrences
from recstack.models.kernels.dimension_search import frequency_blocks, prune_cells
from recstack.train.sampling import positive_keys

FAST = dict(search_epochs=12, epochs=6, batch_size=512, learning_rate=0.01, retrain_learning_rate=0.002,
            arch_learning_rate=0.05, n_blocks=4, verbose=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(clustered_split):
    return DNIS(DNISConfig(**FAST, prune_threshold=0.9)).fit(clustered_split.train, clustered_split.valid)


def test_beats_popularity_and_keeps_fewer_parameters(fitted, clustered_split):
    history, test = clustered_split.history("test"), clustered_split.test
    ndcg = evaluate(fitted, history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    pop = evaluate(build("pop").fit(clustered_split.train), history=history, test=test, metrics=["NDCG@10"])["NDCG@10"]
    assert ndcg > 0.4 and ndcg > 3 * pop
    assert 0.0 < fitted.parameters_kept_ < 1.0  # the search removed something and kept something


def test_pruned_dimensions_are_zero_and_the_kept_share_is_counted_by_hand(fitted, clustered_split):
    m = fitted
    train = clustered_split.train
    assert m.dimension_mask_.shape == (2, 4, 64) and m.block_dimensions_.shape == (2, 4)
    np.testing.assert_array_equal(m.block_dimensions_, m.dimension_mask_.sum(axis=2))
    np.testing.assert_array_equal(m.dimension_mask_, np.abs(m.selection_weights_) >= 0.9)
    for factors, block, mask in ((m.user_factors_, m.user_block_, m.dimension_mask_[0]),
                                 (m.item_factors_, m.item_block_, m.dimension_mask_[1])):
        assert not factors[~mask[block]].any()  # every pruned (row, dimension) is exactly zero
    by_hand = sum(mask.sum() for mask in m.dimension_mask_[0][m.user_block_]) + \
        sum(mask.sum() for mask in m.dimension_mask_[1][m.item_block_])
    assert m.parameters_kept_ == pytest.approx(by_hand / (64 * (train.n_users + train.n_items)))
    users = np.arange(20)
    np.testing.assert_allclose(m.score(users, train), m.user_factors_[users] @ m.item_factors_.T, rtol=1e-5, atol=1e-6)
    # the two stages each keep their own log; the search weights stay a soft selection in [0, 1]
    assert len(m.search_history_) >= 1 and len(m.history_) >= 1
    assert m.selection_weights_.min() >= 0.0 and m.selection_weights_.max() <= 1.0
    assert (m.selection_weights_ < 1.0).any()


def test_frequency_blocks_put_the_most_frequent_ids_first_in_equal_blocks():
    counts = np.array([5, 1, 9, 1, 3, 7, 0])
    block = frequency_blocks(counts, 3)
    # order by count: 2(9) 5(7) 0(5) | 4(3) 1(1) | 3(1) 6(0); ties to the lower index
    np.testing.assert_array_equal(block, [0, 1, 0, 2, 1, 0, 2])
    assert np.bincount(frequency_blocks(np.arange(10), 16), minlength=16).max() == 1  # more blocks than ids


def test_block_occurrences_count_users_positives_and_negatives():
    user_block, item_block = np.array([0, 1, 1]), np.array([1, 0, 1, 1])
    counts = block_occurrences(user_block, item_block, users=np.array([0, 2, 2]), pos=np.array([0, 1, 3]),
                               neg=np.array([[1, 2], [0, 1], [3, 3]]), n_blocks=2)
    np.testing.assert_array_equal(counts, [[1, 2], [3, 6]])


def test_prune_by_threshold_and_by_parameter_budget():
    alpha = np.array([[[1.0, 0.2, 0.7]], [[1.0, 0.05, 1.0]]])  # 2 fields, 1 block each, 3 dimensions
    sizes = np.array([[10], [30]])
    np.testing.assert_array_equal(prune_cells(alpha, sizes, 0.5, None), [[[1, 0, 1]], [[1, 0, 1]]])
    # budget 40% of 120 = 48, greedily in order of |alpha| (ties to the larger column scale):
    # item dim 2 (30, used 30), item dim 0 (60: skipped), user dim 0 (40), user dim 2 (50: skipped), ...
    scale = np.array([[[0.0, 0.0, 0.0]], [[1.0, 0.0, 2.0]]])
    keep = prune_cells(alpha, sizes, 0.5, 0.4, scale)
    np.testing.assert_array_equal(keep, [[[1, 0, 0]], [[0, 0, 1]]])
    assert (keep * sizes[..., None]).sum() <= 0.4 * 3 * 40


def test_holdout_keeps_one_pair_per_user_and_partitions_the_pairs(clustered_split):
    matrix = clustered_split.train.matrix()
    kept, held = _holdout_pairs(matrix, 0.1, np.random.default_rng(0))
    keys = positive_keys(matrix)
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), keys)
    n = matrix.shape[1]
    per_user = np.bincount(held // n, minlength=matrix.shape[0])
    np.testing.assert_array_equal(per_user, np.floor(np.diff(matrix.indptr) * 0.1 + 0.5))
    assert set(np.unique(kept // n)) == set(np.flatnonzero(np.diff(matrix.indptr)))
    lone = sp.csr_matrix(([1.0], ([0], [2])), shape=(1, 4))
    kept, held = _holdout_pairs(lone, 0.9, np.random.default_rng(0))
    assert len(held) == 0 and len(kept) == 1  # a user's only pair is never held out


def test_the_selection_weights_learn_from_the_search_data_only(clustered_split):
    """With search_data='valid', alpha follows the validation part: a validation part of random items
    (that the embeddings cannot predict) must pull the weights down more than the real one."""
    train, valid = clustered_split.train, clustered_split.valid
    rng = np.random.default_rng(1)
    noise = Interactions(user=valid.user, item=rng.integers(0, valid.n_items, len(valid)).astype(np.int32),
                         users=valid.users, items=valid.items)
    params = {**FAST, "search_data": "valid", "epochs": 1, "early_stopping_patience": None, "search_epochs": 8}
    real = DNIS(DNISConfig(**params)).fit(train, valid)
    fake = DNIS(DNISConfig(**params)).fit(train, noise)
    assert fake.selection_weights_.mean() < real.selection_weights_.mean() - 0.05


def test_retrain_from_scratch_and_a_budget(clustered_split):
    train = clustered_split.train
    model = DNIS(DNISConfig(**{**FAST, "search_epochs": 3, "epochs": 2}, retrain="scratch",
                            target_parameters=0.5)).fit(train)
    assert model.parameters_kept_ <= 0.5 + 1e-9 and model.parameters_kept_ > 0.4
    assert len(model.history_) == 2 and model.history_[0]["NDCG@10"] is None  # no valid data: all epochs


def test_errors(clustered_split):
    with pytest.raises(RecstackError, match="search_data='valid' needs validation"):
        DNIS(DNISConfig(**FAST, search_data="valid")).fit(clustered_split.train)
    with pytest.raises(RecstackError, match="empty training data"):
        DNIS(DNISConfig(**FAST)).fit(clustered_split.train.take(np.zeros(len(clustered_split.train), dtype=bool)))
    with pytest.raises(Exception, match="target_parameters"):
        build("dnis", {"target_parameters": 1.5})
