"""Gradient clipping by value, by norm (each tensor on its own) and by global norm.

Keras's three ``clipvalue`` / ``clipnorm`` / ``global_clipnorm`` options as in-place tensor
functions (torch has global-norm and value clipping only). Norm clipping rescales by
min(1, max_norm / norm), so a gradient keeps its direction (the chapter's [0.9, 100.0]
example), a gradient already inside the bound is untouched, and no branch depends on a value
on the device: the functions never synchronize with it and can run inside a CUDA graph.

Each function takes gradients: plain tensors, or ``nn.Parameter``s, which stand for their
``.grad`` (as in ``torch.nn.utils.clip_grad_norm_``); parameters without a gradient are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from gradwell.errors import check_finite

Tensors = Tensor | Iterable[Tensor]


def gradients(tensors: Tensors) -> list[Tensor]:
    """The tensors to clip: a lone tensor becomes a list, a Parameter becomes its gradient."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    grads = []
    for tensor in tensors:
        if isinstance(tensor, nn.Parameter):
            tensor = tensor.grad
        if tensor is not None:
            grads.append(tensor)
    return grads


def clip_by_value_(tensors: Tensors, clip_value: float) -> None:
    """Clamp every element to [-clip_value, clip_value] in place (Keras ``clipvalue``).

    Cheap, but changes the gradient's direction: [0.9, 100.0] clipped at 1 becomes [0.9, 1.0].

    >>> grad = torch.tensor([0.9, 100.0])
    >>> clip_by_value_(grad, 1.0)
    >>> grad
    tensor([0.9000, 1.0000])
    """
    clip_value = check_finite("clip_value", clip_value, low=0.0, low_open=True)
    grads = gradients(tensors)
    if grads:
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)


def l2_norms(grads: list[Tensor]) -> list[Tensor]:
    """Each tensor's L2 norm, computed and returned in float32 or wider.

    A float16 gradient's norm overflows float16 past 65504, which would turn the clip factor into
    0 and erase the gradient; float32 keeps it finite and exact to float32 precision.
    """
    dtype = functools.reduce(torch.promote_types, (grad.dtype for grad in grads), torch.float32)
    return list(torch._foreach_norm(grads, 2, dtype=dtype))


def scale_factors(norms: list[Tensor], max_norm: float) -> list[Tensor]:
    """min(1, max_norm / norm) for each norm: exactly 1 inside the bound, shrinking outside it.

    The ratio is clamped rather than max_norm divided by max(norm, max_norm): torch computes
    scalar / tensor as scalar * (1 / tensor), which is off 1 by an ulp for tensor == scalar and
    would nudge gradients that are inside the bound.
    """
    return [torch.clamp(max_norm / norm, max=1.0) for norm in norms]


def clip_by_norm_(tensors: Tensors, max_norm: float) -> list[Tensor]:
    """Rescale each tensor on its own so its L2 norm is at most `max_norm` (Keras ``clipnorm``).

    Returns each tensor's norm before clipping, as 0-d tensors on its device, in float32 or wider.

    >>> grads = [torch.tensor([0.9, 100.0]), torch.tensor([0.3, 0.4])]
    >>> clip_by_norm_(grads, 1.0)  # the norms before
    [tensor(100.0041), tensor(0.5000)]
    >>> grads  # the first keeps its direction, the second is inside the bound
    [tensor([0.0090, 1.0000]), tensor([0.3000, 0.4000])]
    """
    max_norm = check_finite("max_norm", max_norm, low=0.0, low_open=True)
    grads = gradients(tensors)
    if not grads:
        return []
    before = l2_norms(grads)
    torch._foreach_mul_(grads, scale_factors(before, max_norm))
    return before


def global_norm(tensors: Tensors) -> Tensor:
    """sqrt(sum of squared elements over all tensors), computed in float32 or wider."""
    grads = gradients(tensors)
    if not grads:
        return torch.tensor(0.0)
    each = l2_norms(grads)
    return torch.linalg.vector_norm(torch.stack([norm.to(each[0].device) for norm in each]))


def clip_by_global_norm_(tensors: Tensors, max_norm: float) -> Tensor:
    """Rescale all tensors together so their global norm is at most `max_norm` (Keras ``global_clipnorm``).

    g <- g * max_norm / max(global_norm, max_norm) (Pascanu et al., 2013). Returns the global norm
    before clipping as a 0-d tensor.

    >>> grads = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])]
    >>> clip_by_global_norm_(grads, 1.0)
    tensor(5.)
    >>> grads
    [tensor([0.6000, 0.0000]), tensor([0.0000, 0.8000])]
    """
    max_norm = check_finite("max_norm", max_norm, low=0.0, low_open=True)
    grads = gradients(tensors)
    norm = global_norm(grads)
    if grads:
        (factor,) = scale_factors([norm], max_norm)
        torch._foreach_mul_(grads, factor)
    return norm
