"""The containers every loader returns: a Dataset of three Splits, as tensors.

A Split's ``x`` is float32 with shape (samples, *feature_shape); y is int64 class indices in
0..K-1, the layout ``nn.CrossEntropyLoss`` takes. A Split indexes like
``torch.utils.data.TensorDataset``, so it can be handed to a ``DataLoader`` as it is.

Images may be stored as their uint8 pixels with an ``Affine`` that turns any batch of them into
the float features (``pixels / 255``, then the standardization): CIFAR-10's 60,000 images take
184 MB so, against 737 MB as float32, and the training loop converts one batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Affine:
    """x = (stored - center) / spread, per feature or per channel: how stored pixels become features.

    `center` and `spread` broadcast against one sample: shape () for all features alike, the
    feature shape for each feature, (C, 1, 1) for each channel of (C, H, W) images. Written as a
    division so that unstandardized pixels decode to exactly pixel / 255, as read before.

    >>> Affine.pixels()(torch.tensor([[0, 51, 255]], dtype=torch.uint8))
    tensor([[0.0000, 0.2000, 1.0000]])
    """

    center: Tensor
    spread: Tensor

    @classmethod
    def pixels(cls) -> Affine:
        """Bytes to [0, 1]."""
        return cls(torch.tensor(0.0), torch.tensor(255.0))

    def __call__(self, stored: Tensor) -> Tensor:
        return (stored.to(self.spread.dtype) - self.center) / self.spread

    def then(self, mean: Tensor, std: Tensor) -> Affine:
        """This transform, then (x - mean) / std: ((s - c) / d - m) / σ = (s - (c + m·d)) / (d·σ)."""
        return Affine(self.center + mean * self.spread, self.spread * std)

    def to(self, device: torch.device | str) -> Affine:
        return Affine(self.center.to(device), self.spread.to(device))


@dataclass(frozen=True, eq=False)
class Split:
    """Samples and their class indices `y` (n,), int64: ``x`` (n, *feature_shape) as float32.

    The samples are held as `stored`: float32 features, or uint8 pixels with the `decode`
    that makes them features. Indexing decodes only the samples taken; ``x`` decodes them all.

    >>> split = Split(torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    >>> len(split), split[1:3][0].shape
    (5, torch.Size([2, 3]))
    >>> from torch.utils.data import DataLoader
    >>> [y.tolist() for _, y in DataLoader(split, batch_size=2)]
    [[0, 1], [0, 1], [1]]
    >>> pixels = torch.full((2, 1, 2, 2), 255, dtype=torch.uint8)
    >>> images = Split(pixels, torch.tensor([0, 1]), Affine.pixels())
    >>> images.stored.dtype, images[0][0].dtype, images.x.max().item()
    (torch.uint8, torch.float32, 1.0)
    """

    stored: Tensor
    y: Tensor
    decode: Affine | None = None

    @property
    def x(self) -> Tensor:
        """Every sample as float32 features (a new tensor when the split holds pixels)."""
        return self.features(self.stored)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape[1:])

    def features(self, stored: Tensor) -> Tensor:
        """Stored samples (any of this split's, in any number) as float features."""
        return stored if self.decode is None else self.decode(stored)

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> tuple[Tensor, Tensor]:
        return self.features(self.stored[index]), self.y[index]

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The samples at `index`, a 1-D tensor of row numbers from 0 (a batch), as features.

        The same as ``split[index]`` through ``index_select``: for a batch of 64 stored CIFAR-10
        images about a tenth of advanced indexing's cost (benchmarks/bench_step_parts.py).

        >>> split = Split(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 2]))
        >>> split.rows(torch.tensor([2, 0]))
        (tensor([[4., 5.],
                [0., 1.]]), tensor([2, 0]))
        """
        return self.features(self.stored.index_select(0, index)), self.y.index_select(0, index)

    def select(self, index: slice | Tensor) -> Split:
        """The samples at `index`, kept as stored."""
        return Split(self.stored[index], self.y[index], self.decode)

    def to(self, device: torch.device | str) -> Split:
        decode = None if self.decode is None else self.decode.to(device)
        return Split(self.stored.to(device), self.y.to(device), decode)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test splits of one classification problem with `num_classes` classes.

    The validation or test split is empty (0 samples) when its fraction was 0.

    >>> x, y = torch.rand(10, 8, 8), torch.arange(10) % 2
    >>> data = Dataset(Split(x[:6], y[:6]), Split(x[6:8], y[6:8]), Split(x[8:], y[8:]), 2, "toy")
    >>> data.feature_shape, len(data), len(data.train)
    ((8, 8), 10, 6)
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (40,) for mnist1d, (28, 28) for MNIST, (3, 32, 32) for CIFAR-10."""
        return self.train.feature_shape

    def __len__(self) -> int:
        return len(self.train) + len(self.val) + len(self.test)

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))
