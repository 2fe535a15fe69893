"""A claim's verdict from paired comparisons: holds, does not hold here, or inconclusive.

A claim is judged by one or more paired comparisons ("parts") from the statistics of
``gradwell.experiment.stats``. A part's gain is A - B in the direction where the metric improves,
and its verdict is:

    better     holds: A better than B (paired t-test at 0.05 and a 95% CI excluding 0);
               does not hold here: B better than A; otherwise inconclusive
    at_least   A matches or beats B: holds when the CI of the gain lies above -margin;
               does not hold here when B is better; otherwise inconclusive
    similar    holds when the CI of the difference lies inside (-margin, margin); does not hold
               here when the difference is significant and larger than the margin
    no_gain    holds when the CI of the gain lies below +margin; does not hold here when A is
               better; otherwise inconclusive

A part declared ``judged=False`` is reported (its interval and its own verdict) but left out of
the claim's verdict: an arm the claim does not state, such as claim 10's GAN pretraining.

A claim with several parts holds when all hold ("all": an intersection of hypotheses, tested at
0.05 each with no correction needed) and does not hold when one does not; a claim satisfied by
any of its parts ("any") compares Holm-adjusted p-values. "Inconclusive" means these seeds do
not settle it, not that the claim is false.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradwell.errors import unknown_name
from gradwell.experiment.records import Results, higher_is_better
from gradwell.experiment.stats import Paired, holm, paired

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold here", "inconclusive"
EXPECTATIONS = ("better", "at_least", "similar", "no_gain")


@dataclass(frozen=True)
class Part:
    """One comparison of a claim: A against B on `metric` (B on `metric_b` when given).

    >>> Part("he", "glorot", "better", "test_accuracy").describe()
    'he better than glorot on test_accuracy'
    >>> mc = Part("dropout", "dropout", "better", "mc_nll", metric_b="test_loss", names=("mc", "plain"))
    >>> mc.labels, mc.describe()
    (('mc', 'plain'), 'mc better than plain on mc_nll')
    >>> Part("gan", "scratch", "better", "gan", judged=False).describe()
    'gan better than scratch on gan (reported, not in the verdict)'
    """

    a: str
    b: str
    expect: str
    metric: str
    margin: float = 0.0
    metric_b: str | None = None
    names: tuple[str, str] | None = None  # display names, when A and B are metrics of one arm
    judged: bool = True  # False: reported with its interval, left out of the claim's verdict

    @property
    def labels(self) -> tuple[str, str]:
        return self.names or (self.a, self.b)

    def describe(self) -> str:
        """The expectation in words, e.g. "he better than glorot on test_accuracy"."""
        a, b = self.labels
        margin = f" (margin {self.margin:g})" if self.margin else ""
        return (
            {
                "better": f"{a} better than {b}",
                "at_least": f"{a} matches or beats {b}{margin}",
                "similar": f"{a} and {b} within ±{self.margin:g}",
                "no_gain": f"{a} no better than {b}{margin}",
            }[self.expect]
            + f" on {self.metric}"
            + ("" if self.judged else " (reported, not in the verdict)")
        )


def part_dict(part: Part, comparison: Paired, verdict: str) -> dict[str, Any]:
    """The part's statistics; "comparison" is the statistical verdict, "verdict" the claim's."""
    return {
        **comparison.to_dict(),
        "expected": part.describe(),
        "expect": part.expect,
        "margin": part.margin,
        "comparison": comparison.verdict,
        "verdict": verdict,
        "judged": part.judged,
    }


def gain(comparison: Paired) -> tuple[float, tuple[float, float]] | None:
    """The mean difference and CI turned so that positive means A improves on B."""
    if comparison.ci is None:
        return None
    sign = 1.0 if comparison.higher_is_better else -1.0
    low, high = sorted((sign * comparison.ci[0], sign * comparison.ci[1]))
    return sign * comparison.mean_difference, (low, high)


def judge(part: Part, comparison: Paired) -> str:
    """A part's verdict from its paired comparison (see the module docstring).

    >>> from gradwell.experiment.stats import paired
    >>> a, b = [0.91, 0.93, 0.92, 0.95], [0.81, 0.82, 0.80, 0.83]
    >>> comparison = paired(a, b, names=("a", "b"), metric="test_accuracy", higher_is_better=True)
    >>> judge(Part("a", "b", "better", "test_accuracy"), comparison)
    'holds'
    >>> judge(Part("a", "b", "similar", "test_accuracy", margin=0.01), comparison)
    'does not hold here'
    """
    measured = gain(comparison)
    if measured is None:
        return INCONCLUSIVE
    mean, (low, high) = measured
    if part.expect == "better":
        return HOLDS if comparison.a_better else FAILS if comparison.b_better else INCONCLUSIVE
    if part.expect == "at_least":
        return HOLDS if low > -part.margin else FAILS if comparison.b_better else INCONCLUSIVE
    if part.expect == "similar":
        if -part.margin < low and high < part.margin:
            return HOLDS
        significant = comparison.a_better or comparison.b_better
        return FAILS if significant and abs(mean) > part.margin else INCONCLUSIVE
    if part.expect == "no_gain":
        return HOLDS if high < part.margin else FAILS if comparison.a_better else INCONCLUSIVE
    raise unknown_name("expectation", part.expect, EXPECTATIONS)


def combine(verdicts: Sequence[str], how: str) -> str:
    """A claim's verdict from its parts': "all" must hold, or "any" one of them.

    >>> combine([HOLDS, INCONCLUSIVE], "all"), combine([HOLDS, INCONCLUSIVE], "any")
    ('inconclusive', 'holds')
    """
    if how == "any" and HOLDS in verdicts:
        return HOLDS
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def compare_part(
    part: Part, results: Results, failed_value: float | None, p_adjusted: float | None = None
) -> Paired:
    metric_b = part.metric_b or part.metric
    return paired(
        results.values(part.a, part.metric, failed_value),
        results.values(part.b, metric_b, failed_value),
        names=part.labels,
        metric=part.metric,
        higher_is_better=higher_is_better(part.metric),
        p_adjusted=p_adjusted,
    )


def judge_parts(
    parts: Sequence[Part], how: str, results: Results, failed_value: float | None
) -> tuple[str, list[tuple[Part, Paired, str]]]:
    """The verdict of parts combined `how` ("all" or "any"), and each part's comparison and verdict.

    "any" judges Holm-adjusted p-values, since any one of several tests could hold by chance.
    Parts with ``judged=False`` get their own verdict but take no part in the claim's (nor in Holm's
    adjustment, which is over the tests the verdict rests on).
    """
    comparisons = [compare_part(part, results, failed_value) for part in parts]
    counted = [i for i, part in enumerate(parts) if part.judged]
    if how == "any" and len(counted) > 1:
        adjusted = holm([comparisons[i].p_t for i in counted])
        for i, p in zip(counted, adjusted, strict=True):
            comparisons[i] = compare_part(parts[i], results, failed_value, p)
    judged = [(part, c, judge(part, c)) for part, c in zip(parts, comparisons, strict=True)]
    return combine([v for part, _, v in judged if part.judged], how), judged
