"""The report of a multi-seed comparison: statistics per config and per pair, tables and plots.

``write_report(results, directory, metric)`` writes to the run folder:

    results.json         every run (failed ones included) with its history and metrics
    report.md            a table per config (n ok / failed, mean +- std, 95% CI) and per pair
                         (difference, CI, p-values, effect size, win rate, verdict)
    learning_curves.png  each config's mean curve across seeds, with a +-1 std band
    final_metrics.png    each seed's final metric per config, as points over a box plot
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradwell.experiment.records import Results, higher_is_better
from gradwell.experiment.stats import Paired, Summary, compare, summarize
from gradwell.plots import figure, integer_ticks


@dataclass(frozen=True)
class Comparison:
    """Summaries per config and paired comparisons on one metric.

    >>> from gradwell.experiment.records import RunRecord
    >>> runs = {"he": [0.91, 0.93, 0.92, 0.94], "glorot": [0.89, 0.90, 0.91, 0.92]}  # per seed
    >>> records = [RunRecord(arm, seed, "ok", "single", test={"accuracy": value})
    ...            for arm, values in runs.items() for seed, value in enumerate(values)]
    >>> results = Results(list(runs), [0, 1, 2, 3], records, paths=dict.fromkeys(runs, "single"))
    >>> comparison = compare_results(results, "test_accuracy")
    >>> round(comparison.summaries["he"].mean, 3), comparison.failed, comparison.pairs[0].verdict
    (0.925, {'he': 0, 'glorot': 0}, 'he better than glorot')
    """

    metric: str
    higher_is_better: bool
    summaries: dict[str, Summary]
    failed: dict[str, int]
    paths: dict[str, str]
    pairs: list[Paired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "configs": {
                label: {**summary.to_dict(), "failed": self.failed[label], "path": self.paths[label]}
                for label, summary in self.summaries.items()
            },
            "pairs": [pair.to_dict() for pair in self.pairs],
        }


def compare_results(
    results: Results, metric: str, *, failed_value: float | None = None, higher: bool | None = None
) -> Comparison:
    """Summarize each config and compare every pair on `metric` (Holm-adjusted when several pairs).

    `failed_value` scores failed runs (e.g. chance accuracy for a diverged run); None leaves them out.
    `higher` says whether larger is better; by default, from the metric's name.

    >>> from gradwell.experiment.records import RunRecord
    >>> runs = {"he": [0.91, 0.93, 0.92, 0.94], "glorot": [0.89, 0.90, 0.91, 0.92]}  # per seed
    >>> records = [RunRecord(arm, seed, "ok", "single", test={"accuracy": value})
    ...            for arm, values in runs.items() for seed, value in enumerate(values)]
    >>> results = Results(list(runs), [0, 1, 2, 3], records, paths=dict.fromkeys(runs, "single"))
    >>> comparison = compare_results(results, "test_accuracy")
    >>> comparison.higher_is_better, [(pair.a, pair.b, pair.verdict) for pair in comparison.pairs]
    (True, [('he', 'glorot', 'he better than glorot')])
    """
    higher = higher_is_better(metric) if higher is None else higher
    values = {label: results.values(label, metric, failed_value) for label in results.labels}
    return Comparison(
        metric=metric,
        higher_is_better=higher,
        summaries={label: summarize(v) for label, v in values.items()},
        failed={label: len(results.failed(label)) for label in results.labels},
        paths=results.paths,
        pairs=compare(values, metric=metric, higher_is_better=higher),
    )


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def interval(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def data_phrase(results: Results) -> str:
    """Which data the configs trained on, for a sentence: one data set, each config's, or none known.

    >>> data_phrase(Results(["a", "b"], [0], [], {}, data={"a": "digits", "b": "digits"}))
    ', on digits'
    >>> data_phrase(Results(["a", "b"], [0], [], {}, data={"a": "mnist1d", "b": "digits"}))
    ', on mnist1d (a), digits (b)'
    """
    names = set(results.data.values())
    if len(names) == 1:
        return f", on {names.pop()}"
    return f", on {', '.join(f'{name} ({label})' for label, name in results.data.items())}" if names else ""


def markdown(comparison: Comparison, results: Results) -> str:
    """The report's tables as markdown."""
    direction = "higher" if comparison.higher_is_better else "lower"
    lines = [
        f"# Comparison on {comparison.metric} ({direction} is better)",
        "",
        f"{len(results.seeds)} seeds ({', '.join(map(str, results.seeds))}), {results.seconds:.1f} s"
        f"{data_phrase(results)}.",
        "",
        "| config | path | runs ok / failed | mean ± std | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for label, s in comparison.summaries.items():
        ok = len(results.runs(label)) - comparison.failed[label]
        spread = f"{number(s.mean)} ± {number(s.std)}"
        lines.append(
            f"| {label} | {comparison.paths[label]} | {ok} / {comparison.failed[label]} | {spread} "
            f"| {interval(s.ci)} |"
        )
    if comparison.pairs:
        lines += [
            "",
            "Pairs, on the seeds where both ran (difference = A - B; d_z = mean / std of the differences; "
            "p (Holm): the t-test's p adjusted for the number of pairs). Verdict: better when the "
            "t-test is significant at 0.05 (Holm-adjusted with several pairs) and the CI excludes 0.",
            "",
            "| A | B | n | difference | 95% CI | p (t) | p (Holm) | p (Wilcoxon) | d_z | A wins | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in comparison.pairs:
            lines.append(
                f"| {p.a} | {p.b} | {p.n} | {number(p.mean_difference)} | {interval(p.ci)} | {number(p.p_t)} "
                f"| {number(p.p_holm)} | {number(p.p_wilcoxon)} | {number(p.effect_size)} "
                f"| {number(p.win_rate)} | {p.verdict} |"
            )
    failures = [r for r in results.records if not r.ok]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r.label}, seed {r.seed}: {r.error}" for r in failures]
    return "\n".join(lines) + "\n"


def curve_panels(results: Results) -> list[str]:
    keys = {key for record in results.records for epoch in record.history for key in epoch}
    return [key for key in ("loss", "val_loss", "val_accuracy") if key in keys]


def plot_learning_curves(results: Results, path: Path) -> Path | None:
    """Mean per epoch over a config's successful seeds, with a +-1 std band."""
    panels = curve_panels(results)
    if not panels:
        return None
    with figure(path, ncols=len(panels), title="mean over seeds, band: ±1 std") as (_, axes):
        axes = axes if len(panels) > 1 else [axes]
        for ax, key in zip(axes, panels, strict=True):
            plotted = []
            for label in results.labels:
                curves = [[e[key] for e in r.history if key in e] for r in results.runs(label) if r.ok]
                length = max((len(c) for c in curves), default=0)
                if not length:
                    continue
                table = np.full((len(curves), length), np.nan)
                for i, curve in enumerate(curves):
                    table[i, : len(curve)] = curve
                epochs = np.arange(1, length + 1)
                mean, std = np.nanmean(table, axis=0), np.nanstd(table, axis=0)
                ax.plot(epochs, mean, label=label)
                plotted.append(mean)
                ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            integer_ticks(ax.xaxis)
            values = np.concatenate(plotted) if plotted else np.ones(1)
            low, high = np.nanmin(values), np.nanmax(values)
            if "loss" in key and low > 0 and high / low > 100:
                ax.set_yscale("log")  # a diverged run would flatten every other curve
            ax.grid(alpha=0.3)
            ax.legend()
    return path


def plot_final_metrics(results: Results, metric: str, path: Path) -> Path:
    """Each seed's value of `metric` per config: a box plot with the points over it."""
    with figure(path, size=(max(4.0, 1.4 * len(results.labels)), 3.6), title=metric) as (_, ax):
        rng = np.random.default_rng(0)  # jitter only, so that points do not hide each other
        data = []
        for i, label in enumerate(results.labels, 1):
            values = [v for v in results.values(label, metric) if v is not None]
            data.append(values)
            ax.scatter(i + rng.uniform(-0.08, 0.08, len(values)), values, s=14, zorder=3)
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(results.labels) + 1), results.labels, rotation=15)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, axis="y")
    return path


def write_report(
    results: Results, directory: str | Path, metric: str, *, failed_value: float | None = None
) -> Comparison:
    """Write results.json, report.md and the two plots into `directory`; return the comparison.

    >>> from gradwell.experiment.records import RunRecord
    >>> runs = {"he": [0.91, 0.93, 0.92, 0.94], "glorot": [0.89, 0.90, 0.91, 0.92]}  # per seed
    >>> records = [RunRecord(arm, seed, "ok", "single", test={"accuracy": value})
    ...            for arm, values in runs.items() for seed, value in enumerate(values)]
    >>> results = Results(list(runs), [0, 1, 2, 3], records, paths=dict.fromkeys(runs, "single"))
    >>> comparison = write_report(results, "runs/compare", "test_accuracy")
    >>> sorted(path.name for path in Path("runs/compare").iterdir())  # no history: no learning curves
    ['final_metrics.png', 'report.md', 'results.json']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    comparison = compare_results(results, metric, failed_value=failed_value)
    results.save(directory / "results.json")
    (directory / "report.md").write_text(markdown(comparison, results))
    plot_learning_curves(results, directory / "learning_curves.png")
    plot_final_metrics(results, metric, directory / "final_metrics.png")
    return comparison
