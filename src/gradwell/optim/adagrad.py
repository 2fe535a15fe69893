"""AdaGrad: per-coordinate steps scaled down by the accumulated squared gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from gradwell.optim.base import GradwellOptimizer, Scalar, addcdiv_


def adagrad_(
    params: list[Tensor], grads: list[Tensor], sums: list[Tensor], *, lr: Scalar, eps: float
) -> None:
    """One AdaGrad step in place: s <- s + g^2;  theta <- theta - lr g / sqrt(s + eps)."""
    torch._foreach_addcmul_(sums, grads, grads)
    denominators = torch._foreach_add(sums, eps)
    torch._foreach_sqrt_(denominators)
    addcdiv_(params, grads, denominators, -lr)


class AdaGrad(GradwellOptimizer):
    """AdaGrad (Duchi et al., 2011), the chapter's form:

        s <- s + g * g            (s starts at 0; state "sum")
        theta <- theta - lr g / sqrt(s + eps)

    Steep coordinates get smaller steps, but the accumulated s only grows, so the effective rate
    decays to nothing: fine for simple quadratic problems, often too early a stop for deep nets.

    Args:
        lr: learning rate, 0.001 as in Keras (torch 0.01).
        eps: smoothing term inside the square root, 1e-10 (the chapter's value; torch 1e-10 but
            outside the root; Keras 1e-7 inside it).
        clipvalue, clipnorm, global_clipnorm, foreach, capturable: see GradwellOptimizer.

    Keras 3's Adagrad starts s at 0.1 (``initial_accumulator_value``), torch's at 0 and adds a
    learning-rate decay; with ``initial_accumulator_value=0`` and the same epsilon Keras computes
    exactly this update.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = AdaGrad([w], lr=0.1)
    >>> w.grad = torch.tensor([0.5, -30.0])
    >>> optimizer.step()
    >>> w.detach()  # the first step: lr g / |g|, whatever the gradient's scale
    tensor([ 0.9000, -1.9000])
    """

    buffers = ("sum",)

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 0.001, eps: float = 1e-10, **options: Any
    ) -> None:
        super().__init__(params, {"lr": lr, "eps": eps}, **options)

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        adagrad_(tensors["params"], tensors["grads"], tensors["sum"], lr=lr, eps=group["eps"])
