"""Users without history: counted in every evaluation, and treated by one stated policy
(`ColdUsers`: include, skip, fallback), in `evaluate`, `rank` and the sampled evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import LATE_JOINER_CUTOFFS, late_joiners
from recstack.errors import RecstackError
from recstack.evaluate import ColdUsers, count_history, evaluate, rank
from recstack.evaluate.sampled import evaluate_sampled, sample_negatives
from recstack.models import build
from recstack.split.temporal import temporal_split

K = 5


@pytest.fixture(scope="module")
def split():
    return temporal_split(late_joiners(), cutoffs=LATE_JOINER_CUTOFFS)


@pytest.fixture(scope="module")
def models(split):
    return build("ease", {}).fit(split.train), build("pop", {}).fit(split.train)


def _users_with_truth(split, part):
    return np.flatnonzero(getattr(split, part).user_counts() > 0)


def _no_history(split, part):
    users = _users_with_truth(split, part)
    return users[split.history(part).user_counts()[users] == 0]


def test_the_fixture_has_late_joiners_under_a_global_time_cut(split):
    # the counts below are pinned by hand from the fixture's docstring, not recomputed the evaluator's way
    assert _no_history(split, "valid").tolist() == [6, 7, 8]
    assert _no_history(split, "test").tolist() == [9, 10, 11]


@pytest.mark.parametrize("part, expected", [
    ("valid", dict(n_users=11, n_no_history=3, n_few_history=5, n_cold=3)),
    ("test", dict(n_users=14, n_no_history=3, n_few_history=8, n_cold=3)),
])
def test_every_evaluation_counts_users_without_and_with_little_history(split, models, part, expected):
    ease, _ = models
    result = evaluate(ease, split.history(part), getattr(split, part), ks=[K])
    counts = result.history_counts
    assert {key: getattr(counts, key) for key in expected} == expected
    assert (counts.policy, counts.n_skipped, counts.n_fallback, counts.few_history) == ("include", 0, 0, 5)
    assert len(result.users) == expected["n_users"]  # include: every one of them is evaluated
    assert result.protocol["cold_users"] == counts.to_dict()


def test_the_thresholds_are_configurable(split):
    policy = ColdUsers(min_history=3, few_history=3)
    # valid histories: 8 (users 0-5), 0 (6-8), 2 (12-13); test: 9, 2, 0 (9-11), 3
    valid = count_history(split.history("valid"), _users_with_truth(split, "valid"), policy)
    test = count_history(split.history("test"), _users_with_truth(split, "test"), policy)
    assert (valid.n_no_history, valid.n_few_history, valid.n_cold) == (3, 5, 5)
    assert (test.n_no_history, test.n_few_history, test.n_cold) == (3, 6, 6)


@pytest.mark.parametrize("part", ["valid", "test"])
def test_skip_equals_the_metric_over_warm_users_only(split, models, part):
    ease, _ = models
    history, truth = split.history(part), getattr(split, part)
    skipped = evaluate(ease, history, truth, ks=[K], cold_users=ColdUsers("skip"))
    warm = np.setdiff1d(_users_with_truth(split, part), _no_history(split, part))
    over_warm = evaluate(ease, history, truth, ks=[K], users=warm)
    assert skipped.users.tolist() == warm.tolist()
    assert skipped.metrics == pytest.approx(over_warm.metrics, nan_ok=True)
    assert skipped.history_counts.n_skipped == 3 and skipped.protocol["n_users_evaluated"] == len(warm)
    included = evaluate(ease, history, truth, ks=[K])
    assert included.metrics[f"NDCG@{K}"] != pytest.approx(skipped.metrics[f"NDCG@{K}"])  # the policy changed it


@pytest.mark.parametrize("part", ["valid", "test"])
def test_fallback_gives_every_cold_user_the_fallback_list(split, models, part):
    ease, pop = models
    history, truth = split.history(part), getattr(split, part)
    policy = ColdUsers("fallback", fallback=pop, fallback_name="pop")
    served = evaluate(ease, history, truth, ks=[K], keep_rankings=True, cold_users=policy)
    included = evaluate(ease, history, truth, ks=[K], keep_rankings=True)
    cold = _no_history(split, part)
    rows = np.searchsorted(served.users, cold)
    pop_lists, _ = rank(pop, cold, history, K)
    assert np.array_equal(served.rankings.items[rows], pop_lists)
    assert not np.array_equal(included.rankings.items[rows], pop_lists)  # EASE alone ranks them otherwise
    warm_rows = np.setdiff1d(np.arange(len(served.users)), rows)
    assert np.array_equal(served.rankings.items[warm_rows], included.rankings.items[warm_rows])
    # the cold users' per-user values are Pop's, the warm users' EASE's
    by_pop = evaluate(pop, history, truth, ks=[K], users=cold)
    assert served.per_user[f"NDCG@{K}"][rows] == pytest.approx(by_pop.per_user[f"NDCG@{K}"])
    assert served.history_counts.n_fallback == 3 and served.history_counts.fallback == "pop"
    assert len(served.users) == len(included.users)


class ListsOnly:
    """A model that produces its own lists (no `score`) and notes which users it was asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def top_k(self, users, history, k, *, mask_history):
        self.asked += np.asarray(users).tolist()
        return np.tile(np.arange(k, dtype=np.int32)[::-1], (len(users), 1)), np.ones((len(users), k), np.float32)


def test_a_model_never_sees_the_users_the_fallback_serves(split, models):
    _, pop = models
    model = ListsOnly()
    users = _users_with_truth(split, "test")
    items, _ = rank(model, users, split.history("test"), K,
                    cold_users=ColdUsers("fallback", fallback=pop, fallback_name="pop"))
    cold = np.isin(users, _no_history(split, "test"))
    assert sorted(model.asked) == users[~cold].tolist()
    assert np.array_equal(items[~cold], np.tile(np.arange(K)[::-1], (int((~cold).sum()), 1)))
    assert np.array_equal(items[cold], rank(pop, users[cold], split.history("test"), K)[0])


def test_sampled_evaluation_applies_the_same_policy(split, models):
    ease, pop = models
    history, truth = split.history("test"), split.test
    users = _users_with_truth(split, "test").astype(np.int32)
    negatives = sample_negatives(history.concat(truth).matrix(), users, 3, seed=0)
    cold = np.isin(users, _no_history(split, "test"))
    label = f"sampled_NDCG@{K}"

    def sampled(model, chosen, **policy):
        return evaluate_sampled(model, history, truth, users[chosen], negatives[chosen], ks=[K], **policy)

    skipped = sampled(ease, slice(None), cold_users=ColdUsers("skip"))
    assert skipped.users.tolist() == users[~cold].tolist()
    assert skipped.metrics[label] == pytest.approx(sampled(ease, ~cold).metrics[label])
    served = sampled(ease, slice(None), cold_users=ColdUsers("fallback", fallback=pop))
    assert served.per_user[label][cold] == pytest.approx(sampled(pop, cold).per_user[label])
    assert served.per_user[label][~cold] == pytest.approx(sampled(ease, ~cold).per_user[label])
    assert served.history_counts.n_fallback == int(cold.sum())


@pytest.mark.parametrize("settings, message", [
    (dict(policy="skipp"), "unknown cold-user policy 'skipp'"),
    (dict(policy="fallback"), "needs a fitted fallback model"),
    (dict(policy="skip", fallback=object()), "policy 'fallback' only"),
    (dict(min_history=0), "min_history must be an integer >= 1"),
    (dict(few_history=2.5), "few_history must be an integer >= 1"),
    (dict(policy="fallback", fallback=object()), "can neither score nor rank"),
])
def test_a_policy_that_cannot_work_is_refused(settings, message):
    with pytest.raises(RecstackError, match=message):
        ColdUsers(**settings)


@pytest.fixture(scope="module")
def bpr(split):
    return build("bpr", {"epochs": 2, "embedding_size": 8, "early_stopping_patience": None}).fit(split.train)


def test_models_say_which_users_they_cannot_score(split, models, bpr):
    # by the fixture's docstring, test part: 6-8 have history (valid events) but no training events,
    # 9-11 have neither; an embedding model can score neither group, a history model only 6-8
    ease, pop = models
    users = _users_with_truth(split, "test")
    history = split.history("test")
    assert users[~bpr.can_score(users, history)].tolist() == [6, 7, 8, 9, 10, 11]
    assert users[~ease.can_score(users, history)].tolist() == [9, 10, 11]
    assert pop.can_score(users, history).all()


@pytest.mark.parametrize("policy, n_unscorable, n_fallback, n_evaluated", [
    ("include", 6, 0, 14), ("skip", 3, 0, 11), ("fallback", 3, 6, 14)])
def test_the_policy_decides_for_the_users_a_model_cannot_score(split, models, bpr, policy, n_unscorable, n_fallback,
                                                               n_evaluated):
    _, pop = models
    history, truth = split.history("test"), split.test
    cold_users = ColdUsers(policy, fallback=pop if policy == "fallback" else None, fallback_name="pop")
    result = evaluate(bpr, history, truth, ks=[K], keep_rankings=True, cold_users=cold_users)
    counts = result.history_counts
    assert (counts.n_unscorable, counts.n_fallback, len(result.users)) == (n_unscorable, n_fallback, n_evaluated)
    if policy == "fallback":  # users 6-8 are warm by history, yet BPR has no embedding for them: Pop's lists
        rows = np.searchsorted(result.users, [6, 7, 8, 9, 10, 11])
        assert np.array_equal(result.rankings.items[rows], rank(pop, result.users[rows], history, K)[0])
        warm = np.searchsorted(result.users, [0, 1, 2, 3, 4, 5, 12, 13])
        assert np.array_equal(result.rankings.items[warm], rank(bpr, result.users[warm], history, K)[0])
