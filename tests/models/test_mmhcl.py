"""MMHCL: both hypergraphs and the InfoNCE term by hand, the forward and the loss by hand, learning on the
clustered fixture, and the error without modalities.

The contract suite (tests/contract) covers MMHCL too, with the same modalities."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recstack.errors import RecstackError
from recstack.models import build
from recstack.models.content.mmhcl import info_nce, item_hypergraph, user_hypergraph
from conftest import MODALITY_FAST, built_with_items
from recstack.testing import held_out_ndcg as ndcg

FAST = MODALITY_FAST
PINNED_NDCG = 0.576  # measured with FAST, seed 0 (pop: 0.099)


@pytest.fixture(scope="module")
def data(clustered_with_items):
    return clustered_with_items


def built(data, **params):
    return built_with_items("mmhcl", data, **params)


# ---- the hypergraphs ---------------------------------------------------------------------------------
def test_item_hypergraph_joins_each_modalitys_knn_hyperedges():
    a = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])  # kNN (k=2): {0,1} {1,0} {2,3} {3,2}
    b = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])  # kNN (k=2): {0,2} {1,3} {2,0} {3,1}
    # H = [B_a | B_b]; (H H^T)_uv = shared hyperedges: B_a B_a^T + B_b B_b^T
    shared = np.array([[4, 2, 2, 0], [2, 4, 0, 2], [2, 0, 4, 2], [0, 2, 2, 4]], dtype=float)
    degree = shared.sum(1)  # 8 each
    expected = shared / np.sqrt(degree[:, None] * degree[None, :])
    out = item_hypergraph([a, b], 2)
    assert np.allclose(out.toarray(), expected)
    assert np.allclose(out.toarray(), out.toarray().T)  # symmetric: propagated with symmetric_matmul


def test_user_hypergraph_counts_shared_items_without_self_loops_row_normalised():
    r = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=float))
    expected = np.array([[0, 1, 2, 0], [1, 0, 2, 0], [2, 2, 0, 0], [0, 0, 0, 0]], dtype=float)
    expected[:3] /= expected[:3].sum(1, keepdims=True)  # user 3 shares nothing: an empty row
    assert np.allclose(user_hypergraph(r).toarray(), expected)
    r2 = r.copy()
    r2.data[:] = 5.0  # ratings are binarised
    assert np.allclose(user_hypergraph(r2).toarray(), expected)


# ---- the contrastive term ----------------------------------------------------------------------------
@pytest.mark.parametrize("block", [4096, 2])
def test_info_nce_by_hand(block):
    rng = np.random.default_rng(0)
    a, b, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), 0.6
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    losses = []
    for n in range(5):
        between = [np.exp(na[n] @ nb[m] / t) for m in range(5)]
        within = [np.exp(na[n] @ na[m] / t) for m in range(5) if m != n]
        losses.append(-np.log(between[n] / (sum(between) + sum(within))))
    out = info_nce(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), t, block=block)
    assert out.item() == pytest.approx(np.mean(losses), rel=1e-9)


# ---- the network and the loss ------------------------------------------------------------------------
def test_forward_and_loss_by_hand(data):
    model, net, split = built(data, reg=0.01, item_loss_weight=0.2, user_loss_weight=0.5, temperature=0.3)
    users, pos, neg = (torch.as_tensor(x) for x in next(iter(model._pairs())))
    loss = model.batch_loss(net, (users, pos, neg))
    a, gi, gu = net.adjacency.to_dense(), net.item_graph.to_dense(), net.user_graph.to_dense()
    e0 = net.cf
    cf = (e0 + a @ e0 + a @ (a @ e0)) / 3  # n_layers = 2, layers averaged
    z_i = gi @ (gi @ net.item_hg)  # n_item_layers = 2
    z_u = gu @ (gu @ (gu @ net.user_hg))  # n_user_layers = 3
    u = cf[:net.n_users] + F.normalize(z_u, dim=1)
    i = cf[net.n_users:] + F.normalize(z_i, dim=1)
    assert torch.allclose(net()[0], u, atol=1e-5) and torch.allclose(net()[1], i, atol=1e-5)
    neg = neg.reshape(len(users), -1)
    pos_scores = (u[users] * i[pos]).sum(-1, keepdim=True)
    neg_scores = (u[users].unsqueeze(1) * i[neg]).sum(-1)
    l2 = (u[users] ** 2).sum() + (i[pos] ** 2).sum() + (i[neg] ** 2).sum()
    expected = (-F.logsigmoid(pos_scores - neg_scores).mean() + 0.01 / 2 * l2 / len(users)
                + 0.2 * info_nce(i, z_i, 0.3) + 0.5 * info_nce(u, z_u, 0.3))
    assert loss.detach().item() == pytest.approx(expected.detach().item(), rel=1e-5)


# ---- learning ----------------------------------------------------------------------------------------
def test_learns_on_the_clustered_fixture(data):
    dataset, split = data
    model = build("mmhcl", FAST).use_dataset(dataset).fit(split.train, split.valid)
    value = ndcg(model, split)
    assert value > 3 * ndcg(build("pop").fit(split.train), split)
    assert value == pytest.approx(PINNED_NDCG, abs=0.03)


def test_modalities_are_required(data):
    dataset, split = data
    with pytest.raises(RecstackError, match=r"`modalities` is empty: name at least one, e.g. modalities: \[text\]"):
        build("mmhcl", {**FAST, "modalities": []}).use_dataset(dataset).fit(split.train)
    with pytest.raises(RecstackError, match="needs the item modalities text, structure before fit: call "
                                            r"model.use_dataset\(dataset\)"):
        build("mmhcl", FAST).fit(split.train, split.valid)
