"""Non-saturating activations: the ReLU family, ELU, SELU, GELU, Swish and Mish.

torch's kernels are reused wherever torch has the function (ReLU, leaky ReLU, RReLU, PReLU, ELU,
SELU, exact and tanh GELU, SiLU, Mish); gradwell adds what torch lacks: the chapter's defaults,
the sigmoid approximation of GELU and Swish with a fixed or learnable beta.

What gradwell knows about each activation (its names, module classes, recommended initializer,
display name, fused-step kernel and whether seeds can share it) is one `ActivationInfo` record;
every table that other modules read is derived from the records, and `register_activation` adds
one more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

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

    >>> LeakyReLU()(torch.tensor([-1.0, 2.0]))
    tensor([-0.2000,  2.0000])
    """

    def __init__(self, alpha: float = 0.2, inplace: bool = False) -> None:
        super().__init__(check_finite("LeakyReLU alpha", alpha, low=0.0), inplace)

    @property
    def alpha(self) -> float:
        return self.negative_slope


class RReLU(nn.RReLU):
    """Randomized leaky ReLU: slope ~ U(lower, upper) per element in training, their mean in eval.

    Defaults 1/8 and 1/3 as in Xu et al. (2015), who found the randomness acts as a regularizer.

    >>> RReLU().eval()(torch.tensor([-24.0, 1.0]))  # in eval, the mean slope (1/8 + 1/3) / 2
    tensor([-5.5000,  1.0000])
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

    >>> act = PReLU(num_parameters=3)  # one alpha per channel of (N, 3) inputs
    >>> act(torch.full((2, 3), -4.0))[0].detach(), act.weight.shape
    (tensor([-1., -1., -1.]), torch.Size([3]))
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25) -> None:
        super().__init__(
            positive_int("PReLU num_parameters", num_parameters), check_finite("PReLU init", init)
        )


class ELU(nn.ELU):
    """ELU_alpha(z) = z if z > 0 else alpha (exp(z) - 1) (Clevert et al., 2015); alpha 1 is smooth at 0.

    >>> ELU()(torch.tensor([-100.0, 0.0, 2.0]))  # saturates at -alpha for very negative z
    tensor([-1.,  0.,  2.])
    """

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
    """The Gaussian error linear unit, exact (default) or with the tanh or sigmoid approximation.

    >>> z = torch.linspace(-3, 3, 61)
    >>> error = {form: float((GELU(form)(z) - GELU()(z)).abs().max()) for form in ("tanh", "sigmoid")}
    >>> error["tanh"] < 1e-3, error["sigmoid"] < 0.03  # about 5e-4 and 2e-2
    (True, True)
    """

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

    >>> Swish()(torch.tensor([1.0]))  # 1 * sigmoid(1)
    tensor([0.7311])
    >>> act = Swish(learnable=True, num_parameters=3)  # one beta per channel
    >>> act(torch.randn(2, 3, 5)).shape, act.beta.shape
    (torch.Size([2, 3, 5]), torch.Size([3]))
    """

    def __init__(self, beta: float = 1.0, learnable: bool = False, num_parameters: int = 1) -> None:
        super().__init__()
        beta = check_finite("Swish beta", beta, low=0.0)  # beta < 0 zeroes positive inputs: not Swish
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


# The fused MLP step's kernels (gradwell.train.fused): a forward and torch's own backward kernel
# per activation, so the step can skip autograd for the hidden layers.
ops = torch.ops.aten
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class FusedKernel(NamedTuple):
    """An activation as gradwell.train.fused runs it: a forward and a backward, by hand.

    ``backward(grad, z, a)`` maps d loss / d a to d loss / d z from the pre-activation z (None
    unless `needs_z`) and the output a. When the backward needs only a, the forward may work in
    place on z, saving an allocation per layer. A learned `parameter` gets its gradient from
    ``parameter_grad(grad, z, a)``, summed to the parameter's shape (the forward reads the
    parameter at each call: the optimizer updates it in place).
    """

    forward: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor, Tensor | None, Tensor], Tensor]
    needs_z: bool
    parameter: nn.Parameter | None = None  # what the activation learns: PReLU's alpha, Swish's beta
    parameter_grad: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None  # (grad, z, a) -> d/dparameter


def exactly(
    cls: type[nn.Module],
    forward: Callable[[Tensor], Tensor],
    backward: Callable[[Tensor, Tensor | None, Tensor], Tensor],
    needs_z: bool,
) -> Callable[[nn.Module], FusedKernel | None]:
    """A fused kernel for modules of exactly `cls`: a subclass may compute another function."""
    found = FusedKernel(forward, backward, needs_z)
    return lambda module: found if type(module) is cls else None


def selu_backward(grad: Tensor, a: Tensor) -> Tensor:
    """SELU's backward from its output: torch's ELU backward kernel with SELU's alpha and scale."""
    return ops.elu_backward(grad, SELU_ALPHA, SELU_SCALE, 1.0, True, a)


IDENTITY_KERNEL = FusedKernel(lambda z: z, lambda g, z, a: g, False)
SILU_KERNEL = FusedKernel(F.silu, lambda g, z, a: ops.silu_backward(g, z), True)


def leaky_relu_kernel(module: nn.Module) -> FusedKernel:
    slope = module.negative_slope
    return FusedKernel(
        lambda z: F.leaky_relu(z, slope), lambda g, z, a: ops.leaky_relu_backward(g, z, slope, False), True
    )


def elu_kernel(module: nn.Module) -> FusedKernel:
    alpha = module.alpha
    return FusedKernel(
        lambda z: F.elu_(z, alpha), lambda g, z, a: ops.elu_backward(g, alpha, 1.0, 1.0, True, a), False
    )


def gelu_kernel(module: nn.Module) -> FusedKernel | None:
    """Exact and tanh GELU through torch's kernels; the sigmoid form is Swish with beta 1.702."""
    approximate = module.approximate
    if approximate == "sigmoid":
        return swish_formula(1.702)
    if approximate not in ("none", "tanh"):
        return None
    return FusedKernel(
        lambda z: F.gelu(z, approximate=approximate),
        lambda g, z, a: ops.gelu_backward(g, z, approximate=approximate),
        True,
    )


def sum_to_channels(values: Tensor, parameter: Tensor) -> Tensor:
    """A (batch, features) tensor summed to a parameter of one value per feature, or of one value."""
    return values.sum(0) if parameter.numel() > 1 else values.sum().reshape(1)


def swish_formula(beta: Tensor | float) -> FusedKernel:
    """z sigmoid(beta z) for any beta: dz = g (s + beta z s (1 - s)), d beta = g z^2 s (1 - s)."""

    def backward(g: Tensor, z: Tensor, a: Tensor) -> Tensor:
        s = torch.sigmoid(beta * z)
        return g * (s + beta * z * s * (1 - s))

    return FusedKernel(lambda z: z * torch.sigmoid(beta * z), backward, True)


def learnable_swish_kernel(module: Swish) -> FusedKernel:
    beta = module.beta

    def parameter_grad(g: Tensor, z: Tensor, a: Tensor) -> Tensor:
        s = torch.sigmoid(beta * z)
        return sum_to_channels(g * z * z * s * (1 - s), beta)

    formula = swish_formula(beta)
    return FusedKernel(formula.forward, formula.backward, True, beta, parameter_grad)


def swish_kernel(module: nn.Module) -> FusedKernel | None:
    """SiLU's kernel for nn.SiLU and Swish with beta 1; the formula for any other fixed beta; a
    learnable beta gets its gradient too (one per feature of a (batch, features) input, or one)."""
    if type(module) is nn.SiLU or (isinstance(module, Swish) and not module.learnable and module.beta == 1.0):
        return SILU_KERNEL
    if type(module) is not Swish:
        return None
    return learnable_swish_kernel(module) if module.learnable else swish_formula(float(module.beta))


def prelu_kernel(module: nn.Module) -> FusedKernel | None:
    """PReLU: dz = g where z > 0 else alpha g; d alpha = z g where z <= 0 (torch's convention at 0)."""
    if type(module) not in (nn.PReLU, PReLU):
        return None
    alpha = module.weight
    return FusedKernel(
        lambda z: F.prelu(z, alpha),
        lambda g, z, a: torch.where(z > 0, g, g * alpha),
        True,
        alpha,
        lambda g, z, a: sum_to_channels(torch.where(z > 0, 0.0, g * z), alpha),
    )


def rrelu_kernel(module: nn.Module) -> FusedKernel | None:
    """RReLU: the forward draws its slopes in training as the eager module does (F.rrelu, same
    generator; the mean slope in eval); the backward recovers each slope as a / z, exact up to two
    roundings for any pre-activation that is not subnormal."""
    if type(module) not in (nn.RReLU, RReLU):
        return None
    lower, upper = module.lower, module.upper
    return FusedKernel(
        lambda z: F.rrelu(z, lower, upper, training=module.training),
        lambda g, z, a: torch.where(z >= 0, g, g * a / z),
        True,
    )


@dataclass(frozen=True)
class ActivationInfo:
    """Everything gradwell knows about one activation, declared once.

    The name tables (ACTIVATIONS, ALIASES, module_names(), gradwell.init.RECOMMENDED, the doctor's
    display names), the fused step's kernels and the seed-batched path's elementwise modules are
    all derived from these records, so adding an activation is one record (`register_activation`)
    and no optional table can be forgotten.

    Attributes:
        name: the canonical name (a key of gradwell.init.RECOMMENDED when `init` is set).
        modules: the module classes it covers, subclasses included unless a record of their own
            lists them (the most specific record wins).
        init: the name of the initializer the chapter recommends (a key of
            gradwell.init.INITIALIZERS); None where gradwell has no row for it, which leaves its
            modules unknown to recommended_init. A name only, so that this module never imports
            gradwell.init (init derives its table from these records).
        factory: builds the module for ``get_activation(name, **options)``; None for a class torch
            has and gradwell gives no name of its own (nn.Softmax, nn.CELU, nn.Softplus).
        aliases: other names get_activation accepts, each with its factory; they resolve to `name`.
        display: the name the doctor writes (gradwell.diagnose.rules); None writes `name`.
        fused: the fused MLP step's kernel for a module it covers, returning None where the
            module's settings rule it out; None when there is no kernel at all.
        stackable: parameter-free and elementwise, so that K seeds can share one module applied
            to (K, B, F) inputs (gradwell.experiment.batched); a module that has parameters or
            buffers is refused there all the same.
        functions: torch's functional forms of it (``torch.relu``, ``F.relu``, ``Tensor.relu``),
            which the doctor measures where a model's ``forward`` calls them
            (gradwell.diagnose.trace).

    >>> info = activation_info("selu")
    >>> info.init, info.display, info.stackable, info.fused(nn.SELU()) is not None
    ('lecun_normal', 'SELU', True, True)
    """

    name: str
    modules: tuple[type[nn.Module], ...]
    init: str | None = None
    factory: Callable[..., nn.Module] | None = None
    aliases: Mapping[str, Callable[..., nn.Module]] = field(default_factory=dict)
    display: str | None = None
    fused: Callable[[nn.Module], FusedKernel | None] | None = None
    stackable: bool = False
    functions: tuple[Callable[..., Tensor], ...] = ()


# He normal and LeCun normal as the chapter writes them for the non-saturating activations; Keras's
# default (Glorot uniform) for the saturating ones, softmax and none.
BUILTIN: tuple[ActivationInfo, ...] = (
    ActivationInfo(
        "relu", (nn.ReLU,), "he_normal", ReLU, display="ReLU", stackable=True,
        functions=(torch.relu, torch.relu_, F.relu, F.relu_, Tensor.relu, Tensor.relu_),
        fused=exactly(nn.ReLU, torch.relu_, lambda g, z, a: ops.threshold_backward(g, a, 0), False),
    ),
    # alpha 0.2: Xu et al. (2015) found a large leak better
    ActivationInfo(
        "leaky_relu", (nn.LeakyReLU,), "he_normal", LeakyReLU, display="leaky ReLU",
        fused=leaky_relu_kernel, stackable=True, functions=(F.leaky_relu, F.leaky_relu_),
    ),
    # random slopes (RReLU) and learned ones (PReLU): not shareable by seeds
    ActivationInfo("rrelu", (nn.RReLU,), "he_normal", RReLU, display="RReLU", fused=rrelu_kernel),
    ActivationInfo("prelu", (nn.PReLU,), "he_normal", PReLU, display="PReLU", fused=prelu_kernel),
    ActivationInfo(
        "elu", (nn.ELU,), "he_normal", ELU, display="ELU", fused=elu_kernel, stackable=True,
        functions=(F.elu, F.elu_),
    ),
    ActivationInfo(
        "selu", (nn.SELU,), "lecun_normal", SELU, display="SELU", stackable=True,
        functions=(torch.selu, torch.selu_, F.selu),
        fused=exactly(nn.SELU, torch.selu_, lambda g, z, a: selu_backward(g, a), False),
    ),
    ActivationInfo(
        "gelu", (GELU, nn.GELU), "he_normal", GELU, display="GELU", fused=gelu_kernel, stackable=True,
        functions=(F.gelu,),
        aliases={"gelu_tanh": lambda: GELU("tanh"), "gelu_sigmoid": lambda: GELU("sigmoid")},
    ),
    ActivationInfo(
        "swish", (Swish, nn.SiLU), "he_normal", Swish, aliases={"silu": Swish}, display="Swish",
        fused=swish_kernel, stackable=True, functions=(F.silu,),
    ),
    ActivationInfo(
        "mish", (nn.Mish,), "he_normal", Mish, display="Mish", stackable=True, functions=(F.mish,),
        fused=exactly(nn.Mish, F.mish, lambda g, z, a: ops.mish_backward(g, z), True),
    ),
    ActivationInfo(
        "sigmoid", (nn.Sigmoid,), "glorot_uniform", Sigmoid, stackable=True,
        functions=(torch.sigmoid, torch.sigmoid_, F.sigmoid, Tensor.sigmoid, Tensor.sigmoid_),
        fused=exactly(nn.Sigmoid, torch.sigmoid_, lambda g, z, a: ops.sigmoid_backward(g, a), False),
    ),
    ActivationInfo(
        "tanh", (nn.Tanh,), "glorot_uniform", Tanh, stackable=True,
        functions=(torch.tanh, torch.tanh_, F.tanh, Tensor.tanh, Tensor.tanh_),
        fused=exactly(nn.Tanh, torch.tanh_, lambda g, z, a: ops.tanh_backward(g, a), False),
    ),
    # an output layer's normalization over a dimension: a name for the initialization table only
    ActivationInfo(
        "softmax", (nn.Softmax,), "glorot_uniform", functions=(F.softmax, torch.softmax, Tensor.softmax),
    ),
    # nn.Identity swallows any argument: wrapped so that options given to "linear" raise
    ActivationInfo(
        "linear", (nn.Identity,), "glorot_uniform", lambda: nn.Identity(),
        aliases={"none": lambda: nn.Identity()}, fused=lambda module: IDENTITY_KERNEL, stackable=True,
    ),
    # torch's, with no name or initialization row in gradwell: shareable by seeds all the same
    ActivationInfo("celu", (nn.CELU,), stackable=True),
    ActivationInfo("softplus", (nn.Softplus,), stackable=True, functions=(F.softplus,)),
)  # fmt: skip

# Derived from the records, kept current in place by register_activation (so that an import of
# any of them stays true); change them only through it.
RECORDS: dict[str, ActivationInfo] = {}  # canonical name -> record, in declaration order
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {}  # every name get_activation takes
ALIASES: dict[str, str] = {}  # alias -> canonical name
RECOMMENDED_INIT: dict[str, str] = {}  # canonical name -> initializer name (gradwell.init.RECOMMENDED)
DISPLAY_NAMES: dict[str, str] = {}  # canonical name -> the doctor's name (gradwell.diagnose.rules)
BY_MODULE: dict[type[nn.Module], ActivationInfo] = {}  # module class -> its record
BY_FUNCTION: dict[Callable[..., Tensor], str] = {}  # torch function -> canonical name (the doctor's)


def derive() -> None:
    """Rebuild every derived table from RECORDS, in place."""
    for table in (ACTIVATIONS, ALIASES, RECOMMENDED_INIT, DISPLAY_NAMES, BY_MODULE, BY_FUNCTION):
        table.clear()
    for info in RECORDS.values():
        if info.factory is not None:
            ACTIVATIONS[info.name] = info.factory
        ACTIVATIONS.update(info.aliases)
        ALIASES.update(dict.fromkeys(info.aliases, info.name))
        if info.init is not None:
            RECOMMENDED_INIT[info.name] = info.init
        if info.display is not None:
            DISPLAY_NAMES[info.name] = info.display
        BY_MODULE.update(dict.fromkeys(info.modules, info))
        BY_FUNCTION.update(dict.fromkeys(info.functions, info.name))


def register_activation(info: ActivationInfo) -> ActivationInfo:
    """Declare a new activation: its name, modules, initializer and kernels, in one record.

    From then on get_activation, recommended_init, the doctor, the fused MLP step and seed-batched
    training all know it. Names and module classes already declared are refused: one record per
    activation. A record with a name of its own (a factory or aliases) needs an `init`, since
    gradwell's builders initialize every layer by its activation. `unregister_activation` undoes it.

    >>> class Square(nn.Module):
    ...     def forward(self, z: Tensor) -> Tensor:
    ...         return z * z
    >>> info = register_activation(ActivationInfo("square", (Square,), init="glorot_uniform", factory=Square))
    >>> from gradwell.init import recommended_init
    >>> type(get_activation("square")).__name__, recommended_init("square"), activation_name(Square())
    ('Square', 'glorot_uniform', 'square')
    >>> unregister_activation("square").name
    'square'
    """
    if not isinstance(info, ActivationInfo):
        raise GradwellError(f"register_activation takes an ActivationInfo; got {type(info).__name__}")
    taken = [n for n in (info.name, *info.aliases) if n in RECORDS or n in ACTIVATIONS]
    if taken:
        raise GradwellError(f"activation name {taken[0]!r} is already declared; unregister it first")
    if not info.modules or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in info.modules):
        raise GradwellError(
            f"activation {info.name!r} needs one or more nn.Module classes; got {info.modules!r}"
        )
    covered = [c for c in info.modules if c in BY_MODULE]
    if covered:
        owner = BY_MODULE[covered[0]].name
        raise GradwellError(f"{covered[0].__name__} is already declared by activation {owner!r}")
    if (info.factory is not None or info.aliases) and info.init is None:
        raise GradwellError(
            f"activation {info.name!r} has a name for get_activation but no init to build it with"
        )
    RECORDS[info.name] = info
    derive()
    return info


def unregister_activation(name: str) -> ActivationInfo:
    """Remove the record `name` added by register_activation (built-in records stay)."""
    if any(info.name == name for info in BUILTIN):
        raise GradwellError(f"activation {name!r} is built in and cannot be unregistered")
    if name not in RECORDS:
        builtin = {info.name for info in BUILTIN}
        raise unknown_name("registered activation", name, [n for n in RECORDS if n not in builtin])
    info = RECORDS.pop(name)
    derive()
    return info


def register_builtins() -> None:
    for info in BUILTIN:
        register_activation(info)


register_builtins()


def activation_info(activation: str | nn.Module) -> ActivationInfo | None:
    """The record of an activation name (or alias) or module, None when there is none.

    A module's record is that of the most specific class in its type's method resolution order
    that a record lists, so a subclass with a record of its own gets that one.
    """
    if isinstance(activation, nn.Module):
        return next((BY_MODULE[c] for c in type(activation).__mro__ if c in BY_MODULE), None)
    if not isinstance(activation, str):
        return None
    return RECORDS.get(ALIASES.get(activation, activation))


def module_names() -> tuple[tuple[type[nn.Module], str], ...]:
    """(module class, canonical name) of every record in the initialization table."""
    return tuple(
        (cls, info.name) for info in RECORDS.values() if info.init is not None for cls in info.modules
    )


def stackable_modules() -> tuple[type[nn.Module], ...]:
    """The module classes seed-batched training may share across seeds (parameter-free, elementwise)."""
    return tuple(cls for info in RECORDS.values() if info.stackable for cls in info.modules)


def get_activation(spec: str | nn.Module | None, **options: float) -> nn.Module:
    """A fresh activation module for a name in ACTIVATIONS; modules pass through unchanged.

    `options` go to the module's constructor.

    >>> get_activation("leaky_relu", alpha=0.01)
    LeakyReLU(negative_slope=0.01)
    >>> get_activation("relu6")
    Traceback (most recent call last):
        ...
    gradwell.errors.GradwellError: unknown activation 'relu6' (did you mean 'relu'?); valid: relu, ...
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


def activation_name(activation: str | nn.Module | None) -> str:
    """The canonical name (a key of gradwell.init.RECOMMENDED) of an activation name or module."""
    if activation is None:
        return "linear"
    if isinstance(activation, nn.Module):
        info = activation_info(activation)
        if info is None or info.init is None:
            valid = ", ".join(sorted({cls.__name__ for cls, _ in module_names()}))
            raise GradwellError(f"unknown activation module {type(activation).__name__}; known: {valid}")
        return info.name
    if activation in ALIASES:
        return ALIASES[activation]
    if activation not in ACTIVATIONS and activation not in RECOMMENDED_INIT:
        # names without a factory of their own (softmax) are valid here, for the init table
        raise unknown_name(
            "activation", activation, [*ACTIVATIONS, *(n for n in RECOMMENDED_INIT if n not in ACTIVATIONS)]
        )
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
