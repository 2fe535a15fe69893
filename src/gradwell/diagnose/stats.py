"""The per-layer statistics, as pure tensor functions, and the hooks that collect them.

Every statistic of one layer in one pass is a slot of one float vector (STATS names the slots),
computed on the device without reading anything back, so a pass can be measured without
synchronizing; NaN marks a statistic that does not apply (saturation of a ReLU, say).

Thresholds, and why:

- saturated: a sigmoid output below 0.01 or above 0.99, a tanh output with |y| > 0.99. There the
  derivative (y (1 - y) < 0.0099 for sigmoid, 1 - y^2 < 0.0199 for tanh) passes on less than 4%
  (2%) of the largest gradient the unit can pass (0.25 at y = 0.5; 1 at y = 0), the flat tails
  that Glorot and Bengio (2010) saw the top sigmoid layer stuck in.
- dead: a ReLU unit (a feature; a channel for a convolution) that is exactly 0 for every sample of
  the batch, so no gradient reaches its weights. Only ReLU and its clipped forms (ReLU6) can die:
  leaky units, ELU, SELU, GELU and Swish pass gradient for negative inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
# percentiles sort their input: a strided subsample of at most this many values keeps that cheap.
# A probe sorts up to 65536 values per layer; the Monitor, on the clock, 1024 (the 1st and 99th
# percentiles then rest on about 10 values each, enough to see a distribution pile up at a bound)
QUANTILE_SAMPLE = 1 << 16
SATURATION = {"sigmoid": 0.01, "tanh": 0.01}  # distance from the bound

ACTIVATION_STATS = (
    "act_mean",
    "act_std",
    *(f"act_p{p}" for p in PERCENTILES),
    "saturated",
    "dead",
    "act_nonfinite",
)
OUTPUT_GRAD_STATS = ("out_grad_norm", "out_grad_std", "out_grad_scale", "out_grad_nonfinite")
WEIGHT_STATS = ("weight_grad_norm", "weight_grad_std", "weight_norm", "update_ratio")
STATS = (*ACTIVATION_STATS, *OUTPUT_GRAD_STATS, *WEIGHT_STATS)


def finite_or_none(value: float | None) -> float | None:
    """A statistic for JSON, which has no NaN or infinity: a non-finite value becomes None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def subsample(values: Tensor, size: int = QUANTILE_SAMPLE) -> Tensor:
    """Every k-th element of a flat tensor, at most `size` of them (no RNG, no synchronization)."""
    stride = max(1, math.ceil(values.numel() / size))
    return values[::stride]


@functools.cache
def interpolation(size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(lower index, upper index, weight of the upper) of each percentile among `size` sorted
    values, made once per size and device (the copy to a GPU synchronizes, once)."""
    positions = [p / 100 * (size - 1) for p in PERCENTILES]
    low = [math.floor(x) for x in positions]
    high = [min(i + 1, size - 1) for i in low]
    weight = [x - i for x, i in zip(positions, low, strict=True)]
    return (
        torch.tensor(low, device=device),
        torch.tensor(high, device=device),
        torch.tensor(weight, device=device),
    )


def percentiles(values: Tensor) -> Tensor:
    """PERCENTILES of a flat tensor, interpolated linearly between order statistics (numpy's and
    torch.quantile's default). torch.quantile checks its q tensor on the host, a synchronization
    on a GPU, at every call; this sorts and gathers at indices cached on the device. NaN sorts
    last, so a tensor with NaN gives shifted percentiles (the non-finite count flags it)."""
    ordered = values.sort().values
    low, high, weight = interpolation(ordered.numel(), ordered.device)
    return torch.lerp(ordered[low], ordered[high], weight)


def saturated_fraction(y: Tensor, kind: str) -> Tensor:
    """The fraction of outputs within SATURATION[kind] of the activation's bounds; NaN if unbounded."""
    if kind == "sigmoid":
        margin = SATURATION[kind]
        return ((y < margin) | (y > 1 - margin)).float().mean()
    if kind == "tanh":
        return (y.abs() > 1 - SATURATION[kind]).float().mean()
    return torch.full((), math.nan, device=y.device)


def dead_fraction(y: Tensor, kind: str, axis: int = 1) -> Tensor:
    """The fraction of ReLU units that are 0 for every sample and position; NaN otherwise.

    Units lie along `axis`: 1 for features and for a convolution's channels, -1 for the features
    of a sequence (batch, positions, features)."""
    if kind != "relu":
        return torch.full((), math.nan, device=y.device)
    if y.dim() < 2:
        return (y == 0).all().float()
    units = y.shape[axis]
    alive = y.ne(0).movedim(axis, 0).reshape(units, -1).any(dim=1)  # (units,)
    return 1.0 - alive.float().mean()


def activation_stats(y: Tensor, kind: str, sample: int = QUANTILE_SAMPLE, axis: int = 1) -> Tensor:
    """[mean, std, percentiles..., saturated, dead, non-finite count] of a layer's outputs; the
    percentiles from a strided subsample of at most `sample` values, units along `axis`."""
    y = y.detach().float()
    flat = y.reshape(-1)
    std, mean = torch.std_mean(flat, correction=0)
    dead = dead_fraction(y, kind, axis)
    tail = [saturated_fraction(y, kind), dead, (~torch.isfinite(flat)).sum().float()]
    return torch.cat([torch.stack([mean, std]), percentiles(subsample(flat, sample)), torch.stack(tail)])


def gradient_stats(grad: Tensor, axis: int = 1) -> Tensor:
    """[L2 norm, std, scale, non-finite count] of the gradient with respect to a layer's output.

    scale = ||g|| / sqrt(batch x units) (units along `axis`: features or channels) is the root
    mean square of a dense layer's gradient, and for a convolution or a sequence the RMS per unit
    summed over positions, which a pooling (routing or averaging the gradient over fewer positions)
    keeps, so that layers of different sizes compare: the doctor's first/last gradient ratio uses it.
    """
    flat = grad.detach().float().reshape(-1)
    norm = torch.linalg.vector_norm(flat)
    units = grad.shape[0] * grad.shape[axis] if grad.dim() >= 2 else grad.numel()
    return torch.stack(
        [norm, flat.std(correction=0), norm / math.sqrt(max(units, 1)), (~torch.isfinite(flat)).sum().float()]
    )


def grad_moments(grad: Tensor) -> Tensor:
    """[sum of squares, sum, count] of one parameter's gradient, on its device: a layer's weight
    statistics are made from these, one parameter at a time, since each parameter's gradient is
    final at its own moment of the backward pass (and a loop may clip it in place afterwards)."""
    flat = grad.detach().float().reshape(-1)
    return torch.stack([flat.square().sum(), flat.sum(), torch.full_like(flat[0], flat.numel())])


def weight_stats(
    weights: Sequence[Tensor], moments: Sequence[Tensor | None], before: Sequence[Tensor] | None = None
) -> Tensor:
    """[gradient norm, gradient std, weight norm, update ratio] over a layer's weights.

    `moments` are grad_moments of each weight's gradient (None: it had none). The weight norm is of
    `before` (the weights before the update) when given, and the update ratio
    ||W_after - W_before|| / ||W_before|| (Karpathy's ~1e-3 heuristic) compares `weights` with
    them; NaN without `before`.
    """
    present = [m for m in moments if m is not None]
    nan = torch.full((), math.nan)
    if not present:
        return nan.repeat(len(WEIGHT_STATS))
    squares, total, count = torch.stack(present).sum(dim=0)
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    reference = before if before is not None else weights
    norm = torch.linalg.vector_norm(torch.cat([w.detach().float().reshape(-1) for w in reference]))
    ratio = update_ratio(before, weights).to(norm.device) if before is not None else nan.to(norm.device)
    return torch.stack([squares.sqrt(), std, norm, ratio])


def update_ratio(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """||W_after - W_before|| / ||W_before|| over a layer's weights (Karpathy's ~1e-3 heuristic)."""
    if not before:
        return torch.full((), math.nan)
    old = torch.cat([w.float().reshape(-1) for w in before])
    new = torch.cat([w.detach().float().reshape(-1) for w in after])
    return torch.linalg.vector_norm(new - old) / torch.linalg.vector_norm(old)


def table(
    names: Sequence[str],
    activations: dict[str, Tensor],
    out_grads: dict[str, Tensor],
    weights: Sequence[Tensor],
    device: torch.device,
) -> Tensor:
    """(layers, STATS) on `device`: the recorded slots of each named layer, missing ones NaN;
    `weights` are the per-layer weight statistic vectors, in the order of `names`."""
    nan = torch.full((len(STATS),), math.nan, device=device)
    rows = []
    for name, weight_row in zip(names, weights, strict=True):
        activation = activations.get(name, nan[: len(ACTIVATION_STATS)])
        grad = out_grads.get(name, nan[: len(OUTPUT_GRAD_STATS)])
        rows.append(torch.cat([activation.to(device), grad.to(device), weight_row.to(device)]))
    return torch.stack(rows) if rows else torch.zeros((0, len(STATS)), device=device)
