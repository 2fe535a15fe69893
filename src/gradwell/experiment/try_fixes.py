"""From a diagnosis to a proven fix: each fix the doctor prescribes, tried over seeds against the original.

``try_fixes(config, report)`` takes the doctor's verdicts on a config's model, makes each fix's
config change (gradwell.guidelines: every fix knows its change, a Scaled value multiplies the
config's own), and trains the original and every fixed config on the same seeds (the experiment
runner: processes, or Ray). Each fix is compared with the original seed by seed, on the final
validation accuracy and loss (the best epoch's under early stopping, whose weights the run keeps):
the mean paired difference with its 95% t interval, and a verdict from the accuracy: "helps" when
the fix is better with Holm-adjusted p < 0.05 over the fixes tried and an interval above 0,
"hurts" in the mirror case, else "no detectable difference". A run that fails (diverges) scores
chance: accuracy 1/K and loss ln K on K classes, the scores of a uniform guess.

Fixes with the same change are tried once; a fix that is not a config change (Fixup inside a
custom network), that changes nothing in this config, or whose change the config refuses is
listed with the reason, untried. The best proven fix is the one that helps most (largest mean
accuracy gain), written out as a config ready to train.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from torch import nn

from gradwell import build
from gradwell.config import Config
from gradwell.diagnose.rules import Fix, Verdict
from gradwell.errors import GradwellError
from gradwell.experiment.records import Results, RunRecord
from gradwell.experiment.runner import run
from gradwell.experiment.stats import NO_DIFFERENCE, Paired, holm, paired
from gradwell.guidelines import changed, resolved
from gradwell.plots import figure

ORIGINAL = "original"
HELPS, HURTS = "helps", "hurts"


@dataclass(frozen=True)
class Candidate:
    """One config change to try: its label, the fixes that prescribe it, and the fixed config."""

    label: str
    fixes: tuple[str, ...]
    changes: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Trial:
    """A candidate's paired comparison with the original, and its verdict."""

    candidate: Candidate
    accuracy: Paired
    loss: Paired
    verdict: str  # HELPS, HURTS or NO_DIFFERENCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.candidate.label,
            "fixes": list(self.candidate.fixes),
            "changes": self.candidate.changes,
            "val_accuracy": self.accuracy.to_dict(),
            "val_loss": self.loss.to_dict(),
            "verdict": self.verdict,
        }


@dataclass
class FixesTried:
    """Every fix of a diagnosis: the ones tried with their trials, the others with why not."""

    verdicts: list[str]
    trials: list[Trial]
    untried: list[tuple[str, str]]  # (fix, why it was not tried)
    results: Results | None
    metrics: tuple[str, str]  # the accuracy and loss compared, e.g. ("val_accuracy", "val_loss")
    original: Config
    classes: int
    notes: list[str] = field(default_factory=list)

    def values(self, label: str, metric: str) -> list[float | None]:
        """`label`'s `metric` per seed, a failed run scored at chance (``chance_scores``)."""
        return self.results.values(label, metric, chance_scores(self.metrics, self.classes)[metric])

    @property
    def best(self) -> Trial | None:
        """The fix that helps most: the largest mean gain in validation accuracy among those that help."""
        helping = [t for t in self.trials if t.verdict == HELPS]
        return max(helping, key=lambda t: t.accuracy.mean_difference) if helping else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "verdicts": self.verdicts,
            "seeds": self.results.seeds if self.results is not None else [],
            "metrics": list(self.metrics),
            "failed_score": chance_scores(self.metrics, self.classes),
            "trials": [t.to_dict() for t in self.trials],
            "untried": [{"fix": fix, "why": why} for fix, why in self.untried],
            "best": best.candidate.label if best is not None else None,
            "seconds": self.results.seconds if self.results is not None else 0.0,
        }

    def best_config_toml(self) -> str | None:
        """The best proven fix's config as TOML, headed by the fix and its evidence; None if none helps."""
        best = self.best
        if best is None:
            return None
        acc = best.accuracy
        header = [
            "# gradwell diagnose --try-fixes: the best proven fix",
            *(f"# fix: {text}" for text in best.candidate.fixes),
            f"# {self.metrics[0]} {acc.mean_difference:+.4f} [{acc.ci[0]:+.4f}, {acc.ci[1]:+.4f}] (95% CI, "
            f"paired over {acc.n} seeds) against the original config",
        ]
        return "\n".join(header) + "\n\n" + tomli_w.dumps(best.candidate.config.to_dict())


def change_label(changes: dict[str, Any]) -> str:
    """A short name for a change: ``init=he_normal``, ``lr=0.0002, max_lr=0.0004``."""
    return ", ".join(f"{key.partition('.')[2]}={format_value(value)}" for key, value in changes.items())


def format_value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
            + "}"
        )
    return f"{value:g}" if isinstance(value, float) else str(value)


def candidates(config: Config, verdicts: Sequence[Verdict]) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """The config changes the verdicts' fixes make (one per distinct change), and the fixes left untried."""
    found: dict[str, Candidate] = {}
    untried: list[tuple[str, str]] = []
    for fix in {fix.text: fix for verdict in verdicts for fix in verdict.fixes}.values():
        candidate, why = derive(config, fix)
        if candidate is None:
            untried.append((fix.text, why))
        elif candidate.label in found:
            previous = found[candidate.label]
            found[candidate.label] = Candidate(
                previous.label, (*previous.fixes, fix.text), previous.changes, previous.config
            )
        else:
            found[candidate.label] = candidate
    return list(found.values()), untried


def derive(config: Config, fix: Fix) -> tuple[Candidate | None, str]:
    """The fixed config of one fix, or None with the reason it cannot be tried on this config."""
    if not fix.changes:
        return None, "not a change of a gradwell config: make it in the network's code"
    changes = resolved(config, fix.changes)
    if not changes:
        return None, "this config has nothing it changes (no value to scale)"
    try:
        fixed = changed(config, changes, "the fix")
        build.check_sections(fixed)
        build.build_optimizer(fixed, nn.Linear(1, 1))  # options that exclude each other (clipnorm and global)
    except GradwellError as error:
        return None, f"the config refuses the change: {error}"
    if fixed.to_dict() == config.to_dict():
        return None, "the config has it already"
    return Candidate(change_label(changes), (fix.text,), changes, fixed), ""


def metric_names(config: Config) -> tuple[str, str]:
    """The final epoch's validation accuracy and loss, or the best epoch's under early stopping
    (whose weights the run ends with)."""
    prefix = "best_" if config.train.early_stopping is not None else ""
    return f"{prefix}val_accuracy", f"{prefix}val_loss"


def chance_scores(metrics: tuple[str, str], classes: int) -> dict[str, float]:
    """What a failed (diverged) run scores on the accuracy and the loss compared: a uniform guess's
    1/K and ln K on K classes.

    >>> chance_scores(("val_accuracy", "val_loss"), 10)
    {'val_accuracy': 0.1, 'val_loss': 2.302585092994046}
    """
    accuracy, loss = metrics
    return {accuracy: 1 / classes, loss: math.log(classes)}


def judge(
    candidates: list[Candidate], results: Results, metrics: tuple[str, str], classes: int
) -> list[Trial]:
    """Each candidate against the original on the same seeds; verdicts Holm-adjusted over the candidates."""
    accuracy, loss = metrics
    chance = chance_scores(metrics, classes)

    def pair(label: str, metric: str, p_adjusted: float | None = None) -> Paired:
        return paired(
            results.values(label, metric, chance[metric]),
            results.values(ORIGINAL, metric, chance[metric]),
            names=(label, ORIGINAL),
            metric=metric,
            higher_is_better=metric == accuracy,
            p_adjusted=p_adjusted,
        )

    raw = [pair(c.label, accuracy) for c in candidates]
    adjusted = holm([r.p_t for r in raw]) if len(raw) > 1 else [None] * len(raw)
    trials = []
    for candidate, p in zip(candidates, adjusted, strict=True):
        acc = pair(candidate.label, accuracy, p)
        verdict = HELPS if acc.a_better else HURTS if acc.b_better else NO_DIFFERENCE
        trials.append(Trial(candidate, acc, pair(candidate.label, loss), verdict))
    return trials


def try_fixes(
    config: Config,
    verdicts: Sequence[Verdict],
    *,
    classes: int,
    seeds: int = 5,
    workers: int | None = None,
    executor: Any = None,
    on_done: Callable[[list[RunRecord]], None] | None = None,
) -> FixesTried:
    """Train `config` and each fix of `verdicts` on seeds 0..`seeds`-1 and compare them pair by pair.

    `classes`: the data's number of classes (a failed run scores chance). `workers`, `executor`
    and `on_done` are the experiment runner's (processes; a Ray executor for a cluster; a callback
    for each task's runs as they finish).

    >>> from gradwell import config as configs
    >>> from gradwell.diagnose.rules import guided
    >>> small = ["data.name=digits", "model.depth=1", "model.width=8", "train.epochs=1", "schedule.name=none"]
    >>> verdict = Verdict("vanishing_gradients", "...", fixes=[guided("use He init", "he_init")])
    >>> tried = try_fixes(configs.load(None, small), [verdict], classes=10, seeds=2, workers=0)
    >>> [(t.candidate.label, t.accuracy.n) for t in tried.trials]
    [('init=he_normal', 2)]
    """
    if seeds < 2:
        raise GradwellError(f"trying fixes needs at least 2 seeds, for paired intervals; got {seeds}")
    found, untried = candidates(config, verdicts)
    metrics = metric_names(config)
    names = [v.name for v in verdicts]
    if not found:
        return FixesTried(names, [], untried, None, metrics, config, classes)
    arms = {ORIGINAL: config, **{c.label: c.config for c in found}}
    results = run(arms, seeds=range(seeds), workers=workers, executor=executor, on_done=on_done)
    return FixesTried(
        names, judge(found, results, metrics, classes), untried, results, metrics, config, classes
    )


def plot_fixes(tried: FixesTried, path: str | Path, title: str = "") -> Path:
    """Each fix's paired difference from the original (each seed a dot, the mean with its 95%
    interval as a bar), validation accuracy and loss side by side; green helps, red hurts."""
    colors = {HELPS: "tab:green", HURTS: "tab:red", NO_DIFFERENCE: "tab:gray"}
    with figure(path, ncols=2, size=(5.5, 0.6 * len(tried.trials) + 2.2), title=title) as (_, axes):
        for axis, metric, which in zip(axes, tried.metrics, ("accuracy", "loss"), strict=True):
            for row, trial in enumerate(tried.trials):
                result = getattr(trial, which)
                a, b = tried.values(trial.candidate.label, metric), tried.values(ORIGINAL, metric)
                axis.scatter(
                    [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None],
                    [row] * result.n,
                    s=14,
                    color=colors[trial.verdict],
                    alpha=0.6,
                )
                if result.ci is not None:
                    low, high = result.ci
                    axis.errorbar(
                        result.mean_difference,
                        row,
                        xerr=[[result.mean_difference - low], [high - result.mean_difference]],
                        fmt="o",
                        color="black",
                        capsize=4,
                    )
            axis.axvline(0.0, color="black", linewidth=0.8)
            axis.set_yticks(range(len(tried.trials)), [t.candidate.label for t in tried.trials])
            axis.set_xlabel(f"{metric}: fix - original (95% CI)")
        axes[1].set_yticklabels([])
    return Path(path)


def write_fixes(tried: FixesTried, directory: str | Path) -> dict[str, Path]:
    """Write fixes.json, every run (results.json), fixes.png and best-fix.toml (when a fix helps) to
    `directory`; the paths written, by what they hold."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = {"fixes": out / "fixes.json"}
    written["fixes"].write_text(json.dumps(tried.to_dict(), indent=2, default=str))
    if tried.results is not None:
        written["runs"] = tried.results.save(out / "results.json")
    if tried.trials:
        written["figure"] = plot_fixes(
            tried, out / "fixes.png", title="each fix against the original, paired"
        )
    toml = tried.best_config_toml()
    if toml is not None:
        written["best fix"] = out / "best-fix.toml"
        written["best fix"].write_text(toml)
    return written
