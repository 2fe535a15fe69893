"""The chapter's learning-rate schedules, built on torch.optim.lr_scheduler.

How each one counts:

- power, exponential, piecewise and onecycle count optimizer steps: call ``scheduler.step()``
  after every ``optimizer.step()``, as Keras schedules read the optimizer's iteration count. t in
  the formulas below is the number of optimizer steps taken so far.
- performance counts epochs and reads the monitored metric: call ``scheduler.step(val_loss)`` once
  per epoch. It is a ``torch.optim.lr_scheduler.ReduceLROnPlateau``: a training loop tells it
  apart with ``isinstance(scheduler, ReduceLROnPlateau)`` (not by LRScheduler, which recent torch
  versions make its base class too).

lr0 is each parameter group's learning rate when the schedule is created. Every schedule works
with torch's optimizers as well as gradwell's, and with a tensor ``lr`` (filled in place).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from gradwell.errors import GradwellError, check_finite, unknown_name
from gradwell.optim.base import check_arguments, largest, within


def is_int(value: object) -> bool:
    """A step count: an int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def power(optimizer: Optimizer, s: float, c: float = 1.0) -> LambdaLR:
    """Power scheduling: lr_t = lr0 / (1 + t / s)^c.

    The rate halves after s steps (c = 1), then falls ever more slowly: after s, 3s, 7s, ... steps
    it is lr0 / 2, lr0 / 4, lr0 / 8. c = 1 is the chapter's and Keras's InverseTimeDecay.
    """
    s = check_finite("power schedule s", s, low=0.0, low_open=True)
    c = check_finite("power schedule c", c, low=0.0)
    return LambdaLR(optimizer, lambda t: (1 + t / s) ** -c)


def exponential(optimizer: Optimizer, s: float) -> LambdaLR:
    """Exponential scheduling: lr_t = lr0 * 0.1^(t / s), a tenfold drop every s steps.

    Evaluated in closed form at every t, so the rate carries no rounding drift from repeated
    products (torch's ExponentialLR multiplies by gamma each step).
    """
    s = check_finite("exponential schedule s", s, low=0.0, low_open=True)
    return LambdaLR(optimizer, lambda t: 0.1 ** (t / s))


ANNEAL_STRATEGIES = ("linear", "cos")
PLATEAU_MODES = ("min", "max")


class PiecewiseConstantLR(LRScheduler):
    """lr_t = values[i] for boundaries[i - 1] <= t < boundaries[i]: constant between step counts.

    >>> import torch
    >>> from gradwell.optim import SGD
    >>> optimizer = SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1)
    >>> scheduler = PiecewiseConstantLR(optimizer, boundaries=[2], values=[0.1, 0.01])
    >>> rates = []
    >>> for _ in range(4):
    ...     rates.append(optimizer.param_groups[0]["lr"])
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [0.1, 0.1, 0.01, 0.01]
    """

    def __init__(self, optimizer: Optimizer, boundaries: Sequence[int], values: Sequence[float]) -> None:
        self.boundaries = list(boundaries)
        self.values = list(values)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        value = self.values[bisect.bisect_right(self.boundaries, self.last_epoch)]
        return [value] * len(self.optimizer.param_groups)


def piecewise(
    optimizer: Optimizer, boundaries: Sequence[int], values: Sequence[float]
) -> PiecewiseConstantLR:
    """Piecewise constant scheduling: values[0] until step boundaries[0], then values[1], ...

    The values replace every group's rate (lr0 is not used), as in the chapter and Keras's
    PiecewiseConstantDecay; the rate changes at the boundary itself, as in the chapter's
    ``if epoch < 5`` function (Keras switches one step later: ``step > boundary``).
    """
    if len(values) != len(boundaries) + 1:
        raise GradwellError(
            f"piecewise schedule needs one value more than boundaries; got {len(boundaries)} boundaries "
            f"{list(boundaries)!r} and {len(values)} values {list(values)!r}"
        )
    if any(not is_int(b) or b < 1 for b in boundaries) or sorted(set(boundaries)) != list(boundaries):
        raise GradwellError(
            f"piecewise schedule boundaries must be increasing positive step counts; got {list(boundaries)!r}"
        )
    high = largest_rate(optimizer)
    values = [
        within(name, check_finite(name, v, low=0.0), high)
        for name, v in ((f"piecewise schedule values[{i}]", v) for i, v in enumerate(values))
    ]
    return PiecewiseConstantLR(optimizer, boundaries, values)


def performance(
    optimizer: Optimizer,
    factor: float = 0.5,
    patience: int = 5,
    min_delta: float = 1e-4,
    cooldown: int = 0,
    min_lr: float = 0.0,
    mode: str = "min",
) -> ReduceLROnPlateau:
    """Performance scheduling: multiply the rate by `factor` when the metric stops improving.

    The rate drops on the `patience`-th epoch in a row in which the metric did not beat its best by
    more than `min_delta`, then `cooldown` epochs pass before counting again; it never goes below
    `min_lr`. factor 0.5 and patience 5 are the chapter's example. These are Keras's
    ReduceLROnPlateau semantics (absolute min_delta, drop after `patience` bad epochs); torch's
    ReduceLROnPlateau, which this returns, drops one epoch later by default, so it holds
    ``patience - 1`` and an absolute threshold. Call ``scheduler.step(metric)`` once per epoch.
    """
    factor = check_finite(
        "performance schedule factor", factor, low=0.0, high=1.0, low_open=True, high_open=True
    )
    for name, value, low in (("patience", patience, 1), ("cooldown", cooldown, 0)):
        if not is_int(value) or value < low:
            raise GradwellError(f"performance schedule {name} must be an int >= {low}; got {value!r}")
    if mode not in PLATEAU_MODES:
        raise unknown_name("performance schedule mode", mode, PLATEAU_MODES)
    return ReduceLROnPlateau(
        optimizer,
        mode=mode,
        factor=factor,
        patience=patience - 1,
        threshold=check_finite("performance schedule min_delta", min_delta, low=0.0),
        threshold_mode="abs",
        cooldown=cooldown,
        min_lr=within(
            "performance schedule min_lr",
            check_finite("performance schedule min_lr", min_lr, low=0.0),
            largest_rate(optimizer),
        ),
    )


class ClampedOneCycleLR(OneCycleLR):
    """torch's OneCycleLR, except that the rate stays at its final value after `total_steps` steps.

    torch extrapolates the last linear phase one step past the end, so the documented use (one
    ``step()`` after each of the `total_steps` optimizer steps) would leave a negative rate in the
    optimizer for a further step or a log. Momentum already ends flat.

    >>> import torch
    >>> from gradwell.optim import SGD
    >>> optimizer = SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1)
    >>> scheduler = ClampedOneCycleLR(optimizer, max_lr=0.1, total_steps=10, three_phase=True,
    ...                               anneal_strategy="linear")
    >>> for _ in range(10):
    ...     optimizer.step()
    ...     scheduler.step()
    >>> optimizer.param_groups[0]["lr"] > 0  # torch's OneCycleLR leaves -0.0008 here
    True
    """

    def get_lr(self) -> list[float]:
        if self.last_epoch < self.total_steps:
            return super().get_lr()
        return [group["min_lr"] for group in self.optimizer.param_groups]


def onecycle(
    optimizer: Optimizer,
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.45,
    div_factor: float = 10.0,
    final_div_factor: float = 1000.0,
    anneal_strategy: str = "linear",
    three_phase: bool = True,
    cycle_momentum: bool | None = None,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> ClampedOneCycleLR:
    """1cycle (Smith, 2018) as the chapter describes it, through torch's OneCycleLR.

    The rate rises linearly from lr_start = max_lr / div_factor to max_lr over the first
    `pct_start` of `total_steps`, falls back to lr_start over as many steps, then drops linearly to
    lr_start / final_div_factor ("several orders of magnitude") over the remaining steps. The
    defaults give that shape: 45% up, 45% down, 10% to the end, a start 10 times below max_lr
    (torch's defaults: cosine, two phases, pct_start 0.3, div_factor 25, final_div_factor 1e4).

    Momentum cycles the other way, max_momentum -> base_momentum -> max_momentum, then stays:
    SGD's ``momentum``, or b1 of ``betas`` for the Adam family. By default it cycles when the
    optimizer has momentum (SGD with momentum > 0, the Adam family), not for plain SGD, AdaGrad or
    RMSProp; pass `cycle_momentum` to decide. The schedule ends after `total_steps` steps; steps
    past the end keep the final rate.
    """
    max_lr = check_finite("onecycle schedule max_lr", max_lr, low=0.0, low_open=True)
    if not is_int(total_steps) or total_steps < 2:
        raise GradwellError(f"onecycle schedule total_steps must be an int >= 2; got {total_steps!r}")
    pct_start = onecycle_pct_start(pct_start, total_steps, three_phase)
    if anneal_strategy not in ANNEAL_STRATEGIES:
        raise unknown_name("onecycle anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
    base_momentum, max_momentum = onecycle_momenta(base_momentum, max_momentum)
    div_factor = check_finite("onecycle schedule div_factor", div_factor, low=0.0, low_open=True)
    final_div_factor = check_finite(
        "onecycle schedule final_div_factor", final_div_factor, low=0.0, low_open=True
    )
    check_onecycle_rates(optimizer, max_lr, div_factor, final_div_factor)
    if cycle_momentum is None:
        cycle_momentum = any(g.get("momentum", 0.0) > 0 or "betas" in g for g in optimizer.param_groups)
    return ClampedOneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
    )


def check_onecycle_rates(
    optimizer: Optimizer, max_lr: float, div_factor: float, final_div_factor: float
) -> None:
    """The three rates 1cycle passes through, within what the optimizer's kernels take."""
    high = largest_rate(optimizer)
    start = max_lr / div_factor
    rates = {
        "max_lr": max_lr,
        "max_lr / div_factor": start,
        "max_lr / div_factor / final_div_factor": start / final_div_factor,
    }
    for name, rate in rates.items():
        if high is not None and not rate <= high:
            raise GradwellError(
                f"onecycle schedule {name} = {rate:g} is beyond the largest rate the parameters' "
                f"kernels take ({high:g}); got max_lr={max_lr!r}, "
                f"div_factor={div_factor!r}, final_div_factor={final_div_factor!r}"
            )


def largest_rate(optimizer: Optimizer) -> float | None:
    """The largest learning rate `optimizer`'s parameters take (gradwell.optim.base.largest)."""
    return largest(p for group in optimizer.param_groups for p in group["params"])


def onecycle_pct_start(pct_start: float, total_steps: int, three_phase: bool) -> float:
    """pct_start in [0, 1], or [0, 0.5] with three phases, whose fall takes as many steps as the rise."""
    pct_start = check_finite(
        "onecycle schedule pct_start", pct_start, low=0.0, high=0.5 if three_phase else 1.0
    )
    if pct_start * total_steps == 1.0:  # torch's first phase would end where it starts: 0 / 0
        raise GradwellError(
            "onecycle schedule pct_start * total_steps must not be 1 (a warm-up of one step); "
            f"got pct_start={pct_start!r}, total_steps={total_steps!r}"
        )
    return pct_start


def onecycle_momenta(base_momentum: float, max_momentum: float) -> tuple[float, float]:
    base_momentum, max_momentum = (
        check_finite(f"onecycle schedule {name}", value, low=0.0, high=1.0, high_open=True)
        for name, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum))
    )
    if base_momentum > max_momentum:
        raise GradwellError(
            "onecycle schedule needs base_momentum <= max_momentum; "
            f"got base_momentum={base_momentum!r}, max_momentum={max_momentum!r}"
        )
    return base_momentum, max_momentum


SCHEDULES: dict[str, Callable[..., LRScheduler | ReduceLROnPlateau]] = {
    "power": power,
    "exponential": exponential,
    "piecewise": piecewise,
    "performance": performance,
    "onecycle": onecycle,
}


def schedule(name: str, optimizer: Optimizer, **kwargs: Any) -> LRScheduler | ReduceLROnPlateau:
    """The schedule `name` from SCHEDULES on `optimizer`, e.g. ``schedule("power", opt, s=1000)``.

    Bad names and arguments raise GradwellError listing what is valid. See the module docstring for
    when to call ``step()``: after each optimizer step, or once per epoch with the metric for
    "performance".

    >>> import torch
    >>> from gradwell.optim import SGD
    >>> optimizer = SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1)
    >>> scheduler = schedule("power", optimizer, s=10)
    >>> for _ in range(10):
    ...     optimizer.step()
    ...     scheduler.step()
    >>> round(optimizer.param_groups[0]["lr"], 6)  # lr0 / (1 + t / s): halved after s steps
    0.05
    """
    try:
        factory = SCHEDULES[name]
    except (KeyError, TypeError):
        raise unknown_name("schedule", name, SCHEDULES) from None
    check_arguments(f"{name} schedule", factory, kwargs)
    try:
        return factory(optimizer, **kwargs)
    except GradwellError:
        raise
    except ValueError as error:  # torch's own checks, e.g. cycle_momentum=True without momentum
        raise GradwellError(f"{name} schedule: {error}") from None
