"""The fused MLP step: hand-written forward and backward over one flat parameter buffer.

On a CPU, a deep narrow MLP like the chapter's 100 layers of 100 units spends about as long in
the framework as in its matrix products: autograd records and replays a graph of several nodes
per layer, transposes are views with their own dispatch, and a multi-tensor optimizer update is
a loop of a few hundred small kernels, one per tensor and operation. For a stack of Linear,
BatchNorm, Dropout / AlphaDropout layers and elementwise activations, all of that is known in
advance, so this step does it by hand (the layers are in gradwell.train.fused_ops):

- products: ``z = a W^T + b`` and ``da = dz W`` by oneDNN's kernel in float32 from
  fused_ops.ONEDNN_FROM multiply-adds, where it beats MKL's, the one torch's matmul calls (up to 2x
  on AMD EPYC CPUs, benchmarks/bench_products.py), by MKL's below and in float64;
- forward: ``z = a W^T + b``, batch normalization with the batch's statistics through
  torch's kernel (moving averages updated as the eager layer does), dropout masks drawn as
  torch's kernels draw them, and the activation, each keeping what its backward needs;
- loss: cross-entropy on class labels and its gradient with respect to the logits by the kernels
  autograd would run (bit for bit autograd's); any other loss through autograd, for the logits
  only;
- backward: torch's own activation backward kernels (``elu_backward`` for SELU and ELU,
  ``threshold_backward`` for ReLU, ...) and ``native_batch_norm_backward``, ``da = dz W``, then
  ``dW = dz^T a`` (plus the l1/l2 penalty's gradient) and ``db = sum(dz)`` written straight into
  a flat gradient buffer; the weight gradients of same-shaped layers wait for the end of the pass
  and go into one block of the buffer (`layout`), small ones such as the chapter's 99 hidden
  100 x 100 layers as one batched product (``bmm``, fused_ops.WeightGradients);
- threads: when most of the network's multiply-adds are in small products (fused_ops.runs_serial,
  the chapter's 100 x 100 layers at batch 32), the forward and backward passes run on one thread
  (torch.set_num_threads, process-wide, set back after each pass), the batched weight gradients and
  the update on torch's threads: splitting such small products over the threads costs more time
  than it saves;
- update: every parameter is a view into one flat buffer, so the optimizer updates one tensor
  with one kernel per operation (the optimizer's own update rule, unchanged); clipping by value
  or by global norm is the same on the flat gradient, and ``clipnorm``, which bounds each
  parameter's gradient on its own, is applied by the step to the parameters' views.

The optimizer keeps its usual per-parameter state outside the step (in checkpoints, state_dict and
after fit); while the step runs it holds one flat parameter and flat state, converted both ways
by `FusedStep.user_view`. The results equal autograd's up to float rounding (the tests compare them
in float64, and oneDNN's products with MKL's in float32). `plan` says why a model does not
qualify; fit then takes another path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwell.activations import FusedKernel, activation_info
from gradwell.clip import clip_by_norm_
from gradwell.norm import BatchNorm
from gradwell.optim import is_elementwise
from gradwell.regularize import l1_l2_penalty, max_norm_
from gradwell.train.fused_ops import (
    ActivationLayer,
    AlphaDropoutLayer,
    BatchNormLayer,
    DropoutLayer,
    Layer,
    LinearLayer,
    MovingStatistics,
    WeightGradients,
    cross_entropy_with_grad,
    one_thread,
    runs_serial,
)
from gradwell.train.step import Metrics, StepContext

# activation -> (forward, backward(grad, z, a), whether backward needs z, what it learns and its
# gradient), declared by each activation's record (gradwell.activations.ActivationInfo.fused)
Kernel = FusedKernel


def kernel(module: nn.Module) -> Kernel | None:
    """The forward and torch backward kernel of an elementwise activation module, or None.

    Looked up in the module's activation record, so an activation registered with
    gradwell.activations.register_activation is fused when its record gives a kernel.
    """
    info = activation_info(module)
    return info.fused(module) if info is not None and info.fused is not None else None


def leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The modules of nested Sequentials in the order they run."""
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            yield from ((f"{name}.{n}", m) for n, m in leaves(child))
        else:
            yield name, child


@dataclass(frozen=True)
class Plan:
    """What the fused step runs: each module with how it is run, in order, and whether a Flatten
    comes first. A module is ("linear", Linear), ("activation", its kernel), ("batchnorm",
    BatchNorm), ("dropout", p) or ("alpha_dropout", p)."""

    modules: list[tuple[str, Any]]
    flatten: bool

    @property
    def linears(self) -> list[nn.Linear]:
        return [module for kind, module in self.modules if kind == "linear"]

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the step trains, in the order the modules run."""
        found = []
        for kind, value in self.modules:
            if kind in ("linear", "batchnorm"):
                found.extend(value.parameters())
            elif kind == "activation" and value.parameter is not None:
                found.append(value.parameter)
        return found


# layers whose output no other layer keeps, so an activation after them may work in place
FRESH = ("linear", "batchnorm", "dropout", "alpha_dropout")


def batchnorm_refusal(norm: BatchNorm) -> str | None:
    if norm.has_uninitialized_params():
        return "is lazy and not built yet"
    if norm.frozen:
        return "is frozen (it normalizes with its moving statistics in training)"
    if tuple(norm.axis) not in ((1,), (-1,)):
        return f"keeps axis {norm.axis}, not the features of a (batch, features) input"
    return None


def planned(name: str, module: nn.Module, previous: str | None) -> tuple[str, Any] | str | None:
    """How the fused step runs `module` after a layer of kind `previous` (None: the input); None
    when it is skipped (a dropout of p = 0); a string says why it cannot be run."""
    if isinstance(module, nn.Linear):
        return "linear", module
    if isinstance(module, nn.Dropout | nn.AlphaDropout):
        if module.p == 0:
            return None
        if module.p >= 1:
            return f"{name} ({type(module).__name__}) drops every unit (p = {module.p})"
        return ("dropout" if isinstance(module, nn.Dropout) else "alpha_dropout"), module.p
    if isinstance(module, BatchNorm):
        why = batchnorm_refusal(module)
        return f"{name} (BatchNorm) {why}" if why else ("batchnorm", module)
    found = kernel(module)
    if found is not None and previous in FRESH:
        return "activation", found
    if found is not None:
        follows = "the input" if previous is None else "another activation"
        return f"{name} ({type(module).__name__}) follows {follows}, not a Linear, BatchNorm or Dropout"
    return (
        f"{name} ({type(module).__name__}) is not a Linear, BatchNorm, Dropout or an elementwise activation"
    )


def plan(model: nn.Module) -> Plan | str:
    """The model as the fused step runs it; a string says why the model does not qualify."""
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not an nn.Sequential"
    modules: list[tuple[str, Any]] = []
    flatten = False
    for name, module in leaves(model):
        if (
            isinstance(module, nn.Flatten)
            and not modules
            and not flatten
            and (module.start_dim, module.end_dim) == (1, -1)
        ):
            flatten = True
            continue
        found = planned(name, module, modules[-1][0] if modules else None)
        if isinstance(found, str):
            return found
        if found is not None:
            modules.append(found)
    result = Plan(modules, flatten)
    if not result.linears:
        return "the model has no Linear layer"
    params = result.parameters()
    if len(params) != len(list(model.parameters())) or not all(p.requires_grad for p in params):
        return "some parameters are frozen or outside the layers the fused step runs"
    if len({(p.device, p.dtype) for p in params}) > 1:
        return "the parameters are on several devices or of several dtypes"
    return result


def same_shaped(linears: list[nn.Linear]) -> list[list[nn.Linear]]:
    """The groups of two or more Linear layers with the same weight shape and bias or none: their
    weight gradients are written together at the end of the backward pass (fused_ops.WeightGradients)."""
    found: dict[tuple[Any, ...], list[nn.Linear]] = defaultdict(list)
    for linear in linears:
        found[(*linear.weight.shape, linear.bias is not None)].append(linear)
    return [group for group in found.values() if len(group) > 1]


def layout(found: Plan) -> tuple[list[nn.Parameter], list[list[nn.Linear]]]:
    """The parameters in the order the flat buffer holds them, and the same-shaped Linear groups.

    Each group's weights come first, one after another, then its biases, so that each is one
    (G, out, in) or (G, out) block of the buffer; the other parameters follow in the order they run.
    """
    groups = same_shaped(found.linears)
    grouped = [p for group in groups for p in [*(linear.weight for linear in group), *biases(group)]]
    first = {id(p) for p in grouped}
    return grouped + [p for p in found.parameters() if id(p) not in first], groups


def biases(linears: list[nn.Linear]) -> list[nn.Parameter]:
    return [linear.bias for linear in linears if linear.bias is not None]


def clipnorm_of(optimizer: torch.optim.Optimizer) -> float | None:
    """The threshold of a gradwell optimizer's clipnorm (each tensor clipped on its own), or None."""
    clip = getattr(optimizer, "clip", None)
    return clip[1] if clip is not None and clip[0] == "clipnorm" else None


def why_not_fused(
    model: nn.Module, optimizer: torch.optim.Optimizer, sample: Tensor | None = None, **options: Any
) -> str | None:
    """Why the fused step cannot train this model with this optimizer and options on batches like
    `sample` (None if it can)."""
    found = plan(model)
    if isinstance(found, str):
        return found
    features = sample.flatten(1) if sample is not None and found.flatten else sample
    if features is not None and features.dim() != 2:
        return f"its inputs of shape {tuple(sample.shape[1:])} do not reach it as (batch, features)"
    if not is_elementwise(optimizer):
        return (
            f"{type(optimizer).__name__} does not declare an elementwise update "
            "(gradwell.optim.is_elementwise): the fused step would apply it to one flat tensor"
        )
    if len(optimizer.param_groups) > 1:
        return "the optimizer has several parameter groups"
    grouped = {id(p) for p in optimizer.param_groups[0]["params"]}
    if grouped != {id(p) for p in model.parameters()}:
        return "the optimizer does not hold exactly the model's parameters"
    blocking = [name for name, value in options.items() if value]
    return f"{', '.join(blocking)} not supported by the fused step" if blocking else None


class FusedStep:
    """A training step (x, y) -> loss for a stack of the layers `plan` takes; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        metrics: Metrics,
        *,
        accuracy: bool = True,
        max_norm: float | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        found = plan(model)
        self.flatten = found.flatten
        self.model, self.loss_fn, self.optimizer, self.metrics = model, loss_fn, optimizer, metrics
        self.accuracy, self.max_norm, self.l1, self.l2 = accuracy, max_norm, l1, l2
        self.weights = [linear.weight for linear in found.linears]  # what the l1/l2 penalty covers
        self.params, same = layout(found)
        self.offsets = list(accumulate((p.numel() for p in self.params[:-1]), initial=0))
        self.flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in self.params]))
        self.flat.grad = torch.zeros_like(self.flat)
        for p, view in zip(self.params, self.views(self.flat.data), strict=True):
            p.data = view
        self.grad_views = self.views(self.flat.grad)
        # id(parameter) -> its gradient, a view into flat.grad
        self.grads = {id(p): g for p, g in zip(self.params, self.grad_views, strict=True)}
        self.clipnorm = clipnorm_of(optimizer)
        self.groups = [self.weight_gradients(group) for group in same]
        places = {
            id(linear): (weights, i)
            for weights, group in zip(self.groups, same, strict=True)
            for i, linear in enumerate(group)
        }
        self.moving = MovingStatistics([value for kind, value in found.modules if kind == "batchnorm"])
        self.layers = [self.layer(kind, value, places) for kind, value in found.modules]
        self.linears = [layer for layer in self.layers if isinstance(layer, LinearLayer)]
        self.serial_at: dict[int, bool] = {}  # batch size -> whether the passes run on one thread
        self.lent: dict[str, tuple[Tensor, list[Tensor]]] = {}  # key -> flat buffer, the views swap_out lent
        self.swap_in()

    def layer(self, kind: str, value: Any, places: dict[int, tuple[WeightGradients, int]]) -> Layer:
        """The fused layer of a planned module (`places`: id(Linear) -> its weight group and place)."""
        if kind == "linear":
            return LinearLayer(value, self.grads, self.l1, self.l2, places.get(id(value)))
        if kind == "batchnorm":
            return BatchNormLayer(value, self.grads, self.moving)
        if kind == "activation":
            return ActivationLayer(value, self.grads)
        return DropoutLayer(value) if kind == "dropout" else AlphaDropoutLayer(value)

    def weight_gradients(self, group: list[nn.Linear]) -> WeightGradients:
        """The weight gradients of a group, written into its blocks of the flat buffer (see `layout`)."""
        first, shape, count = group[0].weight, group[0].weight.shape, len(group)
        start = self.offsets[next(i for i, p in enumerate(self.params) if p is first)]
        size = count * first.numel()
        weights = self.flat.data[start : start + size].view(count, *shape)
        weight_grads = self.flat.grad[start : start + size].view(count, *shape)
        bias_grads = None
        if group[0].bias is not None:
            bias_grads = self.flat.grad[start + size : start + size + count * shape[0]].view(count, shape[0])
        return WeightGradients(weights, weight_grads, bias_grads, self.l1, self.l2)

    def __call__(self, x: Tensor, y: Tensor, eager: bool = False) -> Tensor:
        if eager:
            return self.autograd_step(x, y)
        with torch.no_grad():
            logits, saved = self.forward(x.flatten(1) if self.flatten else x)
            loss, grad = self.loss_and_grad(logits, y)
            self.backward(grad, saved)
        return self.finish(loss, logits, y)

    def loss_and_grad(self, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The loss and d loss / d logits: by hand for cross-entropy on class labels, else by autograd."""
        if self.loss_fn is F.cross_entropy and logits.dim() == 2 and not y.is_floating_point():
            return cross_entropy_with_grad(logits, y)
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_()
            loss = self.loss_fn(leaf, y)
            (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach(), grad

    def autograd_step(self, x: Tensor, y: Tensor) -> Tensor:
        """The same step through autograd and the model's hooks (a callback sampling this step)."""
        for p in self.params:
            p.grad = None
        output = self.model(x)
        loss = self.loss_fn(output, y)
        penalized = loss + l1_l2_penalty(self.weights, self.l1, self.l2) if self.l1 or self.l2 else loss
        penalized.backward()
        with torch.no_grad():
            torch.cat([p.grad.reshape(-1) for p in self.params], out=self.flat.grad)
        return self.finish(loss.detach(), output.detach(), y)

    def finish(self, loss: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        """Clipping by norm, update, max-norm, metrics: what follows the gradients in every step."""
        with torch.no_grad():
            if self.clipnorm is not None:
                clip_by_norm_(self.grad_views, self.clipnorm)
            self.optimizer.step()
            if self.max_norm is not None:
                max_norm_(self.model, self.max_norm)
        self.metrics.add(loss, (logits.argmax(-1) == y).sum() if self.accuracy else None, len(y))
        return loss

    def serial(self, batch: int) -> bool:
        """Whether the passes run on one thread at this batch size (fused_ops.runs_serial)."""
        if batch not in self.serial_at:
            self.serial_at[batch] = runs_serial([linear.product(batch) for linear in self.linears])
        return self.serial_at[batch]

    def forward(self, a: Tensor) -> tuple[Tensor, list[Any]]:
        """The logits, and what each layer saved for its backward."""
        saved = []
        with one_thread(self.serial(len(a))):
            for layer in self.layers:
                a, kept = layer.forward(a)
                saved.append(kept)
        self.moving.update()
        return a, saved

    def backward(self, grad: Tensor, saved: list[Any]) -> None:
        """Write every parameter's gradient into the flat buffer, from d loss / d logits; the weight
        gradients of same-shaped layers (one batched product each) on torch's threads."""
        with one_thread(self.serial(len(grad))):
            for i in range(len(self.layers) - 1, -1, -1):
                grad = self.layers[i].backward(grad, saved[i], i > 0)
        for group in self.groups:
            group.write()

    def swap_in(self) -> None:
        """Give the optimizer one flat parameter and flat state built from its per-parameter state.

        The optimizer's own group list and state are kept for `swap_out`, taken afresh each time:
        ``load_state_dict`` replaces them with new objects.
        """
        self.user_groups = self.optimizer.param_groups
        self.user_state = self.optimizer.state
        group = {key: value for key, value in self.user_groups[0].items() if key != "params"}
        state: dict[str, Tensor] = {}
        per_param = [self.user_state.get(p, {}) for p in self.params]
        for key in per_param[0]:
            values = [s[key] for s in per_param]
            if isinstance(values[0], Tensor) and values[0].shape == self.params[0].shape:
                state[key] = self.flat_state(key, values)
            else:
                state[key] = values[0].clone() if isinstance(values[0], Tensor) else values[0]
        self.optimizer.param_groups = [{**group, "params": [self.flat]}]
        self.optimizer.state = defaultdict(dict, {self.flat: state} if state else {})
        if self.clipnorm is not None:  # each parameter's view is clipped in `finish`, not the flat one
            self.optimizer.clip = None

    def flat_state(self, key: str, values: list[Tensor]) -> Tensor:
        """The flat state `values` (one per parameter) make up: the very buffer `swap_out` lent
        them from when they are still its views (nothing to copy), else their concatenation."""
        flat, views = self.lent.get(key, (None, []))
        if flat is not None and all(v is w for v, w in zip(values, views, strict=True)):
            return flat
        return torch.cat([v.reshape(-1) for v in values])

    def swap_out(self, lend: bool = False) -> None:
        """Give the optimizer back its parameters, with per-parameter state cut from the flat state.

        Lent (`user_view`), each parameter's buffers are views into the flat ones, so that a view for
        a checkpoint or a replay copies nothing and `swap_in` takes the flat buffers back as they
        are; otherwise (`close`) they are copies, the optimizer's own for good. Counters such as
        ``step`` are copied either way: an eager step inside the view counts each parameter's own.
        """
        flat_group = self.optimizer.param_groups[0]
        for key, value in flat_group.items():
            if key != "params":
                self.user_groups[0][key] = value
        flat_state = self.optimizer.state.get(self.flat, {})
        cut = {
            key: self.views(value)
            for key, value in flat_state.items()
            if isinstance(value, Tensor) and value.shape == self.flat.shape
        }
        self.lent = {key: (flat_state[key], views) for key, views in cut.items()} if lend else {}
        self.user_state.clear()
        for i, p in enumerate(self.params):
            self.user_state[p] = {
                key: (cut[key][i] if lend else cut[key][i].clone())
                if key in cut
                else (value.clone() if isinstance(value, Tensor) else value)
                for key, value in flat_state.items()
            }
        self.optimizer.param_groups = self.user_groups
        self.optimizer.state = self.user_state
        if self.clipnorm is not None:
            self.optimizer.clip = ("clipnorm", self.clipnorm)

    def views(self, flat: Tensor) -> list[Tensor]:
        """A flat tensor cut into one view per parameter, shaped like it."""
        return [
            flat[offset : offset + p.numel()].view_as(p)
            for offset, p in zip(self.offsets, self.params, strict=True)
        ]

    @contextmanager
    def user_view(self) -> Iterator[None]:
        """The optimizer as the user knows it, for checkpoints, replays and eager steps."""
        self.swap_out(lend=True)
        try:
            yield
        finally:
            self.swap_in()

    def close(self) -> None:
        """Give the optimizer back its own parameters and state for good (again: nothing to do)."""
        if self.optimizer.param_groups is not self.user_groups:
            self.swap_out()


class FusedPath:
    """The fused MLP step, for stacks of Linear, BatchNorm, dropout and activation layers on a CPU."""

    name = "fused-mlp"
    description = "Linear, BatchNorm, dropout and activation layers by hand, one flat buffer"
    device_types = ("cpu",)  # on a GPU the whole step goes into a CUDA graph instead

    def refusal(self, context: StepContext) -> str | None:
        options = context.options
        why = why_not_fused(
            context.model, context.optimizer, context.sample[0], bf16=options.precision != "fp32",
            skip=options.on_nonfinite == "skip", compile=options.compile, parallel=context.parallel,
        )  # fmt: skip
        return None if why is None else f"the fused MLP step does not apply: {why}"

    def build(self, context: StepContext) -> FusedStep:
        options = context.options
        return FusedStep(
            context.model, context.loss_fn, context.optimizer, context.metrics,
            accuracy=options.classification, max_norm=options.max_norm, l1=options.l1, l2=options.l2,
        )  # fmt: skip
