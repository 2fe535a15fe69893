"""What every pretraining method shares: reading unlabeled data and training on it with ``fit``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from gradwell import optim
from gradwell.data import Split
from gradwell.errors import DataError
from gradwell.train import Callback, History, fit

Unlabeled = Tensor | Any  # a tensor (N, *features), a Split, or a Dataset (its training inputs)


def unlabeled_tensor(data: Unlabeled) -> Tensor:
    """The inputs of `data`: a float tensor (N, *features), a Split's x or a Dataset's train.x.

    Labels that come along are ignored: pretraining sees inputs only.
    """
    x = getattr(getattr(data, "train", data), "x", data)
    if not isinstance(x, Tensor):
        raise DataError(
            f"unlabeled data must be a tensor (N, *features), a Split or a Dataset; got {type(data).__name__}"
        )
    if not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise DataError(
            f"unlabeled data must be a non-empty float tensor (N, *features); got {x.dtype} of shape "
            f"{tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise DataError("unlabeled data hold NaN or infinite values")
    return x


def in_unit_interval(x: Tensor) -> bool:
    return bool(x.min() >= 0) and bool(x.max() <= 1)


def fit_unsupervised(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    loss: str | Callable[[Any, Tensor], Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    callbacks: Sequence[Callback],
    progress: bool,
) -> History:
    """Train `model` with ``gradwell.train.fit`` to map `x` to `target` under `loss`.

    The optimizer covers the trainable parameters only; ``fit`` seeds every random op from
    `seed` and leaves the global RNG as it was.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    data = SimpleNamespace(train=Split(x, target))
    return fit(
        model,
        data,
        optimizer=optim.create(optimizer, params, lr=lr),
        epochs=epochs,
        batch_size=batch_size,
        loss=loss,
        callbacks=callbacks,
        seed=seed,
        progress=progress,
    )
