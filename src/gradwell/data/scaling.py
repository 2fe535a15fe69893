"""Standardization fitted on the training split only.

Statistics taken over validation or test samples would leak them into training and flatter
the reported accuracy, so the mean and std come from `train` and are applied, unchanged, to
all three splits. They are returned so a served model can apply the same transform.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from gradwell.data.dataset import Dataset, Split


@dataclass(frozen=True, eq=False)
class Standardization:
    """x -> (x - mean) / std, per feature; `mean` and `std` have the dataset's feature shape.

    >>> scale = Standardization(mean=torch.tensor([2.0]), std=torch.tensor([4.0]))
    >>> scale(torch.tensor([[6.0], [-2.0]]))
    tensor([[ 1.],
            [-1.]])
    """

    mean: Tensor
    std: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def fit_standardization(x: Tensor) -> Standardization:
    """Per-feature mean and population std (ddof 0, as scikit-learn's StandardScaler) of `x`.

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
    """
    x = x.double()  # (n, *feature_shape)
    std = x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Standardization(x.mean(0).float(), std.float())


def standardize(dataset: Dataset) -> tuple[Dataset, Standardization]:
    """`dataset` with every split standardized by statistics of its training split, and those statistics.

    >>> from gradwell.data import load
    >>> data, stats = standardize(load("digits"))
    >>> stats.mean.shape, torch.allclose(data.train.x.mean(0), torch.zeros(64), atol=1e-5)
    (torch.Size([64]), True)
    >>> round(float(data.test.x.mean()), 2)  # near 0, not 0: the test split did not count
    0.01
    """
    stats = fit_standardization(dataset.train.x)
    splits = {
        key: Split(stats(split.x), split.y)
        for key, split in vars(dataset).items()
        if isinstance(split, Split)
    }
    return replace(dataset, **splits), stats
