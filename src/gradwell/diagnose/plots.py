"""The doctor's figure, drawn through gradwell.plots.figure.

Panels: histograms of the hidden layers' activations and back-propagated gradients, each on one
shared axis (Glorot and Bengio, 2010, figures 6 and 7: a peak narrowing from layer to layer is a
vanishing signal, a widening one an exploding signal; the logits are left out, they would dwarf
the rest), the std of activations and gradients by depth, and, with a Monitor's history, a layers
x steps heatmap of log10 weight-gradient norms and the dead and saturated fractions over training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gradwell.plots import figure, integer_ticks

if TYPE_CHECKING:
    from gradwell.diagnose.report import Report

MAX_CURVES = 8  # histogram curves per panel, evenly spaced through the depth


def plot_report(report: Report, path: str | Path, title: str = "") -> Path:
    history = report.history if report.history is not None and len(report.history.steps) else None
    panels = 5 if history is not None else 3
    with figure(path, ncols=3, nrows=-(-panels // 3), title=title) as (_, axes):
        hidden = {layer.name for layer in report.layers[:-1]} or {report.layers[0].name}
        for ax, key, label in (
            (axes[0], "activations", "activation value"),
            (axes[1], "gradients", "gradient"),
        ):
            samples = report.samples.get(key, {})
            histograms(
                ax, {name: v for name, v in samples.items() if name in hidden}, f"hidden layers' {label}"
            )
        depth_profile(axes[2], report)
        if history is not None:
            heatmap(axes[3], history)
            fractions(axes[4], history)
        for ax in axes[panels:]:
            ax.axis("off")
    return Path(path)


def histograms(ax, samples: dict[str, np.ndarray], label: str) -> None:
    """Normalized histograms of a few evenly spaced layers, on one range covering them all."""
    names = list(samples)
    if names:
        chosen = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, MAX_CURVES).round().astype(int))]
        values = [samples[n][np.isfinite(samples[n])] for n in chosen]
        everything = np.concatenate(values)
        if everything.size:
            low, high = np.percentile(everything, [0.5, 99.5])
            if high <= low:
                low, high = low - 1, high + 1
            for name, v in zip(chosen, values, strict=True):
                ax.hist(v, bins=60, range=(low, high), density=True, histtype="step", label=name)
            ax.legend(fontsize="small")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.set_xlabel(label)
    ax.set_ylabel("density")


def depth_profile(ax, report: Report) -> None:
    depth = np.arange(len(report.layers))
    for stat, label in (
        ("act_std", "activation std"),
        ("out_grad_scale", "output gradient scale (RMS)"),
        ("weight_grad_std", "weight gradient std"),
    ):
        values = [layer.stats[stat] for layer in report.layers]
        values = np.array([np.nan if v is None or v <= 0 else v for v in values], dtype=float)
        ax.plot(depth, values, marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = first)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def heatmap(ax, history) -> None:
    norms = history.series("weight_grad_norm").T  # (layers, steps)
    with np.errstate(divide="ignore", invalid="ignore"):
        image = ax.imshow(np.log10(norms), aspect="auto", origin="lower", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="log10 weight gradient norm")
    ticks = np.unique(np.linspace(0, len(history.steps) - 1, 5).round().astype(int))
    ax.set_xticks(ticks, [str(history.steps[i]) for i in ticks])
    integer_ticks(ax.yaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("layer (0 = first)")


def fractions(ax, history) -> None:
    steps = np.asarray(history.steps)
    for stat in ("dead", "saturated"):
        values = history.series(stat)
        if np.isfinite(values).any():
            ax.plot(steps, np.nanmean(values, axis=1), label=f"{stat}, mean over layers")
            ax.plot(steps, np.nanmax(values, axis=1), "--", label=f"{stat}, worst layer")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of units")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
