"""Regularization: l1/l2 weight penalties, max-norm constraints and Monte Carlo dropout.

Dropout and AlphaDropout themselves are torch's (``nn.Dropout``, ``nn.AlphaDropout``); the
builders in ``gradwell.models`` place them. What torch lacks is here: Keras's per-layer
``kernel_regularizer`` penalties and ``MaxNorm`` constraint, and MC dropout prediction.

"Weights" are the weights of Linear and Conv / ConvTranspose layers, found by module type: the
Keras kernels. Biases and BatchNorm's gamma and beta are never penalized or constrained, as in
the chapter's examples, which set ``kernel_regularizer`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from gradwell.errors import GradwellError, check_finite

WEIGHTED_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

Weights = nn.Module | Iterable[Tensor]


def regularized_weights(weights: Weights) -> list[Tensor]:
    """The Linear and Conv weights of a module (each once), or the given tensors as a list.

    Frozen weights are included (their penalty is a constant). Collect the list once and pass it
    to the functions below to skip walking the module at every step.
    """
    if isinstance(weights, Tensor):
        return [weights]
    if not isinstance(weights, nn.Module):
        return list(weights)
    found: dict[int, Tensor] = {}
    for module in weights.modules():
        if isinstance(module, WEIGHTED_LAYERS):
            found.setdefault(id(module.weight), module.weight)
    return list(found.values())


def l1_l2_penalty(weights: Weights, l1: float = 0.0, l2: float = 0.0) -> Tensor:
    """l1 * sum |w| + l2 * sum w^2 over the weights, a 0-d tensor to add to the loss.

    Keras's ``L1L2`` convention, without a 1/2 factor: the l2 term's gradient is 2 * l2 * w, so
    torch's ``weight_decay=wd`` (which adds wd * w to the gradient of plain SGD) is l2 = wd / 2.
    Unlike weight_decay, the penalty skips biases and BatchNorm parameters, and for adaptive
    optimizers it passes through their scaling (AdamW's decoupled decay does not).

    Returns a 0-d zero without a graph, on the weights' device, when l1 = l2 = 0 or there are
    no weights.

    >>> layer = nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[3.0, -4.0]]))
    >>> l1_l2_penalty(layer, l1=0.1, l2=0.01)  # 0.1 * 7 + 0.01 * 25; the bias is not penalized
    tensor(0.9500, grad_fn=<AddBackward0>)
    """
    l1 = check_finite("l1", l1, low=0.0)
    l2 = check_finite("l2", l2, low=0.0)
    tensors = regularized_weights(weights)
    if not tensors or (l1 == 0.0 and l2 == 0.0):
        reference = tensors[0] if tensors else torch.empty(0)
        return torch.zeros((), dtype=reference.dtype, device=reference.device)
    penalty = torch.zeros((), dtype=tensors[0].dtype, device=tensors[0].device)
    if l1 > 0:
        penalty = penalty + l1 * torch.stack(torch._foreach_norm(tensors, 1)).sum()
    if l2 > 0:
        penalty = penalty + l2 * torch.stack(torch._foreach_norm(tensors, 2)).square().sum()
    return penalty


def unit_axes(weight: Tensor, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    """The axes a unit's weight vector spans: all but 0 by default (non-negative, validated)."""
    if axis is None:
        return tuple(range(1, weight.dim()))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes or not all(isinstance(a, int) and -weight.dim() <= a < weight.dim() for a in axes):
        raise GradwellError(
            f"max_norm axis {axis!r} is out of range for a weight of shape {tuple(weight.shape)}; "
            f"valid: None or axes in {-weight.dim()}..{weight.dim() - 1}"
        )
    return tuple(sorted({a % weight.dim() for a in axes}))


def max_norm_(weights: Weights, max_value: float = 1.0, axis: int | Sequence[int] | None = None) -> None:
    """Rescale each unit's weight vector in place so that ||w||_2 <= max_value (Keras ``MaxNorm``).

    w <- w * r / max(||w||_2, r): a vector inside the ball is left exactly as it is, one outside
    is scaled back onto it with its direction kept (Srivastava et al., 2014). Call it after each
    optimizer step. Keras computes w * clip(||w||, 0, r) / (eps + ||w||), which also shrinks
    vectors inside the ball by a factor 1 - eps/||w||; r must be > 0 here.

    `axis` are the axes a unit's incoming weight vector spans, in torch's layout (out, in,
    *kernel): the default None takes all axes but 0, i.e. one vector per output unit or filter
    (Keras's axis=0 for a Dense kernel (in, out) and [0, 1, 2] for a Conv2D kernel). A 1-D
    tensor then bounds each element's magnitude. No value is read back from the device.

    >>> weight = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # two units, norms 5 and 0.5
    >>> max_norm_([weight], max_value=1.0)
    >>> weight
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    max_value = check_finite("max_value", max_value, low=0.0, low_open=True)
    with torch.no_grad():
        for weight in regularized_weights(weights):
            axes = unit_axes(weight, axis)
            norm = torch.linalg.vector_norm(weight, dim=axes, keepdim=True) if axes else weight.abs()
            weight.mul_(max_value / norm.clamp(min=max_value))


DROPOUT_LAYERS = (nn.modules.dropout._DropoutNd,)  # Dropout, Dropout1d-3d, AlphaDropout, FeatureAlphaDropout


def mc_dropout_predict(
    model: nn.Module,
    x: Tensor,
    samples: int = 100,
    *,
    probabilities: bool = True,
    batch_size: int = 4096,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Monte Carlo dropout: (mean, std) over `samples` predictions with dropout active.

    Gal and Ghahramani (2016): a dropout network's predictions with dropout kept on, averaged,
    approximate Bayesian model averaging; their spread is an uncertainty estimate. The dropout
    layers (every torch dropout module) run in training mode, everything else in inference mode,
    including BatchNorm, which normalizes with its moving statistics and leaves them alone.
    Every module's mode is restored afterwards. Runs under no_grad.

    `probabilities`: average softmax probabilities over axis 1 (a sigmoid when axis 1 has a
    single logit), as the chapter does; False averages the raw outputs. The std is the
    population std over samples (numpy's default, as in the chapter's ``y_probas.std(axis=0)``).

    The samples run as copies of `x` stacked along the batch axis, as many per forward pass as
    fit in `batch_size` rows (at least one copy of `x`), which is the same computation as a loop
    of passes: each row draws its own dropout masks. `seed` fixes the masks without touching
    torch's global RNG state; None draws from it.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    >>> mean, std = mc_dropout_predict(model, torch.randn(2, 4), samples=20, seed=0)
    >>> mean.shape, std.shape  # per sample and class
    (torch.Size([2, 3]), torch.Size([2, 3]))
    >>> torch.allclose(mean.sum(1), torch.ones(2)), model.training  # probabilities; mode restored
    (True, True)
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise GradwellError(f"samples must be a positive int; got {samples!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise GradwellError(f"batch_size must be a positive int; got {batch_size!r}")
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_LAYERS)]
    if not dropouts:
        raise GradwellError(f"{type(model).__name__} has no dropout layer; MC dropout needs one")
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        for module in dropouts:
            module.train()
        with torch.no_grad(), seeded(seed, x.device):
            outputs = sampled_outputs(model, x, samples, max(1, batch_size // max(1, len(x))))
    finally:
        for module, training in modes.items():
            module.training = training
    if probabilities and outputs.dim() < 3:
        raise GradwellError(
            f"probabilities=True needs outputs of shape (N, classes, ...); got {tuple(outputs.shape[1:])} "
            "per sample; pass probabilities=False"
        )
    if probabilities:
        outputs = torch.sigmoid(outputs) if outputs.shape[2] == 1 else outputs.softmax(dim=2)
    std, mean = torch.std_mean(outputs, dim=0, correction=0)
    return mean, std


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the CPU RNG and `device`'s for the block, then restore their states; None does nothing."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def sampled_outputs(model: nn.Module, x: Tensor, samples: int, copies: int) -> Tensor:
    """The model's outputs on `samples` copies of x, `copies` per pass: (samples, N, ...)."""
    outputs = []
    for start in range(0, samples, copies):
        k = min(copies, samples - start)
        out = model(x.repeat(k, *[1] * (x.dim() - 1)))  # (k * N, ...)
        outputs.append(out.unflatten(0, (k, len(x))))
    return torch.cat(outputs)
