"""The one small plotting helper every report shares: a headless figure saved as PNG.

matplotlib is imported when the first figure is drawn, not with gradwell: most runs draw one
plot at their end, and a command that draws none should not pay its half-second import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextmanager
def figure(
    path: str | Path, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6), title: str = ""
) -> Iterator[tuple[Figure, object]]:
    """Yield (figure, axes) with `ncols` x `nrows` panels; save to `path` and close on exit."""
    import matplotlib

    matplotlib.use("Agg")  # headless: files only, on any machine
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    try:
        yield fig, axes.ravel() if axes.size > 1 else axes[0, 0]
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def integer_ticks(axis: object) -> None:
    """Whole numbers only on this axis (epochs, steps, layer indices)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def learning_curves(epochs: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation, as in the chapter's figures."""
    panels = [name for name in ("loss", "accuracy") if any(name in logs for logs in epochs)]
    with figure(path, ncols=len(panels), title=title) as (_, axes):
        axes = axes if len(panels) > 1 else [axes]
        for ax, name in zip(axes, panels, strict=True):
            for prefix, style in (("", "-"), ("val_", "--")):
                points = [(logs["epoch"], logs[prefix + name]) for logs in epochs if prefix + name in logs]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=(prefix or "train_") + name)
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
    return Path(path)
