"""Statistics for multi-seed comparisons: intervals, paired tests, effect sizes and verdicts.

Two configs trained on the same seeds share their data order and initial draws seed by seed, so
they are compared pair by pair: the difference d_i = a_i - b_i per seed, its mean with a
Student t interval, the paired t-test on it, the Wilcoxon signed-rank test (which does not
assume normal differences), Cohen's d_z = mean(d) / std(d) (the paired effect size) and the win
rate. All tests are two-sided and come from scipy.

The verdict is "A better than B" (or "B better than A") when the paired t-test is significant at
`alpha` and the t interval of the mean difference excludes 0; otherwise "no detectable
difference", which is not evidence of equality: few seeds detect only large effects. When many
pairs are compared, ``holm`` adjusts their p-values (Holm, 1979) so that the chance of any false
"better" stays below alpha; ``compare`` applies it.

Degenerate cases are answered, never NaN: fewer than 2 values give no interval and no test;
identical runs (every difference 0) give p = 1 and "no detectable difference"; a constant non-zero
difference gives p = 0, a zero-width interval and no d_z (it would be infinite).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class Summary:
    """n values' mean, sample std (ddof 1) and t interval of the mean (None when undefined).

    >>> summary = summarize([0.91, 0.93, 0.92])
    >>> summary.n, round(summary.mean, 4), round(summary.std, 4), [round(v, 4) for v in summary.ci]
    (3, 0.92, 0.01, [0.8952, 0.9448])
    """

    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """The paired comparison of A and B on one metric (difference = A - B, in the metric's units).

    >>> result = paired([0.91, 0.93, 0.92, 0.94], [0.89, 0.90, 0.91, 0.92], names=("he", "glorot"))
    >>> result.a_better, result.n, round(result.mean_difference, 4), result.win_rate
    (True, 4, 0.02, 1.0)
    """

    a: str
    b: str
    metric: str
    higher_is_better: bool
    n: int
    mean_difference: float | None
    ci: tuple[float, float] | None
    p_t: float | None  # paired t-test
    p_wilcoxon: float | None  # Wilcoxon signed-rank test
    p_holm: float | None  # p_t adjusted for the other pairs compared with it (Holm)
    effect_size: float | None  # Cohen's d_z = mean(d) / std(d)
    win_rate: float | None  # fraction of seeds where A is better (ties count half)
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def a_better(self) -> bool:
        return self.verdict == f"{self.a} better than {self.b}"

    @property
    def b_better(self) -> bool:
        return self.verdict == f"{self.b} better than {self.a}"


def finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None], dtype=np.float64)


def t_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """mean +- t_{n-1} * std / sqrt(n); None for n < 2, (mean, mean) when std is 0."""
    if n < 2 or not math.isfinite(std):
        return None
    if std == 0:
        return (mean, mean)
    from scipy import stats  # imported on use: worker processes that only train never need it

    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return (float(low), float(high))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std and t confidence interval of the mean; None entries (failed runs) are skipped.

    >>> summarize([0.91, 0.93, 0.92, None]).n  # the failed run is left out
    3
    >>> summarize([0.9])  # one value: no spread, no interval
    Summary(n=1, mean=0.9, std=None, ci=None)
    """
    x = finite(values)
    n = len(x)
    if n == 0:
        return Summary(0, None, None, None)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else None
    return Summary(n, mean, std, t_interval(mean, std, n, confidence) if std is not None else None)


def constant(d: np.ndarray) -> bool:
    """Whether the differences are all equal, up to rounding (scipy's t-test breaks down there)."""
    return bool(np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())))


def paired_t_p(d: np.ndarray) -> float | None:
    """Two-sided p of the paired t-test on the differences d; exact answers where scipy gives NaN."""
    if len(d) < 2:
        return None
    if constant(d):
        return 1.0 if np.all(d == 0) else 0.0
    from scipy import stats

    return float(stats.ttest_1samp(d, 0.0).pvalue)  # ttest_rel(a, b) is ttest_1samp(a - b, 0)


def wilcoxon_p(d: np.ndarray) -> float | None:
    """Two-sided p of the Wilcoxon signed-rank test (zero differences dropped, scipy's default)."""
    if len(d) < 2:
        return None
    if np.all(d == 0):
        return 1.0
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about ties and small n; the p-value stands
        return float(stats.wilcoxon(d).pvalue)


def win_rate(d: np.ndarray, higher_is_better: bool) -> float | None:
    if len(d) == 0:
        return None
    signed = d if higher_is_better else -d
    return float((np.sum(signed > 0) + 0.5 * np.sum(signed == 0)) / len(d))


def verdict(a: str, b: str, mean: float | None, ci: tuple | None, p: float | None, higher: bool) -> str:
    """ "A better than B" when p < alpha and the interval excludes 0; else no detectable difference."""
    if p is None or ci is None or p >= ALPHA or ci[0] <= 0 <= ci[1]:
        return NO_DIFFERENCE
    return f"{a} better than {b}" if (mean > 0) == higher else f"{b} better than {a}"


def paired(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    names: tuple[str, str] = ("A", "B"),
    metric: str = "metric",
    higher_is_better: bool = True,
    p_adjusted: float | None = None,
) -> Paired:
    """Compare A and B measured on the same seeds (a[i] and b[i] from seed i).

    Seeds where either value is None (a failed run) are left out of the pairs.
    `p_adjusted` replaces the t-test's p in the verdict (a Holm-adjusted p, see ``compare``).

    >>> he, glorot = [0.91, 0.93, 0.92, 0.94, 0.92], [0.89, 0.90, 0.91, 0.92, 0.90]  # seeds 0..4
    >>> result = paired(he, glorot, names=("he", "glorot"), metric="test_accuracy")
    >>> result.verdict, round(result.p_t, 4), round(result.effect_size, 2)
    ('he better than glorot', 0.0032, 2.83)
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need one a and one b per seed; got {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    d = np.asarray([x - y for x, y in pairs], dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else None
    std = (0.0 if constant(d) else float(d.std(ddof=1))) if n > 1 else None
    ci = t_interval(mean, std, n) if std is not None else None
    p_t = paired_t_p(d)
    effect = mean / std if std else None
    p_verdict = p_adjusted if p_adjusted is not None else p_t
    return Paired(
        a=names[0],
        b=names[1],
        metric=metric,
        higher_is_better=higher_is_better,
        n=n,
        mean_difference=mean,
        ci=ci,
        p_t=p_t,
        p_wilcoxon=wilcoxon_p(d),
        p_holm=p_adjusted,
        effect_size=effect,
        win_rate=win_rate(d, higher_is_better),
        verdict=verdict(names[0], names[1], mean, ci, p_verdict, higher_is_better),
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i), made monotone.

    Controls the family-wise error rate under any dependence between the tests (Holm, 1979).
    None entries (no test) stay None and do not count in m.

    >>> holm([0.01, 0.04, 0.03, None])  # 0.01 * 3, then 0.03 * 2, and 0.04 * 1 raised to 0.06
    [0.03, 0.06, 0.06, None]
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, p * (len(present) - rank)))
        adjusted[i] = running
    return adjusted


def compare(
    values: dict[str, Sequence[float | None]], *, metric: str = "metric", higher_is_better: bool = True
) -> list[Paired]:
    """Every pair of configs (in the given order), with Holm-adjusted verdicts when there are several.

    `values` maps each config's label to its metric per seed, on the same seeds (None: failed).
    """
    labels = list(values)
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
    raw = [
        paired(values[a], values[b], names=(a, b), metric=metric, higher_is_better=higher_is_better)
        for a, b in pairs
    ]
    if len(raw) < 2:
        return raw
    adjusted = holm([r.p_t for r in raw])
    return [
        paired(
            values[a], values[b], names=(a, b), metric=metric, higher_is_better=higher_is_better, p_adjusted=p
        )
        if p is not None
        else r
        for (a, b), r, p in zip(pairs, raw, adjusted, strict=True)
    ]
