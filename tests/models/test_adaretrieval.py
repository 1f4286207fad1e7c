"""Ada-Retrieval: the rounds (K split into T rounds, no item twice, history excluded, round t = top of
round t's representation), the adapters changing the representation, `score` reproducing `top_k`,
both backbones wrapped exactly, and a pinned metric on the clustered fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.errors import RecstackError
from recstack.evaluate import evaluate
from recstack.evaluate.evaluator import rank, top_k_items
from recstack.models import ConfigError, build, load_model
from recstack.models.sequential.adaretrieval import AdaRetrieval, _backbone_module, _layout, _Net
from recstack.models.sequential.gru4rec import GRU4Rec
from recstack.models.sequential.sasrec import SASRec
from recstack.train.sequences import last_items

USERS = np.array([0, 5, 17, 42, 299, 5, 100], dtype=np.int32)
BACKBONE = {"epochs": 5, "embedding_size": 16, "max_seq_len": 20, "learning_rate": 5e-3}
FAST = {"epochs": 3, "samples_per_user": 1, "learning_rate": 1e-3, "retrieval_size": 12, "n_rounds": 4, "n_negatives": 20,
        "verbose": False, "backbone_params": BACKBONE}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sasrec_model(clustered_split):
    return build("adaretrieval", FAST).fit(clustered_split.train, clustered_split.valid)


@pytest.fixture(scope="module")
def gru_model(clustered_split):
    return build("adaretrieval", {**FAST, "backbone": "gru4rec"}).fit(clustered_split.train, clustered_split.valid)


def test_pinned_ndcg_on_the_clustered_fixture(sasrec_model, gru_model, clustered_split):
    history = clustered_split.history("test")
    sas = evaluate(sasrec_model, history, clustered_split.test, metrics=["NDCG@10"])["NDCG@10"]
    gru = evaluate(gru_model, history, clustered_split.test, metrics=["NDCG@10"])["NDCG@10"]
    random = evaluate(build("random").fit(clustered_split.train), history, clustered_split.test,
                      metrics=["NDCG@10"])["NDCG@10"]
    # the fixture's order within a user is shuffled, so sequence models only learn its clusters here
    # (random 0.053, pop 0.099, plain SASRec 0.125 / GRU4Rec 0.101 with the same backbone settings)
    assert sas == pytest.approx(0.1230, abs=0.01)
    assert gru == pytest.approx(0.0978, abs=0.01)
    assert min(sas, gru) > random + 0.03


def test_rounds_list_no_item_twice_and_no_history(sasrec_model, clustered_split):
    history = clustered_split.history("test")
    items, scores = sasrec_model.top_k(USERS, history, 12, mask_history=True)
    assert items.shape == (len(USERS), 12) and (items >= 0).all()
    assert all(len(set(row)) == 12 for row in items)  # no duplicates across rounds
    seen = history.matrix()[USERS].toarray() > 0
    assert not np.take_along_axis(seen, items.astype(np.int64), axis=1).any()
    assert (np.diff(scores, axis=1) <= 0).all()  # scores follow the list order
    # without history masking the rounds may list seen items, still none twice
    kept, _ = sasrec_model.top_k(USERS, history, 12, mask_history=False)
    assert all(len(set(row)) == 12 for row in kept) and (kept >= 0).all()
    assert np.take_along_axis(seen, kept.astype(np.int64), axis=1).any()


def test_each_round_is_the_top_k_over_t_of_its_own_representation(sasrec_model, clustered_split):
    """Replaying the rounds by hand: round t lists K/T = 3 items, the best of round t's scores with
    the history and rounds 1..t-1 excluded, and feeds them (and h_t) to round t+1."""
    history = clustered_split.history("test")
    inference = sasrec_model._inference()
    net = inference.net
    users = np.unique(USERS)
    tokens = torch.from_numpy(_layout("sasrec", last_items(history, users, BACKBONE["max_seq_len"])))
    blocked = history.matrix()[users].toarray() > 0
    rounds_items, rounds_users, listed = [], [], []
    with torch.no_grad():
        for _ in range(4):
            h = net.user(tokens, rounds_items, rounds_users)
            scores = net.item_scores(h).numpy()
            idx, _ = top_k_items(np.where(blocked, -np.inf, scores), 3)
            np.put_along_axis(blocked, idx, True, axis=1)
            rounds_items.append(torch.from_numpy(idx.astype(np.int64)))
            rounds_users.append(h)
            listed.append(idx)
    expected = np.concatenate(listed, axis=1)
    np.testing.assert_array_equal(sasrec_model.top_k(users, history, 12, mask_history=True)[0], expected)
    # a shorter list is the same rounds cut short (rounds of 3: the 3rd round gives one item of 7)
    np.testing.assert_array_equal(sasrec_model.top_k(users, history, 7, mask_history=True)[0], expected[:, :7])
    # round 1 alone is plain nearest-neighbour retrieval; later rounds differ from continuing it
    single, _ = top_k_items(np.where(history.matrix()[users].toarray() > 0, -np.inf, scores_round_1(net, tokens)), 12)
    np.testing.assert_array_equal(expected[:, :3], single[:, :3])
    assert (expected[:, 3:] != single[:, 3:]).any()


def scores_round_1(net, tokens):
    with torch.no_grad():
        return net.item_scores(net.user(tokens, [], [])).numpy()


def test_adapters_change_the_representation(sasrec_model, gru_model, clustered_split):
    history = clustered_split.history("test")
    for model, kind in ((sasrec_model, "sasrec"), (gru_model, "gru4rec")):
        net = model._inference().net
        tokens = torch.from_numpy(_layout(kind, last_items(history, np.arange(8), BACKBONE["max_seq_len"])))
        with torch.no_grad():
            h1 = net.user(tokens, [], [])
            a = torch.tensor([[1, 2, 3]] * 8)
            b = torch.tensor([[60, 70, 80]] * 8)
            x = torch.nn.functional.embedding(tokens, net.input_table())
            assert not torch.allclose(net.adapt_items(x, [a]), x, atol=1e-4)  # IRA
            assert not torch.allclose(net.adapt_user(h1, [h1]), h1, atol=1e-4)  # URA
            with_a, with_b = net.user(tokens, [a], [h1]), net.user(tokens, [b], [h1])
            assert not torch.allclose(with_a, h1, atol=1e-4)
            assert not torch.allclose(with_a, with_b, atol=1e-4)  # the fed-back items matter


@pytest.mark.parametrize("k", [5, 12, 30])
def test_sorting_score_reproduces_top_k(sasrec_model, clustered_split, k):
    """score() with history masked ranks exactly as the multi-round list, also beyond K (= 12) where
    the last round continues; the evaluator's score path therefore equals its top_k path."""
    history = clustered_split.history("test")
    listed, _ = sasrec_model.top_k(USERS, history, k, mask_history=True)

    class ScoreOnly:
        score = sasrec_model.score

    ranked, _ = rank(ScoreOnly(), USERS, history, k)
    np.testing.assert_array_equal(ranked, listed)


@pytest.mark.parametrize("kind, cls", [("sasrec", SASRec), ("gru4rec", GRU4Rec)])
def test_round_one_is_exactly_the_wrapped_backbone(clustered_split, kind, cls):
    backbone = cls(cls.Config(**{**BACKBONE, "epochs": 2, "verbose": False})).fit(clustered_split.train)
    net = _Net(kind, _backbone_module(kind, backbone.config, clustered_split.train.n_items, backbone.weights_),
               backbone.config, 3, 0.1).eval()
    history = clustered_split.history("test")
    tokens = torch.from_numpy(_layout(kind, last_items(history, USERS, BACKBONE["max_seq_len"])))
    np.testing.assert_allclose(scores_round_1(net, tokens), backbone.score(USERS, history), rtol=1e-4, atol=1e-5)


def test_given_backbone_skips_pretraining_and_end_to_end_runs(clustered_split):
    backbone = SASRec(SASRec.Config(**{**BACKBONE, "epochs": 2, "verbose": False})).fit(clustered_split.train)
    model = AdaRetrieval(AdaRetrieval.Config(**{**FAST, "epochs": 1})).fit(clustered_split.train, backbone=backbone)
    assert model.top_k(USERS, clustered_split.train, 12, mask_history=True)[0].shape == (len(USERS), 12)
    scratch = build("adaretrieval", {**FAST, "epochs": 1, "pretrain": False, "loss": "ce"})
    assert scratch.fit(clustered_split.train).score(USERS, clustered_split.train).shape == (len(USERS), 120)
    with pytest.raises(RecstackError, match="backbone must be a fitted SASRec"):
        AdaRetrieval(AdaRetrieval.Config(**FAST)).fit(clustered_split.train, backbone=GRU4Rec())


def test_gru4rec_variant_saves_and_loads(gru_model, clustered_split, tmp_path):
    gru_model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    history = clustered_split.history("test")
    np.testing.assert_array_equal(loaded.top_k(USERS, history, 12, mask_history=True)[0],
                                  gru_model.top_k(USERS, history, 12, mask_history=True)[0])


def test_bad_configs_name_the_culprit():
    with pytest.raises(ConfigError, match="must divide retrieval_size"):
        build("adaretrieval", {"n_rounds": 3, "retrieval_size": 20})
    with pytest.raises(ConfigError, match="backbone_params for gru4rec"):
        build("adaretrieval", {"backbone": "gru4rec", "backbone_params": {"n_heads": 2}})
    with pytest.raises(ConfigError, match="backbone"):
        build("adaretrieval", {"backbone": "bert4rec"})
