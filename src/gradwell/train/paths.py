"""Training paths: the ways `fit` can run a step, the fastest that applies chosen from one table.

A path is an object with

    name, description    what the log line and ``History.path`` call it, and why it runs
    device_types         the device types it is for (None: it says itself where it does not apply)
    refusal(context)     why it cannot train this run (None when it can)
    build(context)       the step: ``step(x, y, eager=False) -> loss``, ``step.user_view()`` (a
                         context in which the optimizer holds the user's own parameters and state,
                         for checkpoints, replays and callbacks), ``step.close()`` (give them back
                         for good; idempotent)

and `PATHS` lists them fastest first; the last one always applies. Adding a path is one class
and one entry here. ``eager=True`` asks a step to run through autograd and the model's hooks (a
callback such as the doctor's Monitor samples that step).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from gradwell.train.cuda_graph import CudaGraphPath
from gradwell.train.fused import FusedPath
from gradwell.train.step import EagerPath, StepContext


class BuiltStep(Protocol):
    def __call__(self, x: Tensor, y: Tensor, eager: bool = False) -> Tensor: ...

    def user_view(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


class TrainingPath(Protocol):
    name: str
    description: str
    device_types: tuple[str, ...] | None

    def refusal(self, context: StepContext) -> str | None: ...

    def build(self, context: StepContext) -> BuiltStep: ...


PATHS: tuple[TrainingPath, ...] = (CudaGraphPath(), FusedPath(), EagerPath())


@dataclass(frozen=True)
class Decision:
    """Which path runs, and why: shown to the user as one log line, kept in ``History.path``."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"training path: {self.name} ({self.reason})"


def choose(context: StepContext, paths: tuple[TrainingPath, ...] = PATHS) -> tuple[Decision, TrainingPath]:
    """The first path of `paths` that applies to the device and the run, and why.

    The fallback (the last path) gives as its reason what each faster path refused.

    >>> import torch
    >>> from gradwell.train.options import TrainOptions
    >>> from gradwell.train.step import Metrics
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> cpu = torch.device("cpu")
    >>> context = StepContext(model, optimizer, None, Metrics(cpu), TrainOptions(epochs=1), cpu,
    ...                       (torch.zeros(32, 4), torch.zeros(32, dtype=torch.long)))
    >>> print(choose(context)[0])
    training path: fused-mlp (Linear, BatchNorm, dropout and activation layers by hand, one flat buffer)
    """
    fallback = paths[-1]
    if not context.options.fast:
        return Decision(fallback.name, "fast=False"), fallback
    refusals = []
    for path in paths:
        if path.device_types is not None and context.device.type not in path.device_types:
            continue
        refusal = path.refusal(context)
        if refusal is None:
            reason = ", and ".join(refusals) if path is fallback and refusals else path.description
            return Decision(path.name, reason), path
        refusals.append(refusal)
    raise AssertionError(f"the fallback path {fallback.name} refused: {refusals[-1]}")
