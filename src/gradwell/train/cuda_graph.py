"""The CUDA-graph path: the whole training step captured in one CUDA graph and replayed.

Small deep networks spend most of an eager step launching kernels, not running them: the
chapter's 100-layer MLP launches over a thousand per step. A CUDA graph records the step's
kernels once (forward, backward, clipping, optimizer update, max-norm, metric sums) and replays
them with one launch. What that needs, and how fit provides it:

- static shapes and addresses: batches are copied into fixed input buffers; the last, smaller
  batch of an epoch runs eagerly through the same step, on the same parameters and state;
- no host synchronization inside the step: gradwell's optimizers in ``capturable`` mode keep
  their counters on the device, clipping never branches on a device value, metrics accumulate
  on the device;
- a learning rate that can change between replays: the optimizer's ``lr`` becomes a 0-d device
  tensor, which torch's schedulers update in place (``fill_``) rather than replace;
- callbacks that look inside a step (the stability doctor's Monitor, on the steps it samples)
  get an eager step there: a graph replay runs no Python hooks.

Where one of these cannot hold, `CudaGraphPath.refusal` says why and fit takes the next path of
gradwell.train.paths. On a CPU, where there are no graphs, the fused MLP step
(gradwell.train.fused) plays the same part for plain MLPs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import OneCycleLR

from gradwell.train.step import Step, StepContext

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch's CUDA graph docs require


def can_capture(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` has a capturable mode (gradwell's optimizers, torch's Adam family...)."""
    return all("capturable" in group for group in optimizer.param_groups)


def cycles_momentum(scheduler: Any) -> bool:
    return isinstance(scheduler, OneCycleLR) and getattr(scheduler, "cycle_momentum", False)


def prepare_for_capture(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put the optimizer in capturable mode: lr as a device tensor, counters on the device."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.dim() == 0 and value.device != device:
                state[key] = value.to(device)


def restore_after_capture(optimizer: torch.optim.Optimizer, capturable: Sequence[bool]) -> None:
    """Give the optimizer back as the user made it: float lr, original capturable flags."""
    for group, flag in zip(optimizer.param_groups, capturable, strict=True):
        group["capturable"] = flag
        if isinstance(group["lr"], Tensor):
            group["lr"] = float(group["lr"])


class GraphedStep:
    """A step that runs eagerly a few times, then is captured once and replayed.

    Called like the step it wraps; batches of another size than the captured one run eagerly.
    The loss it returns is a static tensor overwritten by the next replay: read or clone it
    before the next call.
    """

    def __init__(self, step: Step, x: Tensor, y: Tensor) -> None:
        self.step = step
        self.x = torch.empty_like(x)
        self.y = torch.empty_like(y)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: Tensor | None = None

    def __call__(self, x: Tensor, y: Tensor, eager: bool = False) -> Tensor:
        if eager or x.shape != self.x.shape:
            return self.step(x, y)
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        self.calls += 1
        if self.calls <= WARMUP_STEPS:
            return self.warm_up()
        return self.capture_and_replay()

    def warm_up(self) -> Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self.step(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def capture_and_replay(self) -> Tensor:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self.step(self.x, self.y)
        log.info("captured the training step in a CUDA graph")
        self.graph.replay()  # capture records the step without running it
        return self.loss


class CudaGraphPath:
    """The whole step in one CUDA graph, replayed; see the module docstring."""

    name = "cuda-graph"
    description = "static batch shape, capturable optimizer; the last partial batch runs eagerly"
    device_types = None  # it says itself why it needs a CUDA device

    def refusal(self, context: StepContext) -> str | None:
        options = context.options
        if context.device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if not can_capture(context.optimizer):
            return f"{type(context.optimizer).__name__} has no capturable mode"
        if cycles_momentum(context.scheduler):
            return "the 1cycle schedule changes momentum, which a captured graph would freeze"
        if options.on_nonfinite == "skip":
            return "on_nonfinite='skip' reads the loss on the host at every step"
        if context.parallel:
            return "data-parallel steps synchronize the processes"
        return None

    def build(self, context: StepContext) -> CapturedStep:
        return CapturedStep(context)


class CapturedStep(GraphedStep):
    """A GraphedStep over fit's eager step, with the optimizer made capturable while it runs."""

    def __init__(self, context: StepContext) -> None:
        self.optimizer = context.optimizer
        self.capturable = [group.get("capturable", False) for group in self.optimizer.param_groups]
        prepare_for_capture(self.optimizer, context.device)
        super().__init__(context.eager_step(), *context.sample)

    def user_view(self) -> AbstractContextManager[None]:
        return nullcontext()  # the optimizer keeps the user's parameters and state throughout

    def close(self) -> None:
        restore_after_capture(self.optimizer, self.capturable)
