"""The doctor's Report: per-layer numbers, verdicts and fixes, as a terminal table, JSON and plots.

``to_dict()`` is the stable machine-readable form (``SCHEMA`` names its version), strict JSON
(no NaN or infinity): the verdicts with their evidence and fixes, the model facts, the loss and
global gradient norm (the strings "nan" or "inf" when non-finite), the first non-finite module,
one object per layer with every statistic of ``stats.STATS`` (null where it does not apply or is
non-finite), and a Monitor's history when there is one. ``plot(path)`` draws the activation
and back-propagated gradient histograms per layer (as in Glorot and Bengio, 2010, figures 6 and
7), the per-layer scales, and with a history a layers x steps heatmap of gradient norms and the
dead and saturated fractions over training.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from gradwell.diagnose.rules import Thresholds, Verdict, diagnose
from gradwell.diagnose.stats import STATS, finite_or_none
from gradwell.errors import GradwellError

if TYPE_CHECKING:
    from gradwell.diagnose.history import History
    from gradwell.diagnose.layers import ModelFacts

SCHEMA = "gradwell.diagnose/1"
MAX_ROWS = 24  # a deeper model's table shows evenly spaced layers (the JSON has all)


@dataclass
class LayerReport:
    """One layer's statistics, keyed by the names of ``stats.STATS`` (None where not applicable).

    >>> LayerReport("hidden1", "relu", {"dead": 0.25, "saturated": None}).to_dict()
    {'name': 'hidden1', 'kind': 'relu', 'dead': 0.25, 'saturated': None}
    """

    name: str
    kind: str
    stats: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.stats}


@dataclass
class Report:
    """What the doctor measured and concluded; see the module docstring for its forms.

    >>> import torch
    >>> from gradwell.diagnose import probe
    >>> from gradwell.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    >>> report = probe(mlp(8, 3, hidden=[16, 16], generator=g), x, y)
    >>> report.healthy, [layer.name for layer in report.layers], report.to_dict()["schema"]
    (True, ['hidden1', 'hidden2', 'output'], 'gradwell.diagnose/1')
    """

    layers: list[LayerReport]
    loss: float | None  # None: not known (a watched loop that never handed it over)
    grad_norm: float
    nonfinite_forward: str | None  # the first module to output non-finite values ("inputs": the batch)
    nonfinite_backward: str | None  # the layer nearest the output with a non-finite gradient
    model: ModelFacts
    history: History | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    samples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # for the plots
    unseen: list[str] = field(default_factory=list)  # what the doctor could not measure, and why
    gradients: str = ""  # which gradients the statistics show (before clipping? unscaled?)

    @property
    def gradient_ratio(self) -> float | None:
        """Scale of the gradient at the first layer's output / at the last layer's (None if unknown);
        the scale is stats.gradient_stats's, the RMS for dense layers."""
        first, last = self.layers[0].stats["out_grad_scale"], self.layers[-1].stats["out_grad_scale"]
        if first is None or last is None or last == 0 or not math.isfinite(first / last):
            return None
        return first / last

    @property
    def healthy(self) -> bool:
        return [v.name for v in self.verdicts] == ["healthy"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "healthy": self.healthy,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "model": self.model.to_dict(),
            "loss": None if self.loss is None else self.loss if math.isfinite(self.loss) else str(self.loss),
            "grad_norm": self.grad_norm if math.isfinite(self.grad_norm) else str(self.grad_norm),
            "gradient_ratio": self.gradient_ratio,
            "nonfinite": {"forward": self.nonfinite_forward, "backward": self.nonfinite_backward},
            "layers": [layer.to_dict() for layer in self.layers],
            "history": self.history.to_dict() if self.history is not None else None,
            "unseen": self.unseen,
            "gradients": self.gradients,
        }

    def summary(self) -> Table:
        """The verdicts, their summaries and fixes: what `gradwell train` prints after a run."""
        table = Table("verdict", "evidence and fixes", title="stability doctor", show_lines=True)
        for verdict in self.verdicts:
            style = "green" if verdict.name == "healthy" else "bold red"
            lines = [verdict.summary, *(f"fix: {fix}" for fix in verdict.fixes)]
            table.add_row(Text(verdict.name.replace("_", " "), style=style), "\n".join(lines))
        return table

    def layer_table(self, width: int = 140) -> Table:
        """The per-layer numbers in `width` columns: layer names whole, and as many of COLUMNS as
        fit, in their order (a column without any value goes first); the caption says what is
        left out."""
        stride = max(1, math.ceil(len(self.layers) / MAX_ROWS))
        shown = sorted({*range(0, len(self.layers), stride), len(self.layers) - 1})
        updates = self.median_update_ratios()
        cells = {title: [number(self.value(i, key, updates), key) for i in shown] for title, key in COLUMNS}
        cells = {title: column for title, column in cells.items() if any(c != "-" for c in column)}
        rows = [[self.layers[i].name, self.layers[i].kind] for i in shown]
        notes = [f"every {ordinal(stride)} layer of {len(self.layers)}; --json has all"] if stride > 1 else []
        fixed = [
            max(len(c) for c in [title, *(row[k] for row in rows)])
            for k, title in enumerate(("layer", "kind"))
        ]
        least = {t: max(len(c) for c in [*cells[t], *t.split()]) for t in cells}  # headers wrap at spaces
        titles = list(cells)
        while titles and sum(w + 3 for w in [*fixed, *(least[t] for t in titles)]) + 1 > width:
            titles.pop()  # 3: a column's padding and border; 1: the table's last border
        left_out = [title for title in cells if title not in titles]
        notes += [f"left out for width: {', '.join(left_out)}"] if left_out else []
        table = Table("layer", "kind", *titles, caption="\n".join(notes) or None)
        for column in table.columns[:2]:  # names whole: the numbers give way instead
            column.no_wrap = True
        for column, title in zip(table.columns[2:], titles, strict=True):
            column.min_width = least[title]
        for row, names in enumerate(rows):
            table.add_row(*names, *(cells[title][row] for title in titles))
        return table

    def value(self, i: int, key: str, updates: dict[str, float]) -> float | None:
        if key == "update_ratio":
            return updates.get(self.layers[i].name)
        return self.layers[i].stats[key]

    def median_update_ratios(self) -> dict[str, float]:
        """Per layer, the median update-to-weight ratio over a Monitor's sampled steps ({} without)."""
        history = self.history
        if history is None or not len(history.steps):
            return {}
        ratios = history.series("update_ratio")
        return {
            name: float(np.nanmedian(ratios[:, i]))
            for i, name in enumerate(history.layers)
            if np.isfinite(ratios[:, i]).any()
        }

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        parts: list[Any] = [self.layer_table(options.max_width), self.summary()]
        if self.gradients:
            parts.append(Text(f"gradients shown: {self.gradients}", style="dim"))
        if self.unseen:
            parts.append(Text("not measured: " + "; ".join(self.unseen), style="yellow"))
        yield Group(*parts)

    def __str__(self) -> str:
        console = Console(file=io.StringIO(), width=140, color_system=None)
        console.print(self)
        return console.file.getvalue()

    def plot(self, path: str | Path, title: str = "") -> Path:
        from gradwell.diagnose.plots import plot_report

        return plot_report(self, path, title)


# (title, statistic) of the layer table, most telling first: a narrow terminal keeps the first
COLUMNS = (
    ("dead", "dead"),
    ("saturated", "saturated"),
    ("act std", "act_std"),
    ("grad out scale", "out_grad_scale"),
    ("update ratio (median)", "update_ratio"),
    ("grad W norm", "weight_grad_norm"),
    ("act mean", "act_mean"),
    ("p50", "act_p50"),
    ("p1", "act_p1"),
    ("p99", "act_p99"),
)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st.

    >>> [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 22, 101)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '22nd', '101st']
    """
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def number(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key in ("saturated", "dead"):
        return f"{value:.0%}"
    return f"{value:.3g}"


def report_from_history(
    history: History, facts: ModelFacts | None, thresholds: Thresholds | None = None, **extra: Any
) -> Report:
    """A Report of a Monitor's last sampled step, with its whole history and the verdicts;
    `extra` are more of Report's fields (samples, unseen, gradients)."""
    if facts is None or not history.steps:
        raise GradwellError("the Monitor has not sampled any step yet: train with it first")
    last = history.stats[-1]
    layers = [
        LayerReport(name, kind, {k: finite_or_none(v) for k, v in zip(STATS, row, strict=True)})
        for name, kind, row in zip(history.layers, history.kinds, last, strict=True)
    ]
    backward = [
        name
        for name, layer in zip(history.layers, layers, strict=True)
        if (layer.stats["out_grad_nonfinite"] or 0) > 0
    ]
    report = Report(
        layers=layers,
        loss=history.loss[-1],
        grad_norm=history.grad_norm[-1],
        nonfinite_forward=None,
        nonfinite_backward=backward[-1] if backward else None,
        model=facts,
        history=history,
        **extra,
    )
    report.verdicts = diagnose(report, thresholds)
    return report
