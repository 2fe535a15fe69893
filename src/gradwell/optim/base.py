"""What every gradwell optimizer shares: validation, clipping, state, grouping, capturable steps.

An optimizer here is a thin `torch.optim.Optimizer` shell around one pure function that updates
lists of tensors in place with torch's multi-tensor (``_foreach``) kernels, the way torch.optim's
foreach implementations do. The shell does the rest, once for all of them:

- it validates hyperparameters whenever a parameter group is added (the constructor included);
- it clips the gradients of all groups before the update, with at most one of Keras's
  ``clipvalue``, ``clipnorm`` (each tensor on its own) or ``global_clipnorm`` (gradwell.clip);
- it creates the state lazily: per-element buffers start at zero, per-parameter counters
  (``step``, Nadam's ``mu_product``) are 0-d tensors, so a parameter that gets no gradient in a
  step keeps its own count, as in torch;
- it splits the tensors by device and dtype (torch's own grouping), or hands them over one at a
  time with ``foreach=False``, which lowers peak memory at the cost of speed: one implementation
  over lists either way;
- with ``capturable=True`` nothing in ``step()`` reads a device value on the host: counters live on
  the parameters' device, per-tensor coefficients such as Adam's bias corrections are computed
  there, and ``lr`` may be a 0-d tensor (torch's LR schedulers ``fill_`` it in place), so a whole
  training step can be captured in a CUDA graph. Without it, counters stay on the CPU and the
  coefficients reach the kernels as Python numbers, which is faster outside a graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from gradwell.clip import clip_by_global_norm_, clip_by_norm_, clip_by_value_
from gradwell.errors import GradwellError, check_finite, closest

# a hyperparameter reaching the kernels: a Python number, a 0-d tensor (capturable lr), or one
# of either per tensor (per-tensor coefficients such as bias corrections)
Scalar = float | Tensor
Scalars = Scalar | list[float] | list[Tensor]

CLIPS: dict[str, Callable[[list[Tensor], float], Any]] = {
    "clipvalue": clip_by_value_,
    "clipnorm": clip_by_norm_,
    "global_clipnorm": clip_by_global_norm_,
}

# hyperparameter name -> its valid range, as keyword arguments of check_finite
UNIT = {"low": 0.0, "high": 1.0, "high_open": True}
NON_NEGATIVE = {"low": 0.0}
RANGES: dict[str, dict[str, Any]] = {
    "momentum": UNIT,
    "rho": UNIT,
    "eps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum_decay": NON_NEGATIVE,
}

# torch >= 2.8 names the check for any accelerator, earlier versions for CUDA only
capture_health_check = (
    getattr(Optimizer, "_accelerator_graph_capture_health_check", None)
    or Optimizer._cuda_graph_capture_health_check
)


class GradwellOptimizer(Optimizer):
    """Base class: subclasses set `buffers` / `counters` and implement `update`.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        defaults: the subclass's hyperparameters (param_group keys).
        clipvalue, clipnorm, global_clipnorm: clip the gradients before the update (at most one).
        foreach: update all tensors of a device and dtype with one multi-tensor kernel per operation
            (default); False updates one tensor at a time, with less temporary memory.
        capturable: keep the step free of host synchronization so it can be captured in a CUDA
            graph; ``lr`` may then be a 0-d tensor on the parameters' device.

    Attributes:
        last_grad_norm: the global gradient norm before clipping, as a 0-d tensor on the device,
            from the last step; None unless ``global_clipnorm`` is set, since only global clipping
            computes it anyway.

    A new optimizer is its hyperparameters and one update over lists of tensors; the base class
    adds clipping, state and the rest:

    >>> class SignSGD(GradwellOptimizer):
    ...     def __init__(self, params, lr=0.01, **options):
    ...         super().__init__(params, {"lr": lr}, **options)
    ...     def update(self, tensors, lr, group):
    ...         torch._foreach_add_(tensors["params"], torch._foreach_sign(tensors["grads"]), alpha=-lr)
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = SignSGD([w], lr=0.1, global_clipnorm=1.0)
    >>> w.grad = torch.tensor([3.0, -4.0])
    >>> optimizer.step()
    >>> w.detach(), w.grad, optimizer.last_grad_norm
    (tensor([ 0.9000, -1.9000]), tensor([ 0.6000, -0.8000]), tensor(5.))
    """

    # per-element state, zeros like the parameter at the start
    buffers: tuple[str, ...] = ()
    # per-parameter 0-d state and its starting value
    counters: ClassVar[dict[str, float]] = {}
    # Whether the update of each element reads only that element's gradient and state (and
    # per-step numbers: lr, the step count). The fused MLP step then updates one flat tensor, and
    # seed-batched training K seeds' stacked tensors, exactly as the separate tensors would be.
    # A per-tensor rule (LAMB's or LARS's trust ratio, a norm of the update) sets it False.
    # Clipping is not part of it: both paths handle clipnorm and global_clipnorm themselves.
    elementwise: ClassVar[bool] = True

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        global_clipnorm: float | None = None,
        foreach: bool = True,
        capturable: bool = False,
    ) -> None:
        self.clip = clip_option(clipvalue=clipvalue, clipnorm=clipnorm, global_clipnorm=global_clipnorm)
        self.last_grad_norm: Tensor | None = None
        super().__init__(params, {**defaults, "foreach": foreach, "capturable": capturable})

    def __getstate__(self) -> dict[str, Any]:
        # torch pickles and deep-copies only defaults, state and param_groups
        return {**super().__getstate__(), "clip": self.clip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.last_grad_norm = None

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        """Update one device/dtype chunk in place: "params", "grads" and each buffer and counter."""
        raise NotImplementedError

    def group_buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The buffers a group needs now (SGD needs a velocity only with momentum)."""
        return self.buffers

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.validate(self.param_groups[-1])

    def validate(self, group: dict[str, Any]) -> None:
        """Check a group's hyperparameters, storing the checked numbers back as floats."""
        name = type(self).__name__
        high = largest(group["params"])
        check_lr(f"{name} lr", group["lr"])
        within(f"{name} lr", float(group["lr"]), high)
        for key, bounds in RANGES.items():
            if key in group:
                group[key] = within(
                    f"{name} {key}", check_finite(f"{name} {key}", group[key], **bounds), high
                )
        if self.clip is not None:
            within(*self.clip, high)
        if "betas" in group:
            betas = group["betas"]
            if not isinstance(betas, tuple | list) or len(betas) != 2:
                raise GradwellError(f"{name} betas must be a pair (beta1, beta2); got {betas!r}")
            group["betas"] = tuple(
                check_finite(f"{name} beta{i + 1}", b, **UNIT) for i, b in enumerate(betas)
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Clip the gradients, then update every parameter that has one; return the closure's loss."""
        capture_health_check(self)  # refuses a CUDA graph capture when not capturable
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.clip_gradients()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update_group(group, params)
        return loss

    def clip_gradients(self) -> None:
        if self.clip is None:
            return
        kind, threshold = self.clip
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        result = CLIPS[kind](grads, threshold)
        if kind == "global_clipnorm":
            self.last_grad_norm = result

    def update_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        names = ("params", "grads", *self.group_buffers(group), *self.counters)
        states = [self.parameter_state(p, group) for p in params]
        lists = [params, [p.grad for p in params], *([state[key] for state in states] for key in names[2:])]
        lr = group["lr"]
        if isinstance(lr, Tensor) and not group["capturable"]:
            lr = lr.item()
        for chunk in chunks(lists, group["foreach"]):
            self.update(dict(zip(names, chunk, strict=True)), lr, group)

    def parameter_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The parameter's state, with any missing buffer or counter created."""
        if param.grad.is_sparse:
            raise GradwellError(f"{type(self).__name__} does not support sparse gradients")
        if param.is_complex():
            raise GradwellError(f"{type(self).__name__} does not support complex parameters")
        state = self.state[param]
        for key in self.group_buffers(group):
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        for key, start in self.counters.items():
            if key not in state:
                state[key] = counter(torch.tensor(start), param, group["capturable"])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then counters back where `capturable` wants them and no shared lr tensor.

        torch casts 0-d state other than ``step`` to the parameter's device, and keeps the lr tensor
        of the saved dict, which is the live tensor of the optimizer it came from: the loaded lr is
        copied into this optimizer's own tensor instead, the one a captured graph or a scheduler reads.
        """
        live_lrs = [group["lr"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, live in zip(self.param_groups, live_lrs, strict=True):
            if isinstance(live, Tensor):
                group["lr"] = live.copy_(torch.as_tensor(group["lr"]))
            elif isinstance(group["lr"], Tensor):
                group["lr"] = group["lr"].clone()
            for param in group["params"]:
                state = self.state.get(param, {})
                for key in self.counters:
                    if key in state:
                        state[key] = counter(state[key], param, group["capturable"])


# torch.optim's optimizers whose update is elementwise (checked against each one's update rule);
# those left out read whole tensors: LBFGS (dot products over all parameters), Adafactor (row and
# column statistics of each matrix), Muon (orthogonalizes each matrix), and SparseAdam takes sparse
# gradients only. Exact classes: a subclass may change the update, so it declares its own.
TORCH_ELEMENTWISE: tuple[type[Optimizer], ...] = tuple(
    getattr(torch.optim, name)
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "NAdam",
        "RAdam",
        "Adamax",
        "Adagrad",
        "Adadelta",
        "RMSprop",
        "Rprop",
        "ASGD",
    )
    if hasattr(torch.optim, name)
)


def is_elementwise(optimizer: Optimizer | type[Optimizer]) -> bool:
    """Whether an optimizer (or optimizer class) declares that it updates each element on its own.

    An ``elementwise`` class attribute decides where the class or a base declares one (True on
    GradwellOptimizer; any torch.optim.Optimizer subclass may set it); otherwise only the exact
    torch.optim classes of TORCH_ELEMENTWISE count. Anything else is taken as not elementwise, so
    the fused MLP step and seed-batched training refuse it rather than train it wrongly.

    >>> from gradwell.optim import Adam
    >>> is_elementwise(Adam), is_elementwise(torch.optim.Adam), is_elementwise(torch.optim.LBFGS)
    (True, True, False)
    """
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    declared = getattr(cls, "elementwise", None)
    if isinstance(declared, bool):
        return declared
    return cls in TORCH_ELEMENTWISE


def clip_option(**options: float | None) -> tuple[str, float] | None:
    """The one clipping option set, checked, as (name, threshold); None when none is set."""
    given = {name: value for name, value in options.items() if value is not None}
    if len(given) > 1:
        listed = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise GradwellError(f"clipvalue, clipnorm and global_clipnorm exclude each other; got {listed}")
    for name, value in given.items():
        return name, check_finite(name, value, low=0.0, low_open=True)
    return None


def check_lr(name: str, lr: float | Tensor) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise GradwellError(f"{name} must be a number or a one-element tensor; got shape {tuple(lr.shape)}")
    check_finite(name, lr, low=0.0)


def largest(params: Iterable[Tensor]) -> float | None:
    """The largest hyperparameter the kernels take for these parameters (None: no bound).

    The kernels compute in float32 at least (float64 for float64 parameters); a larger number (an
    lr of 1e39 on float32 weights) is an overflow error inside torch at the first step.

    >>> largest([torch.zeros(2)]), largest([torch.zeros(2, dtype=torch.float64)]) > 1e308
    (3.4028234663852886e+38, True)
    """
    dtypes = {p.dtype for p in params if isinstance(p, Tensor) and p.is_floating_point()}
    return min((torch.finfo(torch.promote_types(d, torch.float32)).max for d in dtypes), default=None)


def within(name: str, value: float, high: float | None) -> float:
    """`value`, or an error naming it when it is beyond `high`, the largest number the kernels take."""
    if high is not None and value > high:
        raise GradwellError(
            f"{name} = {value!r} is beyond the largest number the parameters' kernels take "
            f"({high:g}); valid: a finite number up to {high:g}"
        )
    return value


def counter(value: Tensor, param: Tensor, capturable: bool) -> Tensor:
    """A 0-d counter on the parameter's device when capturable, on the CPU otherwise.

    float32 at least: steps are exact up to 2**24, and float64 parameters get float64 counters.
    """
    dtype = torch.promote_types(param.dtype, torch.float32)
    return value.to(device=param.device if capturable else "cpu", dtype=dtype)


def chunks(lists: list[list[Tensor]], foreach: bool) -> Iterator[list[list[Tensor]]]:
    """Same-device, same-dtype slices of parallel tensor lists, or one tensor at a time."""
    if not foreach:
        return ([[tensors[i]] for tensors in lists] for i in range(len(lists[0])))
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists)
    return (chunk for chunk, _ in grouped.values())


def vector(scalars: list[Tensor]) -> Tensor:
    """The 0-d states of a chunk (counters) as one float64 vector, on their device: (n,)."""
    return torch.stack(scalars).to(torch.float64)


def counts(counters: list[Tensor], capturable: bool) -> Tensor | float:
    """The values of a chunk's counters: one Python number when the step need not be capturable
    and every tensor's counter holds the same value, else a float64 vector (n,) on their device.

    The same value is the usual case (every parameter gets a gradient each step), and then the
    per-tensor coefficients are computed once in Python numbers instead of a dozen operations on
    tiny tensors each step. Counters are on the CPU unless capturable, so reading them costs no
    sync; the arithmetic is float64 either way. The formulas are written once, for a number or a
    vector alike.

    >>> counts([torch.tensor(3.0), torch.tensor(3.0)], capturable=False)
    3.0
    >>> counts([torch.tensor(3.0), torch.tensor(4.0)], capturable=False)
    tensor([3., 4.], dtype=torch.float64)
    """
    if not capturable:
        values = torch.stack(counters).tolist()
        if values.count(values[0]) == len(values):
            return values[0]
    return vector(counters)


def store_(counters: list[Tensor], values: Tensor | float) -> None:
    """Write `counts`' kind of values back into the 0-d counters, rounded to their dtype."""
    if isinstance(values, Tensor):
        torch._foreach_copy_(counters, list(values.unbind()))
    else:
        for counter in counters:
            counter.fill_(values)


def per_tensor(values: Tensor | float, like: Tensor, capturable: bool) -> Scalars:
    """Per-tensor coefficients (a vector, or one number for all) as foreach scalars.

    Python numbers when not capturable (the vector is on the CPU, reading it costs no sync), else
    0-d tensors on the device in the parameters' precision (float32 at least).
    """
    if not isinstance(values, Tensor):
        return values
    if capturable:
        return list(values.to(torch.promote_types(like.dtype, torch.float32)).unbind())
    return values.tolist()


def add_scaled_(ys: list[Tensor], xs: list[Tensor], scale: Scalar) -> None:
    """ys <- ys + scale * xs."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(ys, torch._foreach_mul(xs, scale))
    else:
        torch._foreach_add_(ys, xs, alpha=scale)


def addcdiv_(ys: list[Tensor], numerators: list[Tensor], denominators: list[Tensor], scale: Scalars) -> None:
    """ys <- ys + scale * numerators / denominators."""
    if isinstance(scale, Tensor) or (isinstance(scale, list) and isinstance(scale[0], Tensor)):
        # the foreach kernels take host numbers only as the scale of addcdiv
        numerators = torch._foreach_mul(numerators, scale)
        scale = 1.0
    torch._foreach_addcdiv_(ys, numerators, denominators, scale)


def check_arguments(
    what: str, factory: Callable[..., Any], kwargs: dict[str, Any], extra: tuple[str, ...] = ()
) -> None:
    """Raise a GradwellError listing the valid keyword arguments when `kwargs` do not fit `factory`.

    The factory's first parameter (the parameters, or the optimizer) is not a keyword argument;
    `extra` names what a ``**options`` catch-all accepts.
    """
    named = [
        p
        for p in list(inspect.signature(factory).parameters.values())[1:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    valid = [p.name for p in named] + list(extra)
    unknown = [key for key in kwargs if key not in valid]
    missing = [p.name for p in named if p.default is p.empty and p.name not in kwargs]
    problems = [f"unknown argument {key!r}{closest(key, valid)}" for key in unknown]
    problems += [f"missing argument {key!r}" for key in missing]
    if problems:
        raise GradwellError(f"{what}: {'; '.join(problems)}; valid arguments: {', '.join(valid)}")


# the keyword arguments every optimizer takes through GradwellOptimizer
OPTIONS = tuple(
    p.name
    for p in inspect.signature(GradwellOptimizer.__init__).parameters.values()
    if p.kind is p.KEYWORD_ONLY
)
