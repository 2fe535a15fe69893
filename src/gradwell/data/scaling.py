"""Standardization fitted on the training split only.

Statistics taken over validation or test samples would leak them into training and flatter
the reported accuracy, so the mean and std come from `train` and are applied, unchanged, to
all three splits. They are returned so a served model can apply the same transform.

Two granularities: per feature (each input of an MLP at mean 0 and variance 1, what
self-normalization assumes and what the chapter does for Fashion-MNIST) and per channel (one
mean and std per colour channel of (C, H, W) images, or one for all pixels of a single-channel
image: the convention for convolutional networks, which see every position alike).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from gradwell.data.dataset import Dataset, Split
from gradwell.errors import DataError

PER = ("feature", "channel")
CHUNK = 4096  # samples converted to float64 at a time: CIFAR-10's training split would take 1.1 GB at once


@dataclass(frozen=True, eq=False)
class Standardization:
    """x -> (x - mean) / std; `mean` and `std` broadcast against one sample (see ``fit_standardization``).

    >>> scale = Standardization(mean=torch.tensor([2.0]), std=torch.tensor([4.0]))
    >>> scale(torch.tensor([[6.0], [-2.0]]))
    tensor([[ 1.],
            [-1.]])
    """

    mean: Tensor
    std: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def reduced_axes(feature_shape: tuple[int, ...], per: str) -> tuple[int, ...]:
    """The axes of a batch (n, *feature_shape) that one statistic pools: the samples, and for
    `per` = "channel" every axis but the channels of (C, H, W) (all of them for other shapes)."""
    if per not in PER:
        raise DataError(f"standardization per {per!r} is not known; valid: {', '.join(PER)}")
    if per == "feature":
        return (0,)
    kept = 1 if len(feature_shape) == 3 else None
    return tuple(axis for axis in range(len(feature_shape) + 1) if axis != kept)


def chunks(split: Split) -> Iterator[Tensor]:
    """The split's samples as float64 features, CHUNK at a time."""
    for start in range(0, len(split), CHUNK):
        yield split[start : start + CHUNK][0].double()


def moments(split: Split, axes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and population variance over `axes`, in float64, in two passes over the chunks (the
    second sums squared deviations: no cancellation as in E[x^2] - E[x]^2)."""
    count = len(split) * math.prod(split.feature_shape[axis - 1] for axis in axes if axis > 0)
    mean = sum(chunk.sum(axes, keepdim=True) for chunk in chunks(split)) / count
    squares = sum((chunk - mean).square().sum(axes, keepdim=True) for chunk in chunks(split))
    return mean[0], (squares / count)[0]


def pixel_channel_moments(split: Split) -> tuple[Tensor, Tensor] | None:
    """Per-channel mean and variance of uint8 pixels under a scalar decoding, exactly, from each
    channel's counts of the 256 values (on CIFAR-10 several times faster than the float64
    passes); None for any other split."""
    decode, shape = split.decode, split.feature_shape
    if split.stored.dtype != torch.uint8 or decode is None or decode.center.dim() or decode.spread.dim():
        return None
    channels = shape[0] if len(shape) == 3 else 1
    stored = split.stored.reshape(len(split), channels, -1)
    counts = torch.zeros(channels, 256, dtype=torch.float64, device=stored.device)
    for start in range(0, len(split), CHUNK):
        for channel in range(channels):
            counts[channel] += torch.bincount(stored[start : start + CHUNK, channel].flatten(), minlength=256)
    values = (torch.arange(256, dtype=torch.float64, device=stored.device) - decode.center) / decode.spread
    total = counts.sum(1, keepdim=True)
    mean = (counts * values).sum(1, keepdim=True) / total
    var = (counts * (values - mean).square()).sum(1, keepdim=True) / total
    kept = (channels, 1, 1) if len(shape) == 3 else (1,) * len(shape)
    return mean.reshape(kept), var.reshape(kept)


def fit_standardization(split: Split | Tensor, per: str = "feature") -> Standardization:
    """Mean and population std (ddof 0, as scikit-learn's StandardScaler) of a split's features,
    per feature (shape: the feature shape) or per channel ((C, 1, 1) for (C, H, W) images, one
    value otherwise, as a shape of ones).

    A constant feature (std 0) keeps std 1, as in scikit-learn, so it maps to 0 instead of NaN:
    MNIST's border pixels are 0 in every training image. Sums run in float64 so that 60000
    samples do not lose float32 digits.

    >>> x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    >>> stats = fit_standardization(x)
    >>> stats.mean, stats.std  # the constant feature keeps std 1
    (tensor([2., 5.]), tensor([1., 1.]))
    >>> stats(x)
    tensor([[-1.,  0.],
            [ 1.,  0.]])
    >>> images = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)]).reshape(1, 2, 2, 2).expand(2, 2, 2, 2)
    >>> fit_standardization(images, per="channel").mean.flatten()
    tensor([0., 1.])
    """
    split = split if isinstance(split, Split) else Split(split, torch.zeros(len(split)))
    axes = reduced_axes(split.feature_shape, per)
    exact = pixel_channel_moments(split) if per == "channel" else None
    mean, var = exact if exact is not None else moments(split, axes)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Standardization(mean.float(), std.float())


def standardized(split: Split, stats: Standardization) -> Split:
    """`split` with `stats` applied: at once to float features, folded into the decoding of pixels
    (which stay bytes)."""
    if split.decode is None:
        return Split(stats(split.stored), split.y)
    return Split(split.stored, split.y, split.decode.then(stats.mean, stats.std))


def standardize(dataset: Dataset, per: str = "feature") -> tuple[Dataset, Standardization]:
    """`dataset` with every split standardized by statistics of its training split, and those statistics.

    >>> from gradwell.data import load
    >>> data, stats = standardize(load("digits"))
    >>> stats.mean.shape, torch.allclose(data.train.x.mean(0), torch.zeros(64), atol=1e-5)
    (torch.Size([64]), True)
    >>> round(float(data.test.x.mean()), 2)  # near 0, not 0: the test split did not count
    0.01
    """
    stats = fit_standardization(dataset.train, per)
    splits = {key: standardized(getattr(dataset, key), stats) for key in ("train", "val", "test")}
    return replace(dataset, **splits), stats
