"""The Adam family: Adam, AdamW, AdaMax and Nadam.

Each keeps a decaying mean m of the gradients (momentum) and a decaying scale of their size (s,
RMSProp's idea, or u, AdaMax's infinity norm), counts its steps per parameter for the bias
corrections, and moves each coordinate by about lr. Where torch and Keras place epsilon
differently, gradwell follows torch (epsilon outside the square root, added to the bias-corrected
scale), so that AdamW and Nadam match torch.optim exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from gradwell.optim.base import GradwellOptimizer, Scalar, addcdiv_, counts, per_tensor, store_


def moments_(
    grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], beta1: float, beta2: float
) -> None:
    """m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2, in place."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)


def denominators(
    exp_avg_sqs: list[Tensor], t: Tensor | float, beta2: float, eps: float, capturable: bool
) -> tuple[list[Tensor], Tensor | float]:
    """sqrt(s) + eps c and c = sqrt(1 - b2^t), t the step of each tensor (see base.counts).

    sqrt(s_hat) + eps, with s_hat = s / (1 - b2^t), is their ratio: the caller multiplies its step
    size by c, which saves dividing s by its bias correction, a pass over every element.
    """
    correction = (1 - beta2**t) ** 0.5
    roots = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(roots, per_tensor(eps * correction, exp_avg_sqs[0], capturable))
    return roots, correction


def adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: Scalar,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float = 0.0,
    capturable: bool = False,
) -> None:
    """One Adam step in place, with AdamW's decoupled weight decay first when `weight_decay` > 0."""
    beta1, beta2 = betas
    torch._foreach_add_(steps, 1.0)
    t = counts(steps, capturable)
    if weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    moments_(grads, exp_avgs, exp_avg_sqs, beta1, beta2)
    roots, correction = denominators(exp_avg_sqs, t, beta2, eps, capturable)
    addcdiv_(params, exp_avgs, roots, per_tensor(-lr * correction / (1 - beta1**t), params[0], capturable))


def adamax_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: Scalar,
    betas: tuple[float, float],
    eps: float,
    capturable: bool = False,
) -> None:
    """One AdaMax step in place (Keras's form)."""
    beta1, beta2 = betas
    torch._foreach_add_(steps, 1.0)
    t = counts(steps, capturable)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_infs, beta2)
    torch._foreach_maximum_(exp_infs, torch._foreach_abs(grads))
    step_sizes = per_tensor(-lr / (1 - beta1**t), params[0], capturable)
    addcdiv_(params, exp_avgs, torch._foreach_add(exp_infs, eps), step_sizes)


def nadam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    mu_products: list[Tensor],
    *,
    lr: Scalar,
    betas: tuple[float, float],
    eps: float,
    momentum_decay: float,
    capturable: bool = False,
) -> None:
    """One Nadam step in place (Dozat's momentum schedule, Keras 2's and torch's form)."""
    beta1, beta2 = betas
    torch._foreach_add_(steps, 1.0)
    t = counts(steps, capturable)
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    product = counts(mu_products, capturable) * mu  # prod of mu_1 .. mu_t
    store_(mu_products, product)
    moments_(grads, exp_avgs, exp_avg_sqs, beta1, beta2)
    roots, correction = denominators(exp_avg_sqs, t, beta2, eps, capturable)
    now_sizes = per_tensor(-lr * correction * (1 - mu) / (1 - product), params[0], capturable)
    addcdiv_(params, grads, roots, now_sizes)
    next_sizes = per_tensor(-lr * correction * mu_next / (1 - product * mu_next), params[0], capturable)
    addcdiv_(params, exp_avgs, roots, next_sizes)


class Adam(GradwellOptimizer):
    """Adam (Kingma and Ba, 2015) with bias correction:

        m <- b1 m + (1 - b1) g            (state "exp_avg")
        s <- b2 s + (1 - b2) g * g        (state "exp_avg_sq")
        m_hat = m / (1 - b1^t),  s_hat = s / (1 - b2^t)     (t: the parameter's "step")
        theta <- theta - lr m_hat / (sqrt(s_hat) + eps)

    Args:
        lr: learning rate, 0.001 as in the chapter, Keras and torch.
        betas: (b1, b2), each in [0, 1), (0.9, 0.999) as in the paper. torch's key name, so that
            OneCycleLR can cycle b1.
        eps: 1e-7 as in Keras (torch 1e-8), added to sqrt(s_hat) as in torch and the paper. Keras
            adds its epsilon to sqrt(s) instead ("epsilon hat"), which equals eps / sqrt(1 - b2^t)
            here: the two agree once b2^t is small, not in the first steps.
        clipvalue, clipnorm, global_clipnorm, foreach, capturable: see GradwellOptimizer.

    torch.optim.Adam computes the same update; L2 weight decay is gradwell.regularize's l2
    penalty, decoupled weight decay is AdamW.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = Adam([w], lr=0.1)
    >>> w.grad = torch.tensor([0.5, -30.0])
    >>> optimizer.step()
    >>> w.detach()  # about lr per coordinate, whatever the gradient's scale
    tensor([ 0.9000, -1.9000])
    """

    buffers = ("exp_avg", "exp_avg_sq")
    counters: ClassVar[dict[str, float]] = {"step": 0.0}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        **options: Any,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps}, **options)

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        adam_(
            tensors["params"],
            tensors["grads"],
            tensors["exp_avg"],
            tensors["exp_avg_sq"],
            tensors["step"],
            lr=lr,
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group.get("weight_decay", 0.0),
            capturable=group["capturable"],
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019):

        theta <- theta - lr wd theta, then Adam's step (see Adam)

    The decay is applied before the Adam step and scaled by lr, as torch.optim.AdamW does (which
    computes this exact update) and as Keras does; it does not pass through m and s, unlike an L2
    penalty added to the loss.

    Args:
        weight_decay: wd >= 0, 0.004 as in Keras (torch 0.01).
        lr, betas, eps and the options: as for Adam.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = torch.tensor([0.5, -30.0])
    >>> optimizer.step()
    >>> w.detach()  # w (1 - lr wd), then Adam's step of about lr
    tensor([ 0.8500, -1.8000])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        weight_decay: float = 0.004,
        **options: Any,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        GradwellOptimizer.__init__(self, params, defaults, **options)


class AdaMax(GradwellOptimizer):
    """AdaMax (Kingma and Ba, 2015, section 7), Keras's form:

        m <- b1 m + (1 - b1) g                  (state "exp_avg")
        u <- max(b2 u, |g|)                     (state "exp_inf")
        theta <- theta - lr / (1 - b1^t) * m / (u + eps)

    The infinity norm u needs no bias correction and is more stable than Adam's s on some
    problems; in practice Adam usually does better.

    Args:
        lr: learning rate, 0.001 as in Keras (the paper and torch 0.002).
        betas: (b1, b2), each in [0, 1), (0.9, 0.999).
        eps: 1e-7 as in Keras, added to u. torch adds its eps (1e-8) inside the max instead,
            u <- max(b2 u, |g| + eps), theta <- theta - lr / (1 - b1^t) * m / u.
        clipvalue, clipnorm, global_clipnorm, foreach, capturable: see GradwellOptimizer.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = AdaMax([w], lr=0.1)
    >>> w.grad = torch.tensor([0.5, -30.0])
    >>> optimizer.step()
    >>> w.detach()  # the first step: u = |g|, m_hat = g, so lr g / |g|
    tensor([ 0.9000, -1.9000])
    """

    buffers = ("exp_avg", "exp_inf")
    counters: ClassVar[dict[str, float]] = {"step": 0.0}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        **options: Any,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps}, **options)

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        adamax_(
            tensors["params"],
            tensors["grads"],
            tensors["exp_avg"],
            tensors["exp_inf"],
            tensors["step"],
            lr=lr,
            betas=group["betas"],
            eps=group["eps"],
            capturable=group["capturable"],
        )


class Nadam(GradwellOptimizer):
    """Nadam: Adam with Nesterov momentum (Dozat, 2016), with Dozat's momentum schedule:

        mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay)),  P_t = mu_1 ... mu_t  (state "mu_product")
        m <- b1 m + (1 - b1) g,  s <- b2 s + (1 - b2) g * g,  s_hat = s / (1 - b2^t)
        m_bar = (1 - mu_t) g / (1 - P_t) + mu_{t+1} m / (1 - P_t mu_{t+1})
        theta <- theta - lr m_bar / (sqrt(s_hat) + eps)

    This is Keras 2's Nadam (``schedule_decay=0.004``) and torch.optim.NAdam's. Keras 3's Nadam
    drops the 1/250 from the exponent, mu_t = b1 (1 - 0.5 * 0.96^t), so its momentum comes within
    1% of b1 after about 100 steps instead of about 24,000: ``momentum_decay=1`` gives that
    schedule (Keras 3's epsilon placement still differs, see Adam).

    Args:
        lr: learning rate, 0.001 as in Keras (torch 0.002).
        betas: (b1, b2), each in [0, 1), (0.9, 0.999).
        eps: 1e-7 as in Keras (torch 1e-8), added to sqrt(s_hat) as in torch.
        momentum_decay: the schedule's rate, 0.004 = 1/250 (Dozat; torch's name and default).
        clipvalue, clipnorm, global_clipnorm, foreach, capturable: see GradwellOptimizer.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = Nadam([w], lr=0.1)
    >>> w.grad = torch.tensor([0.5, -30.0])
    >>> optimizer.step()
    >>> w.detach()  # about lr per coordinate, as Adam; the look-ahead makes the first step longer
    tensor([ 0.8944, -1.8944])
    """

    buffers = ("exp_avg", "exp_avg_sq")
    counters: ClassVar[dict[str, float]] = {"step": 0.0, "mu_product": 1.0}

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        momentum_decay: float = 0.004,
        **options: Any,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "momentum_decay": momentum_decay}
        super().__init__(params, defaults, **options)

    def update(self, tensors: dict[str, list[Tensor]], lr: Scalar, group: dict[str, Any]) -> None:
        nadam_(
            tensors["params"],
            tensors["grads"],
            tensors["exp_avg"],
            tensors["exp_avg_sq"],
            tensors["step"],
            tensors["mu_product"],
            lr=lr,
            betas=group["betas"],
            eps=group["eps"],
            momentum_decay=group["momentum_decay"],
            capturable=group["capturable"],
        )
