"""Tests of gradwell.activations against float64 references of each formula, torch's kernels and autograd."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_error
from scipy import integrate, special, stats
from torch import nn

from gradwell.activations import (
    ACTIVATIONS,
    ELU,
    GELU,
    SELU,
    LeakyReLU,
    Mish,
    PReLU,
    ReLU,
    RReLU,
    Sigmoid,
    Swish,
    Tanh,
    activation_name,
    get_activation,
    negative_slope,
)
from gradwell.errors import GradwellError

# Klambauer et al. (2017), eq. 14: the fixed point (mean 0, variance 1) of a SELU layer
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# float64 references, written from the papers' formulas ------------------------------------------


def sigmoid(x):
    return special.expit(x)


def leaky(x, slope):
    return np.where(x > 0, x, slope * x)


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def selu(x):
    return SELU_SCALE * elu(x, SELU_ALPHA)


def gelu(x):
    return 0.5 * x * (1 + special.erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_sigmoid(x):
    return x * sigmoid(1.702 * x)


def swish(x, beta=1.0):
    return x * sigmoid(beta * x)


def mish(x):
    return x * np.tanh(np.logaddexp(0.0, x))  # softplus without overflow


# (module factory, float64 reference); each name of ACTIVATIONS appears through get_activation below
CASES = {
    "relu": (ReLU, lambda x: np.maximum(x, 0.0)),
    "leaky_relu": (LeakyReLU, lambda x: leaky(x, 0.2)),
    "leaky_relu_0.05": (lambda: LeakyReLU(alpha=0.05), lambda x: leaky(x, 0.05)),
    "rrelu_eval": (lambda: RReLU().eval(), lambda x: leaky(x, (1 / 8 + 1 / 3) / 2)),
    "rrelu_0.1_0.3_eval": (lambda: RReLU(0.1, 0.3).eval(), lambda x: leaky(x, 0.2)),
    "prelu": (PReLU, lambda x: leaky(x, 0.25)),
    # learnable parameters are created in float32: values exact in float32 keep the float64 check tight
    "prelu_init_0.125": (lambda: PReLU(init=0.125), lambda x: leaky(x, 0.125)),
    "elu": (ELU, elu),
    "elu_0.5": (lambda: ELU(alpha=0.5), lambda x: elu(x, 0.5)),
    "selu": (SELU, selu),
    "gelu": (GELU, gelu),
    "gelu_tanh": (lambda: GELU("tanh"), gelu_tanh),
    "gelu_sigmoid": (lambda: GELU("sigmoid"), gelu_sigmoid),
    "swish": (Swish, swish),
    "swish_1.5": (lambda: Swish(beta=1.5), lambda x: swish(x, 1.5)),
    "swish_learnable_0.75": (lambda: Swish(beta=0.75, learnable=True), lambda x: swish(x, 0.75)),
    "mish": (Mish, mish),
    "sigmoid": (Sigmoid, sigmoid),
    "tanh": (Tanh, np.tanh),
}

# get_activation's documented names: (class, float64 reference)
NAMES = {
    "relu": (nn.ReLU, CASES["relu"][1]),
    "leaky_relu": (LeakyReLU, CASES["leaky_relu"][1]),
    "rrelu": (RReLU, CASES["rrelu_eval"][1]),
    "prelu": (PReLU, CASES["prelu"][1]),
    "elu": (ELU, elu),
    "selu": (nn.SELU, selu),
    "gelu": (GELU, gelu),
    "gelu_tanh": (GELU, gelu_tanh),
    "gelu_sigmoid": (GELU, gelu_sigmoid),
    "swish": (Swish, swish),
    "silu": (Swish, swish),
    "mish": (nn.Mish, mish),
    "sigmoid": (nn.Sigmoid, sigmoid),
    "tanh": (nn.Tanh, np.tanh),
    "linear": (nn.Identity, lambda x: x),
    "none": (nn.Identity, lambda x: x),
}


@pytest.fixture
def x(generator) -> torch.Tensor:
    return 4 * torch.randn(32, 8, 16, generator=generator)  # (N, C, L), both signs, tails to |z| ~ 20


# formulas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_matches_the_float64_formula(case, x):
    factory, reference = CASES[case]
    expected = reference(x.double().numpy())
    with torch.no_grad():
        assert rel_error(factory()(x), expected) < 1e-6
        assert rel_error(factory().double()(x.double()), expected) < 1e-12


def test_selu_constants_are_the_fixed_point():
    # E[selu(z)] = 0 and E[selu(z)^2] = 1 for z ~ N(0, 1), integrated on each side of the kink
    def moment(f):
        return sum(
            integrate.quad(lambda z: f(z) * stats.norm.pdf(z), a, b, epsabs=1e-13)[0]
            for a, b in ((-np.inf, 0), (0, np.inf))
        )

    assert moment(lambda z: selu(np.float64(z))) == pytest.approx(0.0, abs=1e-9)
    assert moment(lambda z: selu(np.float64(z)) ** 2) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("module", "kernel"),
    [
        (LeakyReLU(), lambda x: F.leaky_relu(x, 0.2)),
        (RReLU().eval(), lambda x: F.rrelu(x, 1 / 8, 1 / 3, training=False)),
        (PReLU(), lambda x: F.prelu(x, torch.tensor([0.25]))),
        (ELU(alpha=0.5), lambda x: F.elu(x, 0.5)),
        (SELU(), F.selu),
        (GELU(), F.gelu),
        (GELU("tanh"), lambda x: F.gelu(x, approximate="tanh")),
        (Swish(), F.silu),
        (Mish(), F.mish),
    ],
    ids=lambda value: type(value).__name__,
)
def test_uses_torchs_kernel(module, kernel, x):
    with torch.no_grad():
        assert torch.equal(module(x), kernel(x))


# GELU approximations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approximate", "low", "high"),
    [("none", 0.0, 1e-15), ("tanh", 4.5e-4, 5e-4), ("sigmoid", 2.0e-2, 2.1e-2)],
)
def test_gelu_approximation_error_is_its_known_maximum(approximate, low, high):
    # measured max: tanh 4.73e-4 near z = -2.70, sigmoid 2.03e-2 near z = -2.27; the bands cannot both
    # hold if the two forms were swapped or replaced by the exact GELU
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    error = (GELU(approximate)(grid) - torch.from_numpy(gelu(grid.numpy()))).abs().max()
    assert low <= error <= high


# learnable parameters ----------------------------------------------------------------------------


def channel_parameter(generator, low, high, channels=8) -> torch.Tensor:
    return low + (high - low) * torch.rand(channels, generator=generator)


def test_prelu_per_channel_matches_the_formula_and_its_gradient(x, generator):
    prelu = PReLU(num_parameters=8)
    with torch.no_grad():
        prelu.weight.copy_(channel_parameter(generator, 0.05, 0.5))
    upstream = torch.randn(x.shape, generator=generator)
    (prelu(x) * upstream).sum().backward()

    alpha = prelu.weight.detach().double().requires_grad_()
    x64 = x.double()
    expected = torch.where(x64 > 0, x64, alpha[None, :, None] * x64)
    (expected * upstream.double()).sum().backward()
    with torch.no_grad():
        assert rel_error(prelu(x), expected) < 1e-6
    assert rel_error(prelu.weight.grad, alpha.grad) < 1e-5


@pytest.mark.parametrize("num_parameters", [1, 8])
def test_swish_learnable_beta_matches_the_formula_and_its_gradient(num_parameters, x, generator):
    module = Swish(learnable=True, num_parameters=num_parameters)
    with torch.no_grad():
        module.beta.copy_(channel_parameter(generator, 0.3, 2.0, num_parameters))
    upstream = torch.randn(x.shape, generator=generator)
    (module(x) * upstream).sum().backward()

    beta = module.beta.detach().double().requires_grad_()
    x64 = x.double()
    expected = x64 * torch.sigmoid(beta.view(1, -1, 1) * x64)
    (expected * upstream.double()).sum().backward()
    with torch.no_grad():
        assert rel_error(module(x), expected) < 1e-6
    assert module.beta.grad.shape == (num_parameters,)
    assert rel_error(module.beta.grad, beta.grad) < 1e-5


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (PReLU(num_parameters=3), "weight"),
        (Swish(learnable=True, num_parameters=3), "beta"),
        (Swish(learnable=True), "beta"),
    ],
    ids=["prelu", "swish_per_channel", "swish_scalar"],
)
def test_gradcheck_through_input_and_parameter(module, name, generator):
    module = module.double()
    x = torch.randn(4, 3, 5, generator=generator, dtype=torch.float64).requires_grad_()
    parameter = (
        0.2 + torch.rand(getattr(module, name).shape, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, p: torch.func.functional_call(module, {name: p}, (x,)), (x, parameter)
    )


def test_fixed_swish_has_no_parameters_and_learnable_swish_does():
    assert list(Swish(beta=1.5).parameters()) == []
    assert [p.shape for p in Swish(learnable=True, num_parameters=4).parameters()] == [(4,)]


# RReLU -------------------------------------------------------------------------------------------


def test_rrelu_draws_slopes_in_training_and_uses_the_mean_in_eval(generator):
    rrelu = RReLU(0.1, 0.3)
    x = -(0.1 + torch.rand(50_000, generator=generator))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first, second = rrelu(x), rrelu(x)
    assert not torch.equal(first, second)
    slopes = (first.double() / x.double()).numpy()
    assert slopes.min() >= 0.1 * (1 - 1e-6) and slopes.max() <= 0.3 * (1 + 1e-6)
    assert stats.kstest(slopes, stats.uniform(0.1, 0.2).cdf).pvalue > 0.01

    positive = torch.rand(1000, generator=generator)
    with torch.random.fork_rng():
        assert torch.equal(rrelu(positive), positive)
    rrelu.eval()
    assert torch.equal(rrelu(x), rrelu(x))
    assert rel_error(rrelu(x), 0.2 * x.double()) < 1e-6


# get_activation ----------------------------------------------------------------------------------


def test_documented_names_are_the_table():
    assert set(NAMES) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", NAMES)
def test_get_activation_resolves_each_name(name, x):
    cls, reference = NAMES[name]
    module = get_activation(name)
    assert type(module) is cls and module.training
    with torch.no_grad():
        assert rel_error(module.eval()(x), reference(x.double().numpy())) < 1e-6
    assert get_activation(name) is not module


def test_get_activation_defaults_and_none():
    assert get_activation("leaky_relu").alpha == 0.2
    assert (get_activation("rrelu").lower, get_activation("rrelu").upper) == (1 / 8, 1 / 3)
    assert get_activation("prelu").weight.item() == 0.25
    assert get_activation("elu").alpha == 1.0
    assert [get_activation(f"gelu{suffix}").approximate for suffix in ("", "_tanh", "_sigmoid")] == [
        "none",
        "tanh",
        "sigmoid",
    ]
    assert type(get_activation(None)) is nn.Identity


@pytest.mark.parametrize("module", [nn.GELU(), PReLU(), Swish(learnable=True), nn.Hardswish()], ids=str)
def test_get_activation_passes_modules_through(module):
    assert get_activation(module) is module


def test_get_activation_takes_options(x):
    leaky_relu = get_activation("leaky_relu", alpha=0.01)
    assert torch.equal(leaky_relu(x), F.leaky_relu(x, 0.01))
    assert get_activation("elu", alpha=0.5).alpha == 0.5
    assert get_activation("prelu", num_parameters=8).weight.shape == (8,)
    swish_module = get_activation("swish", beta=2.0, learnable=True)
    assert isinstance(swish_module.beta, nn.Parameter) and swish_module.beta.item() == 2.0


def test_get_activation_gives_fresh_parameters():
    first, second = get_activation("prelu"), get_activation("prelu")
    with torch.no_grad():
        first.weight.fill_(0.9)
    assert second.weight.item() == 0.25


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rellu", r"unknown activation 'rellu' \(did you mean 'relu'\?\); valid: relu, leaky_relu, "),
        ("gelu_tahn", r"unknown activation 'gelu_tahn' \(did you mean 'gelu_tanh'\?\)"),
        (3, r"unknown activation 3; valid: relu, "),
    ],
)
def test_get_activation_rejects_unknown_names(spec, message):
    with pytest.raises(GradwellError, match=message):
        get_activation(spec)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("leaky_relu", {"beta": 1.0}, r"bad options \{'beta': 1.0\} for activation 'leaky_relu'"),
        ("gelu_tanh", {"approximate": "none"}, r"bad options .* for activation 'gelu_tanh'"),
        ("linear", {"alpha": 0.3}, r"bad options \{'alpha': 0.3\} for activation 'linear'"),
        ("leaky_relu", {"alpha": -0.01}, r"LeakyReLU alpha must be a finite number in \[0, inf\); got -0.01"),
    ],
)
def test_get_activation_rejects_bad_options(name, options, message):
    with pytest.raises(GradwellError, match=message):
        get_activation(name, **options)


# canonical names and slopes, as the initialization table reads them ------------------------------

CANONICAL = {"gelu_tanh": "gelu", "gelu_sigmoid": "gelu", "silu": "swish", "none": "linear"}


@pytest.mark.parametrize("name", NAMES)
def test_activation_name_of_names_and_their_modules(name):
    canonical = CANONICAL.get(name, name)
    assert activation_name(name) == canonical
    assert activation_name(get_activation(name)) == canonical


@pytest.mark.parametrize(
    ("module", "canonical"),
    [
        (nn.GELU(approximate="tanh"), "gelu"),
        (nn.SiLU(), "swish"),
        (nn.LeakyReLU(), "leaky_relu"),
        (nn.Softmax(dim=-1), "softmax"),
        (nn.ELU(), "elu"),
        (nn.SELU(), "selu"),
        (None, "linear"),
        ("softmax", "softmax"),
    ],
    ids=str,
)
def test_activation_name_of_torch_modules(module, canonical):
    assert activation_name(module) == canonical


@pytest.mark.parametrize(
    ("activation", "slope"),
    [
        ("leaky_relu", 0.2),
        (nn.LeakyReLU(0.05), 0.05),
        ("prelu", 0.25),
        ("rrelu", (1 / 8 + 1 / 3) / 2),
        ("relu", 0.0),
        ("elu", 0.0),
    ],
    ids=str,
)
def test_negative_slope(activation, slope):
    assert negative_slope(activation) == pytest.approx(slope, rel=1e-7)


# bad hyperparameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: LeakyReLU(alpha=-0.1), r"LeakyReLU alpha must be a finite number in \[0, inf\); got -0.1"),
        (lambda: LeakyReLU(alpha=float("nan")), r"LeakyReLU alpha .*; got nan"),
        (lambda: ELU(alpha=-1.0), r"ELU alpha must be a finite number in \[0, inf\); got -1.0"),
        (lambda: RReLU(0.5, 0.1), r"RReLU needs lower <= upper; got lower=0.5, upper=0.1"),
        (lambda: RReLU(-0.1, 0.3), r"RReLU lower must be .*; got -0.1"),
        (lambda: RReLU(0.1, float("inf")), r"RReLU upper must be .*; got inf"),
        (lambda: PReLU(init=float("nan")), r"PReLU init must be a finite number.*; got nan"),
        (lambda: PReLU(num_parameters=0), r"PReLU num_parameters must be a positive int; got 0"),
        (lambda: PReLU(num_parameters=2.5), r"PReLU num_parameters must be a positive int; got 2.5"),
        (lambda: PReLU(num_parameters=True), r"PReLU num_parameters must be a positive int; got True"),
        (lambda: Swish(beta=float("nan")), r"Swish beta must be a finite number.*; got nan"),
        (lambda: Swish(beta=float("inf"), learnable=True), r"Swish beta must be a finite number.*; got inf"),
        (lambda: Swish(num_parameters=3), r"Swish num_parameters > 1 needs learnable=True"),
        (
            lambda: Swish(learnable=True, num_parameters=0),
            r"Swish num_parameters must be a positive int; got 0",
        ),
        (
            lambda: Swish(learnable=True, num_parameters=True),
            r"Swish num_parameters must be a positive int; got True",
        ),
        (
            lambda: GELU("tanhh"),
            r"unknown GELU approximation 'tanhh' \(did you mean 'tanh'\?\); valid: none, tanh, sigmoid",
        ),
    ],
    ids=lambda value: "" if callable(value) else value,
)
def test_bad_hyperparameters_raise(factory, message):
    with pytest.raises(GradwellError, match=message):
        factory()


# the records: one per activation, every table derived from them ---------------------------------


def test_the_derived_tables_are_the_ones_written_by_hand_before():
    from gradwell import activations
    from gradwell.diagnose.rules import DISPLAY
    from gradwell.init import RECOMMENDED

    hand_written = (
        (nn.ReLU, "relu"), (nn.LeakyReLU, "leaky_relu"), (nn.RReLU, "rrelu"), (nn.PReLU, "prelu"),
        (nn.ELU, "elu"), (nn.SELU, "selu"), (GELU, "gelu"), (nn.GELU, "gelu"), (Swish, "swish"),
        (nn.SiLU, "swish"), (nn.Mish, "mish"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
        (nn.Softmax, "softmax"), (nn.Identity, "linear"),
    )  # fmt: skip
    assert hand_written == activations.module_names()
    assert list(ACTIVATIONS) == [
        "relu", "leaky_relu", "rrelu", "prelu", "elu", "selu", "gelu", "gelu_tanh", "gelu_sigmoid",
        "swish", "silu", "mish", "sigmoid", "tanh", "linear", "none",
    ]  # fmt: skip
    assert activations.ALIASES == {
        "gelu_tanh": "gelu",
        "gelu_sigmoid": "gelu",
        "silu": "swish",
        "none": "linear",
    }
    he = ("relu", "leaky_relu", "rrelu", "prelu", "elu", "gelu", "swish", "mish")
    chapter = {
        **dict.fromkeys(("linear", "sigmoid", "tanh", "softmax"), "glorot_uniform"),
        **dict.fromkeys(he, "he_normal"),
        "selu": "lecun_normal",
    }
    assert chapter == RECOMMENDED
    assert DISPLAY == {
        "relu": "ReLU", "leaky_relu": "leaky ReLU", "rrelu": "RReLU", "prelu": "PReLU", "elu": "ELU",
        "selu": "SELU", "gelu": "GELU", "swish": "Swish", "mish": "Mish",
    }  # fmt: skip
    assert set(activations.stackable_modules()) == {
        nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
        nn.Tanh, nn.Softplus, nn.Identity, GELU, Swish,
    }  # fmt: skip
    with pytest.raises(GradwellError, match="unknown activation module CELU"):
        activation_name(nn.CELU())  # declared for seed-batching, still without an init row


def test_the_most_specific_record_covers_a_module():
    from gradwell.activations import activation_info

    assert activation_info(LeakyReLU()).name == "leaky_relu"  # gradwell's subclass of torch's
    assert activation_info(nn.GELU()) is activation_info("gelu_tanh") is activation_info("gelu")
    assert activation_info(nn.Conv1d(1, 1, 1)) is None and activation_info("nonsense") is None


class ScaledTanh(nn.Module):
    """s tanh(z): a toy activation gradwell does not know, with a fused kernel of its own."""

    def __init__(self, scale: float = 1.7) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * torch.tanh(x)


def scaled_tanh_kernel(module):
    from gradwell.activations import FusedKernel, ops

    s = module.scale
    # d(s tanh z)/dz = s (1 - tanh^2 z), from the output a = s tanh z: torch's tanh kernel on a / s
    return FusedKernel(
        lambda z: torch.tanh_(z).mul_(s), lambda g, z, a: ops.tanh_backward(g * s, a / s), False
    )


@pytest.fixture
def scaled_tanh():
    from gradwell.activations import ActivationInfo, register_activation, unregister_activation

    info = register_activation(
        ActivationInfo(
            "scaled_tanh", (ScaledTanh,), "glorot_uniform", ScaledTanh, aliases={"stanh": ScaledTanh},
            display="scaled tanh", fused=scaled_tanh_kernel, stackable=True,
        )
    )  # fmt: skip
    yield info
    unregister_activation(info.name)


def test_one_registered_record_reaches_every_table(scaled_tanh):
    from gradwell import activations
    from gradwell.diagnose.rules import DISPLAY
    from gradwell.experiment.batched import stack_problem
    from gradwell.init import RECOMMENDED, recommended_init
    from gradwell.train.fused import kernel

    assert type(get_activation("stanh", scale=2.0)) is ScaledTanh
    assert activation_name(ScaledTanh()) == activation_name("stanh") == "scaled_tanh"
    assert recommended_init(ScaledTanh()) == RECOMMENDED["scaled_tanh"] == "glorot_uniform"
    assert DISPLAY["scaled_tanh"] == "scaled tanh"
    assert (ScaledTanh, "scaled_tanh") in activations.module_names()
    assert ScaledTanh in activations.stackable_modules()
    assert kernel(ScaledTanh()) is not None
    net = nn.Sequential(nn.Linear(3, 4), ScaledTanh(), nn.Linear(4, 2))
    assert stack_problem([net, nn.Sequential(nn.Linear(3, 4), ScaledTanh(), nn.Linear(4, 2))]) is None


def test_registering_is_checked_and_undone():
    from gradwell import activations
    from gradwell.activations import ActivationInfo, register_activation, unregister_activation
    from gradwell.init import RECOMMENDED

    before = (dict(ACTIVATIONS), dict(RECOMMENDED), activations.module_names())
    info = ActivationInfo("scaled_tanh", (ScaledTanh,), "glorot_uniform", ScaledTanh)
    register_activation(info)
    with pytest.raises(GradwellError, match="'scaled_tanh' is already declared"):
        register_activation(ActivationInfo("scaled_tanh", (nn.Hardtanh,), "glorot_uniform"))
    assert unregister_activation("scaled_tanh") is info
    assert (dict(ACTIVATIONS), dict(RECOMMENDED), activations.module_names()) == before
    assert "scaled_tanh" not in activations.RECORDS and activations.activation_info(ScaledTanh()) is None
    with pytest.raises(GradwellError, match="'silu' is already declared"):
        register_activation(ActivationInfo("swish2", (ScaledTanh,), "he_normal", aliases={"silu": Swish}))
    with pytest.raises(GradwellError, match="Tanh is already declared by activation 'tanh'"):
        register_activation(ActivationInfo("tanh2", (nn.Tanh,), "glorot_uniform"))
    with pytest.raises(GradwellError, match="no init"):
        register_activation(ActivationInfo("scaled_tanh", (ScaledTanh,), factory=ScaledTanh))
    with pytest.raises(GradwellError, match="built in"):
        unregister_activation("relu")
    with pytest.raises(GradwellError, match="unknown registered activation"):
        unregister_activation("scaled_tanh")
    assert activations.activation_info(ScaledTanh()) is None


def test_a_registered_activation_trains_on_the_fused_path(scaled_tanh):
    from gradwell import optim
    from gradwell.data import Dataset, Split
    from gradwell.train import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = Dataset(Split(x, y), Split(x[:20], y[:20]), Split(x[:0], y[:0]), 3, "toy")

    def run(fast):
        torch.manual_seed(0)  # the same Linear initialization for both runs
        model = nn.Sequential(
            nn.Linear(6, 16), ScaledTanh(), nn.Linear(16, 8), ScaledTanh(1.2), nn.Linear(8, 3)
        ).double()
        optimizer = optim.create("adam", model.parameters(), lr=0.01)
        history = fit(
            model, data, optimizer=optimizer, epochs=3, batch_size=16, fast=fast, device="cpu", progress=False
        )
        return model, history

    eager_model, eager = run(False)
    model, fused = run(True)
    assert fused.path.startswith("training path: fused-mlp"), fused.path
    assert eager.path.startswith("training path: eager")
    for a, b in zip(eager.epochs, fused.epochs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-10)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-10)
    for value, other in zip(eager_model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.allclose(value, other, rtol=1e-10, atol=1e-12)
