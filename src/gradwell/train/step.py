"""One training step, and the running metrics it adds to on the device.

A step is forward, loss, backward, optimizer update (gradient clipping is the optimizer's
business: gradwell's optimizers take ``clipvalue``, ``clipnorm`` or ``global_clipnorm``) and
max-norm, then it adds its loss and hits to `Metrics`. Nothing in it reads a device value on the
host, so the same step runs eagerly or captured in a CUDA graph (gradwell.train.cuda_graph); the
one exception is ``on_nonfinite="skip"``, which must look at each step's loss and gradients
before deciding whether to apply the update.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradwell.clip import global_norm
from gradwell.regularize import l1_l2_penalty, max_norm_, regularized_weights
from gradwell.train import distributed
from gradwell.train.losses import resolve_loss
from gradwell.train.options import TrainOptions, check_step_options

Step = Callable[[Tensor, Tensor], Tensor]


class Metrics:
    """Running sums of one epoch, kept on the device and read once at its end.

    The tensors are updated in place, never replaced, so a captured CUDA graph keeps adding to them.
    """

    NAMES = ("loss_sum", "correct", "samples", "skipped", "step", "first_nonfinite")

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.samples = torch.zeros((), device=device, dtype=torch.int64)
        self.skipped = torch.zeros((), device=device, dtype=torch.int64)
        self.step = torch.zeros((), device=device, dtype=torch.int64)  # the global optimizer step
        self.first_nonfinite = torch.full((), -1, device=device, dtype=torch.int64)

    def start_epoch(self, step: int) -> None:
        for name in ("loss_sum", "correct", "samples", "skipped"):
            getattr(self, name).zero_()
        self.step.fill_(step)
        self.first_nonfinite.fill_(-1)

    def add(self, loss: Tensor, hits: Tensor | None, count: int) -> None:
        self.loss_sum.add_(loss.double(), alpha=count)
        self.samples.add_(count)
        if hits is not None:
            self.correct.add_(hits)
        bad = (self.first_nonfinite < 0) & ~torch.isfinite(loss)
        self.first_nonfinite.copy_(torch.where(bad, self.step, self.first_nonfinite))
        self.step.add_(1)

    def skip(self) -> None:
        self.skipped.add_(1)
        self.step.add_(1)

    def read(self) -> tuple[dict[str, float], int]:
        """(mean loss and accuracy, first non-finite step or -1): the epoch's one synchronization.

        Data-parallel, the sums are first added up over all processes.
        """
        distributed.reduce_sums([self.loss_sum, self.correct, self.samples, self.skipped])
        distributed.first_step(self.first_nonfinite)
        loss_sum, correct, samples, skipped, first = torch.stack(
            [
                getattr(self, name).double()
                for name in ("loss_sum", "correct", "samples", "skipped", "first_nonfinite")
            ]
        ).tolist()
        samples = max(samples, 1)
        logs = {"loss": loss_sum / samples, "accuracy": correct / samples}
        if skipped:
            logs["skipped"] = int(skipped)
        return logs, int(first)

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.NAMES}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.NAMES:
            getattr(self, name).copy_(state[name])


def autocast(device: torch.device, precision: str):
    """bf16 autocast for forward and loss, or nothing for fp32 (a precision checked already)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    metrics: Metrics,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    max_norm: float | None = None,
    accuracy: bool = True,
    precision: str = "fp32",
    forward: Callable[[Tensor], Tensor] | None = None,
    on_nonfinite: str = "stop",
    loss_scale: Callable[[int], float] | None = None,
) -> Step:
    """A function (x, y) -> loss that trains on one batch and adds it to `metrics`.

    The loss returned (detached, on the device) is the data loss; the l1/l2 penalty is added only
    to what is differentiated. `forward` replaces ``model(x)``, e.g. by a compiled model. With
    ``on_nonfinite="skip"`` a step whose loss or gradients are not finite changes nothing and is
    counted in ``metrics.skipped``. `loss_scale(batch)` weighs the loss that is differentiated (data
    parallelism uses it for uneven shards).
    """
    forward = forward or model
    weights = regularized_weights(model) if l1 > 0 or l2 > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    check_step_options(precision, on_nonfinite)

    def step(x: Tensor, y: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            output = forward(x)
            loss = loss_fn(output, y)
        objective = loss + l1_l2_penalty(weights, l1, l2) if weights is not None else loss
        if loss_scale is not None:
            objective = objective * loss_scale(len(y))
        objective.backward()
        loss = loss.detach()
        if on_nonfinite == "skip" and not bool(torch.isfinite(loss) & torch.isfinite(global_norm(params))):
            optimizer.zero_grad(set_to_none=True)
            metrics.skip()
            return loss
        optimizer.step()
        if max_norm is not None:
            max_norm_(model, max_norm)
        metrics.add(loss, (output.argmax(-1) == y).sum() if accuracy else None, len(y))
        return loss

    return step


@dataclass
class StepContext:
    """What a training path (gradwell.train.paths) sees to decide whether it applies and to build
    its step: the run's parts, its options, and one full batch (the shapes a captured step keeps)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    metrics: Metrics
    options: TrainOptions
    device: torch.device
    sample: tuple[Tensor, Tensor]
    parallel: bool = False
    forward: Callable[[Tensor], Tensor] | None = None  # replaces model(x): compiled or data-parallel

    @property
    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        return resolve_loss(self.options.loss)

    def eager_step(self, on_nonfinite: str | None = None) -> Step:
        """`make_step` with the run's options (`on_nonfinite` overrides the run's, for replays)."""
        options = self.options
        return make_step(
            self.model, self.loss_fn, self.optimizer, self.metrics, l1=options.l1, l2=options.l2,
            max_norm=options.max_norm, accuracy=options.classification, precision=options.precision,
            forward=self.forward, on_nonfinite=on_nonfinite or options.on_nonfinite,
        )  # fmt: skip


class EagerStep:
    """`make_step`'s step behind the interface every path's step has (gradwell.train.paths)."""

    def __init__(self, step: Step) -> None:
        self.step = step

    def __call__(self, x: Tensor, y: Tensor, eager: bool = False) -> Tensor:
        return self.step(x, y)

    def user_view(self) -> AbstractContextManager[None]:
        return nullcontext()  # the optimizer holds the user's parameters throughout

    def close(self) -> None:
        """Nothing to give back."""


class EagerPath:
    """Forward, autograd, optimizer step: works for every model, and is the fallback."""

    name = "eager"
    description = "autograd on the model as it is"
    device_types = None

    def refusal(self, context: StepContext) -> str | None:
        return None

    def build(self, context: StepContext) -> EagerStep:
        return EagerStep(context.eager_step())
