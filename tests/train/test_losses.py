import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.train import (
    PopularityNegativeSampler,
    UniformNegativeSampler,
    bce_loss,
    in_batch_softmax_loss,
    info_nce_loss,
    sampled_softmax_loss,
    softmax_loss,
    squared_loss,
)


def test_bce_by_hand():
    pos, neg = torch.tensor([0.0, 2.0]), torch.tensor([[0.0], [-1.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(math.log(0.5) + math.log(sig(2.0)) + math.log(0.5) + math.log(1 - sig(-1.0))) / 4
    assert bce_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_full_softmax_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    expected = -(3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert softmax_loss(logits, torch.tensor([2])).item() == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_with_log_q_by_hand():
    pos, neg = torch.tensor([1.0]), torch.tensor([[1.0, 0.0]])
    log_q = torch.tensor([[math.log(0.5), math.log(0.25)]])
    # corrected negative logits: 1 - log 0.5, 0 - log 0.25
    a, b = 1 - math.log(0.5), -math.log(0.25)
    expected = -(1.0 - math.log(math.exp(1.0) + math.exp(a) + math.exp(b)))
    assert sampled_softmax_loss(pos, neg, neg_log_q=log_q).item() == pytest.approx(expected, rel=1e-6)
    # uniform proposal: the correction is a constant shift of negatives only when given for both sides
    uniform = torch.full((1, 2), math.log(0.1))
    assert sampled_softmax_loss(pos, neg, uniform, torch.tensor([math.log(0.1)])).item() == pytest.approx(
        sampled_softmax_loss(pos, neg).item(), rel=1e-6)


def test_info_nce_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positive = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # cosine similarities: row0 vs (1, 0) and (1/sqrt2, 1/sqrt2); row1 vs the same
    c = 1 / math.sqrt(2)
    row0 = -(1 / t - math.log(math.exp(1 / t) + math.exp(c / t)))
    row1 = -(c / t - math.log(math.exp(0 / t) + math.exp(c / t)))
    assert info_nce_loss(anchor, positive, temperature=t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_in_batch_softmax_and_squared_loss():
    q, k = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    row0 = -(2 - math.log(math.exp(2) + math.exp(0)))
    row1 = -(1 - math.log(math.exp(0) + math.exp(1)))
    assert in_batch_softmax_loss(q, k).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert squared_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])).item() == 9.5


def test_popularity_sampler_follows_popularity_and_rejects_positives():
    # item 0 has 3 interactions, item 1 has 1, items 2..3 none (pseudo-count 1); user 3 owns item 0
    matrix = sp.csr_matrix((np.ones(4), ([0, 1, 2, 3], [0, 0, 1, 0])), shape=(5, 4))
    sampler = PopularityNegativeSampler(matrix, alpha=1.0, rng=0)
    np.testing.assert_allclose(sampler.probabilities, [3 / 6, 1 / 6, 1 / 6, 1 / 6])
    draws = sampler.sample(np.full(60_000, 4), n_negatives=1).ravel()  # user 4 has no positives
    share = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(share, [0.5, 1 / 6, 1 / 6, 1 / 6], atol=0.01)
    owned = sampler.sample(np.full(1000, 3), n_negatives=3)
    assert not np.any(owned == 0)
    np.testing.assert_allclose(sampler.log_q(np.array([0, 2])), np.log([0.5, 1 / 6]), rtol=1e-6)
    assert UniformNegativeSampler(matrix).log_q(np.array([1]))[0] == pytest.approx(-math.log(4))
