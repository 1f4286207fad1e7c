"""RLMRec: profiles from training events only, the two alignments by hand, the effect of the alignment on
the embeddings, the real SmolLM2 writing (and caching) profiles.

The contract suite (tests/contract) covers RLMRec too, with `llm: "none"`: item texts arrive through
`use_dataset` from the contract dataset's item table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recstack.data.dataset import Dataset
from recstack.data.features import TfidfSVDEncoder, encode_texts, item_texts
from recstack.data.interactions import Interactions, Vocab
from recstack.errors import RecstackError
from recstack.llm.profiles import sample_user_items, user_profile_messages
from recstack.models import build
from recstack.models.llm.rlmrec import contrastive_alignment, generative_alignment
from recstack.testing import clustered_dataset, held_out_ndcg

FAST = {"llm": "none", "encoder": "tfidf", "tfidf_dim": 32, "cache_embeddings": False, "epochs": 8,
        "batch_size": 512, "learning_rate": 0.01, "embedding_size": 32, "verbose": False}
# measured with FAST on the clustered fixture, seed 0 (LightGCN with these settings: 0.536)
PINNED_NDCG = {"contrastive": 0.526, "generative": 0.530}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dataset(clustered):
    return clustered_dataset(clustered)


# ---- quality ------------------------------------------------------------------------------------
@pytest.mark.parametrize("alignment", ["contrastive", "generative"])
def test_pinned_ndcg_on_clustered_data(alignment, dataset, clustered_split):
    model = build("rlmrec", {**FAST, "alignment": alignment}).use_dataset(dataset)
    value = held_out_ndcg(model.fit(clustered_split.train, clustered_split.valid), clustered_split)
    assert value > held_out_ndcg(build("pop").fit(clustered_split.train), clustered_split) + 0.03
    assert value == pytest.approx(PINNED_NDCG[alignment], abs=0.03)


def test_without_alignment_it_is_lightgcn(dataset, clustered_split):
    """kd_weight 0 leaves LightGCN: same initialisation (the shared LightGCNNet, then the MLP), batches and
    loss, so the same scores."""
    backbone = {k: FAST[k] for k in ("epochs", "batch_size", "learning_rate", "embedding_size", "verbose")}
    plain = build("lightgcn", backbone).fit(clustered_split.train, clustered_split.valid)
    rlmrec = build("rlmrec", {**FAST, "kd_weight": 0.0}).use_dataset(dataset).fit(clustered_split.train,
                                                                                  clustered_split.valid)
    users = np.arange(40)
    np.testing.assert_allclose(rlmrec.score(users, clustered_split.train), plain.score(users, clustered_split.train),
                               rtol=1e-4, atol=1e-5)


def _decodable(embeddings: np.ndarray, targets: np.ndarray) -> float:
    """R^2 of a ridge map from unit-normalised embeddings to `targets` (how much of the profile vectors a
    linear read-out of the CF space recovers)."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-9)
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ targets)
    return 1.0 - float(((targets - x @ w) ** 2).sum() / ((targets - targets.mean(0)) ** 2).sum())


def test_alignment_moves_the_embeddings_towards_the_profiles(dataset, clustered_split):
    """Both alignments make the profile vectors more readable from the CF embeddings than plain BPR does
    (measured: users/items R^2 0.49/0.45 without, 0.73/0.73 Con at kd 0.1, items 0.50 Gen at kd 1)."""
    settings = {**FAST, "epochs": 5, "early_stopping_patience": None}  # the last epoch, not the best one
    train = clustered_split.train
    fits = {name: build("rlmrec", {**settings, **extra}).use_dataset(dataset).fit(train)
            for name, extra in [("none", {"kd_weight": 0.0}), ("con", {"kd_weight": 0.1}),
                                ("gen", {"alignment": "generative", "kd_weight": 1.0})]}
    first = fits["none"]
    vectors = encode_texts(first.user_profiles_ + first.item_profiles_, TfidfSVDEncoder(dim=32), cache=False,
                           progress=False)  # what the models aligned to (same texts, same encoder)
    users, items = vectors[:train.n_users], vectors[train.n_users:]
    r2 = {name: (_decodable(m.user_factors_, users), _decodable(m.item_factors_, items)) for name, m in fits.items()}
    assert r2["con"][0] > r2["none"][0] + 0.1 and r2["con"][1] > r2["none"][1] + 0.1, r2
    assert r2["gen"][1] > r2["none"][1] + 0.02, r2


# ---- the losses by hand -------------------------------------------------------------------------
def test_contrastive_alignment_by_hand():
    """Users: CF [1,0], [0,1] against profiles [1,0], [0,1]: each row's own cosine is 1, the other's 0, so
    -1/tau + log(e^(1/tau) + e^0) = log(1 + e^(-1/tau)). Items: CF [2,0], [0,3] against two profiles [1,0]:
    both cosines equal per row (1,1 or 0,0), so log 2 each. A node repeated in the batch counts once."""
    tau = 0.5
    final = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    profiles = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    loss = contrastive_alignment(final, profiles, torch.nn.Identity(), torch.tensor([0, 1, 0]),
                                 torch.tensor([0, 1, 1]), 2, tau)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1 / tau)) + math.log(2), rel=1e-5)


def test_generative_alignment_by_hand():
    """Masked nodes 0 and 2, MLP = identity: rows [1,0] and [1,1] against profiles [0,1] and [1,1].
    Cosines: row 0 -> (0, 1/sqrt2), row 2 -> (1/sqrt2, 1); the loss is the mean of
    -cos(own)/tau + log sum exp(cos/tau) over the two rows."""
    tau = 0.2
    final = torch.tensor([[1.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    profiles = torch.tensor([[0.0, 1.0], [9.0, 9.0], [1.0, 1.0]])
    loss = generative_alignment(final, profiles, torch.nn.Identity(), torch.tensor([0, 2]), tau)
    c = 1 / math.sqrt(2)
    row0 = -0.0 / tau + math.log(math.exp(0.0 / tau) + math.exp(c / tau))
    row2 = -1.0 / tau + math.log(math.exp(c / tau) + math.exp(1.0 / tau))
    assert loss.item() == pytest.approx((row0 + row2) / 2, rel=1e-5)


# ---- profiles: training events only -------------------------------------------------------------
def test_user_profiles_hold_training_items_only(dataset, clustered_split):
    """With `llm: "none"` a user's profile is the texts of the items its prompt lists: every line is a
    training item of that user, and no item the user has only in validation or test appears."""
    train = clustered_split.train
    model = build("rlmrec", {**FAST, "epochs": 1, "profile_items": 1000}).use_dataset(dataset)
    user_profiles, _ = model.profiles(train)
    texts = item_texts(dataset)  # row = dense item index; the split shares the dataset's vocabularies
    held_out_checked = 0
    for user in range(train.n_users):
        seen = set(train.item[train.indptr[user]:train.indptr[user + 1]].tolist())
        assert set(user_profiles[user].split("\n")) <= {texts[i] for i in seen}
        for part in (clustered_split.valid, clustered_split.test):
            for item in set(part.item[part.indptr[user]:part.indptr[user + 1]].tolist()) - seen:
                assert texts[item] not in user_profiles[user], (user, texts[item])
                held_out_checked += 1
    assert held_out_checked > 300  # the check is not vacuous


def test_user_prompts_list_a_seeded_sample_of_training_items(dataset, clustered_split):
    """The LLM's user prompt lists at most `profile_items` of the user's training items, the same ones per seed."""
    train, test = clustered_split.train, clustered_split.test
    samples = sample_user_items(train, 3, seed=0)
    assert all(len(s) == min(3, train.user_counts()[u]) for u, s in enumerate(samples))
    assert all(np.array_equal(a, b) for a, b in zip(samples, sample_user_items(train, 3, seed=0)))
    assert any(not np.array_equal(a, b) for a, b in zip(samples, sample_user_items(train, 3, seed=1)))
    texts = item_texts(dataset)
    user = int(test.user[0])
    assert all(set(s.tolist()) <= set(train.item[train.indptr[u]:train.indptr[u + 1]].tolist())
               for u, s in enumerate(samples))
    prompt = user_profile_messages([texts[i] for i in samples[user]], ["a profile"] * len(samples[user]))[1]["content"]
    for item in samples[user]:
        assert texts[item] in prompt
    seen = set(train.item[train.indptr[user]:train.indptr[user + 1]].tolist())
    for item in set(test.item[test.indptr[user]:test.indptr[user + 1]].tolist()) - seen:
        assert texts[item] not in prompt


# ---- bad input ----------------------------------------------------------------------------------
def test_fit_without_item_texts_names_the_fix(clustered_split):
    with pytest.raises(RecstackError, match="use_dataset"):
        build("rlmrec", FAST).fit(clustered_split.train)


@pytest.mark.parametrize("model", ["rlmrec", "llmrec"])  # both take their texts from models/llm/item_texts.py
def test_dataset_without_item_table_is_rejected(clustered, model):
    with pytest.raises(RecstackError, match="item side table"):
        build(model, FAST).use_dataset(Dataset(clustered))


def test_item_without_text_is_named(dataset, clustered_split):
    ids = dataset.interactions.items.ids
    with pytest.raises(RecstackError, match="no item text"):
        build("rlmrec", FAST).set_item_texts(ids[1:], item_texts(dataset)[1:]).fit(clustered_split.train)


# ---- the real LLM -------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_writes_profiles_once(tmp_path, smollm2):
    """SmolLM2 writes 4 item and 3 user profiles; a second model on the same answer cache asks nothing."""
    from recstack.llm import CachedLM

    log = Interactions(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 3]), Vocab(np.arange(3), "user"),
                       Vocab(np.arange(4), "item"))
    table = {"title": np.array(["Toy Story", "Heat", "Fargo", "Casino"], dtype=object),
             "year": np.array([1995, 1995, 1996, 1995]),
             "genres": np.array(["Animation|Comedy", "Crime|Thriller", "Crime|Drama", "Crime|Drama"], dtype=object)}
    data = Dataset(log, item_table=table)
    params = {**FAST, "llm": "smollm2", "llm_cache": str(tmp_path / "answers.sqlite"), "max_new_tokens": 8,
              "tfidf_dim": 4, "embedding_size": 8, "epochs": 2}
    first = build("rlmrec", params).use_dataset(data).use_language_model(CachedLM(smollm2, tmp_path / "answers.sqlite"))
    first.fit(log)
    assert first.lm.usage.calls == 4 + 3 and first.lm.usage.cached_calls == 0
    written = first.item_profiles_ + first.user_profiles_
    assert all(written) and not set(written) & set(item_texts(data))  # the LLM wrote them, not the texts
    backend = first.lm.backend
    calls_before = backend.usage.calls
    second = build("rlmrec", params).use_dataset(data).use_language_model(CachedLM(backend, tmp_path / "answers.sqlite"))
    second.fit(log)
    assert second.lm.usage.calls == 0 and second.lm.usage.cached_calls == 7 and backend.usage.calls == calls_before
    assert second.item_profiles_ + second.user_profiles_ == written
    np.testing.assert_array_equal(second.user_factors_, first.user_factors_)
