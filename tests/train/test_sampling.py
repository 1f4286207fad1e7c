import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import chi2

from recstack.train.sampling import EpochPairs, NoNegativesError, UniformNegativeSampler, positive_keys


def _matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    items = np.concatenate([np.asarray(r, dtype=int) for r in rows]) if rows else np.empty(0, int)
    return sp.csr_matrix((np.ones(len(items), np.float32), (users, items)), shape=(len(rows), n_items))


def test_negatives_are_never_positives(clustered):
    matrix = clustered.matrix()
    sampler = UniformNegativeSampler(matrix, rng=0)
    users = np.repeat(np.arange(clustered.n_users), 20)
    negatives = sampler.sample(users, n_negatives=5)
    assert negatives.shape == (len(users), 5) and negatives.dtype == np.int64
    dense = matrix.toarray()
    assert dense[users[:, None], negatives].sum() == 0
    assert negatives.min() >= 0 and negatives.max() < clustered.n_items


def test_negatives_are_uniform_over_the_non_positives():
    n_items, positives = 20, [0, 3, 7, 19]
    sampler = UniformNegativeSampler(_matrix([positives, [1]], n_items), rng=7)
    draws = sampler.sample(np.zeros(17_000, dtype=np.int64), n_negatives=2).ravel()
    counts = np.bincount(draws, minlength=n_items)
    assert counts[positives].sum() == 0
    observed = np.delete(counts, positives)
    expected = len(draws) / len(observed)
    statistic = ((observed - expected) ** 2 / expected).sum()
    # a fixed seed: the bound is the 99.9% quantile of chi-square with 15 degrees of freedom
    assert statistic < chi2.ppf(0.999, df=len(observed) - 1)


def test_a_user_with_one_negative_always_gets_it():
    sampler = UniformNegativeSampler(_matrix([[0, 1, 2, 4, 5], [0]], 6), rng=1)
    assert np.all(sampler.sample(np.zeros(500, dtype=int), 3) == 3)


def test_same_seed_same_draws_other_seed_other_draws(clustered):
    users = np.arange(clustered.n_users)
    first = UniformNegativeSampler(clustered.matrix(), rng=5).sample(users, 3)
    again = UniformNegativeSampler(clustered.matrix(), rng=np.random.default_rng(5)).sample(users, 3)
    other = UniformNegativeSampler(clustered.matrix(), rng=6).sample(users, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_user_owning_every_item_is_a_clear_error():
    sampler = UniformNegativeSampler(_matrix([[0, 1, 2], [1]], 3), rng=0)
    assert sampler.sample(np.array([1, 1]), 1).ravel().tolist() != []  # user 1 is fine
    with pytest.raises(NoNegativesError, match="user index 0 has interacted with all 3 items"):
        sampler.sample(np.array([1, 0]))


def test_is_positive_and_keys_handle_unsorted_duplicate_input():
    coo = sp.coo_matrix((np.ones(4), ([1, 0, 1, 1], [2, 1, 0, 2])), shape=(2, 3))
    unsorted = sp.csr_matrix((np.ones(4), np.array([1, 2, 0, 2]), np.array([0, 1, 4])), shape=(2, 3))
    for matrix in (coo, unsorted):
        assert positive_keys(matrix).tolist() == [1, 3, 5]  # (0,1) (1,0) (1,2) as user * 3 + item
    sampler = UniformNegativeSampler(unsorted)
    assert sampler.is_positive(np.array([0, 0, 1, 1]), np.array([1, 2, 0, 1])).tolist() == [True, False, True, False]
    empty = UniformNegativeSampler(sp.csr_matrix((2, 3)))
    assert not empty.is_positive(np.array([0]), np.array([0])).any()


def test_epoch_pairs_cover_every_pair_once_in_a_new_order_each_epoch(clustered):
    matrix = clustered.matrix()
    pairs = EpochPairs.from_matrix(matrix, batch_size=1000, rng=3)
    n = matrix.nnz
    assert pairs.n_pairs == n and len(pairs) == -(-n // 1000)
    epochs = []
    for _ in range(2):
        batches = list(pairs)
        assert [len(u) for u, _ in batches[:-1]] == [1000] * (len(batches) - 1)
        users = np.concatenate([u for u, _ in batches])
        items = np.concatenate([i for _, i in batches])
        assert np.asarray(matrix[users, items]).ravel().tolist() == [1.0] * n  # every pair is a positive
        assert len(np.unique(users * matrix.shape[1] + items)) == n  # ... and each comes exactly once
        epochs.append(users * matrix.shape[1] + items)
    assert not np.array_equal(epochs[0], epochs[1])


def test_epoch_pairs_without_shuffle_and_with_duplicate_events():
    matrix = sp.csr_matrix((np.ones(3), ([0, 0, 1], [2, 2, 1])), shape=(2, 3))  # (0, 2) twice
    pairs = EpochPairs.from_matrix(matrix, batch_size=5, shuffle=False)
    (users, items), = list(pairs)
    assert users.tolist() == [0, 1] and items.tolist() == [2, 1]
    with pytest.raises(ValueError, match="batch_size"):
        EpochPairs(users, items, batch_size=0)


def test_sampling_and_recstack_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import recstack, recstack.models, recstack.evaluate, recstack.train\n"
        "from recstack.train.sampling import UniformNegativeSampler\n"
        "import scipy.sparse as sp\n"
        "print(UniformNegativeSampler(sp.eye(3, 4, format='csr'), rng=0).sample([0, 1]).shape)\n"
        "try:\n    recstack.train.Trainer\nexcept ImportError:\n    print('trainer needs torch')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["(2, 1)", "trainer needs torch"]


@pytest.mark.parametrize("n_keys", [0, 1, 7, 5_000])
def test_positive_keys_membership_is_exact(n_keys):
    from recstack.train.sampling import PositiveKeys

    rng = np.random.default_rng(n_keys)
    keys = np.unique(rng.integers(0, 2**40, n_keys))
    queries = np.concatenate([rng.integers(0, 2**40, 20_000), keys, keys[:3] + 1]).reshape(-1, 1)
    np.testing.assert_array_equal(PositiveKeys(keys).contains(queries), np.isin(queries, keys))


def test_blockwise_sampling_draws_what_one_block_draws(clustered, monkeypatch):
    # the large-data path (keys formed, checked and gathered a block at a time) must not change a
    # single draw: the same seed gives the same negatives, memberships and epoch order
    import recstack.train.sampling as sampling

    matrix = clustered.matrix()
    users = np.repeat(np.arange(matrix.shape[0]), 7)

    def draw():
        sampler = UniformNegativeSampler(matrix, rng=11)
        negatives = sampler.sample(users, n_negatives=3)
        member = sampler.is_positive(users[:, None], np.arange(matrix.shape[1])[None, :])
        pairs = EpochPairs.from_matrix(matrix, batch_size=64, rng=5)
        order = pairs.order()
        return negatives, member, order, sampling.gathered(pairs.items, order), pairs.items[order]

    whole = draw()
    monkeypatch.setattr(sampling, "_BLOCK", 97)
    blocks = draw()
    assert len(users) > 10 * 97  # the blocked path really ran in blocks
    for a, b in zip(whole, blocks):
        assert a.shape == b.shape and np.array_equal(a, b)
    np.testing.assert_array_equal(whole[1], matrix.toarray()[users] > 0)
    # the epoch order is numpy's permutation of the same generator, held in 32 bits
    assert whole[2].dtype == np.int32
    assert np.array_equal(whole[2], np.random.default_rng(5).permutation(matrix.nnz))
    assert whole[3].dtype == np.int32 and np.array_equal(whole[3], whole[4])


def test_epoch_pairs_hold_int32_and_hand_out_int64(clustered):
    pairs = EpochPairs.from_matrix(clustered.matrix(), batch_size=50, rng=0)
    assert pairs.users.dtype == pairs.items.dtype == np.int32
    index, users, items = next(pairs.indexed())
    assert index.dtype == users.dtype == items.dtype == np.int64
