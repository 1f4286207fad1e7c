"""Cross-check per-user metrics against ranx and against a naive pure-Python implementation.

ranx (Bassani, ECIR 2022) implements the IR definitions; where they differ from ours the
comparison adjusts ranx's number by the exact factor, explained next to it:
- MAP: ranx divides the sum of precisions at hits by |rel|; ours divides by min(|rel|, k).
Everything else matches ours as is: ranx's `ndcg` is the Järvelin formulation (gain / log2(i+1))
with IDCG over the qrels sorted by relevance and cut at k, i.e. over min(|rel|, k) items;
recall@k = hits / |rel|; precision@k = hits / k; mrr@k and hit_rate@k as ours.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import ranx  # a declared test dependency; first import compiles numba kernels (cached afterwards)

from recstack.data import Interactions, Vocab
from recstack.evaluate import evaluate

# ranx's typed lists hold uint64 ids and numba warns when casting them; harmless for our ids
pytestmark = pytest.mark.filterwarnings("ignore:unsafe cast from uint64 to int64")

N_USERS, N_ITEMS = 200, 300
KS = (1, 5, 20)
OURS_TO_RANX = {"NDCG": "ndcg", "Recall": "recall", "Precision": "precision", "MRR": "mrr",
                "Hit": "hit_rate", "MAP": "map"}


class TableScorer:
    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def score(self, users, history, items=None):
        return self.table[users].copy()


def random_case(seed: int):
    """History, test (disjoint per user, graded 1..5) and a scorer with distinct scores per user."""
    rng = np.random.default_rng(seed)
    users, items = Vocab(np.arange(N_USERS)), Vocab(np.arange(N_ITEMS))
    hist_u, hist_i, test_u, test_i = [], [], [], []
    for u in range(N_USERS):
        n_hist = int(rng.integers(0, 40))
        n_test = 0 if rng.random() < 0.1 else int(rng.integers(1, 35))  # some users have nothing to test
        chosen = rng.choice(N_ITEMS, size=n_hist + n_test, replace=False)
        hist_u += [u] * n_hist
        hist_i += chosen[:n_hist].tolist()
        test_u += [u] * n_test
        test_i += chosen[n_hist:].tolist()
    ratings = rng.integers(1, 6, len(test_u)).astype(np.float32)
    history = Interactions(np.array(hist_u), np.array(hist_i), users, items,
                           value=np.ones(len(hist_u), np.float32))
    test = Interactions(np.array(test_u), np.array(test_i), users, items, value=ratings)
    # a permutation per user: distinct scores, so no library's tie-breaking matters
    table = np.argsort(rng.random((N_USERS, N_ITEMS)), axis=1).astype(np.float32)
    return history, test, table


def naive_metrics(ranked: list[int], relevant: dict[int, float], k: int, graded: bool) -> dict[str, float]:
    """The metric definitions written out plainly for one user, one cut-off."""
    top = ranked[:k]
    rel = [1 if item in relevant else 0 for item in top]
    gain = [relevant.get(item, 0.0) if graded else float(r) for item, r in zip(top, rel)]
    n_rel = len(relevant)
    hits = sum(rel)
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gain))
    ideal = sorted(relevant.values(), reverse=True) if graded else [1.0] * n_rel
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
    first = next((i for i, r in enumerate(rel) if r), None)
    precisions_at_hits = [sum(rel[: i + 1]) / (i + 1) for i, r in enumerate(rel) if r]
    return {
        "Recall": hits / n_rel,
        "Precision": hits / k,
        "Hit": 1.0 if hits else 0.0,
        "MRR": 0.0 if first is None else 1.0 / (first + 1),
        "NDCG": dcg / idcg,
        "MAP": sum(precisions_at_hits) / min(n_rel, k),
    }


def naive_rankings(history: Interactions, test: Interactions, table: np.ndarray):
    """Per evaluated user: all unseen items by descending score, and the held-out {item: rating}."""
    seen = {u: set() for u in range(N_USERS)}
    for u, i in zip(history.user.tolist(), history.item.tolist()):
        seen[u].add(i)
    relevant: dict[int, dict[int, float]] = {}
    for u, i, r in zip(test.user.tolist(), test.item.tolist(), test.value.tolist()):
        relevant.setdefault(u, {})[i] = r
    ranked = {u: [i for i in sorted(range(N_ITEMS), key=lambda i: -table[u, i]) if i not in seen[u]]
              for u in relevant}
    return ranked, relevant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_ranx_and_naive(seed):
    history, test, table = random_case(seed)
    result = evaluate(TableScorer(table), history, test, metrics=list(OURS_TO_RANX), ks=KS)
    ranked, relevant = naive_rankings(history, test, table)
    assert result.users.tolist() == sorted(relevant)
    assert result.n_skipped_users == N_USERS - len(relevant)
    assert any(len(relevant[u]) > max(KS) for u in relevant)  # the min(|rel|, k) branches are exercised

    qrels = ranx.Qrels({str(u): {str(i): 1 for i in rel} for u, rel in relevant.items()})
    run = ranx.Run({str(u): {str(i): float(table[u, i]) for i in ranked[u]} for u in relevant})
    labels = [f"{OURS_TO_RANX[m]}@{k}" for m in OURS_TO_RANX for k in KS]
    ranx.evaluate(qrels, run, labels, threads=1)  # per-user values land in run.scores
    n_rel = np.array([len(relevant[u]) for u in result.users])

    for metric, ranx_name in OURS_TO_RANX.items():
        for k in KS:
            ours = result.per_user[f"{metric}@{k}"]
            theirs = np.array([run.scores[f"{ranx_name}@{k}"][str(u)] for u in result.users])
            if metric == "MAP":
                # ranx: sum / |rel|; ours: sum / min(|rel|, k) -> rescale ranx's by |rel| / min(|rel|, k)
                theirs = theirs * n_rel / np.minimum(n_rel, k)
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12, err_msg=f"{metric}@{k} vs ranx")
            naive = np.array([naive_metrics(ranked[u], relevant[u], k, graded=False)[metric] for u in result.users])
            np.testing.assert_allclose(ours, naive, rtol=1e-9, atol=1e-12, err_msg=f"{metric}@{k} vs naive")


@pytest.mark.parametrize("seed", [3])
def test_graded_ndcg_matches_ranx_and_naive(seed):
    history, test, table = random_case(seed)
    result = evaluate(TableScorer(table), history, test, metrics=["NDCG"], ks=KS, graded=True)
    ranked, relevant = naive_rankings(history, test, table)
    # ranx's `ndcg` (Järvelin) is sum rel_i / log2(i + 1) with integer grades: the same as ours
    qrels = ranx.Qrels({str(u): {str(i): int(r) for i, r in rel.items()} for u, rel in relevant.items()})
    run = ranx.Run({str(u): {str(i): float(table[u, i]) for i in ranked[u]} for u in relevant})
    ranx.evaluate(qrels, run, [f"ndcg@{k}" for k in KS], threads=1)
    for k in KS:
        ours = result.per_user[f"NDCG@{k}"]
        theirs = np.array([run.scores[f"ndcg@{k}"][str(u)] for u in result.users])
        naive = np.array([naive_metrics(ranked[u], relevant[u], k, graded=True)["NDCG"] for u in result.users])
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, err_msg=f"graded NDCG@{k} vs ranx")
        np.testing.assert_allclose(ours, naive, rtol=1e-6, err_msg=f"graded NDCG@{k} vs naive")
