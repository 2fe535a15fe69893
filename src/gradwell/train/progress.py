"""A rich progress bar for `fit`: steps advance without reading the device, metrics once per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

from gradwell.train.callbacks import Callback

if TYPE_CHECKING:
    from gradwell.train.loop import Run


def format_metrics(logs: dict[str, float]) -> str:
    shown = ("loss", "accuracy", "val_loss", "val_accuracy")
    return "  ".join(f"{name} {logs[name]:.4f}" for name in shown if name in logs)


class ProgressBar(Callback):
    """One bar over the whole run, with the last epoch's loss and accuracy beside it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None

    def on_train_begin(self, run: Run) -> None:
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=run.epochs * run.steps_per_epoch,
            completed=run.step,
            epoch=run.epoch + 1,
            epochs=run.epochs,
            metrics=format_metrics(run.history.last),
        )

    def on_step_end(self, run: Run, loss: Tensor) -> None:
        self.progress.advance(self.task)

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        self.progress.update(self.task, epoch=min(run.epoch + 1, run.epochs), metrics=format_metrics(logs))

    def close(self) -> None:
        """Stop the bar; `fit` calls this whether the run ends well or not."""
        if self.progress is not None:
            self.progress.stop()
