"""`History`: the doctor's records of the sampled steps of a run, on the host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradwell.diagnose.stats import STATS, finite_or_none


@dataclass
class History:
    """What a Monitor or a watching doctor recorded, on the host: one row per sampled step.

    >>> from types import SimpleNamespace
    >>> import torch
    >>> from gradwell import data, optim, train
    >>> from gradwell.diagnose import Monitor
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
    loss: list[float | None] = field(default_factory=list)  # None: not known (a watched loop's)
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
