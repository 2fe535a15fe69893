"""RMSProp: AdaGrad with an exponentially decaying average of the squared gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from gradwell.optim.base import GradwellOptimizer, Scalar, addcdiv_


def rmsprop_(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    *,
    lr: Scalar,
    rho: float,
    eps: float,
) -> None:
    """One RMSProp step in place: s <- rho s + (1 - rho) g^2;  theta <- theta - lr g / sqrt(s + eps)."""
    torch._foreach_mul_(square_avgs, rho)
    torch._foreach_addcmul_(square_avgs, grads, grads, 1 - rho)
    denominators = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(denominators)
    addcdiv_(params, grads, denominators, -lr)


class RMSProp(GradwellOptimizer):
    """RMSProp (Tieleman and Hinton, 2012), the chapter's form:

        s <- rho s + (1 - rho) g * g      (s starts at 0; state "square_avg")
        theta <- theta - lr g / sqrt(s + eps)

    Only recent gradients count, so unlike AdaGrad the effective rate does not decay to zero.

    Args:
        lr: learning rate, 0.001 as in Keras and the chapter (torch 0.01).
        rho: decay rate in [0, 1), 0.9 as in the chapter and Keras (torch calls it alpha, 0.99).
        eps: smoothing term inside the square root, 1e-7 as in Keras (torch 1e-8, outside the root).
        clipvalue, clipnorm, global_clipnorm, foreach, capturable: see GradwellOptimizer.

    Keras 3's RMSprop with ``momentum=0, centered=False`` computes exactly this update; torch's
    differs by the epsilon placement, theta <- theta - lr g / (sqrt(s) + eps).

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = RMSProp([w], lr=0.1)
    >>> w.grad = torch.tensor([0.5, -30.0])
    >>> optimizer.step()
    >>> w.detach()  # the first step: s = 0.1 g^2, so lr g / sqrt(s) = lr sqrt(10) g / |g|
    tensor([ 0.6838, -1.6838])
    """

    buffers = ("square_avg",)

    def __init__(
        self, params: ParamsT, lr: float | Tensor = 0.001, rho: float = 0.9, eps: float = 1e-7, **options: Any
    ) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps}, **options)

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        rmsprop_(
            tensors["params"],
            tensors["grads"],
            tensors["square_avg"],
            lr=lr,
            rho=group["rho"],
            eps=group["eps"],
        )
