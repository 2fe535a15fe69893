"""`Monitor`: the doctor's statistics during ``gradwell.train.fit``, for a few percent of the step time.

Every `every` optimizer steps the Monitor measures one step in full, through the doctor of
gradwell.diagnose.watch (which any other loop uses directly): the per-layer statistics of
``probe`` (activations, output and weight gradients), the global gradient norm before clipping,
the update-to-weight ratio ||W_after - W_before|| / ||W_before|| of each layer (Karpathy's rule of
thumb: about 1e-3 for a layer that learns well), the step's loss and learning rate. On a sampled
step it hooks into the model for that step only; the gradients are caught as the backward pass
completes them, before gradwell's optimizers clip them in their step. On the other steps it does
nothing but compare two ints: no hooks, no tensor operation, no synchronization. On gradwell's
CUDA-graph fast path the sampled steps run eagerly (``needs_eager_step``), the others replay the
graph.

Everything measured stays on the device until the end of the epoch (the loop reads its metrics
then anyway) or until ``history()`` asks; the host copy is checkpointed with the run
(``state_dict``), so a resumed run keeps the records of the epochs before the interruption.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gradwell.diagnose.history import History
from gradwell.diagnose.watch import DEFAULT_EVERY, Doctor, empty_host
from gradwell.train.callbacks import Callback
from gradwell.train.options import positive_count

if TYPE_CHECKING:
    from gradwell.diagnose.layers import ModelFacts
    from gradwell.diagnose.report import Report
    from gradwell.diagnose.rules import Thresholds
    from gradwell.train.loop import Run

__all__ = ["History", "Monitor"]

GRADIENTS = "as the backward pass left them, before the optimizer clips them in its step"


class Monitor(Callback):
    """A callback for ``gradwell.train.fit`` recording the doctor's statistics every `every` steps.

    ``report()`` gives the verdicts from the last sampled step and the whole history; pass the
    Monitor to ``probe`` to join its history to a fresh measurement. With `tensorboard` (a
    folder), every sampled step's per-layer scalars and histograms go there too, and each epoch's
    metrics as ``epoch/<name>``.

    >>> from types import SimpleNamespace
    >>> from gradwell import data, optim, train
    >>> from gradwell.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 8, generator=g)
    >>> task = SimpleNamespace(train=data.Split(x, (x[:, 0] > 0).long()))
    >>> model, monitor = mlp(8, 2, hidden=[16, 16], generator=g), Monitor(every=2)
    >>> _ = train.fit(model, task, optimizer=optim.Adam(model.parameters()), epochs=2, batch_size=16,
    ...               callbacks=[monitor], progress=False)
    >>> report = monitor.report()  # every other of the 8 steps sampled
    >>> report.healthy, report.history.steps
    (True, [0, 2, 4, 6])
    """

    def __init__(self, every: int = DEFAULT_EVERY, tensorboard: str | Path | None = None) -> None:
        positive_count("Monitor every", every)
        self.every = every
        self.tensorboard = tensorboard
        self.doctor: Doctor | None = None
        self.host: dict[str, list] = empty_host()

    @property
    def facts(self) -> ModelFacts | None:
        return self.doctor.facts if self.doctor is not None else None

    def on_train_begin(self, run: Run) -> None:
        self.doctor = Doctor(
            run.model, every=self.every, tensorboard=self.tensorboard, driven=True,
            optimizer_name=type(run.optimizer).__name__, gradients=GRADIENTS, host=self.host,
        )  # fmt: skip

    def needs_eager_step(self, run: Run) -> bool:
        """A sampled step hooks into the model, which a CUDA graph replay would skip."""
        return run.step % self.every == 0

    def on_step_begin(self, run: Run) -> None:
        if run.step % self.every == 0:
            self.doctor.begin()

    def on_step_end(self, run: Run, loss: Tensor) -> None:
        if self.doctor.recorder is not None:
            self.doctor.end(run.step - 1, loss, run.optimizer.param_groups[0]["lr"])

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        self.doctor.flush()
        if self.doctor.log is not None:
            self.doctor.log.scalars(run.epoch, logs, prefix="epoch")

    def on_train_end(self, run: Run) -> None:
        self.doctor.close()  # a step that never ended loses its hooks

    def history(self) -> History:
        if self.doctor is None:
            return History(layers=[], kinds=[])
        return self.doctor.history()

    def report(self, thresholds: Thresholds | None = None) -> Report:
        """The verdicts from the last sampled step's statistics and the whole history."""
        from gradwell.errors import GradwellError

        if self.doctor is None:
            raise GradwellError("the Monitor has not sampled any step yet: train with it first")
        return self.doctor.report(thresholds)

    def state_dict(self) -> dict[str, Any]:
        if self.doctor is not None:
            self.doctor.flush()
        stats = self.host["stats"]
        return {
            "steps": list(self.host["steps"]),
            "stats": torch.stack(stats) if stats else torch.zeros(0),
            "loss": torch.tensor(self.host["loss"], dtype=torch.float64),
            "lr": torch.tensor(self.host["lr"], dtype=torch.float64),
            "grad_norm": torch.tensor(self.host["grad_norm"], dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stats = state["stats"]
        self.host.clear()
        self.host.update(
            steps=list(state["steps"]),
            stats=list(stats) if stats.numel() else [],
            loss=state["loss"].tolist(),
            lr=state["lr"].tolist(),
            grad_norm=state["grad_norm"].tolist(),
        )
