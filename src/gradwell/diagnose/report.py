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
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from gradwell.diagnose.rules import Thresholds, Verdict, diagnose
from gradwell.diagnose.stats import STATS, finite_or_none
from gradwell.errors import GradwellError

if TYPE_CHECKING:
    from gradwell.diagnose.layers import ModelFacts
    from gradwell.diagnose.monitor import History

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
    loss: float
    grad_norm: float
    nonfinite_forward: str | None  # the first module to output non-finite values ("inputs": the batch)
    nonfinite_backward: str | None  # the layer nearest the output with a non-finite gradient
    model: ModelFacts
    history: History | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    samples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # for the plots

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
            "loss": self.loss if math.isfinite(self.loss) else str(self.loss),
            "grad_norm": self.grad_norm if math.isfinite(self.grad_norm) else str(self.grad_norm),
            "gradient_ratio": self.gradient_ratio,
            "nonfinite": {"forward": self.nonfinite_forward, "backward": self.nonfinite_backward},
            "layers": [layer.to_dict() for layer in self.layers],
            "history": self.history.to_dict() if self.history is not None else None,
        }

    def summary(self) -> Table:
        """The verdicts, their summaries and fixes: what `gradwell train` prints after a run."""
        table = Table("verdict", "evidence and fixes", title="stability doctor", show_lines=True)
        for verdict in self.verdicts:
            style = "green" if verdict.name == "healthy" else "bold red"
            lines = [verdict.summary, *(f"fix: {fix}" for fix in verdict.fixes)]
            table.add_row(Text(verdict.name.replace("_", " "), style=style), "\n".join(lines))
        return table

    def layer_table(self) -> Table:
        stride = max(1, math.ceil(len(self.layers) / MAX_ROWS))
        shown = sorted({*range(0, len(self.layers), stride), len(self.layers) - 1})
        caption = f"every {stride}th layer of {len(self.layers)}; --json has all" if stride > 1 else None
        columns = [
            ("act mean", "act_mean"),
            ("act std", "act_std"),
            ("p1", "act_p1"),
            ("p50", "act_p50"),
            ("p99", "act_p99"),
            ("saturated", "saturated"),
            ("dead", "dead"),
            ("grad out scale", "out_grad_scale"),
            ("grad W norm", "weight_grad_norm"),
        ]
        updates = self.median_update_ratios()
        titles = [title for title, _ in columns] + (["update ratio (median)"] if updates else [])
        table = Table("layer", "kind", *titles, caption=caption)
        for i in shown:
            layer = self.layers[i]
            cells = [number(layer.stats[key], key) for _, key in columns]
            cells += [number(updates.get(layer.name), "update_ratio")] if updates else []
            table.add_row(layer.name, layer.kind, *cells)
        return table

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

    def __rich__(self) -> Group:
        return Group(self.layer_table(), self.summary())

    def __str__(self) -> str:
        console = Console(file=io.StringIO(), width=140, color_system=None)
        console.print(self)
        return console.file.getvalue()

    def plot(self, path: str | Path, title: str = "") -> Path:
        from gradwell.diagnose.plots import plot_report

        return plot_report(self, path, title)


def number(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key in ("saturated", "dead"):
        return f"{value:.0%}"
    return f"{value:.3g}"


def report_from_history(
    history: History, facts: ModelFacts | None, thresholds: Thresholds | None = None
) -> Report:
    """A Report of a Monitor's last sampled step, with its whole history and the verdicts."""
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
    )
    report.verdicts = diagnose(report, thresholds)
    return report
