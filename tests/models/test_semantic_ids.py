"""Item tokenizers: the shared interface (every registered tokenizer), the prefix trie, RQ-VAE and residual k-means."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.models import ConfigError
from recstack.models.generative import rqvae as rqvae_module
from recstack.models.generative.semantic_ids import (
    PAD,
    TOKENIZERS,
    PrefixTrie,
    TokenizerError,
    build_tokenizer,
    combine_item_embeddings,
    disambiguate,
    load_tokenizer,
)
from conftest import make_clustered

N_ITEMS, N_CENTERS = 120, 6
RQVAE_FAST = dict(n_levels=2, codebook_size=16, embedding_size=8, hidden_sizes=(32,), epochs=30, batch_size=64,
                  learning_rate=3e-3, verbose=False)
FAST = {
    "rqvae": RQVAE_FAST,
    "rkmeans": dict(n_levels=2, codebook_size=8),
    "random": dict(base=4),
    "sequential": dict(base=4),
    "collaborative": dict(n_clusters=3, max_cluster_size=12),
    "semantic": dict(depth=2),
    "hybrid": dict(n_clusters=3, max_cluster_size=12),
    "hkmeans": dict(n_clusters=3, n_levels=2),
}
GENRES = np.array(["Drama", "Comedy", "Drama|Romance", "Action|Thriller", "Comedy|Romance", ""], dtype=object)


def synthetic_embeddings(n: int = N_ITEMS, n_centers: int = N_CENTERS, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, dim)) * 3.0
    labels = np.arange(n) % n_centers
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.fixture(scope="module")
def inputs():
    torch.set_num_threads(1)
    embeddings, _ = synthetic_embeddings()
    interactions = make_clustered(n_users=150, n_items=N_ITEMS, per_user=15)
    table = {"genres": GENRES[np.arange(N_ITEMS) % len(GENRES)]}
    return dict(embeddings=embeddings, interactions=interactions, item_table=table)


@pytest.fixture(scope="module")
def fitted(inputs):
    return {name: build_tokenizer(name, params).fit(**inputs) for name, params in FAST.items()}


def _code(row: np.ndarray) -> tuple[int, ...]:
    return tuple(int(t) for t in row[row != PAD])


def test_every_registered_tokenizer_is_in_the_suite():
    assert set(FAST) == set(TOKENIZERS)


@pytest.mark.parametrize("name", sorted(FAST))
def test_codes_are_unique_prefix_free_and_within_level_sizes(fitted, name):
    tok = fitted[name]
    codes = tok.codes_
    assert codes.shape[0] == N_ITEMS and codes.dtype == np.int64
    assert np.all((codes >= 0) | (codes == PAD))
    assert not np.any((codes[:, :-1] == PAD) & (codes[:, 1:] != PAD))  # padding only at the tail
    assert np.all(codes < np.asarray(tok.level_sizes_)[None, :])
    all_codes = [_code(row) for row in codes]
    assert len(set(all_codes)) == N_ITEMS
    full = set(all_codes)
    for code in all_codes:  # no code is the start of another
        assert not any(code[:k] in full for k in range(1, len(code)))


@pytest.mark.parametrize("name", sorted(FAST))
def test_lookups_and_trie_agree_with_brute_force(fitted, name):
    tok = fitted[name]
    all_codes = [_code(row) for row in tok.codes_]
    for item, code in enumerate(all_codes):
        assert tok.code_of(item) == code
        assert tok.item_of(code) == item
    assert tok.item_of(all_codes[0][:-1]) == -1  # a proper prefix is no item
    prefixes = {code[:1] for code in all_codes} | {code[:2] for code in all_codes}
    for prefix in prefixes:
        expected = sorted(i for i, code in enumerate(all_codes) if code[:len(prefix)] == prefix)
        assert sorted(tok.items_of_prefix(prefix).tolist()) == expected
        following = sorted({code[len(prefix)] for code in all_codes if code[:len(prefix)] == prefix and len(code) > len(prefix)})
        assert tok.trie.next_tokens(prefix).tolist() == following
    assert len(tok.items_of_prefix([])) == N_ITEMS
    # batched: beam nodes at depth 1 -> allowed second tokens as a mask
    trie, size = tok.trie, max(tok.level_sizes_)
    firsts = sorted({code[0] for code in all_codes})
    nodes = trie.step(0, np.zeros(len(firsts), dtype=np.int64), np.array(firsts))
    assert np.all(nodes >= 0)
    mask = trie.allowed_mask(1, nodes, size)
    for row, first in enumerate(firsts):
        assert np.flatnonzero(mask[row]).tolist() == tok.trie.next_tokens([first]).tolist()


@pytest.mark.parametrize("name", sorted(FAST))
def test_save_load_round_trip_without_pickle(fitted, name, tmp_path):
    tok = fitted[name]
    tok.save(tmp_path / name)
    json.loads((tmp_path / name / "model.json").read_text())
    with np.load(tmp_path / name / "state.npz", allow_pickle=False) as npz:
        assert "codes_" in npz.files
    loaded = load_tokenizer(tmp_path / name)
    assert type(loaded) is type(tok) and loaded.config == tok.config
    np.testing.assert_array_equal(loaded.codes_, tok.codes_)
    assert loaded.stats() == tok.stats()
    assert loaded.item_of(tok.code_of(7)) == 7


@pytest.mark.parametrize("name", sorted(FAST))
def test_fit_is_deterministic_under_a_seed(inputs, fitted, name):
    again = build_tokenizer(name, FAST[name]).fit(**inputs)
    np.testing.assert_array_equal(again.codes_, fitted[name].codes_)


@pytest.mark.parametrize("name", sorted(FAST))
def test_stats_report_utilisation_collisions_and_token_counts(fitted, name):
    tok = fitted[name]
    stats = tok.stats()
    base = tok.n_base_levels_
    for level in range(base):
        assert stats["utilisation"][level] == pytest.approx(len(np.unique(tok.codes_[:, level][tok.codes_[:, level] != PAD]))
                                                             / tok.level_sizes_[level])
    distinct = len({_code(row[:base]) for row in tok.codes_})
    assert stats["collision_rate"] == pytest.approx(1 - distinct / N_ITEMS)
    assert stats["vocab_size"] == sum(tok.level_sizes_) == tok.token_offsets()[-1]
    assert stats["code_length"] == tok.codes_.shape[1]
    assert stats["trie_nodes"] >= N_ITEMS + 1


def test_disambiguation_numbers_items_sharing_a_code_in_item_order():
    codes, rate, largest = disambiguate(np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 4]]))
    assert codes[:, -1].tolist() == [0, 1, 0, 2, 0]
    assert rate == pytest.approx(1 - 3 / 5) and largest == 3


def test_prefix_trie_by_hand():
    trie = PrefixTrie(np.array([[0, 1, PAD], [0, 2, 5], [1, PAD, PAD], [0, 2, 3]]))
    assert trie.next_tokens([]).tolist() == [0, 1]
    assert trie.next_tokens([0]).tolist() == [1, 2]
    assert trie.next_tokens([0, 2]).tolist() == [3, 5]
    assert trie.next_tokens([0, 1]).tolist() == []  # a complete code
    assert sorted(trie.items_of_prefix([0, 2]).tolist()) == [1, 3]
    assert trie.items_of_prefix([7]).tolist() == []
    nodes = trie.step(0, np.array([0, 0, 0]), np.array([0, 1, 4]))
    assert nodes[2] == -1
    assert trie.item_at(1, nodes).tolist() == [-1, 2, -1]
    deeper = trie.step(1, nodes, np.array([2, 0, 0]))
    assert trie.allowed_mask(2, deeper, 6).astype(int).tolist() == [[0, 0, 0, 1, 0, 1], [0] * 6, [0] * 6]
    assert trie.item_at(3, trie.step(2, deeper[:1], np.array([5]))).tolist() == [1]
    assert trie.total_nodes() == 1 + 2 + 2 + 2


def test_prefix_trie_rejects_duplicates_and_prefixes():
    with pytest.raises(TokenizerError, match="unique and prefix-free"):
        PrefixTrie(np.array([[0, 1], [0, 1]]))
    with pytest.raises(TokenizerError, match="prefix-free"):
        PrefixTrie(np.array([[0, 1, PAD], [0, 1, 2]]))


# ---- RQ-VAE --------------------------------------------------------------------------------------
def test_rqvae_codes_follow_the_embedding_clusters(inputs, fitted):
    tok = fitted["rqvae"]
    _, labels = synthetic_embeddings()
    first = tok.codes_[:, 0]
    purity = np.mean([np.bincount(labels[first == c]).max() / np.sum(first == c) for c in np.unique(first)])
    assert purity > 0.95  # items of one cluster share their first token
    assert tok.reconstruction_error_ < 0.5
    assert tok.codebooks_.shape == (2, 16, 8) and len(tok.history_) == RQVAE_FAST["epochs"]
    # assign() reruns the encoder in numpy: same base codes as training without torch
    assert np.mean(tok.assign(inputs["embeddings"]) == tok.codes_[:, :2]) > 0.99


def test_rqvae_collapse_guard_keeps_codes_alive(inputs, fitted):
    guarded = fitted["rqvae"]
    unguarded = build_tokenizer("rqvae", {**RQVAE_FAST, "reset_dead_codes": False}).fit(inputs["embeddings"])
    assert guarded.dead_code_resets_ > 0 and unguarded.dead_code_resets_ == 0
    # 6 well-separated clusters, 16 codes: most die without restarts (the last epoch has none)
    assert guarded.stats()["utilisation"][0] >= 0.9 > 0.7 > unguarded.stats()["utilisation"][0]
    assert guarded.collision_rate_ < unguarded.collision_rate_


def test_dead_codes_are_reseeded_from_data_residuals_and_lose_their_adam_state():
    torch.manual_seed(0)
    data = torch.from_numpy(synthetic_embeddings(40, 4, 6)[0])
    net = rqvae_module._Net(6, (8,), 3, 2, 5)
    optimizer = torch.optim.Adam(net.parameters())
    net.codebooks.sum().backward()
    optimizer.step()
    net.usage[0] = torch.tensor([3.0, 0.0, 1.0, 0.0, 2.0])
    net.usage[1] = 1.0
    before = net.codebooks.detach().clone()
    reset = rqvae_module.RQVAETokenizer._reset_dead_codes(net, optimizer, data, np.random.default_rng(0))
    after = net.codebooks.detach()
    assert reset == 2
    torch.testing.assert_close(after[0, [0, 2, 4]], before[0, [0, 2, 4]])  # live codes untouched
    torch.testing.assert_close(after[1], before[1])
    with torch.no_grad():
        latent = net.encoder(data)
    for dead in (1, 3):  # each re-seeded codeword is one item's level-0 residual (its latent vector)
        # a plain difference: cdist's matmul form (|a|^2 + |b|^2 - 2ab) leaves sqrt(eps)-sized noise
        # whose size depends on the CPU's kernels (0 on one machine, 7e-4 on another)
        distance = (latent - after[0, dead]).norm(dim=1).min()
        assert distance < 1e-5 * latent.abs().max()
    state = optimizer.state[net.codebooks]
    assert torch.all(state["exp_avg"][0, [1, 3]] == 0) and torch.all(state["exp_avg_sq"][0, [1, 3]] == 0)
    assert torch.all(state["exp_avg"][0, [0, 2, 4]] != 0)


def test_rqvae_seed_changes_the_codes(inputs, fitted):
    other = build_tokenizer("rqvae", {**RQVAE_FAST, "seed": 1}).fit(inputs["embeddings"])
    assert not np.array_equal(other.codes_, fitted["rqvae"].codes_)


# ---- residual k-means ------------------------------------------------------------------------------
def test_residual_kmeans_first_level_recovers_clusters(inputs, fitted):
    tok = build_tokenizer("rkmeans", {"n_levels": 2, "codebook_size": N_CENTERS}).fit(inputs["embeddings"])
    _, labels = synthetic_embeddings()
    first = tok.codes_[:, 0]
    assert all(len(np.unique(labels[first == c])) == 1 for c in range(N_CENTERS))
    np.testing.assert_array_equal(tok.assign(inputs["embeddings"]), tok.codes_[:, :2])
    # with 120 items and 2 x 6 codes at least 120 - 36 items collide; the extra token resolves them
    assert tok.collision_rate_ >= 1 - 36 / N_ITEMS and tok.level_sizes_[-1] == tok.max_group_size_


def test_codebooks_larger_than_the_data_still_fit():
    embeddings, _ = synthetic_embeddings(10, 2, 4)
    tok = build_tokenizer("rkmeans", {"n_levels": 2, "codebook_size": 32}).fit(embeddings)
    assert len({tuple(r) for r in tok.codes_}) == 10 and tok.stats()["utilisation"][0] <= 10 / 32


# ---- inputs and errors -----------------------------------------------------------------------------
def test_combine_item_embeddings_normalises_each_source():
    class Fitted:
        item_factors_ = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)

    text = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    combined = combine_item_embeddings(text, Fitted(), weights=[1.0, 0.5])
    assert combined.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(combined[:, :3], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(combined[:, 3:], axis=1), [0.5, 0.0, 0.5], rtol=1e-6)
    with pytest.raises(TokenizerError, match="part 1 has 2 rows"):
        combine_item_embeddings(text, text[:2])


def test_missing_or_bad_inputs_name_the_fix(inputs):
    with pytest.raises(TokenizerError, match="fit\\(embeddings=...\\)"):
        build_tokenizer("rqvae", RQVAE_FAST).fit(interactions=inputs["interactions"])
    with pytest.raises(TokenizerError, match="NaN"):
        build_tokenizer("rkmeans").fit(np.full((4, 2), np.nan))
    with pytest.raises(TokenizerError, match="disagree"):
        build_tokenizer("rkmeans", FAST["rkmeans"]).fit(inputs["embeddings"][:50], interactions=inputs["interactions"])
    with pytest.raises(TokenizerError, match="fitted on 16"):
        build_tokenizer("rkmeans", FAST["rkmeans"]).fit(inputs["embeddings"]).assign(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="unknown item tokenizer 'rqvea'"):
        build_tokenizer("rqvea")
    with pytest.raises(ConfigError, match="did you mean 'codebook_size'"):
        build_tokenizer("rqvae", {"codebook_sizes": 8})


def test_tigers_collaborative_item_vectors_do_not_depend_on_the_thread_count():
    # float32 randomized SVD moved them by up to 8e-5 between one and two BLAS threads (or another
    # CPU kind), and residual k-means then gave 99% of ml-100k's items other codes (issue 21)
    from threadpoolctl import threadpool_limits

    from recstack.models.generative.codes import stable_item_vectors

    matrix = sp.random(300, 200, density=0.1, random_state=3, format="csr", dtype=np.float32)
    with threadpool_limits(1):
        one = stable_item_vectors(matrix, 16, seed=0)
    with threadpool_limits(2):
        two = stable_item_vectors(matrix, 16, seed=0)
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-9)


def test_stable_item_vectors_match_the_svd_up_to_a_fixed_sign():
    from recstack.models.generative.codes import stable_item_vectors

    rng = np.random.default_rng(1)
    matrix = sp.random(60, 40, density=0.2, random_state=2, format="csr", dtype=np.float64)
    vectors = stable_item_vectors(matrix, 5, seed=0)
    _, s, vt = np.linalg.svd(matrix.toarray(), full_matrices=False)
    expected = vt[:5].T * np.sqrt(s[:5])[None, :]
    # the same columns up to sign, and the sign puts each column's largest entry positive
    signs = np.sign((vectors * expected).sum(axis=0))
    np.testing.assert_allclose(vectors, expected * signs[None, :], atol=1e-8)
    largest = np.abs(vectors).argmax(axis=0)
    assert (vectors[largest, np.arange(5)] > 0).all()
    np.testing.assert_array_equal(stable_item_vectors(matrix[rng.permutation(60)], 5, seed=0).round(10),
                                  vectors.round(10))  # user order does not matter
