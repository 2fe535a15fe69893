"""Variance-scaling initialization: Glorot, He and LeCun, and the chapter's table of which to use.

All initializers keep the variance of a layer's outputs (and of its back-propagated gradients)
close to that of its inputs, which is what stops signals from vanishing or exploding with depth
(Glorot and Bengio, 2010). They differ in the fan they scale by and in the gain:

| name   | variance sigma^2   | for the activations               |
|--------|--------------------|-----------------------------------|
| Glorot | 1 / fan_avg        | none, tanh, sigmoid, softmax      |
| He     | 2 / fan_in         | ReLU and its variants, ELU, GELU, Swish, Mish |
| LeCun  | 1 / fan_in         | SELU                              |

Fans follow torch's weight layout ``(out, in, *kernel)``: ``fan_in = in * prod(kernel)`` and
``fan_out = out * prod(kernel)``, so a convolution's receptive field counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Generator, Tensor, nn

from gradwell.activations import RECOMMENDED_INIT, activation_name, negative_slope
from gradwell.errors import GradwellError, check_finite, unknown_name

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")

# std of N(0, 1) truncated to [-2, 2]: dividing by it restores the requested variance
TRUNCATED_NORMAL_STD = 0.87962566103423978

Initializer = Callable[..., Tensor]


def compute_fans(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape in torch's layout.

    A 1-D tensor (a bias or a per-channel vector) has fan_in = fan_out = its length, as in Keras.
    """
    shape = tuple(shape)
    if len(shape) == 0:
        raise GradwellError(
            "cannot compute the fans of a 0-d tensor; variance scaling needs 1 dimension or more"
        )
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def check_floating(tensor: Tensor) -> None:
    """Random draws fill floating-point tensors only (torch has no normal_ for integers)."""
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        got = f"a tensor of dtype {tensor.dtype}" if isinstance(tensor, Tensor) else repr(tensor)
        raise GradwellError(f"initializers fill a floating-point tensor (float16/32/64, bfloat16); got {got}")


def variance_scaling_(
    tensor: Tensor,
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "normal",
    generator: Generator | None = None,
) -> Tensor:
    """Fill `tensor` in place so that Var[w] = scale / fan, and return it.

    fan is fan_in, fan_out or (fan_in + fan_out) / 2 by `mode`. Distributions:

    - ``normal``: N(0, sigma^2), untruncated, as the chapter states (Keras truncates its "normal");
    - ``truncated_normal``: N(0, (sigma / 0.8796...)^2) cut at two of its standard deviations,
      whose variance is sigma^2 again (Keras's ``truncated_normal``);
    - ``uniform``: U(-r, r) with r = sqrt(3 sigma^2).

    Keras's name ``untruncated_normal`` is accepted for ``normal``.

    >>> conv = torch.empty(64, 32, 3, 3)  # fan_out = 64 * 3 * 3
    >>> w = variance_scaling_(conv, 2.0, "fan_out", "truncated_normal", torch.Generator().manual_seed(0))
    >>> round(float(w.var() * 64 * 9), 1)
    2.0
    """
    check_floating(tensor)
    scale = check_finite("scale", scale, low=0.0, low_open=True)
    if not isinstance(mode, str) or mode not in MODES:
        raise unknown_name("mode", mode, MODES)
    if distribution == "untruncated_normal":  # Keras's name
        distribution = "normal"
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise unknown_name("distribution", distribution, DISTRIBUTIONS)
    fan_in, fan_out = compute_fans(tensor.shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    if fan == 0:
        raise GradwellError(f"{mode} is 0 for a tensor of shape {tuple(tensor.shape)}; cannot scale by it")
    std = math.sqrt(scale / fan)
    with torch.no_grad():
        if distribution == "normal":
            return tensor.normal_(0.0, std, generator=generator)
        if distribution == "uniform":
            limit = math.sqrt(3.0) * std
            return tensor.uniform_(-limit, limit, generator=generator)
        wide = std / TRUNCATED_NORMAL_STD
        return nn.init.trunc_normal_(tensor, 0.0, wide, -2.0 * wide, 2.0 * wide, generator=generator)


def glorot_normal_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from N(0, 1/fan_avg) in place (Glorot and Bengio, 2010).

    Keeps forward and backward variances equal on average for linear, tanh, sigmoid and softmax
    layers. Untruncated; Keras truncates its ``GlorotNormal``.

    >>> w = glorot_normal_(torch.empty(256, 512), torch.Generator().manual_seed(0))
    >>> round(float(w.var() * (512 + 256) / 2), 1)  # Var[w] fan_avg
    1.0
    """
    return variance_scaling_(tensor, 1.0, "fan_avg", "normal", generator)


def glorot_uniform_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from U(-r, r), r = sqrt(3 / fan_avg), in place (Glorot and Bengio, 2010).

    Keras's default kernel initializer; torch's ``xavier_uniform_`` is the same distribution.

    >>> w = glorot_uniform_(torch.empty(256, 512), torch.Generator().manual_seed(0))
    >>> round(float(w.var() * 384), 1), bool(w.abs().max() <= math.sqrt(3 / 384))  # fan_avg 384
    (1.0, True)
    """
    return variance_scaling_(tensor, 1.0, "fan_avg", "uniform", generator)


def he_normal_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from N(0, 2/fan_in) in place (He et al., 2015).

    The factor 2 compensates for ReLU zeroing half of its inputs. Untruncated, like torch's
    ``kaiming_normal_``; Keras truncates its ``HeNormal``.

    >>> w = he_normal_(torch.empty(256, 512), torch.Generator().manual_seed(0))  # (out, in)
    >>> round(float(w.var() * 512), 1)  # Var[w] fan_in
    2.0
    """
    return variance_scaling_(tensor, 2.0, "fan_in", "normal", generator)


def he_uniform_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from U(-r, r), r = sqrt(6 / fan_in), in place (He et al., 2015).

    >>> w = he_uniform_(torch.empty(256, 512), torch.Generator().manual_seed(0))
    >>> round(float(w.var() * 512), 1), bool(w.abs().max() <= math.sqrt(6 / 512))
    (2.0, True)
    """
    return variance_scaling_(tensor, 2.0, "fan_in", "uniform", generator)


def lecun_normal_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from N(0, 1/fan_in) in place (LeCun et al., 1998).

    The initialization that keeps a SELU network self-normalizing (Klambauer et al., 2017).
    The distribution is untruncated, as the chapter states; Keras truncates its "normal".

    >>> w = lecun_normal_(torch.empty(256, 512), torch.Generator().manual_seed(0))
    >>> round(float(w.var() * 512), 1)  # Var[w] fan_in
    1.0
    """
    return variance_scaling_(tensor, 1.0, "fan_in", "normal", generator)


def lecun_uniform_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from U(-r, r), r = sqrt(3 / fan_in), in place (LeCun et al., 1998).

    >>> w = lecun_uniform_(torch.empty(256, 512), torch.Generator().manual_seed(0))
    >>> round(float(w.var() * 512), 1), bool(w.abs().max() <= math.sqrt(3 / 512))
    (1.0, True)
    """
    return variance_scaling_(tensor, 1.0, "fan_in", "uniform", generator)


def standard_normal_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
    """Fill `tensor` from N(0, 1) in place, whatever its fans.

    The naive initialization that Glorot and Bengio (2010) showed saturates deep sigmoid
    networks; kept to reproduce that failure, not to be used.
    """
    check_floating(tensor)
    with torch.no_grad():
        return tensor.normal_(0.0, 1.0, generator=generator)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_normal": glorot_normal_,
    "glorot_uniform": glorot_uniform_,
    "he_normal": he_normal_,
    "he_uniform": he_uniform_,
    "lecun_normal": lecun_normal_,
    "lecun_uniform": lecun_uniform_,
    "standard_normal": standard_normal_,
}


def get_initializer(name: str | Initializer) -> Initializer:
    """The in-place initializer called `name` (a callable passes through unchanged).

    >>> get_initializer("he_normal") is he_normal_
    True
    >>> get_initializer("kaiming")
    Traceback (most recent call last):
        ...
    gradwell.errors.GradwellError: unknown initializer 'kaiming'; valid: glorot_normal, glorot_uniform, ...
    """
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise unknown_name("initializer", name, INITIALIZERS) from None


# The chapter's table: activation name -> initializer name, declared by each activation's record
# (gradwell.activations.ActivationInfo.init). It is the records' own derived dict, so an
# activation added with register_activation appears here too.
RECOMMENDED: dict[str, str] = RECOMMENDED_INIT


def recommended_init(activation: str | nn.Module | None) -> str:
    """The name of the initializer the chapter recommends for `activation`.

    Glorot for none/tanh/sigmoid/softmax, He for the ReLU family, ELU, GELU, Swish and Mish,
    LeCun for SELU. Accepts a name understood by ``get_activation`` or an activation module.

    >>> recommended_init("selu"), recommended_init(nn.Tanh()), recommended_init("relu")
    ('lecun_normal', 'glorot_uniform', 'he_normal')
    """
    return RECOMMENDED[activation_name(activation)]


def recommended_initializer(activation: str | nn.Module | None) -> Initializer:
    """The initializer for `activation`, with the gain made exact for leaky slopes.

    For a leaky ReLU of slope a, He et al. (2015) give Var[w] = 2 / ((1 + a^2) fan_in); plain
    ``he_normal_`` assumes a = 0. PReLU and RReLU use their initial and mean slopes.

    >>> recommended_initializer("relu") is he_normal_
    True
    >>> w = recommended_initializer("leaky_relu")(torch.empty(256, 512), torch.Generator().manual_seed(0))
    >>> abs(float(w.var() * 512) - 2 / (1 + 0.2**2)) < 0.05  # alpha 0.2
    True
    """
    name = recommended_init(activation)
    leaky = activation_name(activation) in ("leaky_relu", "prelu", "rrelu")
    slope = negative_slope(activation) if leaky else 0.0
    if slope == 0.0:
        return INITIALIZERS[name]
    gain = 2.0 / (1.0 + slope**2)

    def leaky_he_normal_(tensor: Tensor, generator: Generator | None = None) -> Tensor:
        return variance_scaling_(tensor, gain, "fan_in", "normal", generator)

    return leaky_he_normal_
