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

from gradwell.diagnose.layers import Layer

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


def finite_or_none(value: float) -> float | None:
    """A statistic for JSON, which has no NaN or infinity: a non-finite value becomes None."""
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


def dead_fraction(y: Tensor, kind: str) -> Tensor:
    """The fraction of ReLU units (axis 1) that are 0 for every sample and position; NaN otherwise."""
    if kind != "relu":
        return torch.full((), math.nan, device=y.device)
    if y.dim() < 2:
        return (y == 0).all().float()
    alive = y.ne(0).transpose(0, 1).reshape(y.shape[1], -1).any(dim=1)  # (units,)
    return 1.0 - alive.float().mean()


def activation_stats(y: Tensor, kind: str, sample: int = QUANTILE_SAMPLE) -> Tensor:
    """[mean, std, percentiles..., saturated, dead, non-finite count] of a layer's outputs; the
    percentiles from a strided subsample of at most `sample` values."""
    y = y.detach().float()
    flat = y.reshape(-1)
    std, mean = torch.std_mean(flat, correction=0)
    tail = [saturated_fraction(y, kind), dead_fraction(y, kind), (~torch.isfinite(flat)).sum().float()]
    return torch.cat([torch.stack([mean, std]), percentiles(subsample(flat, sample)), torch.stack(tail)])


def gradient_stats(grad: Tensor) -> Tensor:
    """[L2 norm, std, scale, non-finite count] of the gradient with respect to a layer's output.

    scale = ||g|| / sqrt(batch x units) (units: axis 1, features or channels) is the root mean
    square of a dense layer's gradient, and for a convolution the RMS per channel summed over
    positions, which a pooling (routing or averaging the gradient over fewer positions) keeps, so
    that layers of different sizes compare: the doctor's first/last gradient ratio uses it.
    """
    flat = grad.detach().float().reshape(-1)
    norm = torch.linalg.vector_norm(flat)
    units = grad.shape[0] * grad.shape[1] if grad.dim() >= 2 else grad.numel()
    return torch.stack(
        [norm, flat.std(correction=0), norm / math.sqrt(max(units, 1)), (~torch.isfinite(flat)).sum().float()]
    )


def weight_stats(weights: Sequence[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
    """[gradient norm, gradient std, weight norm, NaN (update ratio)] over a layer's weights."""
    present = [g.detach().float().reshape(-1) for g in grads if g is not None]
    nan = torch.full((), math.nan)
    if not present:
        return nan.repeat(len(WEIGHT_STATS))
    flat = torch.cat(present)
    norm = torch.linalg.vector_norm(torch.cat([w.detach().float().reshape(-1) for w in weights]))
    return torch.stack([torch.linalg.vector_norm(flat), flat.std(correction=0), norm, nan.to(flat.device)])


def update_ratio(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """||W_after - W_before|| / ||W_before|| over a layer's weights (Karpathy's ~1e-3 heuristic)."""
    if not before:
        return torch.full((), math.nan)
    old = torch.cat([w.float().reshape(-1) for w in before])
    new = torch.cat([w.detach().float().reshape(-1) for w in after])
    return torch.linalg.vector_norm(new - old) / torch.linalg.vector_norm(old)


class Recorder:
    """Hooks that record each layer's activation and output-gradient statistics for one pass.

    A forward hook on each layer's module computes the activation statistics and hangs a tensor
    hook on the output, which records the gradient statistics when the backward pass reaches it.
    Everything stays on the device. Use as a context manager: the hooks exist only inside it.
    """

    def __init__(
        self, layers: Sequence[Layer], keep_samples: int = 0, quantile_sample: int = QUANTILE_SAMPLE
    ) -> None:
        self.layers = list(layers)
        self.keep_samples = keep_samples  # values per layer kept for histograms (0: none)
        self.quantile_sample = quantile_sample
        self.activations: dict[int, Tensor] = {}
        self.out_grads: dict[int, Tensor] = {}
        self.act_samples: dict[int, Tensor] = {}
        self.grad_samples: dict[int, Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> Recorder:
        self.handles = [
            layer.module.register_forward_hook(self.forward_hook(i)) for i, layer in enumerate(self.layers)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def forward_hook(self, i: int):
        kind = self.layers[i].kind

        def hook(module: object, inputs: object, output: object) -> None:
            if not isinstance(output, Tensor) or i in self.activations:
                return
            self.activations[i] = activation_stats(output, kind, self.quantile_sample)
            if self.keep_samples:
                self.act_samples[i] = subsample(output.detach().reshape(-1), self.keep_samples)
            if output.requires_grad:
                output.register_hook(self.gradient_hook(i))

        return hook

    def gradient_hook(self, i: int):
        def hook(grad: Tensor) -> None:
            self.out_grads[i] = gradient_stats(grad)
            if self.keep_samples:
                self.grad_samples[i] = subsample(grad.detach().reshape(-1), self.keep_samples)

        return hook

    def table(self, weights: Sequence[Tensor], device: torch.device) -> Tensor:
        """(layers, STATS) on `device`: recorded slots filled, missing ones NaN; `weights` are the
        per-layer weight statistic vectors."""
        nan = torch.full((len(STATS),), math.nan, device=device)
        rows = []
        for i in range(len(self.layers)):
            activation = self.activations.get(i, nan[: len(ACTIVATION_STATS)])
            grad = self.out_grads.get(i, nan[: len(OUTPUT_GRAD_STATS)])
            rows.append(torch.cat([activation.to(device), grad.to(device), weights[i].to(device)]))
        return torch.stack(rows)
