"""`Monitor`: the doctor's statistics during training, for a few percent of the step time.

Every `every` optimizer steps the Monitor measures one step in full: the per-layer statistics of
``probe`` (activations, output and weight gradients), the global gradient norm before clipping,
the update-to-weight ratio ||W_after - W_before|| / ||W_before|| of each layer (Karpathy's rule of
thumb: about 1e-3 for a layer that learns well), the step's loss and learning rate. On a sampled step it hangs
hooks on the layers for that step only (removed at its end) and an optimizer step pre-hook, which
runs after the backward pass and before the update: the gradients there are the raw ones, before
the optimizer clips them. On the other steps it does nothing but compare two ints: no hooks, no
tensor operation, no synchronization. On gradwell's CUDA-graph fast path the sampled steps run
eagerly (``needs_eager_step``), the others replay the graph.

Everything measured stays on the device until the end of the epoch (the loop reads its metrics
then anyway) or until ``history()`` asks; the host copy is checkpointed with the run
(``state_dict``), so a resumed run keeps the records of the epochs before the interruption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gradwell.clip import global_norm
from gradwell.diagnose.layers import Layer, find_layers, model_facts
from gradwell.diagnose.stats import (
    STATS,
    WEIGHT_STATS,
    Recorder,
    finite_or_none,
    update_ratio,
    weight_stats,
)
from gradwell.errors import ConfigError
from gradwell.train.callbacks import Callback

if TYPE_CHECKING:
    from gradwell.diagnose.layers import ModelFacts
    from gradwell.diagnose.report import Report
    from gradwell.diagnose.rules import Thresholds
    from gradwell.train.loop import Run

# One sampled step costs several steps' time (an autograd step with hooks, quantiles, a copy of the
# weights): about 5 of the fused MLP step's on the chapter's 100-layer SELU network. Every 200th step
# keeps the overhead under 3% there and under 1% on the default network (benchmarks/bench_monitor.py).
DEFAULT_EVERY = 200
QUANTILE_SAMPLE = 1024  # values per layer behind the percentiles (stats.QUANTILE_SAMPLE)


@dataclass
class History:
    """What a Monitor recorded, on the host: one row per sampled step.

    >>> from types import SimpleNamespace
    >>> from gradwell import data, optim, train
    >>> from gradwell.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 8, generator=g)
    >>> task = SimpleNamespace(train=data.Split(x, (x[:, 0] > 0).long()))
    >>> model, monitor = mlp(8, 2, hidden=[16, 16], generator=g), Monitor(every=2)
    >>> _ = train.fit(model, task, optimizer=optim.Adam(model.parameters()), epochs=2, batch_size=16,
    ...               callbacks=[monitor], progress=False)
    >>> history = monitor.history()
    >>> history.steps, history.layers, history.series("update_ratio").shape  # (steps, layers)
    ([0, 2, 4, 6], ['hidden1', 'hidden2', 'output'], (4, 3))
    """

    layers: list[str]
    kinds: list[str]
    steps: list[int] = field(default_factory=list)
    stats: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, len(STATS))))  # (steps, layers, STATS)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # of the first parameter group
    grad_norm: list[float] = field(default_factory=list)
    optimizer: str = ""

    def series(self, stat: str) -> np.ndarray:
        """(steps, layers) values of one statistic."""
        return self.stats[:, :, STATS.index(stat)]

    def to_dict(self) -> dict[str, Any]:
        series = ("weight_grad_norm", "update_ratio", "dead", "saturated", "act_std")
        return {
            "layers": self.layers,
            "steps": self.steps,
            "loss": [finite_or_none(v) for v in self.loss],
            "lr": self.lr,
            "grad_norm": [finite_or_none(v) for v in self.grad_norm],
            "optimizer": self.optimizer,
            "series": {
                name: [[finite_or_none(v) for v in row] for row in self.series(name)] for name in series
            },
        }


class Monitor(Callback):
    """A callback for ``gradwell.train.fit`` recording the doctor's statistics every `every` steps.

    ``report()`` gives the verdicts from the last sampled step and the whole history; pass the
    Monitor to ``probe`` to join its history to a fresh measurement.

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

    def __init__(self, every: int = DEFAULT_EVERY) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"Monitor every must be a positive int; got {every!r}")
        self.every = every
        self.layers: list[Layer] = []
        self.facts: ModelFacts | None = None
        self.optimizer_name = ""
        self.recorder: Recorder | None = None
        self.pre_hook: Any = None
        self.before: list[list[Tensor]] | None = None
        self.weight_rows: list[Tensor] | None = None
        self.grad_norm: Tensor | None = None
        self.pending: list[tuple[int, Tensor, Tensor, Tensor, Any]] = []  # step, stats, loss, norm, lr
        self.host: dict[str, Any] = {"steps": [], "stats": [], "loss": [], "grad_norm": [], "lr": []}

    def on_train_begin(self, run: Run) -> None:
        self.layers = find_layers(run.model)
        self.facts = model_facts(run.model, self.layers)
        self.optimizer_name = type(run.optimizer).__name__

    def needs_eager_step(self, run: Run) -> bool:
        """A sampled step hooks into the model, which a CUDA graph replay would skip."""
        return run.step % self.every == 0

    def on_step_begin(self, run: Run) -> None:
        if run.step % self.every:
            return
        self.recorder = Recorder(self.layers, quantile_sample=QUANTILE_SAMPLE).__enter__()
        self.pre_hook = run.optimizer.register_step_pre_hook(self.before_update)

    def before_update(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        """Gradients are final and weights not yet updated: record the one, copy the other."""
        self.weight_rows = [
            weight_stats(layer.weights, [w.grad for w in layer.weights]) for layer in self.layers
        ]
        self.grad_norm = global_norm([p for group in optimizer.param_groups for p in group["params"]])
        self.before = [[w.detach().clone() for w in layer.weights] for layer in self.layers]

    def on_step_end(self, run: Run, loss: Tensor) -> None:
        if self.recorder is None:
            return
        self.recorder.__exit__()
        self.pre_hook.remove()
        table = self.recorder.table(self.weight_table(), loss.device)
        grad_norm = self.grad_norm if self.grad_norm is not None else torch.full((), math.nan)
        lr = run.optimizer.param_groups[0]["lr"]  # a device tensor in capturable mode: read at flush
        lr = lr.detach().clone() if isinstance(lr, Tensor) else float(lr)
        self.pending.append((run.step - 1, table, loss.detach().float(), grad_norm.to(loss.device), lr))
        self.recorder = self.pre_hook = self.before = self.weight_rows = self.grad_norm = None

    def weight_table(self) -> list[Tensor]:
        """Each layer's weight statistics with its update ratio; NaN if the pre-hook never ran (a
        step that did not call the optimizer)."""
        if self.weight_rows is None or self.before is None:
            return [torch.full((len(WEIGHT_STATS),), math.nan)] * len(self.layers)
        return [
            torch.cat([row[:-1], update_ratio(before, layer.weights).reshape(1).to(row.device)])
            for row, before, layer in zip(self.weight_rows, self.before, self.layers, strict=True)
        ]

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        self.flush()

    def on_train_end(self, run: Run) -> None:
        if self.recorder is not None:  # a step that never ended: drop its hooks
            self.recorder.__exit__()
            self.pre_hook.remove()
            self.recorder = None
        self.flush()

    def flush(self) -> None:
        """Move the pending records to the host: one transfer for all of them."""
        if not self.pending:
            return
        steps, tables, losses, norms, lrs = zip(*self.pending, strict=True)
        self.pending = []
        self.host["steps"] += list(steps)
        self.host["stats"] += list(torch.stack(tables).cpu())
        self.host["loss"] += torch.stack(losses).cpu().tolist()
        self.host["grad_norm"] += torch.stack(norms).float().cpu().tolist()
        self.host["lr"] += [float(lr) for lr in lrs]

    def history(self) -> History:
        self.flush()
        stats = self.host["stats"]
        layers = len(self.layers)
        return History(
            layers=[layer.name for layer in self.layers],
            kinds=[layer.kind for layer in self.layers],
            steps=list(self.host["steps"]),
            stats=torch.stack(stats).numpy() if stats else np.zeros((0, layers, len(STATS))),
            loss=list(self.host["loss"]),
            lr=list(self.host["lr"]),
            grad_norm=list(self.host["grad_norm"]),
            optimizer=self.optimizer_name,
        )

    def report(self, thresholds: Thresholds | None = None) -> Report:
        """The verdicts from the last sampled step's statistics and the whole history."""
        from gradwell.diagnose.report import report_from_history

        return report_from_history(self.history(), self.facts, thresholds)

    def state_dict(self) -> dict[str, Any]:
        self.flush()
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
        self.host = {
            "steps": list(state["steps"]),
            "stats": list(stats) if stats.numel() else [],
            "loss": state["loss"].tolist(),
            "lr": state["lr"].tolist(),
            "grad_norm": state["grad_norm"].tolist(),
        }
