"""Stochastic gradient descent with the chapter's momentum and Nesterov momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from gradwell.optim.base import GradwellOptimizer, Scalar, add_scaled_


def sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    velocities: list[Tensor],
    *,
    lr: Scalar,
    momentum: float,
    nesterov: bool,
) -> None:
    """One SGD step in place; `velocities` is empty for plain SGD.

    m <- beta m - lr g;  theta <- theta + m, or theta <- theta + beta m - lr g with Nesterov.
    """
    if not velocities:
        add_scaled_(params, grads, -lr)
        return
    torch._foreach_mul_(velocities, momentum)
    add_scaled_(velocities, grads, -lr)
    if nesterov:
        torch._foreach_add_(params, velocities, alpha=momentum)
        add_scaled_(params, grads, -lr)
    else:
        torch._foreach_add_(params, velocities)


class SGD(GradwellOptimizer):
    """Gradient descent, with momentum (Polyak, 1964) or Nesterov momentum (Nesterov, 1983).

    The chapter's momentum form, with the learning rate inside the velocity m (state "velocity"):

        m <- beta m - lr g
        theta <- theta + m

    Nesterov evaluates the gradient at the look-ahead point theta + beta m (Sutskever et al.,
    2013). The standard reformulation stores the look-ahead point as the parameters and needs the
    gradient there only, which is the one backpropagation gives:

        m <- beta m - lr g
        theta <- theta + beta m - lr g

    (the tests check it against the look-ahead form). beta = 0 is plain SGD, theta <- theta - lr g,
    and keeps no velocity. Keras's SGD computes exactly these updates.

    Args:
        lr: learning rate, 0.01 as in Keras (torch has no default). Because lr sits inside m, a
            schedule changes only what new gradients contribute; what m already holds is kept.
        momentum: beta in [0, 1), the friction: 0 (plain SGD) as in Keras and torch; the chapter's
            typical value is 0.9 (``create("momentum" | "nesterov", ...)``).
        nesterov: use Nesterov momentum.
        clipvalue, clipnorm, global_clipnorm, foreach, capturable: see GradwellOptimizer.

    torch.optim.SGD keeps lr outside the velocity (b <- beta b + g; theta <- theta - lr b): with a
    constant learning rate both give the same trajectory (m = -lr b), with a schedule they differ.
    Weight decay is gradwell.regularize's l2 penalty, not an option here.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):  # minimize |w|^2, whose gradient is 2 w
    ...     optimizer.zero_grad()
    ...     (w**2).sum().backward()
    ...     optimizer.step()
    >>> w.detach()  # w0 + m1 + m2, with m1 = -0.2 w0 and m2 = 0.9 m1 - 0.16 w0 = -0.34 w0
    tensor([ 0.4600, -0.9200])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": bool(nesterov)}, **options)

    def group_buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("velocity",) if group["momentum"] else ()

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        sgd_(
            tensors["params"],
            tensors["grads"],
            tensors.get("velocity", []),
            lr=lr,
            momentum=group["momentum"],
            nesterov=group["nesterov"],
        )
