"""LIRDRec: the DCT channel, progressive weight copying (schedule, fusion, copy), the loss by hand,
items with no ID embedding, learning on the clustered fixture, and the error without modalities.

The contract suite (tests/contract) covers LIRDRec too, with the same modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recstack.errors import RecstackError
from recstack.models import build
from recstack.models.content.lirdrec import copy_weights, fuse, spectral_features
from conftest import MODALITY_FAST, built_with_items
from recstack.testing import held_out_ndcg as ndcg

FAST = MODALITY_FAST
PINNED_NDCG = 0.557  # measured with FAST, seed 0 (pop: 0.099)


@pytest.fixture(scope="module")
def data(clustered_with_items):
    return clustered_with_items


def built(data, **params):
    return built_with_items("lirdrec", data, **params)


# ---- the multimodal transformation -------------------------------------------------------------------
def test_spectral_channel_is_the_orthonormal_dct_ii_of_each_modality_concatenated():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))

    def dct_matrix(n):  # C[k, j] = s_k cos(pi (2j + 1) k / 2n), s_0 = sqrt(1/n), s_k = sqrt(2/n)
        k, j = np.arange(n)[:, None], np.arange(n)[None, :]
        scale = np.where(k == 0, np.sqrt(1 / n), np.sqrt(2 / n))
        return scale * np.cos(np.pi * (2 * j + 1) * k / (2 * n))

    out = spectral_features([a, b])
    assert out.shape == (5, 7) and out.dtype == np.float32
    assert np.allclose(out, np.hstack([a @ dct_matrix(4).T, b @ dct_matrix(3).T]), atol=1e-6)
    assert np.allclose(np.linalg.norm(out[:, :4], axis=1), np.linalg.norm(a, axis=1), atol=1e-5)  # orthonormal


# ---- progressive weight copying ----------------------------------------------------------------------
def test_copy_schedule_shrinks_the_attention_weight_by_base_to_the_epoch():
    w1, w2 = copy_weights(0.9, 0.1, 1, 0.9)
    assert w1 == pytest.approx(0.81 / 0.91) and w2 == pytest.approx(0.1 / 0.91)
    w1b, w2b = copy_weights(w1, w2, 2, 0.9)
    assert w1b == pytest.approx(w1 * 0.81 / (w1 * 0.81 + w2)) and w1b + w2b == pytest.approx(1.0)
    weights = [0.9, 0.1]
    for epoch in range(1, 30):
        weights = copy_weights(*weights, epoch, 0.9)
    assert weights[0] < 1e-15  # base^(1 + 2 + ... + 29): the copied weights take over
    assert copy_weights(0.9, 0.1, 5, 1.0) == pytest.approx((0.9, 0.1))  # base 1: no decay


def test_fusion_weights_each_user_channel_by_a_softmax_of_attention_and_copied_weights():
    channels = [torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[3.0, 0.0], [1.0, 1.0]])]
    logits = torch.tensor([[0.5, -0.5], [2.0, 0.0]])
    theta = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    fused, alpha = fuse(channels, logits, theta, 0.75, 0.25)
    # user 0: softmax(0.75 * [0.5, -0.5] + 0.25 * [0, 1]) = softmax([0.375, -0.125])
    a0 = np.exp([0.375, -0.125]) / np.exp([0.375, -0.125]).sum()
    a1 = np.exp([1.75, 0.25]) / np.exp([1.75, 0.25]).sum()
    assert np.allclose(alpha.numpy(), [a0, a1], atol=1e-6)
    expected = [[a0[0] * 1, a0[0] * 2, a0[1] * 3, 0.0], [0.0, a1[0] * 1, a1[1] * 1, a1[1] * 1]]
    assert np.allclose(fused.numpy(), expected, atol=1e-6)


def test_each_epoch_copies_the_last_training_attention_into_theta(data):
    model, net, _ = built(data)
    assert torch.equal(net.last_alpha, net.theta.detach())
    net.last_alpha.copy_(torch.full_like(net.last_alpha, 0.25))
    net.start_epoch(0.9)
    assert torch.equal(net.theta.detach(), torch.full_like(net.theta, 0.25)) and int(net.epoch) == 1
    assert net.mix.tolist() == pytest.approx([0.81 / 0.91, 0.1 / 0.91])
    batch = next(iter(model._pairs()))
    model.batch_loss(net, tuple(torch.as_tensor(x) for x in batch))
    assert torch.allclose(net.last_alpha.sum(1), torch.ones(len(net.last_alpha)))  # a softmax per user


# ---- the network and the loss ------------------------------------------------------------------------
def test_items_have_no_id_embedding_and_channels_are_per_modality_plus_shared(data):
    _, net, split = built(data)
    assert net.n_channels == 3  # text, structure, the DCT channel
    for name, parameter in net.named_parameters():
        assert parameter.shape[0] != split.train.n_items, name  # nothing item-sized is learnt freely
    users, items, alpha = net()
    assert users.shape == (split.train.n_users, 3 * 32) and items.shape == (split.train.n_items, 3 * 32)
    assert alpha.shape == (split.train.n_users, 3)


def test_loss_is_bpr_plus_l2_on_the_whole_final_tables(data):
    model, net, _ = built(data, reg=0.01)
    users, pos, neg = (torch.as_tensor(x) for x in next(iter(model._pairs())))
    loss = model.batch_loss(net, (users, pos, neg))
    u, i, _ = net()
    neg = neg.reshape(len(users), -1)
    pos_scores = (u[users] * i[pos]).sum(-1, keepdim=True)
    neg_scores = (u[users].unsqueeze(1) * i[neg]).sum(-1)
    expected = -F.logsigmoid(pos_scores - neg_scores).mean() + 0.01 * ((u ** 2).mean() + (i ** 2).mean())
    assert loss.detach().item() == pytest.approx(expected.detach().item(), rel=1e-5)
    # items: propagated features plus one hop on the frozen kNN item graph
    nodes = torch.cat([F.normalize(torch.cat([p, enc(getattr(net, f"input_{c}"))]), dim=1)
                       for c, (p, enc) in enumerate(zip(net.preferences, net.encoders))], dim=1)
    a = net.adjacency.to_dense()
    summed = nodes + a @ nodes + a @ (a @ nodes)  # n_layers = 2, layers summed
    e_i = summed[net.n_users:]
    assert torch.allclose(i, e_i + net.item_graph.to_dense() @ e_i, atol=1e-4)


# ---- learning ----------------------------------------------------------------------------------------
def test_learns_on_the_clustered_fixture(data):
    dataset, split = data
    model = build("lirdrec", FAST).use_dataset(dataset).fit(split.train, split.valid)
    value = ndcg(model, split)
    assert value > 3 * ndcg(build("pop").fit(split.train), split)
    assert value == pytest.approx(PINNED_NDCG, abs=0.03)


def test_modalities_are_required(data):
    dataset, split = data
    with pytest.raises(RecstackError, match=r"`modalities` is empty: name at least one, e.g. modalities: \[text\]"):
        build("lirdrec", {**FAST, "modalities": []}).use_dataset(dataset).fit(split.train)
    with pytest.raises(RecstackError, match="needs the item modalities text, structure before fit: call "
                                            r"model.use_dataset\(dataset\)"):
        build("lirdrec", FAST).fit(split.train, split.valid)


def test_runs_on_mmrec_image_and_text_files(tmp_path):
    """MMRec's layout (the reference's setting): .inter with x_label 0/1/2, image_feat.npy, text_feat.npy."""
    from recstack.data.modalities import read_mmrec
    from recstack.split.base import Split

    rng = np.random.default_rng(0)
    folder = tmp_path / "baby"
    folder.mkdir()
    lines = ["userID\titemID\tx_label"]
    for u in range(30):
        lines += [f"{u}\t{i}\t{max(0, n - 3)}" for n, i in enumerate(rng.choice(20, 6, replace=False))]
    (folder / "baby.inter").write_text("\n".join(lines) + "\n")
    np.save(folder / "image_feat.npy", rng.normal(size=(20, 8)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.normal(size=(20, 5)).astype(np.float32))
    mmrec = read_mmrec(folder)
    split = Split(*mmrec.parts, method="mmrec")
    params = {**FAST, "modalities": ["image", "text"], "epochs": 2, "knn_k": 3, "embedding_size": 8}
    model = build("lirdrec", params).use_dataset(mmrec.dataset).fit(split.train, split.valid)
    assert model.item_factors_.shape == (split.train.n_items, 3 * 8)  # image, text, shared DCT channel
    scores = model.score(np.arange(5), split.history("test"))
    assert scores.shape == (5, split.train.n_items) and np.isfinite(scores).all()
