"""Multi-seed statistics: scipy as the oracle, hand-computed cases, and the degenerate ones."""

import json

import numpy as np
import pytest
from scipy import stats

from gradwell.experiment.stats import NO_DIFFERENCE, compare, holm, paired, summarize


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_summary_matches_a_hand_computed_t_interval():
    # mean 2.5, sample std sqrt(5/3), t_{0.975, 3} = 3.182446305 (tables)
    s = summarize([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * np.sqrt(5 / 3) / 2
    assert s.n == 4 and s.mean == 2.5 and s.std == pytest.approx(np.sqrt(5 / 3), rel=1e-12)
    assert s.ci == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)


def test_summary_matches_scipy_and_skips_failed_runs(rng):
    x = rng.normal(0.8, 0.05, 9)
    s = summarize([*x, None])
    expected = stats.t.interval(0.95, 8, loc=x.mean(), scale=stats.sem(x))
    assert s.n == 9 and s.mean == pytest.approx(x.mean(), rel=1e-12)
    assert s.ci == pytest.approx(expected, rel=1e-12)


def test_summary_of_fewer_than_two_values_has_no_interval():
    assert summarize([]).mean is None
    one = summarize([0.5])
    assert one.mean == 0.5 and one.std is None and one.ci is None


def test_paired_statistics_match_scipy(rng):
    a = rng.normal(0.90, 0.02, 10)
    b = a - rng.normal(0.01, 0.02, 10)
    p = paired(a, b, names=("a", "b"))
    d = a - b
    assert p.n == 10 and p.mean_difference == pytest.approx(d.mean(), rel=1e-12)
    assert p.p_t == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert p.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-10)
    assert p.effect_size == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)  # Cohen's d_z
    assert p.ci == pytest.approx(stats.t.interval(0.95, 9, loc=d.mean(), scale=stats.sem(d)), rel=1e-10)
    assert p.win_rate == np.mean(d > 0)


def test_a_known_difference_is_detected_in_either_direction(rng):
    base = rng.normal(0.8, 0.03, 10)
    better = base + 0.03 + rng.normal(0, 0.005, 10)
    assert paired(better, base, names=("new", "old")).verdict == "new better than old"
    assert paired(base, better, names=("old", "new")).verdict == "new better than old"
    # for a loss, lower is better: the config with the larger values loses
    lower = paired(better, base, names=("new", "old"), metric="loss", higher_is_better=False)
    assert lower.verdict == "old better than new" and lower.win_rate == 0.0


def test_identical_runs_give_no_difference_and_no_nan():
    values = [0.91, 0.92, 0.90, 0.93]
    p = paired(values, list(values), names=("a", "b"))
    assert p.verdict == NO_DIFFERENCE and p.p_t == 1.0 and p.p_wilcoxon == 1.0
    assert p.ci == (0.0, 0.0) and p.effect_size is None and p.win_rate == 0.5
    json.dumps(p.to_dict(), allow_nan=False)


def test_a_constant_nonzero_difference_is_significant():
    a = np.array([0.5, 0.6, 0.7])
    p = paired(a + 0.25, a)
    assert p.p_t == 0.0 and p.ci == pytest.approx((0.25, 0.25)) and p.effect_size is None
    assert p.verdict == "A better than B"


def test_failed_runs_leave_their_seed_out_of_the_pairs():
    p = paired([0.9, None, 0.8, 0.85], [0.7, 0.6, None, 0.65])
    assert p.n == 2 and p.mean_difference == pytest.approx(0.2)
    single = paired([0.9, None], [0.8, 0.7])
    assert single.n == 1 and single.p_t is None and single.ci is None and single.verdict == NO_DIFFERENCE


def test_equal_configs_are_rarely_called_different(rng):
    # under the null the verdict is wrong at most alpha of the time
    trials = 400
    wrong = sum(
        paired(rng.normal(0.8, 0.02, 10), rng.normal(0.8, 0.02, 10)).verdict != NO_DIFFERENCE
        for _ in range(trials)
    )
    assert wrong / trials < 0.09


def test_holm_matches_a_hand_computed_case():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.02, None, 0.9]) == pytest.approx([0.04, None, 0.9])
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_compare_adjusts_the_verdicts_of_several_pairs(rng):
    base = rng.normal(0.8, 0.02, 6)
    values = {"a": base + 0.01 + rng.normal(0, 0.01, 6), "b": base, "c": base + rng.normal(0, 0.01, 6)}
    pairs = compare(values)
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    adjusted = holm([p.p_t for p in pairs])
    assert [p.p_holm for p in pairs] == pytest.approx(adjusted)
    for p in pairs:
        assert (p.verdict != NO_DIFFERENCE) == (p.p_holm < 0.05 and not p.ci[0] <= 0 <= p.ci[1])
    assert compare({"a": [1.0, 2.0], "b": [1.0, 2.5]})[0].p_holm is None
