"""Preprocessing steps and summary statistics on hand-worked logs."""

import numpy as np
import pytest

from recstack.data import Dataset, Interactions, KnowledgeGraph, Vocab
from recstack.data.prep import compact, deduplicate, gini, k_core, preprocess, summarize, to_implicit
from recstack.errors import RecstackError


def make(events, item_table=None, user_table=None, kg=None, users=None, items=None):
    """events: (user_id, item_id[, value[, timestamp]]) tuples; ids become vocabularies in order."""
    columns = list(zip(*events))
    value = np.array(columns[2], dtype=np.float32) if len(columns) > 2 else None
    timestamp = np.array(columns[3], dtype=np.int64) if len(columns) > 3 else None
    log = Interactions.from_ids(np.array(columns[0], dtype=object), np.array(columns[1], dtype=object),
                                value=value, timestamp=timestamp,
                                users=None if users is None else Vocab(np.array(users, dtype=object), "user"),
                                items=None if items is None else Vocab(np.array(items, dtype=object), "item"))
    return Dataset(log, item_table or {}, user_table or {}, kg, {"name": "toy"})


def events_of(data: Dataset):
    log = data.interactions
    rows = zip(log.users.id_of(log.user), log.items.id_of(log.item),
               log.value if log.value is not None else [None] * len(log),
               log.timestamp if log.timestamp is not None else [None] * len(log))
    return sorted((u, i, None if v is None else float(v), None if t is None else int(t)) for u, i, v, t in rows)


# ---- to_implicit ------------------------------------------------------------------------------
def test_threshold_keeps_values_at_or_above_and_compacts():
    data = make([("a", "x", 5, 1), ("a", "y", 3, 2), ("b", "y", 4, 3), ("c", "z", 1, 4)],
                item_table={"title": np.array(["X", "Y", "Z"], dtype=object)},
                user_table={"age": np.array([20, 30, 40])})
    out = to_implicit(data, 4)
    assert events_of(out) == [("a", "x", 5.0, 1), ("b", "y", 4.0, 3)]
    assert out.interactions.users.ids.tolist() == ["a", "b"]  # c had only a 1-star event
    assert out.interactions.items.ids.tolist() == ["x", "y"]
    assert out.item_table["title"].tolist() == ["X", "Y"]
    assert out.user_table["age"].tolist() == [20, 30]
    assert to_implicit(data, None) is data


def test_threshold_that_removes_everything_names_step_and_knob():
    data = make([("a", "x", 2, 1), ("b", "y", 3, 2)])
    with pytest.raises(RecstackError, match=r"no interactions left after to_implicit \(threshold=4.*lower threshold"):
        to_implicit(data, 4)
    with pytest.raises(RecstackError, match="needs a value column"):
        to_implicit(make([("a", "x")]), 1)


# ---- deduplicate ------------------------------------------------------------------------------
REPEATS = [("a", "x", 3, 1), ("a", "x", 5, 2), ("a", "x", 4, 3), ("a", "y", 2, 4), ("b", "x", 1, 5), ("b", "x", 1, 6)]


@pytest.mark.parametrize("policy, expected", [
    ("keep", REPEATS),
    ("first", [("a", "x", 3, 1), ("a", "y", 2, 4), ("b", "x", 1, 5)]),
    ("last", [("a", "x", 4, 3), ("a", "y", 2, 4), ("b", "x", 1, 6)]),
    ("max", [("a", "x", 5, 2), ("a", "y", 2, 4), ("b", "x", 1, 6)]),  # ties: the latest
])
def test_dedup_policies(policy, expected):
    assert events_of(deduplicate(make(REPEATS), policy)) == sorted((u, i, float(v), t) for u, i, v, t in expected)


def test_dedup_first_and_last_follow_time_not_file_order():
    data = make([("a", "x", 1, 20), ("a", "x", 2, 10)])  # the second line happened first
    assert events_of(deduplicate(data, "first")) == [("a", "x", 2.0, 10)]
    assert events_of(deduplicate(data, "last")) == [("a", "x", 1.0, 20)]


def test_dedup_errors():
    with pytest.raises(RecstackError, match="unknown dedup policy 'latest'"):
        deduplicate(make(REPEATS), "latest")
    with pytest.raises(RecstackError, match="needs a value column"):
        deduplicate(make([("a", "x"), ("a", "x")]), "max")


# ---- k-core -----------------------------------------------------------------------------------
def test_k_core_needs_several_rounds():
    # u4 has one event -> dropped; then C has one event (u3) -> dropped; then u3 has one -> dropped.
    data = make([("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u3", "B"), ("u3", "C"), ("u4", "C")])
    out = k_core(data, user_k=2, item_k=2)
    assert events_of(out) == [("u1", "A", None, None), ("u1", "B", None, None),
                              ("u2", "A", None, None), ("u2", "B", None, None)]
    assert out.interactions.users.ids.tolist() == ["u1", "u2"]
    assert out.interactions.items.ids.tolist() == ["A", "B"]


def test_k_core_one_side_only():
    data = make([("u1", "A"), ("u1", "B"), ("u2", "A"), ("u3", "A")])
    assert events_of(k_core(data, item_k=2)) == [("u1", "A", None, None), ("u2", "A", None, None),
                                                 ("u3", "A", None, None)]
    assert events_of(k_core(data, user_k=2)) == [("u1", "A", None, None), ("u1", "B", None, None)]


def naive_k_core(pairs, user_k, item_k):
    """Independent reference: remove one offending event at a time until none is left."""
    pairs = list(pairs)
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        bad = [(u, i) for u, i in pairs if users[u] < user_k or items[i] < item_k]
        if not bad:
            return sorted(pairs)
        pairs.remove(bad[0])


def test_k_core_matches_one_at_a_time_removal_on_random_logs():
    rng = np.random.default_rng(7)
    for _ in range(5):
        pairs = sorted({(f"u{u}", f"i{i}") for u, i in zip(rng.integers(0, 40, 150), rng.zipf(1.6, 150) % 30)})
        out = k_core(make(pairs), user_k=3, item_k=3)
        assert [(u, i) for u, i, _, _ in events_of(out)] == naive_k_core(pairs, 3, 3)


def test_k_core_that_removes_everything():
    with pytest.raises(RecstackError, match=r"after k_core \(user_k=5, item_k=0.*lower user_k / item_k"):
        k_core(make([("a", "x"), ("a", "y")]), user_k=5)


# ---- compact and re-indexing ------------------------------------------------------------------
def test_compact_drops_idle_ids_and_reindexes_side_tables_and_kg():
    kg = KnowledgeGraph(head=np.array([0]), relation=np.array([0]), tail=np.array([1]),
                        entities=np.array(["e0", "e1"], dtype=object), relations=np.array(["r"], dtype=object),
                        item_entity=np.array([1, -1, 0], dtype=np.int32))
    data = make([("b", "z"), ("b", "x")], users=["a", "b"], items=["x", "y", "z"],
                item_table={"title": np.array(["X", "Y", "Z"], dtype=object)},
                user_table={"age": np.array([1, 2])}, kg=kg)
    out = compact(data)
    assert out.interactions.users.ids.tolist() == ["b"]
    assert out.interactions.items.ids.tolist() == ["x", "z"]
    assert out.item_table["title"].tolist() == ["X", "Z"] and out.user_table["age"].tolist() == [2]
    assert out.kg.item_entity.tolist() == [1, 0]
    assert events_of(out) == [("b", "x", None, None), ("b", "z", None, None)]


def test_preprocess_records_steps_in_provenance():
    events = [("a", "x", 5, 1), ("a", "x", 4, 2), ("a", "y", 4, 3), ("b", "x", 5, 4), ("b", "y", 5, 5),
              ("c", "x", 1, 6), ("c", "z", 5, 7)]
    out = preprocess(make(events), threshold=4, dedup="first", user_core=2, item_core=2)
    # >= 4 drops (c, x); dedup drops (a, x, 4); 2-core drops c (one event left) and then z
    assert events_of(out) == [("a", "x", 5.0, 1), ("a", "y", 4.0, 3), ("b", "x", 5.0, 4), ("b", "y", 5.0, 5)]
    steps = out.provenance["preprocessing"]
    assert [s["step"] for s in steps] == ["to_implicit", "deduplicate", "k_core", "compact"]
    assert steps[0]["threshold"] == 4 and steps[0]["n_interactions"] == 6
    assert steps[1]["policy"] == "first" and steps[1]["n_interactions"] == 5
    assert steps[2]["user_k"] == 2 and steps[2]["item_k"] == 2 and steps[2]["n_interactions"] == 4
    assert out.provenance["name"] == "toy"


# ---- summaries --------------------------------------------------------------------------------
@pytest.mark.parametrize("counts, expected", [
    ([0, 0, 0, 10], 0.75),   # one item holds everything: (n - 1) / n
    ([1, 2, 3, 4], 0.25),    # sum |xi - xj| over ordered pairs = 20; 20 / (2 * 16 * 2.5)
    ([5, 5, 5], 0.0),
    ([0, 0], 0.0),
])
def test_gini_hand_worked(counts, expected):
    assert gini(np.array(counts)) == pytest.approx(expected)


def test_gini_matches_mean_absolute_difference():
    x = np.random.default_rng(0).integers(0, 50, 37).astype(float)
    reference = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(reference)


def test_summarize_hand_worked():
    # 10 users view one item each (all "hit"), plus three idle catalogue items: counts [0, 0, 0, 10]
    data = make([(f"u{k}", "hit", 4, 86400 * k) for k in range(10)], items=["a", "b", "hit", "c"])
    stats = summarize(data)
    assert stats["n_users"] == 10 and stats["n_items"] == 4 and stats["n_interactions"] == 10
    assert stats["density"] == pytest.approx(10 / 40)
    assert stats["item_gini"] == pytest.approx(0.75)
    assert stats["time_span"] == {"first": 0, "last": 9 * 86400, "days": 9.0}


def test_summarize_sequence_lengths():
    # users with 1, 2, 3, 4, 10 events
    events = [(f"u{n}", f"i{k}") for n in (1, 2, 3, 4, 10) for k in range(n)]
    lengths = summarize(make(events).interactions)["sequence_length"]
    # p90 interpolates between the 4th and 5th of 5 sorted values: 4 + 0.6 * (10 - 4)
    assert lengths == {"min": 1, "p25": 2.0, "median": 3.0, "mean": 4.0, "p75": 4.0,
                       "p90": pytest.approx(7.6), "max": 10}
    assert "time_span" not in summarize(make(events))
