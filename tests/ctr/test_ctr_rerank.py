"""Retrieve then rank: the retriever's top N reordered by the CTR ranker, the rest below in order."""

import numpy as np
import pytest

from recstack.data import Interactions, Vocab
from recstack.data.ctr import FieldSpec, make_ctr_split
from recstack.evaluate import evaluate
from recstack.models import build
from recstack.models.ctr import build_ctr
from recstack.models.ctr.rerank import RetrieveThenRank


class _Fixed:
    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, users, history, items=None):
        return np.repeat(self.scores[None, :], len(users), axis=0)

    def pair_logits(self, users, items):  # the ranker: logit = the table value of the item
        return self.scores[np.asarray(items)]


def test_top_n_reordered_by_the_ranker_the_rest_in_retriever_order():
    retriever = _Fixed([5, 4, 3, 2, 1, 0])
    ranker = _Fixed([0, 1, 9, 8, 0, 7])
    history = Interactions([0], [0], Vocab([0]), Vocab(np.arange(6)))  # item 0 is seen
    chain = RetrieveThenRank(retriever, ranker, n=3)
    scores = chain.score(np.array([0]), history)[0]
    # retriever top 3 without the seen item: 1, 2, 3 -> ranker order 2 (9), 3 (8), 1 (1); then 4, 5 as retrieved
    assert list(np.argsort(-scores)[:5]) == [2, 3, 1, 4, 5]
    assert scores[0] == -np.inf
    np.testing.assert_allclose(chain.score(np.array([0]), history, items=np.array([5, 2])), scores[None, [5, 2]], rtol=1e-6)
    with pytest.raises(ValueError, match="n must be >= 1"):
        RetrieveThenRank(retriever, ranker, n=0)


def test_reranking_a_popularity_retriever_with_fm_beats_it(planted):
    split = make_ctr_split(planted, [FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("group"),
                                     FieldSpec("kind")], seed=0)
    vocab = planted.interactions

    def part(data, positives=False):
        keep = data.label > 0 if positives else slice(None)
        return Interactions(data.user[keep], data.item[keep], vocab.users, vocab.items)

    train = part(split.train)
    history, test = train.concat(part(split.valid)), part(split.test, positives=True)
    ranker = build_ctr("fm", {"epochs": 8, "learning_rate": 1e-2, "batch_size": 256, "verbose": False,
                              "embedding_size": 8}).fit(split.train, split.valid)
    pop = build("pop").fit(train)
    alone = evaluate(pop, history=history, test=test, metrics=["NDCG"], ks=[10]).metrics["NDCG@10"]
    chained = evaluate(RetrieveThenRank(pop, ranker, n=20), history=history, test=test, metrics=["NDCG"],
                       ks=[10]).metrics["NDCG@10"]
    # only the planted group x kind match makes a test row positive: the ranker roughly doubles NDCG@10
    assert alone == pytest.approx(0.160, abs=0.03)
    assert chained == pytest.approx(0.343, abs=0.04)


def test_observed_rows_sample_unrated_items_as_negatives(planted):
    from recstack.data.ctr import observed_rows

    split = make_ctr_split(planted, [FieldSpec("user_id"), FieldSpec("item_id")], seed=0)
    n_items = planted.interactions.n_items
    keys = split.train.user.astype(np.int64) * n_items + split.train.item
    rows = observed_rows(split.train, n_items, 3, keys, np.random.default_rng(0))
    assert len(rows) == 4 * len(split.train) and rows.label.sum() == len(split.train)
    negatives = rows.label == 0
    assert not np.isin(rows.user[negatives].astype(np.int64) * n_items + rows.item[negatives], keys).any()
    np.testing.assert_array_equal(np.bincount(rows.user[negatives], minlength=planted.interactions.n_users),
                                  3 * np.bincount(split.train.user, minlength=planted.interactions.n_users))


def test_a_run_can_refit_its_rankers_on_observed_rows(planted_atomic, tmp_path):
    import json

    from recstack.experiment.run import run_experiment

    raw = {"task": "ctr", "data": {"path": str(planted_atomic), "format": "atomic"}, "output_dir": str(tmp_path),
           "ctr": {"features": [{"name": "user_id"}, {"name": "item_id"}, {"name": "kind"}]},
           "models": [{"name": "fm", "params": {"epochs": 2, "batch_size": 512}}],
           "rerank": {"n": 10, "retrievers": [{"name": "pop"}], "ranker_rows": "observed", "n_negatives": 2,
                      "ks": [5]}}
    result = run_experiment(raw, progress=False)
    rerank = json.loads((result.run_dir / "rerank.json").read_text())
    assert set(rerank) == {"pop", "pop>fm"} and 0 <= rerank["pop>fm"]["test"]["NDCG@5"] <= 1
    assert "against 2 unrated items per row" in (result.run_dir / "report.md").read_text()
