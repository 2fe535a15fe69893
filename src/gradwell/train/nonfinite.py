"""Where a batch first turns non-finite: the module whose output, or whose output's gradient, holds
a NaN or an infinity first.

`fit` names that place in its NonFiniteError after replaying the epoch to the bad step; callers
that know more (the stability doctor, which groups modules into layers) hand `fit` their own
explanation instead. The pass leaves no trace on the model: see `untouched`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

Explain = Callable[[nn.Module, Tensor, Tensor, Callable[[Tensor, Tensor], Tensor]], str]


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Run in training mode, then restore every module's mode, every buffer and the global RNG."""
    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    devices = [t.device for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        model.train()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])
            for module, training in modes.items():
                module.training = training


class NonFinite:
    """Forward hooks on every leaf module recording whether its inputs and output are finite, and
    (for outputs that need a gradient) whether that gradient is.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> with NonFinite(model) as seen:
    ...     _ = model(torch.ones(1, 2))
    >>> seen.first(torch.ones(1, 2)) is None
    True
    """

    def __init__(self, model: nn.Module) -> None:
        self.leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
        self.calls: list[tuple[str, Tensor | None, Tensor]] = []
        self.gradients: list[tuple[str, Tensor]] = []  # in backward order
        self.handles: list = []

    def __enter__(self) -> NonFinite:
        self.handles = [module.register_forward_hook(self.hook(name)) for name, module in self.leaves]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def hook(self, name: str):
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            if not isinstance(output, Tensor):
                return
            tensors = [t for t in inputs if isinstance(t, Tensor) and t.is_floating_point()]
            finite_in = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else None
            self.calls.append((name, finite_in, torch.isfinite(output).all()))
            if output.requires_grad:
                output.register_hook(lambda grad: self.gradients.append((name, torch.isfinite(grad).all())))

        return record

    def first(self, inputs: Tensor) -> str | None:
        """ "inputs" when the batch itself is non-finite, else the first module that produced a
        non-finite output from finite inputs (a module that merely passes one on is skipped)."""
        if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
            return "inputs"
        for name, finite_in, finite_out in self.calls:
            if not bool(finite_out) and (finite_in is None or bool(finite_in)):
                return name
        return None

    def first_gradient(self) -> str | None:
        """The module nearest the output whose output gradient is non-finite."""
        return next((name for name, finite in self.gradients if not bool(finite)), None)


def describe(forward: str | None, backward: str | None) -> str:
    """The clause a NonFiniteError adds after the step: where the value first appeared."""
    if forward == "inputs":
        return ": the batch itself holds non-finite values"
    if forward is not None:
        return f": the first non-finite value appeared in the output of {forward}"
    if backward is not None:
        return f": the forward pass was finite; the gradient became non-finite at {backward}"
    return ""


def locate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> str:
    """Where one training pass over (x, y) first turns non-finite, as the clause of `describe`."""
    params = [p for p in model.parameters() if p.requires_grad]
    with untouched(model), NonFinite(model) as seen:
        torch.manual_seed(0)  # dropout's masks: the same on every process and every replay
        loss = loss_fn(model(x), y)
        if params and loss.requires_grad:
            torch.autograd.grad(loss, params, allow_unused=True)
    return describe(seen.first(x), seen.first_gradient())
