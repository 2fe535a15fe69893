"""`Recorder`: one training pass measured, layer by layer, as the doctor sees it.

In the pass's forward it measures each layer's output (gradwell.diagnose.layers says what a
layer is) and hangs a tensor hook on it that measures the gradient when the backward pass gets
there; with ``weight_grads`` it also catches every parameter's gradient the moment the backward
pass has accumulated it (``register_post_accumulate_grad_hook``): the gradient before any
clipping a loop does between ``backward()`` and ``optimizer.step()``, and the weights as they were
before the update, for the update ratio.

A model of gradwell's builders is measured at its blocks' activation modules. Any other model is
traced: every module gets a pre-hook and a hook for the pass (a stack of the modules whose
``forward`` is running, to which a functional call belongs), and while the outermost module runs,
a ``TorchFunctionMode`` sees the activations called as functions and the residual additions.
Only the first forward pass with gradients enabled is measured (no evaluation pass under
``no_grad``, no second micro-batch after a backward pass has begun). Everything measured stays on
the device. Use as a context manager: the hooks and the mode exist only inside it.

The doctor must never break the training it watches: an error inside one of its own hooks (an
output it cannot measure, say) is logged once, ends the measurement of that pass and is listed in
``unseen``; the user's own operations run as they would without it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from gradwell.activations import BY_FUNCTION
from gradwell.diagnose.layers import (
    CHANNELS_FIRST,
    STRUCTURAL_KINDS,
    Layer,
    module_kind,
    module_weights,
)
from gradwell.diagnose.stats import (
    QUANTILE_SAMPLE,
    activation_stats,
    grad_moments,
    gradient_stats,
    subsample,
    table,
    weight_stats,
)

log = logging.getLogger(__name__)

MAX_CALLS = 8  # calls of one module (or one function in one module) measured per pass
ADDITIONS = frozenset({torch.add, Tensor.add, Tensor.add_})


def first_tensor(output: Any) -> Tensor | None:
    """A module's output tensor: itself, or the first of a tuple (attention's (output, weights))."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, Tensor) and output.is_floating_point() else None


def is_residual(args: Sequence[Any], result: Any) -> bool:
    """An addition of two floating tensors of one shape, one of them carrying a gradient: a skip
    connection's x + f(x), not a bias or a broadcast."""
    if len(args) < 2 or not all(isinstance(a, Tensor) for a in args[:2]):
        return False
    a, b = args[0], args[1]
    same = a.shape == b.shape and a.dim() >= 2 and a.is_floating_point()
    return same and isinstance(result, Tensor) and (a.requires_grad or b.requires_grad)


class FunctionCalls(TorchFunctionMode):
    """Sees each torch call of the pass; hands the activations and residual additions on."""

    def __init__(self, called: Callable[[Callable, str, Tensor, Sequence[Any]], None]) -> None:
        super().__init__()
        self.called = called

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        kind = BY_FUNCTION.get(func)
        if kind is None and func in ADDITIONS and is_residual(args, result):
            kind = "residual"
        if kind is not None and isinstance(result, Tensor):
            self.called(func, kind, result, args)
        return result


class Recorder:
    """Hooks that measure one pass of `model`: at `layers` (a builder's), or traced when None.

    `select` keeps the layers whose name it accepts; `keep_samples` values per layer are kept for
    histograms; percentiles come from `quantile_sample` values per layer.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[Layer] | None = None,
        *,
        select: Callable[[str], bool] | None = None,
        keep_samples: int = 0,
        quantile_sample: int = QUANTILE_SAMPLE,
        weight_grads: bool = False,
        scaler: Any = None,
    ) -> None:
        self.model = model
        self.scaler = scaler
        self.scale: Tensor | None = None  # the loss scale this backward pass ran under
        self.static = list(layers) if layers is not None else None
        self.select = select or (lambda name: True)
        self.keep_samples = keep_samples
        self.quantile_sample = quantile_sample
        self.weight_grads = weight_grads
        self.found: dict[str, Layer] = {}  # measured layers, in the pass's order
        self.activations: dict[str, Tensor] = {}
        self.out_grads: dict[str, Tensor] = {}
        self.act_samples: dict[str, Tensor] = {}
        self.grad_samples: dict[str, Tensor] = {}
        self.moments: dict[int, Tensor] = {}  # id(parameter) -> grad_moments
        self.before: dict[int, Tensor] = {}  # id(weight) -> its value before the update
        self.called: set[int] = set()  # id of every module whose forward ran in the pass
        self.calls: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # calls beyond MAX_CALLS
        self.owners: list[tuple[str, str | None]] = []  # (name, kind) of the running forwards
        self.axis = -1  # where the units lie, from the last structural layer
        # embedding outputs and their sums, LayerNorm outputs, by id: each tensor is held for the
        # pass, so that no tensor made later (once it is freed) takes its id and its role
        self.embedded: dict[int, Tensor] = {}
        self.normalized: dict[int, Tensor] = {}
        self.skips_normalized = False  # a residual addition took a LayerNorm's output: post-LN
        self.forward_done = False  # a backward pass began: later forwards are not this pass's
        self.mode: FunctionCalls | None = None
        self.handles: list[Any] = []
        self.failure: str | None = None  # an error in the doctor's own hooks, which stop measuring

    def guarded(self, work: Callable[..., None]) -> Callable[..., None]:
        """`work`, a hook of the doctor's, made harmless to the training around it."""

        @functools.wraps(work)
        def hook(*args: Any) -> None:
            if self.failure is not None:
                return
            try:
                work(*args)
            except Exception as error:  # the doctor's own failure: never the training's
                self.failure = f"{type(error).__name__}: {error}"
                log.warning("the stability doctor stopped measuring this step: %s", self.failure)

        return hook

    def __enter__(self) -> Recorder:
        if self.static is not None:
            for layer in self.static:
                self.handles.append(layer.module.register_forward_hook(self.guarded(self.static_hook(layer))))
        else:
            for name, module in self.model.named_modules():
                kind = module_kind(module)
                enter, leave = self.enter_hook(name, kind), self.exit_hook(name, kind, module)
                self.handles.append(module.register_forward_pre_hook(enter))
                self.handles.append(module.register_forward_hook(leave, always_call=True))
        if self.weight_grads:
            for p in self.model.parameters():
                if p.requires_grad:
                    self.handles.append(p.register_post_accumulate_grad_hook(self.guarded(self.accumulated)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.mode is not None:  # a pass interrupted inside the model
            self.mode.__exit__(None, None, None)
            self.mode = None

    @property
    def recording(self) -> bool:
        return not self.forward_done and torch.is_grad_enabled()

    def static_hook(self, layer: Layer):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if self.recording and layer.name not in self.found and self.select(layer.name):
                self.record(layer, output)

        return hook

    def enter_hook(self, name: str, kind: str | None):
        def hook(module: nn.Module, inputs: object) -> None:
            if not self.owners and self.recording and self.mode is None:
                self.mode = FunctionCalls(self.guarded(self.function_called)).__enter__()
            self.owners.append((name, kind))
            self.called.add(id(module))

        return hook

    def exit_hook(self, name: str, kind: str | None, module: nn.Module):
        axis = 1 if kind in CHANNELS_FIRST else -1
        layer = Layer(name, kind, module, module_weights(module, kind), axis) if kind is not None else None
        measure = self.guarded(lambda output: self.record_call(name, layer, output))

        def hook(module_: nn.Module, inputs: object, output: object) -> None:
            self.owners.pop()  # always, the doctor's failure or not: the stack stays true
            if not self.owners and self.mode is not None:
                self.mode.__exit__(None, None, None)
                self.mode = None
            if layer is not None and self.recording and not self.inside_activation():
                measure(output)

        return hook

    def inside_activation(self) -> bool:
        """An enclosing forward is an activation module's: the output that counts is its own
        (gradwell's Swish calls torch.sigmoid, say)."""
        return any(kind is not None and kind not in STRUCTURAL_KINDS for _, kind in self.owners)

    def function_called(self, func: Callable, kind: str, output: Tensor, args: Sequence[Any]) -> None:
        if not self.recording or not self.owners or self.inside_activation():
            return
        if kind == "residual" and any(id(a) in self.embedded for a in args[:2]):
            self.embedded[id(output)] = output  # a sum of embeddings (tokens + positions): no skip connection
            return
        if kind == "residual" and any(id(a) in self.normalized for a in args[:2]):
            self.skips_normalized = True
        owner = self.owners[-1][0]
        label = getattr(func, "__name__", kind).rstrip("_")
        base = f"{owner}.{label}" if owner else label
        self.record_call(base, Layer(base, kind, None, (), self.axis), output)

    def record_call(self, base: str, layer: Layer, output: object) -> None:
        """The n-th call of a module or function in the pass is the layer "base#n"."""
        self.calls[base] += 1
        count = self.calls[base]
        if count > MAX_CALLS:
            self.skipped[base] += 1
            return
        name = base if count == 1 else f"{base}#{count}"
        if self.select(name):
            self.record(Layer(name, layer.kind, layer.module, layer.weights, layer.axis), output)

    def record(self, layer: Layer, output: object) -> None:
        y = first_tensor(output)
        if y is None:
            return
        if layer.kind in STRUCTURAL_KINDS and layer.kind != "residual":
            self.axis = layer.axis
        if layer.kind == "embedding":
            self.embedded[id(y)] = y
        elif layer.kind == "layernorm":
            self.normalized[id(y)] = y
        self.found[layer.name] = layer
        self.activations[layer.name] = activation_stats(y, layer.kind, self.quantile_sample, layer.axis)
        if self.keep_samples:
            self.act_samples[layer.name] = subsample(y.detach().reshape(-1), self.keep_samples)
        if y.requires_grad:
            y.register_hook(self.guarded(self.gradient_hook(layer.name, layer.axis)))

    def backward_began(self) -> None:
        """The forward pass is over: later forwards are not this pass's, and the data flow is known."""
        self.forward_done = True
        self.embedded.clear()
        self.normalized.clear()

    def gradient_hook(self, name: str, axis: int):
        def hook(grad: Tensor) -> None:
            self.backward_began()
            self.out_grads[name] = gradient_stats(grad, axis)
            if self.keep_samples:
                self.grad_samples[name] = subsample(grad.detach().reshape(-1), self.keep_samples)

        return hook

    def accumulated(self, param: Tensor) -> None:
        """A parameter's gradient is complete (for this backward): its moments, and a copy of the
        weight before the optimizer changes it."""
        self.backward_began()
        if self.scale is None and self.scaler is not None:
            self.scale = loss_scale(self.scaler)
        self.moments[id(param)] = grad_moments(param.grad)
        if id(param) not in self.before and param.dim() >= 2:
            self.before[id(param)] = param.detach().clone()

    @property
    def layers(self) -> list[Layer]:
        """The layers measured: a builder's all, a traced pass's in the order it ran them."""
        return self.static if self.static is not None else list(self.found.values())

    def weight_rows(self, layers: Sequence[Layer], grads: dict[int, Tensor] | None = None) -> list[Tensor]:
        """Each layer's weight statistics: from `grads` (id(parameter) -> gradient, as a probe's
        autograd.grad gives them) or from the moments the hooks caught, with the update ratio."""
        rows = []
        for layer in layers:
            if grads is not None:
                moments = [grad_moments(grads[id(w)]) if id(w) in grads else None for w in layer.weights]
                rows.append(weight_stats(layer.weights, moments))
                continue
            before = [self.before.get(id(w)) for w in layer.weights]
            complete = layer.weights and all(b is not None for b in before)
            moments = [self.moments.get(id(w)) for w in layer.weights]
            rows.append(weight_stats(layer.weights, moments, before if complete else None))
        return rows

    def table(
        self, layers: Sequence[Layer], device: torch.device, grads: dict[int, Tensor] | None = None
    ) -> Tensor:
        """(layers, STATS) on `device` for `layers` (a list fixed earlier may hold some this pass
        did not reach: their slots are NaN)."""
        names = [layer.name for layer in layers]
        return table(names, self.activations, self.out_grads, self.weight_rows(layers, grads), device)

    def grad_norm(self, device: torch.device) -> Tensor:
        """The global norm of every gradient the hooks caught (NaN without any)."""
        if not self.moments:
            return torch.full((), math.nan, device=device)
        return torch.stack([m[0].to(device) for m in self.moments.values()]).sum().sqrt()

    def unseen(self) -> list[str]:
        """What this pass did not let the doctor see: parameters outside every measured layer,
        modules not called, calls beyond MAX_CALLS."""
        notes = [
            f"{base}: called {MAX_CALLS + extra} times in one pass; the first {MAX_CALLS} are measured"
            for base, extra in self.skipped.items()
        ]
        if self.failure is not None:
            notes.append(f"a pass the doctor could not measure: {self.failure}")
        if self.static is not None:
            return notes
        return notes + unmeasured_parameters(self.model, self.found.values(), self.called)


def loss_scale(scaler: Any) -> Tensor | None:
    """A GradScaler's current scale, as a device tensor copy (None: scaling is off). GradScaler
    keeps it in ``_scale``; its public get_scale() would read it to the host, a synchronization.
    Taken during the backward pass, before ``scaler.update()`` changes it."""
    if not getattr(scaler, "is_enabled", lambda: True)():
        return None
    scale = getattr(scaler, "_scale", None)
    if scale is None:
        return torch.tensor(float(scaler.get_scale()))
    return scale.detach().clone().float().reshape(())


def unmeasured_parameters(model: nn.Module, layers: Sequence[Layer], called: set[int]) -> list[str]:
    """Modules holding trainable parameters that no measured layer accounts for, with why."""
    covered = {id(layer.module) for layer in layers if layer.module is not None}
    notes = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own or id(module) in covered or inside_covered(model, name, covered):
            continue
        label = (
            f"{name or '(the model)'} ({type(module).__name__}, {sum(p.numel() for p in own):,} parameters)"
        )
        why = (
            "its output is of a kind the doctor does not measure; its forward uses the parameters directly"
            if id(module) in called
            else "not called in the sampled pass"
        )
        notes.append(f"{label}: {why}")
    return notes


def inside_covered(model: nn.Module, name: str, covered: set[int]) -> bool:
    """Some enclosing module of `name` is a measured activation or attention module, whose
    parameters (an nn.MultiheadAttention's out_proj, a Swish's beta) are its own layer's."""
    parts = name.split(".") if name else []
    module = model
    for part in parts[:-1]:
        module = getattr(module, part)
        if id(module) in covered:
            return True
    return False
