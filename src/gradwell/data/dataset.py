"""The containers every loader returns: a Dataset of three Splits, as tensors.

x is float32 with shape (samples, *feature_shape); y is int64 class indices in 0..K-1, the
layout ``nn.CrossEntropyLoss`` takes. A Split indexes like ``torch.utils.data.TensorDataset``,
so it can be handed to a ``DataLoader`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Split:
    """Samples `x` (n, *feature_shape), float32, and their class indices `y` (n,), int64.

    >>> split = Split(torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    >>> len(split), split[1:3][0].shape
    (5, torch.Size([2, 3]))
    >>> from torch.utils.data import DataLoader
    >>> [y.tolist() for _, y in DataLoader(split, batch_size=2)]
    [[0, 1], [0, 1], [1]]
    """

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


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
        """The shape of one sample, e.g. (40,) for mnist1d or (28, 28) for MNIST."""
        return tuple(self.train.x.shape[1:])

    def __len__(self) -> int:
        return len(self.train) + len(self.val) + len(self.test)

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))
