"""Callbacks: small objects the training loop calls at fixed points, and early stopping.

The loop calls, in order: ``on_train_begin`` once; ``on_step_begin`` and ``on_step_end`` around
each optimizer step, with the step's loss still on the device (reading it synchronizes, so a
callback that must stay cheap reads it only on the steps it samples); ``on_epoch_end`` with the
epoch's metrics; ``on_train_end`` once. A callback that registers hooks in ``on_step_begin``
returns True from ``needs_eager_step`` for that step, so the fast path runs it eagerly rather
than replaying a CUDA graph, which runs no hooks. A callback with state that matters for a
resumed run returns it from ``state_dict`` and takes it back in ``load_state_dict``; it is
checkpointed with the rest of the run.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from gradwell.errors import ConfigError, check_finite

if TYPE_CHECKING:
    from gradwell.train.loop import Run


class Callback:
    """Base class: every hook does nothing.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> from gradwell import data, optim, train
    >>> class LossLog(Callback):
    ...     def __init__(self):
    ...         self.losses = []
    ...     def on_epoch_end(self, run, logs):
    ...         self.losses.append(logs["loss"])
    >>> _ = torch.manual_seed(0)
    >>> x, model, log = torch.randn(32, 4), torch.nn.Linear(4, 2), LossLog()
    >>> task = SimpleNamespace(train=data.Split(x, (x[:, 0] > 0).long()))
    >>> _ = train.fit(model, task, optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=3,
    ...               callbacks=[log], progress=False)
    >>> len(log.losses), log.losses[-1] < log.losses[0]
    (3, True)
    """

    def on_train_begin(self, run: Run) -> None: ...

    def needs_eager_step(self, run: Run) -> bool:
        """True when this callback hooks into the coming step, which a CUDA graph replay would skip."""
        return False

    def on_step_begin(self, run: Run) -> None: ...

    def on_step_end(self, run: Run, loss: Tensor) -> None: ...

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None: ...

    def on_train_end(self, run: Run) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs.

    With `restore_best_weights` (the default here; Keras defaults to False, and the chapter sets
    it to True in every example), the model ends with the weights of its best epoch. Metrics whose
    name contains "acc" are maximized, others minimized.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> from gradwell import data, optim, train
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))  # noise labels: nothing to learn
    >>> task = SimpleNamespace(train=data.Split(x[:48], y[:48]), val=data.Split(x[48:], y[48:]))
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    >>> history = train.fit(model, task, optimizer=optim.Adam(model.parameters(), lr=0.01), epochs=100,
    ...                     callbacks=[EarlyStopping(patience=2)], progress=False)
    >>> history.stop_reason, len(history.epochs)
    ('val_loss did not improve for 2 epochs (best 0.64... at epoch 3)', 5)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 10,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"EarlyStopping patience must be a positive int; got {patience!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = check_finite("EarlyStopping min_delta", min_delta, low=0.0)
        self.restore_best_weights = restore_best_weights
        self.maximize = "acc" in monitor
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_weights: dict[str, Tensor] | None = None

    def improved(self, value: float) -> bool:
        if self.maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise ConfigError(
                f"EarlyStopping monitors {self.monitor!r}, which the run does not log; "
                f"logged: {', '.join(logs)}"
            )
        value = logs[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, logs["epoch"], 0
            if self.restore_best_weights:
                self.best_weights = copy.deepcopy(run.model.state_dict())
        else:
            self.wait += 1
            if self.wait >= self.patience:
                run.stop(
                    f"{self.monitor} did not improve for {self.patience} epochs "
                    f"(best {self.best:.4g} at epoch {self.best_epoch})"
                )

    def on_train_end(self, run: Run) -> None:
        if self.best_weights is not None:
            run.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_weights = state["best_weights"]


class MetricsLogger(Callback):
    """Append each epoch's metrics to a JSON-lines file (one object per line, flushed at once).

    On a resumed run, lines for epochs after the checkpoint are dropped first, so the file always
    matches the run's history.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(self, run: Run) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [json.dumps(logs) for logs in run.history.epochs]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(logs) + "\n")
