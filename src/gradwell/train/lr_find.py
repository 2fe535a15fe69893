"""The learning-rate finder: the chapter's method, over several seeds, with everything put back.

"Train the model for a few hundred iterations, exponentially increasing the learning rate from a
very small value to a very large value, then look at the learning curve and pick a learning rate
slightly lower than the one at which the learning curve starts shooting back up." Each seed runs
`steps` steps with lr_i = start_lr (end_lr / start_lr)^(i / (steps - 1)) on batches drawn by that
seed, smoothing the loss with an exponential moving average (debiased, as Adam's moments), and
stops once the smoothed loss passes `stop_factor` times its minimum or turns non-finite.

Three suggestions are read off the median of the seeds' curves, side by side:

- ``minimum / 10``: the rate at the smoothed minimum, divided by 10 (the chapter's rule);
- ``steepest``: where the loss falls fastest per unit of log learning rate, before the minimum;
- ``valley``: fastai's, the middle of the longest stretch over which the loss keeps falling.

Each search ends in a verdict. "flat": the loss never fell 5% below its start; "noisy": the seeds'
curves lie further apart than half of the median's fall before its minimum (see `spread`); both
leave every suggestion None, with a warning. "disagree": the suggestions are more than 3x apart
(a warning, the suggestions kept); "ok" otherwise.

The model's weights and BatchNorm statistics, its training mode, the optimizer's state and
hyperparameters, a scheduler's state and torch's, numpy's and Python's generators are restored
afterwards: the next ``fit`` is bitwise what it would have been without the search (tested).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwell.data import Split
from gradwell.errors import ConfigError
from gradwell.train.losses import Loss, as_split, resolve_loss

DISAGREE = 3.0  # suggestions further apart than this factor are reported as disagreeing
FLAT = 0.05  # a curve whose minimum is within 5% of its start shows no descent to read
# The seeds' band may be at most half as wide as the median's fall (see `spread`): three draws span
# about 1.7 standard deviations of the batch-order noise, so the fall must stand about 3.4 of them
# above it. Measured: the default job's curves spread 0.10 of their fall, digits' 0.02.
NOISY = 0.5


@dataclass(frozen=True)
class LRCurve:
    """One seed's search: the rate of each step, the smoothed loss after it, and why it stopped."""

    seed: int
    lrs: list[float]
    losses: list[float]
    stopped: str


@dataclass(frozen=True)
class LRSearch:
    """The seeds' curves, the suggestions read off their median, and what makes them doubtful.

    >>> curve = LRCurve(0, [1e-3, 1e-2, 1e-1], [2.0, 1.0, 9.0], "the smoothed loss passed 4x its minimum")
    >>> found = LRSearch([curve], {"minimum / 10": 1e-3, "steepest": None, "valley": None})
    >>> found.to_dict()["curves"][0]["losses"], found.plot("lr_find.png").name
    ([2.0, 1.0, 9.0], 'lr_find.png')
    """

    curves: list[LRCurve]
    suggestions: dict[str, float | None]
    warnings: list[str] = field(default_factory=list)
    verdict: str = "ok"  # "ok", "disagree", "flat" or "noisy" (see the module)
    noise: float | None = None  # `spread` of the seeds' curves; None for a single seed

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Each seed's smoothed loss against the rate (log scale), their band, and the suggestions."""
        from gradwell.plots import figure

        with figure(path, size=(6.0, 4.0), title=title) as (_, ax):
            for curve in self.curves:
                ax.plot(curve.lrs, curve.losses, alpha=0.6, label=f"seed {curve.seed}")
            length = min(len(curve.losses) for curve in self.curves)
            if len(self.curves) > 1:
                band = np.array([curve.losses[:length] for curve in self.curves])
                ax.fill_between(
                    self.curves[0].lrs[:length], band.min(0), band.max(0), alpha=0.15, color="gray"
                )
            for (name, lr), style in zip(self.suggestions.items(), (":", "--", "-."), strict=True):
                if lr is not None:
                    ax.axvline(lr, color="black", linestyle=style, label=f"{name}: {lr:.2g}")
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("smoothed training loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggestions": self.suggestions,
            "verdict": self.verdict,
            "noise": self.noise,
            "warnings": self.warnings,
            "curves": [vars(curve) for curve in self.curves],
        }


def minimum_over_ten(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The chapter's rule: the rate at the lowest loss, divided by 10.

    >>> minimum_over_ten(np.array([1e-3, 1e-2, 1e-1]), np.array([2.0, 1.0, 3.0]))
    0.001
    """
    return float(lrs[int(np.argmin(losses))] / 10)


def steepest(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """The rate where d loss / d log(lr) is most negative, between the first tenth of the curve
    (the smoothing's start-up: on the default job's network its first steps fell fastest of all)
    and the minimum; None when nothing is left to read."""
    start, end = len(losses) // 10, int(np.argmin(losses)) + 1
    if end - start < 3:
        return None
    slopes = np.gradient(losses[start:end], np.log(lrs[start:end]))
    return float(lrs[start + int(np.argmin(slopes))])


def valley(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """fastai's valley: the longest decreasing subsequence of the losses, and the rate halfway along it.

    >>> lrs = np.logspace(-5, 1, 7)
    >>> valley(lrs, np.array([3.0, 2.5, 2.0, 1.5, 1.0, 4.0, 9.0]))  # falls from 1e-5 to 1e-1
    0.001
    """
    n = len(losses)
    longest = [1] * n  # the longest decreasing run (not necessarily contiguous) ending at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end] + 1
    if end - start < 2:
        return None
    return float(lrs[start + (end - start) // 2])


SUGGESTIONS = {"minimum / 10": minimum_over_ten, "steepest": steepest, "valley": valley}


def spread(curves: np.ndarray) -> float | None:
    """How far apart the seeds' curves (one per row) lie, as a fraction of their median's fall:
    max_i (max_s L_si - min_s L_si) / (median_start - median_min), over i from the first tenth of
    the curves (the smoothing's start-up, skipped as `steepest` skips it) to the median's minimum.

    Where the band is as wide as the fall, the batch order moves the curve as much as the rate
    does, and no rate read off it means anything. None for fewer than two seeds or no fall.

    >>> fall = np.linspace(3.0, 1.0, 20)
    >>> spread(np.array([fall, fall + 0.1, fall - 0.1]))  # 0.2 apart, the fall 2.79 - 1
    0.111...
    """
    if curves.ndim != 2 or len(curves) < 2 or curves.shape[1] < 3:
        return None
    median = np.median(curves, axis=0)
    start, end = curves.shape[1] // 10, int(np.argmin(median)) + 1
    fall = median[start] - median[end - 1]
    if end - start < 2 or not fall > 0:
        return None
    band = curves[:, start:end].max(axis=0) - curves[:, start:end].min(axis=0)
    return float(band.max() / fall)


def suggest(
    lrs: Sequence[float], losses: Sequence[float], noise: float | None = None
) -> tuple[dict[str, float | None], list[str], str]:
    """Every suggestion for one curve, the warnings that go with them, and the verdict (see the
    module); `noise` is the seeds' `spread`, when there are several."""
    lrs_array, losses_array = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(losses_array) < 3 or losses_array.min() > (1 - FLAT) * losses_array[0]:
        return dict.fromkeys(SUGGESTIONS), [
            "the loss never fell 5% below its start: the curve is too flat (or too short) to suggest a rate"
        ], "flat"  # fmt: skip
    if noise is not None and noise > NOISY:
        return dict.fromkeys(SUGGESTIONS), [
            f"the seeds' curves lie {noise:.2f} of the loss's fall apart before its minimum (more than "
            f"{NOISY:g}): the curve is too noisy to suggest a rate; try a larger batch or more steps"
        ], "noisy"  # fmt: skip
    found = {name: rule(lrs_array, losses_array) for name, rule in SUGGESTIONS.items()}
    values = [v for v in found.values() if v is not None]
    if values and max(values) / min(values) > DISAGREE:
        return found, [
            f"the suggestions disagree by {max(values) / min(values):.1f}x (more than {DISAGREE:g}x): "
            "look at the curves before choosing"
        ], "disagree"  # fmt: skip
    return found, [], "ok"


@contextmanager
def kept(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None) -> Iterator[None]:
    """Everything the search changes, put back afterwards: weights, buffers, mode, optimizer and
    scheduler state, and the random generators."""
    weights = copy.deepcopy(model.state_dict())
    modes = {module: module.training for module in model.modules()}
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    scheduler_state = copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        model.load_state_dict(weights)
        for module, training in modes.items():
            module.training = training
        optimizer.load_state_dict(optimizer_state)
        if scheduler is not None:
            scheduler.load_state_dict(scheduler_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def check_range(start_lr: float, end_lr: float, steps: int, stop_factor: float) -> None:
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        raise ConfigError(
            f"lr_find needs 0 < start_lr < end_lr; got start_lr={start_lr!r}, end_lr={end_lr!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3:
        raise ConfigError(f"lr_find steps must be an integer >= 3; got {steps!r}")
    if not stop_factor > 1:
        raise ConfigError(f"lr_find stop_factor must be above 1; got {stop_factor!r}")


def batches(n: int, size: int, generator: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Indices of full batches, epoch after epoch, each epoch in a new order."""
    size = min(size, n)
    while True:
        order = torch.randperm(n, generator=generator, device=device)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def search(
    model: nn.Module, train: Split, optimizer: torch.optim.Optimizer, loss_fn: Loss,
    lrs: np.ndarray, batch_size: int, smoothing: float, stop_factor: float, seed: int,
) -> LRCurve:  # fmt: skip
    """One seed's run of growing rates, from the model as it is."""
    torch.manual_seed(seed)  # dropout's masks: this seed's (the caller restores the generator)
    device = train.y.device
    drawn = batches(len(train), batch_size, torch.Generator(device=device).manual_seed(seed), device)
    model.train()
    average, best, seen, losses = 0.0, math.inf, [], []
    for i, (lr, index) in enumerate(zip(lrs, drawn, strict=False)):  # drawn never ends
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        optimizer.zero_grad()
        xb, yb = train.rows(index)  # stored pixels decoded a batch at a time
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        average = smoothing * average + (1 - smoothing) * float(loss.detach())
        smoothed = average / (1 - smoothing ** (i + 1))  # debiased, as Adam's moments
        if not math.isfinite(smoothed):
            return LRCurve(seed, seen, losses, f"the loss turned non-finite at lr {lr:.3g}")
        seen.append(float(lr))
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > stop_factor * best:
            return LRCurve(
                seed, seen, losses, f"the smoothed loss passed {stop_factor:g}x its minimum at lr {lr:.3g}"
            )
    return LRCurve(seed, seen, losses, f"reached end_lr {lrs[-1]:.3g}")


def lr_find(
    model: nn.Module,
    data: Any,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any | None = None,
    start_lr: float = 1e-5,
    end_lr: float = 10.0,
    steps: int = 200,
    batch_size: int = 32,
    seeds: Sequence[int] = (0, 1, 2),
    loss: str | Loss = "cross_entropy",
    smoothing: float = 0.98,
    stop_factor: float = 4.0,
) -> LRSearch:
    """Grow the learning rate exponentially from `start_lr` to `end_lr` over `steps` steps on
    `data.train`, once per seed from the model as it is, and suggest rates (see the module).

    Defaults: the chapter's 1e-5 to 10 over a few hundred iterations and its stop at 4x the
    minimum; smoothing 0.98 as fastai's; three seeds, so that one lucky batch order does not
    decide and their spread tells a noisy curve (one seed gets no "noisy" verdict). `scheduler`
    is only restored (the search sets every group's rate itself).

    >>> from gradwell import models, optim
    >>> from gradwell.data import load, standardize
    >>> digits = standardize(load("digits"))[0]
    >>> net = models.mlp(64, 10, hidden=[32], generator=torch.Generator().manual_seed(0))
    >>> found = lr_find(net, digits, optim.create("sgd", net.parameters()), steps=60, seeds=(0,))
    >>> sorted(found.suggestions), found.curves[0].lrs[0]
    (['minimum / 10', 'steepest', 'valley'], 1e-05)
    """
    check_range(start_lr, end_lr, steps, stop_factor)
    train = as_split(data.train).to(next(model.parameters()).device)
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))
    loss_fn = resolve_loss(loss)
    curves = []
    for seed in seeds:
        with kept(model, optimizer, scheduler):
            curves.append(
                search(model, train, optimizer, loss_fn, lrs, batch_size, smoothing, stop_factor, seed)
            )
    length = min(len(curve.losses) for curve in curves)
    band = np.array([curve.losses[:length] for curve in curves])  # (seeds, steps all of them took)
    noise = spread(band)
    suggestions, warnings, verdict = suggest(lrs[:length], np.median(band, axis=0), noise)
    return LRSearch(curves, suggestions, warnings, verdict, noise)
