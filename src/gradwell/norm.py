"""Batch normalization over any axes, with the chapter's (Keras's) moving-average convention.

In training, for each feature kept by `axis`, over the other axes of the batch B (Ioffe and
Szegedy, 2015; the chapter's four equations):

    mu_B = mean(x),  sigma_B^2 = mean((x - mu_B)^2)          (biased variance)
    x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps)
    z = gamma * x_hat + beta

and the moving statistics used in inference are updated as

    moving = moving * momentum + batch * (1 - momentum)

torch's BatchNorm weighs the new batch by its `momentum` (0.1 there is 0.9 here) and keeps an
unbiased running variance; Keras keeps one int axis. gradwell keeps the chapter's equations and
lets `axis` be a tuple of the axes that keep their own statistics.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from gradwell.errors import GradwellError, check_finite


def batch_norm_affine(
    mean: Tensor, var: Tensor, eps: float, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(a, b) such that gamma (x - mean) / sqrt(var + eps) + beta == a x + b.

    Normalizing with one multiply-add is cheaper than four passes, and the same pair is what
    folding writes into a neighbouring layer.
    """
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def update_moving_statistics_(moving: list[Tensor], batch: list[Tensor], momenta: list[float]) -> None:
    """moving = moving * momentum + batch * (1 - momentum), in place, for each moving statistic.

    `batch` holds the batch's mean and its biased variance, as the chapter's equations take it.
    torch's fused kernel, run with momentum 1 on zeroed scratch buffers, writes the batch's mean and
    unbiased variance there: its callers (BatchNorm on axis 1, the fused step's BatchNorm layers, the
    seed-batched one) pass unbiased * (n - 1) / n. The batch statistics are cast to the moving ones'
    dtype. One multi-tensor kernel for them all, so the fused step updates every layer's at once;
    on the CPU its result is each ``lerp_``'s bit for bit.

    >>> running_mean, running_var = torch.zeros(2), torch.ones(2)
    >>> mean, var = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    >>> update_moving_statistics_([running_mean, running_var], [mean, var], [0.9, 0.9])
    >>> running_mean, running_var  # 0.9 * 0 + 0.1 * batch, 0.9 * 1 + 0.1 * batch
    (tensor([0.1000, 0.2000]), tensor([1.2000, 1.0000]))
    """
    with torch.no_grad():
        cast = [value.to(running.dtype) for value, running in zip(batch, moving, strict=True)]
        torch._foreach_lerp_(moving, cast, [1.0 - momentum for momentum in momenta])


def local_moments(x: Tensor, reduced: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x, dim=reduced, correction=0, keepdim=True)
    return mean, var


def synced_moments(x: Tensor, reduced: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over the batch of every data-parallel process together.

    Sums of x and x^2 are all-reduced with torch.distributed.nn's differentiable all_reduce, so
    gradients flow through the other processes' statistics too, as in torch's SyncBatchNorm.
    Every process must hold a batch of the same size.
    """
    from torch.distributed import get_world_size
    from torch.distributed.nn.functional import all_reduce

    count = math.prod(x.shape[d] for d in reduced) * get_world_size()
    with warnings.catch_warnings():
        # its successor in torch._functional_collectives is private and not differentiable
        warnings.filterwarnings(
            "ignore", "torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning
        )
        sums = all_reduce(torch.stack([x.sum(reduced, keepdim=True), (x * x).sum(reduced, keepdim=True)]))
    mean = sums[0] / count
    return mean, (sums[1] / count - mean * mean).clamp_min(0.0)


def batch_norm(
    x: Tensor,
    kept_axes: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    synced: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize `x` with its own batch statistics; return (output, batch mean, biased batch variance).

    Statistics are taken over every axis of `x` not in `kept_axes` (which are non-negative), and
    over the batches of all data-parallel processes when `synced`. `weight` and `bias` have the
    shape of the kept axes. The returned statistics have that shape too.
    """
    reduced = tuple(d for d in range(x.dim()) if d not in kept_axes)
    mean, var = synced_moments(x, reduced) if synced else local_moments(x, reduced)
    scale, shift = batch_norm_affine(
        mean, var, eps, broadcastable(weight, x, kept_axes), broadcastable(bias, x, kept_axes)
    )
    features = [x.shape[d] for d in kept_axes]
    return x * scale + shift, mean.reshape(features), var.reshape(features)


def broadcastable(values: Tensor | None, x: Tensor, kept_axes: tuple[int, ...]) -> Tensor | None:
    """View a tensor shaped like the kept axes so it broadcasts against `x`."""
    if values is None:
        return None
    shape = [x.shape[d] if d in kept_axes else 1 for d in range(x.dim())]
    return values.reshape(shape)


class BatchNorm(LazyModuleMixin, nn.Module):
    """Batch normalization with moving statistics, any kept axes and a lazy feature count.

    Args:
        num_features: size of the kept axis, or shape of the kept axes for a tuple `axis`; None
            infers it from the first batch (like Keras layers).
        axis: the axis, or tuple of axes, that keep their own statistics. 1 (torch's channel axis,
            the features of a (N, F) batch) by default; ``axis=(1, 2)`` on (N, 28, 28) normalizes
            each pixel on its own. Negative axes count from the end. Axis 0 (the batch) is invalid.
        momentum: weight of the old moving average. 0.99 as in Keras; the chapter suggests values
            close to 1 (0.9, 0.99, 0.999), more 9s for larger datasets and smaller batches.
        eps: added to the variance before the square root; 1e-5 as in torch (Keras uses 1e-3).
        center, scale: learn the offset beta / the scale gamma. Drop `center` when the next layer
            adds its own bias, drop `scale` before a ReLU-like unit followed by a linear layer.

    Attributes:
        sync: when True and training data-parallel (torch.distributed), the batch statistics are
            those of all processes' batches together, as with torch's SyncBatchNorm; set by
            ``gradwell.train.distributed.sync_batchnorm``.
        frozen: when True, the layer normalizes with its moving statistics and leaves them alone,
            even in training mode; set by ``gradwell.transfer.freeze`` (the Keras semantics of a
            non-trainable BatchNormalization layer).

    Parameters ``weight`` (gamma) and ``bias`` (beta) are trainable; buffers ``running_mean`` and
    ``running_var`` are the chapter's non-trainable "moving mean" and "moving variance".

    >>> bn = BatchNorm(3)  # the features of (N, 3) batches
    >>> x = 5 * torch.randn(32, 3, generator=torch.Generator().manual_seed(0)) + 2
    >>> z = bn(x)  # training mode: the batch's own statistics
    >>> z.mean(0).abs().max() < 1e-5, z.std(0, correction=0).detach()
    (tensor(True), tensor([1.0000, 1.0000, 1.0000]))
    >>> torch.allclose(bn.running_mean, 0.01 * x.mean(0))  # moving = 0.99 moving + 0.01 batch
    True
    >>> BatchNorm(axis=(1, 2))(torch.rand(8, 4, 4)).shape  # lazy, one statistic per pixel
    torch.Size([8, 4, 4])
    """

    cls_to_become = None

    def __init__(
        self,
        num_features: int | tuple[int, ...] | None = None,
        axis: int | tuple[int, ...] = 1,
        momentum: float = 0.99,
        eps: float = 1e-5,
        center: bool = True,
        scale: bool = True,
    ) -> None:
        super().__init__()
        self.axis = normalize_axis_spec(axis)
        self.momentum = check_finite("BatchNorm momentum", momentum, low=0.0, high=1.0)
        self.eps = check_finite("BatchNorm eps", eps, low=0.0, low_open=True)
        self.center = center
        self.scale = scale
        self.frozen = False
        self.sync = False
        if num_features is None:
            self.weight = UninitializedParameter() if scale else None
            self.bias = UninitializedParameter() if center else None
            self.running_mean = UninitializedBuffer()
            self.running_var = UninitializedBuffer()
        else:
            shape = feature_shape(num_features, self.axis)
            self.weight = nn.Parameter(torch.ones(shape)) if scale else None
            self.bias = nn.Parameter(torch.zeros(shape)) if center else None
            self.register_buffer("running_mean", torch.zeros(shape))
            self.register_buffer("running_var", torch.ones(shape))

    @property
    def num_features(self) -> tuple[int, ...]:
        """Shape of the kept axes (empty before a lazy layer has seen its first batch)."""
        return tuple(self.running_mean.shape) if not self.has_uninitialized_params() else ()

    def initialize_parameters(self, x: Tensor) -> None:
        if not self.has_uninitialized_params():
            return
        shape = [x.shape[d] for d in self.kept_axes(x)]
        with torch.no_grad():
            for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                tensor = getattr(self, name)
                if tensor is not None:
                    tensor.materialize(shape, device=x.device, dtype=x.dtype)
                    tensor.fill_(fill)

    def kept_axes(self, x: Tensor) -> tuple[int, ...]:
        """The kept axes of `x`, made non-negative; a clear error for a bad input or axis."""
        if x.dim() < 2:
            raise GradwellError(
                "BatchNorm needs a batch with 2 dimensions or more (batch, features, ...); "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise GradwellError(
                f"BatchNorm needs a floating-point input (float16/32/64, bfloat16); got dtype {x.dtype}"
            )
        kept = tuple(sorted(a % x.dim() if -x.dim() <= a < x.dim() else -1 for a in self.axis))
        if any(a < 1 for a in kept) or len(set(kept)) != len(kept):
            raise GradwellError(
                f"BatchNorm axis {format_axis(self.axis)} is out of range for an input of shape "
                f"{tuple(x.shape)}; valid axes are 1 (features) or a tuple of distinct axes "
                f"in 1..{x.dim() - 1}"
            )
        return kept

    def forward(self, x: Tensor) -> Tensor:
        kept = self.kept_axes(x)
        shape = tuple(x.shape[d] for d in kept)
        if shape != tuple(self.running_mean.shape):
            raise GradwellError(
                f"BatchNorm was built for features of shape {tuple(self.running_mean.shape)} on axis "
                f"{format_axis(self.axis)}, but the input of shape {tuple(x.shape)} has {shape} there"
            )
        if kept == (1,) and not self.synced():
            return self.channel_batch_norm(x)
        if self.training and not self.frozen:
            return self.normalize_with_batch_statistics(x, kept)
        scale, shift = batch_norm_affine(
            self.running_mean, self.running_var, self.eps, self.weight, self.bias
        )
        return x * broadcastable(scale, x, kept) + broadcastable(shift, x, kept)

    def synced(self) -> bool:
        """Whether training statistics span all data-parallel processes (``sync`` and more than one)."""
        return (
            self.sync
            and self.training
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )

    def values_per_feature(self, x: Tensor, kept: tuple[int, ...]) -> int:
        """How many values each statistic averages; training needs 2 or more."""
        count = x.numel() // max(1, math.prod(x.shape[d] for d in kept))
        if count < 2:
            raise GradwellError(
                f"BatchNorm needs more than 1 value per feature in training; an input of shape "
                f"{tuple(x.shape)} with axis {format_axis(self.axis)} has {count}"
            )
        return count

    def update_moving_statistics(self, mean: Tensor, biased_var: Tensor) -> None:
        update_moving_statistics_(
            [self.running_mean, self.running_var], [mean, biased_var], [self.momentum, self.momentum]
        )

    def normalize_with_batch_statistics(self, x: Tensor, kept: tuple[int, ...]) -> Tensor:
        self.values_per_feature(x, kept)
        out, mean, var = batch_norm(x, kept, self.weight, self.bias, self.eps, synced=self.synced())
        self.update_moving_statistics(mean, var)
        return out

    def channel_batch_norm(self, x: Tensor) -> Tensor:
        """Statistics per axis-1 channel, through torch's fused kernel (forward and backward).

        torch's kernel would update moving statistics its own way (weight on the new batch, unbiased
        variance), so in training it writes the batch statistics into scratch buffers (momentum 1)
        and the chapter's update is applied from those.
        """
        if not self.training or self.frozen:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        count = self.values_per_feature(x, (1,))
        mean, unbiased_var = torch.zeros_like(self.running_mean), torch.zeros_like(self.running_var)
        out = F.batch_norm(x, mean, unbiased_var, self.weight, self.bias, True, 1.0, self.eps)
        self.update_moving_statistics(mean, unbiased_var * ((count - 1) / count))
        return out

    def extra_repr(self) -> str:
        features = self.num_features or "lazy"
        return (
            f"{features}, axis={format_axis(self.axis)}, momentum={self.momentum}, eps={self.eps}, "
            f"center={self.center}, scale={self.scale}" + (", frozen=True" if self.frozen else "")
        )


def normalize_axis_spec(axis: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """`axis` as a non-empty tuple of ints, or a clear error."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes) or 0 in axes:
        raise GradwellError(
            f"BatchNorm axis must be an int or a tuple of ints other than 0 (the batch axis); got {axis!r}"
        )
    return axes


def feature_shape(num_features: int | tuple[int, ...], axis: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(num_features) if isinstance(num_features, (tuple, list)) else (num_features,)
    valid = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    if len(shape) != len(axis) or not valid:
        raise GradwellError(
            f"BatchNorm num_features {num_features!r} must give one positive size per kept axis "
            f"{format_axis(axis)}"
        )
    return shape


def format_axis(axis: tuple[int, ...]) -> str:
    return str(axis[0]) if len(axis) == 1 else str(axis)
