"""Paired tests, corrections, effect sizes and bootstrap intervals: hand-worked examples, exact
enumerations and cross-checks against scipy; then `compare_models` on long-format values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from recstack.errors import RecstackError
from recstack.evaluate.stats import (
    adjust,
    benjamini_hochberg,
    bootstrap_ci,
    cohens_d,
    compare_models,
    holm,
    mean_intervals,
    paired_t_test,
    permutation_test,
    rank_biserial,
    wilcoxon_test,
)

# ---- tests on tiny samples with known p-values ------------------------------------------------------


def test_paired_t_test_matches_the_closed_form_for_two_degrees_of_freedom():
    # d = x - y = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, df = 2;
    # for df = 2 the two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14) = 0.074180
    x, y = np.array([1.0, 2.5, 4.0]), np.array([0.0, 0.5, 1.0])
    assert paired_t_test(x, y) == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    assert paired_t_test(x, y) == pytest.approx(0.074180, abs=1e-6)
    assert paired_t_test(y, x) == pytest.approx(paired_t_test(x, y))  # two-sided


def test_paired_t_test_degenerate_cases():
    same = np.array([0.25, 0.5, 0.0])
    assert paired_t_test(same, same) == 1.0  # no difference at all
    assert paired_t_test(same + 0.5, same) == 0.0  # an exact constant shift: certain
    assert math.isnan(paired_t_test([1.0], [0.0]))  # one pair: no variance estimate
    with pytest.raises(RecstackError, match="equal lengths"):
        paired_t_test([1.0, 2.0], [1.0])
    with pytest.raises(RecstackError, match="NaN"):
        paired_t_test([1.0, np.nan], [1.0, 0.0])


def test_wilcoxon_exact_p_values_by_hand():
    # n = 5 non-zero differences, exact null: each of the 2^5 sign patterns equally likely.
    # All positive -> T- = 0; only the all-+ and all-- patterns are as extreme: p = 2 / 32.
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert wilcoxon_test(x, np.zeros(5)) == pytest.approx(2 / 32)
    # the smallest |d| negative -> T- = 1; P(T- <= 1) = 2 / 32 ({} and {1}), two-sided 4 / 32
    assert wilcoxon_test(np.array([-1.0, 2.0, 3.0, 4.0, 5.0]), np.zeros(5)) == pytest.approx(4 / 32)
    # zero differences are dropped (Wilcoxon's convention): one more user with d = 0 changes nothing
    assert wilcoxon_test(np.append(x, 7.0), np.append(np.zeros(5), 7.0)) == pytest.approx(2 / 32)
    assert wilcoxon_test(x, x) == 1.0
    # many ties at zero, as per-user NDCG differences have: the p is that of the non-zero differences
    rng = np.random.default_rng(0)
    d = np.round(rng.normal(0.1, 1.0, 60), 1)
    d[:25] = 0.0
    assert wilcoxon_test(d, np.zeros(60)) == pytest.approx(stats.wilcoxon(d[d != 0]).pvalue)


def test_permutation_test_exact_p_by_hand():
    # d = [3, 1, 2, -1]: the 16 sign flips of {3, 1, 2, 1} give sums 7 - 2 * (flipped part).
    # |sum| >= 5 needs a flipped part summing to <= 1 ({}, {1}, {1'}) or >= 6 (their mirror images):
    # 6 of 16 -> p = 0.375 exactly.
    d = np.array([3.0, 1.0, 2.0, -1.0])
    assert permutation_test(d, np.zeros(4)) == pytest.approx(0.375)
    # all positive: only the identity and the full flip reach |sum| = 15 -> 2 / 32
    assert permutation_test(np.arange(1.0, 6.0), np.zeros(5)) == pytest.approx(2 / 32)
    assert permutation_test(d, d) == 1.0


def test_permutation_test_enumerates_every_sign_flip_when_it_can():
    rng = np.random.default_rng(3)
    x, y = rng.random(10), rng.random(10)
    d = x - y
    means = np.array([np.mean(np.array(signs) * d) for signs in itertools.product([1.0, -1.0], repeat=10)])
    naive = np.mean(np.abs(means) >= abs(d.mean()) - 1e-12)
    assert permutation_test(x, y, n_resamples=1024) == pytest.approx(naive)
    scipy_exact = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis),
                                         permutation_type="samples", n_resamples=np.inf).pvalue
    assert permutation_test(x, y, n_resamples=1024) == pytest.approx(scipy_exact)


def test_random_permutation_test_is_seeded_close_to_exact_and_never_zero():
    rng = np.random.default_rng(4)
    x = rng.random(12)
    y = x - rng.normal(0.1, 0.2, 12)
    exact = permutation_test(x, y, n_resamples=4096)  # 2^12: every flip
    sampled = permutation_test(x, y, n_resamples=4000, seed=1)  # < 2^12: random flips
    assert sampled == permutation_test(x, y, n_resamples=4000, seed=1)
    assert sampled != permutation_test(x, y, n_resamples=4000, seed=2)
    assert sampled == pytest.approx(exact, abs=0.03)
    assert (sampled * 4001) == pytest.approx(round(sampled * 4001))  # (1 + count) / (R + 1)
    # 40 positive differences: no random flip is as extreme, yet the p is 1 / (R + 1), not 0
    assert permutation_test(np.arange(1.0, 41.0), np.zeros(40), n_resamples=999) == pytest.approx(1 / 1000)
    with pytest.raises(RecstackError, match="n_resamples"):
        permutation_test(x, y, n_resamples=0)


# ---- corrections -----------------------------------------------------------------------------------

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04;
    # running maximum 0.02, 0.03, 0.06, 0.06; back in input order:
    assert holm(P) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_benjamini_hochberg_by_hand_and_against_scipy():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04;
    # running minimum from the top changes nothing; back in input order:
    assert benjamini_hochberg(P) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 50):
        p = rng.random(size) ** 3
        assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))


def test_corrections_keep_nan_out_of_the_family_and_check_input():
    p = [0.01, np.nan, 0.04]
    adjusted = holm(p)
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.02, 0.04])
    assert benjamini_hochberg(p)[[0, 2]] == pytest.approx([0.02, 0.04])  # m = 2: 0.01 * 2 / 1, 0.04 * 2 / 2
    assert adjust(P, None) == pytest.approx(P)
    rng = np.random.default_rng(1)
    q = rng.random(20)
    assert (holm(q) >= benjamini_hochberg(q) - 1e-15).all()  # FWER control is the stricter
    assert (benjamini_hochberg(q) >= q).all()
    with pytest.raises(RecstackError, match="in \\[0, 1\\]"):
        holm([0.5, 1.5])
    with pytest.raises(RecstackError, match="unknown correction 'bonferoni'"):
        adjust(P, "bonferoni")  # type: ignore[arg-type]


# ---- effect sizes and intervals ----------------------------------------------------------------------

def test_effect_sizes_by_hand():
    assert cohens_d([1.0, 2.5, 4.0], [0.0, 0.5, 1.0]) == pytest.approx(2.0)  # d = [1, 2, 3]: mean 2, sd 1
    assert cohens_d([0.0, 0.5, 1.0], [1.0, 2.5, 4.0]) == pytest.approx(-2.0)
    assert cohens_d([1.0, 1.0], [1.0, 1.0]) == 0.0
    assert cohens_d([2.0, 2.0], [1.0, 1.0]) == math.inf
    # d = [-1, 2, 3, 4, 5]: ranks of |d| 1..5, T+ = 14, T- = 1, r = 13 / 15; zeros dropped
    d = np.array([-1.0, 2.0, 3.0, 4.0, 5.0, 0.0])
    assert rank_biserial(d, np.zeros(6)) == pytest.approx(13 / 15)
    assert rank_biserial(np.zeros(6), d) == pytest.approx(-13 / 15)
    # ties get average ranks: d = [1, -1, 2] -> ranks 1.5, 1.5, 3 -> (4.5 - 1.5) / 6
    assert rank_biserial([1.0, -1.0, 2.0], [0.0, 0.0, 0.0]) == pytest.approx(0.5)


def test_bootstrap_interval_is_seeded_and_agrees_with_scipy():
    rng = np.random.default_rng(2)
    values = rng.exponential(0.3, 400)
    low, high = bootstrap_ci(values, n_resamples=3000, seed=5)
    assert (low, high) == bootstrap_ci(values, n_resamples=3000, seed=5)
    assert low < values.mean() < high
    reference = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=3000,
                                rng=np.random.default_rng(5)).confidence_interval
    width = high - low
    assert low == pytest.approx(reference.low, abs=0.1 * width)
    assert high == pytest.approx(reference.high, abs=0.1 * width)
    # and the width is what the normal approximation says: 2 * 1.96 * sd / sqrt(n)
    assert width == pytest.approx(2 * 1.96 * values.std(ddof=1) / 20, rel=0.1)
    narrow = bootstrap_ci(values, confidence=0.5, n_resamples=3000, seed=5)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    with pytest.raises(RecstackError, match="confidence"):
        bootstrap_ci(values, confidence=95)


def test_bootstrap_interval_depends_on_the_values_not_their_order():
    # a run's files hold users in index order, `compare` sorts them by id: one interval for both
    rng = np.random.default_rng(4)
    values = rng.exponential(0.3, 257)
    shuffled = rng.permutation(values)
    assert not np.array_equal(values, shuffled)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(shuffled, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)  # the seed still matters


# ---- compare_models ----------------------------------------------------------------------------------

def long_values(n_users: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-user values of three models: 'strong', 'weak' (clearly worse), 'twin' (strong plus noise)."""
    rng = np.random.default_rng(seed)
    strong = rng.random(n_users)
    columns = {"model": [], "user_id": [], "metric": [], "part": [], "value": []}
    models = {"weak": np.clip(strong - rng.uniform(0.05, 0.25, n_users), 0, None),
              "strong": strong,
              "twin": strong + rng.normal(0, 0.05, n_users)}
    for name, values in models.items():
        for part in ("valid", "test"):
            columns["model"] += [name] * n_users
            columns["user_id"] += [f"u{u}" for u in range(n_users)]
            columns["metric"] += ["NDCG@10"] * n_users
            columns["part"] += [part] * n_users
            columns["value"] += list(values if part == "test" else values * 0.5)
    return {key: np.asarray(value) for key, value in columns.items()}


def test_compare_models_against_the_best():
    values = long_values()
    result = compare_models(values, "NDCG@10", test="t", correction="holm", seed=0)
    test_part = values["part"] == "test"
    by_model = {m: values["value"][test_part & (values["model"] == m)] for m in ("weak", "strong", "twin")}
    best = max(by_model, key=lambda m: by_model[m].mean())
    assert result.baseline == best and result.rows[0].model == best and result.rows[0].is_baseline
    assert [row.mean for row in result.rows] == sorted((row.mean for row in result.rows), reverse=True)
    tested = [row for row in result.rows if not row.is_baseline]
    raw = [paired_t_test(by_model[row.model], by_model[best]) for row in tested]
    assert [row.p for row in tested] == pytest.approx(raw)
    assert [row.p_adjusted for row in tested] == pytest.approx(holm(raw))
    for row in tested:
        assert row.diff == pytest.approx((by_model[row.model] - by_model[best]).mean())
        assert row.effect_size == pytest.approx(cohens_d(by_model[row.model], by_model[best]))
        assert row.n_paired == 200 and row.diff_ci_low < row.diff < row.diff_ci_high
    weak = result.row("weak")
    assert weak.significant and weak.diff < 0 and weak.p_adjusted < 1e-10
    assert result.row(best).p is None and result.row(best).significant is None
    assert "Holm-Bonferroni" in result.description and "paired t-test" in result.description


def test_compare_models_named_baseline_other_tests_and_table_types():
    values = long_values()
    table = pa.table({key: pa.array(value.tolist()) for key, value in values.items()})
    result = compare_models(table, "NDCG@10", baseline="weak", test="wilcoxon", correction="bh")
    assert result.baseline == "weak" and result.row("weak").is_baseline
    strong = result.row("strong")
    assert strong.effect_size == pytest.approx(1.0)  # every non-zero difference favours 'strong'
    assert result.effect_name == "rank-biserial r" and strong.significant
    import pandas as pd  # the dataframes extra; the mapping and pyarrow forms above need nothing

    frame = pd.DataFrame(values)
    permuted = compare_models(frame, "NDCG@10", baseline="weak", test="permutation", correction=None,
                              n_resamples=500, seed=3)
    assert permuted.row("strong").p == pytest.approx(1 / 501)
    assert permuted.row("strong").p_adjusted == permuted.row("strong").p  # no correction
    valid = compare_models(values, "NDCG@10", part="valid")
    assert valid.row("weak").mean == pytest.approx(0.5 * result.row("weak").mean)


def test_compare_models_pairs_only_shared_users():
    values = long_values()
    # 'weak' loses its first 50 users: its comparison runs over the 150 users both have
    drop = (values["model"] == "weak") & np.isin(values["user_id"], [f"u{u}" for u in range(50)])
    values = {key: value[~drop] for key, value in values.items()}
    result = compare_models(values, "NDCG@10", baseline="strong")
    weak = result.row("weak")
    assert weak.n_users == 150 and weak.n_paired == 150
    keep = (values["part"] == "test")
    x = values["value"][keep & (values["model"] == "weak")]
    y = values["value"][keep & (values["model"] == "strong")][50:]  # users u50.. in the same order
    assert weak.p == pytest.approx(paired_t_test(x, y))
    assert weak.diff == pytest.approx((x - y).mean())


def test_compare_models_lower_is_better_and_errors():
    values = long_values()
    values["metric"] = np.full(len(values["model"]), "RMSE")
    assert compare_models(values, "RMSE").baseline == "weak"  # smallest error is best
    values = long_values()
    with pytest.raises(RecstackError, match="Did you mean 'NDCG@10'"):
        compare_models(values, "NDCG@1O")
    with pytest.raises(RecstackError, match="Did you mean 'strong'"):
        compare_models(values, "NDCG@10", baseline="strnog")
    with pytest.raises(RecstackError, match="unknown test 'ttest'"):
        compare_models(values, "NDCG@10", test="ttest")  # type: ignore[arg-type]
    with pytest.raises(RecstackError, match="missing: user_id"):
        compare_models({"model": values["model"], "value": values["value"]}, "NDCG@10")
    one = {key: value[values["model"] == "weak"] for key, value in values.items()}
    with pytest.raises(RecstackError, match="at least two models"):
        compare_models(one, "NDCG@10")
    again = np.flatnonzero(values["part"] == "test")[:3]
    doubled = {key: np.concatenate([value, value[again]]) for key, value in values.items()}
    with pytest.raises(RecstackError, match="more than one NDCG@10 value"):
        compare_models(doubled, "NDCG@10")


def test_mean_intervals_are_the_intervals_compare_models_prints():
    columns = long_values(n_users=120, seed=6)
    order = np.random.default_rng(1).permutation(len(columns["model"]))  # rows in any order
    shuffled = {key: value[order] for key, value in columns.items()}
    comparison = compare_models(columns, "NDCG@10")
    intervals = mean_intervals(shuffled, "NDCG@10", ["twin", "weak", "absent"])
    assert list(intervals) == ["twin", "weak"]  # the asked order; models without values left out
    for model in ("twin", "weak"):
        row = comparison.row(model)
        assert intervals[model] == (row.ci_low, row.ci_high, 120)  # identical, not approximately equal
    assert set(mean_intervals(columns, "NDCG@10")) == {"weak", "strong", "twin"}
    valid = mean_intervals(columns, "NDCG@10", part="valid")["strong"]
    assert valid[1] < intervals["twin"][0]  # the valid values are halved: another part, another interval
    assert mean_intervals(columns, "Recall@10") == {} and mean_intervals(columns, "NDCG@10", part="nope") == {}
