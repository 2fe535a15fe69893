"""The losses a run can name, and evaluation: what the loop, the doctor and the runner share.

A loss is named by a string (``"cross_entropy"``, ``"mse"``, ``"binary_cross_entropy"``) or given
as any function ``(output, target) -> scalar``. Every loss takes logits: the models end in a plain
Linear layer, and the fused log-softmax / log-sigmoid kernels are more exact than a softmax layer
followed by a log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwell.data import Split
from gradwell.errors import DataError, unknown_name

Loss = Callable[[Tensor, Tensor], Tensor]

LOSSES: dict[str, Loss] = {
    "cross_entropy": F.cross_entropy,  # on logits, integer class labels
    "mse": F.mse_loss,
    "binary_cross_entropy": F.binary_cross_entropy_with_logits,  # on logits, float 0/1 labels
}
CLASSIFICATION = ("cross_entropy",)
ELEMENTWISE = ("mse", "binary_cross_entropy")  # targets shaped like the outputs


def resolve_loss(loss: str | Loss) -> Loss:
    """The loss function a name in LOSSES stands for; a function passes through.

    >>> resolve_loss("mse")(torch.ones(2), torch.zeros(2))
    tensor(1.)
    """
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise unknown_name("loss", loss, LOSSES)
    return LOSSES[loss]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: str | Loss = "cross_entropy",
    batch_size: int = 1024,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of `model` on (x, y), in eval mode.

    The sums are kept in float64 on the device and read once. The model's training mode is
    restored afterwards. `decode` turns each batch of stored samples (uint8 pixels) into features.

    >>> model = nn.Linear(4, 3)
    >>> metrics = evaluate(model, torch.randn(10, 4), torch.randint(0, 3, (10,)))
    >>> sorted(metrics)
    ['accuracy', 'loss']
    """
    loss_fn = resolve_loss(loss)
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), device=x.device, dtype=torch.float64)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = model(xb if decode is None else decode(xb))
            total += loss_fn(out, yb).double() * len(xb)
            if loss in CLASSIFICATION:
                correct += (out.argmax(-1) == yb).sum()
    finally:
        model.train(was_training)
    metrics = {"loss": float(total) / len(x)}
    if loss in CLASSIFICATION:
        metrics["accuracy"] = int(correct) / len(x)
    return metrics


def evaluate_split(model: nn.Module, split: Any, loss: str | Loss = "cross_entropy") -> dict[str, float]:
    """`evaluate` on a data split (``x``, ``y``) moved to the model's device; {} for an empty split
    (a config may keep no test samples: there is nothing to measure then).

    >>> from gradwell.data import Split
    >>> evaluate_split(nn.Linear(4, 3), Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)))
    {}
    """
    if len(split.y) == 0:
        return {}
    split = as_split(split).to(next(model.parameters()).device)
    return evaluate(model, split.stored, split.y, loss, decode=split.features)


def as_split(split: Any) -> Split:
    """A gradwell Split as it is (stored pixels stay bytes), anything else with x and y as one."""
    return split if isinstance(split, Split) else Split(split.x, split.y)


def check_data_fits_model(model: nn.Module, split: Split, loss: str | Loss) -> None:
    """Fail before training when the training split cannot go through the model, naming both shapes.

    Stored pixels (uint8, always finite) are decoded for the model as the loop decodes them.

    >>> samples = Split(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))
    >>> check_data_fits_model(nn.Linear(4, 3), samples, "mse")
    Traceback (most recent call last):
    ...
    gradwell.errors.DataError: the model cannot take inputs of shape (5,): ...
    """
    x, y = split.stored, split.y
    if len(x) == 0 or len(x) != len(y):
        raise DataError(
            f"the training split has {len(x)} samples and {len(y)} labels; it needs as many "
            "of each, and at least one"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0])
        raise DataError(f"training sample {bad} holds a non-finite value (NaN or infinity)")
    output = sample_output(model, split.features(x[:2]))
    if loss in ELEMENTWISE and (y.shape[1:] != output.shape[1:] or not y.is_floating_point()):
        raise DataError(
            f"loss {loss!r} compares each output with a float target of the same shape: the model "
            f"gives {tuple(output.shape[1:])} per sample, the labels are {y.dtype} of shape "
            f"{tuple(y.shape[1:])}; for integer class labels use loss 'cross_entropy'"
        )
    if loss == "cross_entropy" and output.dim() == 2 and int(y.max()) >= output.shape[1]:
        raise DataError(
            f"labels go up to {int(y.max())}, but the model has {output.shape[1]} outputs; "
            f"it needs {int(y.max()) + 1} for these classes"
        )


def sample_output(model: nn.Module, x: Tensor) -> Tensor:
    """The model's output for two samples, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x[:2])
    except RuntimeError as error:
        raise DataError(f"the model cannot take inputs of shape {tuple(x.shape[1:])}: {error}") from None
    finally:
        model.train(was_training)
