"""Non-saturating activations: the ReLU family, ELU, SELU, GELU, Swish and Mish.

torch's kernels are reused wherever torch has the function (ReLU, leaky ReLU, RReLU, PReLU, ELU,
SELU, exact and tanh GELU, SiLU, Mish); gradwell adds what torch lacks: the chapter's defaults,
the sigmoid approximation of GELU and Swish with a fixed or learnable beta.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwell.errors import GradwellError, check_finite, unknown_name

ReLU = nn.ReLU
SELU = nn.SELU
Mish = nn.Mish
Sigmoid = nn.Sigmoid
Tanh = nn.Tanh


def positive_int(name: str, value: int) -> int:
    """`value` if it is an int >= 1; a bool is refused, though Python counts it as an int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GradwellError(f"{name} must be a positive int; got {value!r}")
    return value


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU_alpha(z) = max(alpha z, z) (Maas et al., 2013).

    alpha defaults to 0.2: Xu et al. (2015) found a large leak to beat 0.01, the chapter follows
    them. torch defaults to 0.01 and Keras's layer to 0.3.
    """

    def __init__(self, alpha: float = 0.2, inplace: bool = False) -> None:
        super().__init__(check_finite("LeakyReLU alpha", alpha, low=0.0), inplace)

    @property
    def alpha(self) -> float:
        return self.negative_slope


class RReLU(nn.RReLU):
    """Randomized leaky ReLU: slope ~ U(lower, upper) per element in training, their mean in eval.

    Defaults 1/8 and 1/3 as in Xu et al. (2015), who found the randomness acts as a regularizer.
    """

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3, inplace: bool = False) -> None:
        lower = check_finite("RReLU lower", lower, low=0.0)
        upper = check_finite("RReLU upper", upper, low=0.0)
        if lower > upper:
            raise GradwellError(f"RReLU needs lower <= upper; got lower={lower!r}, upper={upper!r}")
        super().__init__(lower, upper, inplace)


class PReLU(nn.PReLU):
    """Parametric leaky ReLU: alpha is learned, one shared value or one per channel (axis 1).

    Initial alpha 0.25 as in He et al. (2015) and torch; Keras starts from 0 with one alpha per
    element.
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25) -> None:
        super().__init__(
            positive_int("PReLU num_parameters", num_parameters), check_finite("PReLU init", init)
        )


class ELU(nn.ELU):
    """ELU_alpha(z) = z if z > 0 else alpha (exp(z) - 1) (Clevert et al., 2015); alpha 1 is smooth at 0."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(check_finite("ELU alpha", alpha, low=0.0), inplace)


GELU_APPROXIMATIONS = ("none", "tanh", "sigmoid")


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU(z) = z Phi(z) (Hendrycks and Gimpel, 2016), exactly or approximated.

    ``tanh``: 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))), max error about 5e-4 (torch's kernel);
    ``sigmoid``: z sigmoid(1.702 z), the paper's cheaper form, max error about 2e-2.
    """
    if approximate not in GELU_APPROXIMATIONS:
        raise unknown_name("GELU approximation", approximate, GELU_APPROXIMATIONS)
    if approximate == "sigmoid":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate=approximate)


class GELU(nn.Module):
    """The Gaussian error linear unit, exact (default) or with the tanh or sigmoid approximation."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in GELU_APPROXIMATIONS:
            raise unknown_name("GELU approximation", approximate, GELU_APPROXIMATIONS)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def per_channel(values: Tensor, x: Tensor) -> Tensor:
    """Reshape a (C,) parameter to broadcast along axis 1 of `x` (a (1,) parameter broadcasts as is)."""
    if values.numel() == 1 or x.dim() < 2:
        return values
    return values.view(1, -1, *([1] * (x.dim() - 2)))


def swish(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """Swish_beta(z) = z sigmoid(beta z) (Ramachandran et al., 2017); beta = 1 is SiLU."""
    if isinstance(beta, float) and beta == 1.0:
        return F.silu(x)
    return x * torch.sigmoid(beta * x)


class Swish(nn.Module):
    """Swish with a fixed beta, or a learnable one (scalar or one per channel along axis 1).

    beta = 1 (SiLU, torch's kernel) by default. A learnable beta lets each layer move between a
    near-linear unit (beta -> 0) and ReLU (beta -> inf); no other library offers it.
    """

    def __init__(self, beta: float = 1.0, learnable: bool = False, num_parameters: int = 1) -> None:
        super().__init__()
        beta = check_finite("Swish beta", beta)
        positive_int("Swish num_parameters", num_parameters)
        if num_parameters > 1 and not learnable:
            raise GradwellError("Swish num_parameters > 1 needs learnable=True; a fixed beta is one number")
        self.learnable = learnable
        if learnable:
            self.beta = nn.Parameter(torch.full((num_parameters,), beta))
        else:
            self.beta = beta

    def forward(self, x: Tensor) -> Tensor:
        beta = per_channel(self.beta, x) if self.learnable else self.beta
        return swish(x, beta)

    def extra_repr(self) -> str:
        if self.learnable:
            return f"learnable=True, num_parameters={self.beta.numel()}"
        return f"beta={self.beta}"


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,  # alpha 0.2: Xu et al. (2015) found a large leak better
    "rrelu": RReLU,
    "prelu": PReLU,
    "elu": ELU,
    "selu": SELU,
    "gelu": GELU,
    "gelu_tanh": lambda: GELU("tanh"),
    "gelu_sigmoid": lambda: GELU("sigmoid"),
    "swish": Swish,
    "silu": Swish,
    "mish": Mish,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    # nn.Identity swallows any argument: wrapped so that options given to "linear" raise
    "linear": lambda: nn.Identity(),
    "none": lambda: nn.Identity(),
}


def get_activation(spec: str | nn.Module | None, **options: float) -> nn.Module:
    """A fresh activation module for a name in ACTIVATIONS; modules pass through unchanged.

    `options` go to the module's constructor, e.g. ``get_activation("leaky_relu", alpha=0.01)``.
    """
    if isinstance(spec, nn.Module):
        return spec
    if spec is None:
        spec = "linear"
    try:
        factory = ACTIVATIONS[spec]
    except (KeyError, TypeError):
        raise unknown_name("activation", spec, ACTIVATIONS) from None
    try:
        return factory(**options)
    except TypeError as error:
        raise GradwellError(f"bad options {options} for activation {spec!r}: {error}") from None


# Module classes to the canonical names used by the initialization table; gradwell's classes
# subclass torch's where both exist, so one entry covers both.
MODULE_NAMES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "relu"),
    (nn.LeakyReLU, "leaky_relu"),
    (nn.RReLU, "rrelu"),
    (nn.PReLU, "prelu"),
    (nn.ELU, "elu"),
    (nn.SELU, "selu"),
    (GELU, "gelu"),
    (nn.GELU, "gelu"),
    (Swish, "swish"),
    (nn.SiLU, "swish"),
    (nn.Mish, "mish"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"),
    (nn.Softmax, "softmax"),
    (nn.Identity, "linear"),
)
ALIASES = {"gelu_tanh": "gelu", "gelu_sigmoid": "gelu", "silu": "swish", "none": "linear"}


def activation_name(activation: str | nn.Module | None) -> str:
    """The canonical name (a key of gradwell.init.RECOMMENDED) of an activation name or module."""
    if activation is None:
        return "linear"
    if isinstance(activation, nn.Module):
        for cls, name in MODULE_NAMES:
            if isinstance(activation, cls):
                return name
        valid = ", ".join(sorted({cls.__name__ for cls, _ in MODULE_NAMES}))
        raise GradwellError(f"unknown activation module {type(activation).__name__}; known: {valid}")
    if activation in ALIASES:
        return ALIASES[activation]
    if activation not in ACTIVATIONS and activation != "softmax":
        raise unknown_name("activation", activation, [*ACTIVATIONS, "softmax"])
    return activation


def negative_slope(activation: str | nn.Module) -> float:
    """The slope for z < 0 of a leaky activation: alpha, PReLU's current mean, RReLU's mean slope."""
    module = get_activation(activation)
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.PReLU):
        return float(module.weight.detach().mean())
    if isinstance(module, nn.RReLU):
        return (module.lower + module.upper) / 2
    return 0.0
