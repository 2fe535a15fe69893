"""Tests of gradwell.init: exact scales, distributions (Kolmogorov-Smirnov), fans, Keras as oracle,
the chapter's table of initializers per activation, and a 100-layer self-normalizing network."""

import math

import keras
import numpy as np
import pytest
import torch
from conftest import rel_error
from scipy import stats
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
)
from gradwell.errors import GradwellError
from gradwell.init import (
    INITIALIZERS,
    RECOMMENDED,
    TRUNCATED_NORMAL_STD,
    compute_fans,
    get_initializer,
    glorot_normal_,
    glorot_uniform_,
    he_normal_,
    he_uniform_,
    lecun_normal_,
    lecun_uniform_,
    recommended_init,
    recommended_initializer,
    standard_normal_,
    variance_scaling_,
)

# torch weights (out, in, *kernel) and their fans counted by hand: in/out channels x receptive field
LAYERS = {
    "linear": (nn.Linear(200, 300, device="meta"), 200, 300),
    "conv1d": (nn.Conv1d(16, 32, 5, device="meta"), 16 * 5, 32 * 5),
    "conv2d": (nn.Conv2d(8, 24, (3, 5), device="meta"), 8 * 15, 24 * 15),
    "conv3d": (nn.Conv3d(6, 12, (2, 3, 4), device="meta"), 6 * 24, 12 * 24),
}
SHAPES = {name: tuple(layer.weight.shape) for name, (layer, _, _) in LAYERS.items()}
FANS = {name: (fan_in, fan_out) for name, (_, fan_in, fan_out) in LAYERS.items()}

# each named initializer: (distribution, Var[w] as a function of the fans), from the papers
NAMED = {
    "glorot_normal": ("normal", lambda fan_in, fan_out: 2.0 / (fan_in + fan_out)),
    "glorot_uniform": ("uniform", lambda fan_in, fan_out: 2.0 / (fan_in + fan_out)),
    "he_normal": ("normal", lambda fan_in, fan_out: 2.0 / fan_in),
    "he_uniform": ("uniform", lambda fan_in, fan_out: 2.0 / fan_in),
    "lecun_normal": ("normal", lambda fan_in, fan_out: 1.0 / fan_in),
    "lecun_uniform": ("uniform", lambda fan_in, fan_out: 1.0 / fan_in),
    "standard_normal": ("normal", lambda fan_in, fan_out: 1.0),
}
MODE_FAN = {
    "fan_in": lambda fan_in, fan_out: fan_in,
    "fan_out": lambda fan_in, fan_out: fan_out,
    "fan_avg": lambda fan_in, fan_out: (fan_in + fan_out) / 2,
}
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
KERAS_DISTRIBUTION = {
    "normal": "untruncated_normal",
    "truncated_normal": "truncated_normal",
    "uniform": "uniform",
}


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit_draw(shape, distribution: str, seed: int = 7) -> torch.Tensor:
    """The same random stream drawn at unit scale: N(0, 1), N(0, 1) cut at +-2, or U(-1, 1)."""
    tensor = torch.empty(shape)
    if distribution == "normal":
        return tensor.normal_(0.0, 1.0, generator=seeded(seed))
    if distribution == "uniform":
        return tensor.uniform_(-1.0, 1.0, generator=seeded(seed))
    return nn.init.trunc_normal_(tensor, 0.0, 1.0, -2.0, 2.0, generator=seeded(seed))


def drawn_scale(tensor: torch.Tensor, unit: torch.Tensor) -> float:
    """The factor c with tensor = c * unit (least squares), after checking that such a c exists."""
    tensor, unit = tensor.double(), unit.double()
    scale = float((tensor * unit).sum() / (unit * unit).sum())
    assert rel_error(tensor, scale * unit) < 1e-6
    return scale


def variance(scale: float, distribution: str) -> float:
    """Var[w] of the distribution drawn as scale * unit_draw."""
    if distribution == "uniform":
        return scale**2 / 3
    if distribution == "truncated_normal":
        return (scale * TRUNCATED_NORMAL_STD) ** 2
    return scale**2


def expected_scale(var: float, distribution: str) -> float:
    """std for normal, r = sqrt(3 var) for uniform, std / 0.8796... before the cut for truncated."""
    if distribution == "uniform":
        return math.sqrt(3 * var)
    if distribution == "truncated_normal":
        return math.sqrt(var) / TRUNCATED_NORMAL_STD
    return math.sqrt(var)


def scipy_distribution(var: float, distribution: str):
    scale = expected_scale(var, distribution)
    if distribution == "uniform":
        return stats.uniform(-scale, 2 * scale)
    if distribution == "truncated_normal":
        return stats.truncnorm(-2.0, 2.0, scale=scale)
    return stats.norm(0.0, scale)


def ks_pvalue(tensor: torch.Tensor, var: float, distribution: str) -> float:
    return stats.kstest(tensor.double().flatten().numpy(), scipy_distribution(var, distribution).cdf).pvalue


# fans ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_fans_count_the_receptive_field_in_torch_layout(layer):
    module, fan_in, fan_out = LAYERS[layer]
    assert compute_fans(module.weight.shape) == (fan_in, fan_out)
    assert compute_fans(module.weight.shape) == nn.init._calculate_fan_in_and_fan_out(module.weight)


def test_fans_of_a_vector_are_its_length_as_in_keras():
    assert compute_fans((17,)) == (17, 17)


# exact scales: the same random stream drawn at unit scale, times the formula's scale -------------


@pytest.mark.parametrize("layer", SHAPES)
@pytest.mark.parametrize("name", NAMED)
def test_named_initializer_has_the_exact_variance(name, layer):
    distribution, var = NAMED[name]
    weight = INITIALIZERS[name](torch.empty(SHAPES[layer]), generator=seeded())
    scale = drawn_scale(weight, unit_draw(SHAPES[layer], distribution))
    assert scale == pytest.approx(expected_scale(var(*FANS[layer]), distribution), rel=1e-6)


@pytest.mark.parametrize("layer", SHAPES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("mode", MODE_FAN)
def test_variance_scaling_has_the_exact_variance(mode, distribution, layer):
    weight = variance_scaling_(torch.empty(SHAPES[layer]), 1.7, mode, distribution, seeded())
    scale = drawn_scale(weight, unit_draw(SHAPES[layer], distribution))
    var = 1.7 / MODE_FAN[mode](*FANS[layer])
    assert scale == pytest.approx(expected_scale(var, distribution), rel=1e-6)
    assert variance(scale, distribution) == pytest.approx(var, rel=1e-6)


def test_truncated_normal_correction_restores_the_variance():
    assert stats.truncnorm(-2.0, 2.0).std() == pytest.approx(TRUNCATED_NORMAL_STD, rel=1e-15)
    assert scipy_distribution(0.3, "truncated_normal").var() == pytest.approx(0.3, rel=1e-12)


def test_bounds_uniform_at_r_and_truncated_normal_at_two_stds():
    var = 2.0 / 500  # he on fan_in 500
    uniform = he_uniform_(torch.empty(400, 500), generator=seeded())
    limit = math.sqrt(3 * var)
    assert limit * (1 - 1e-4) < uniform.abs().max() <= limit
    truncated = variance_scaling_(torch.empty(400, 500), 2.0, "fan_in", "truncated_normal", seeded())
    cut = 2 * math.sqrt(var) / TRUNCATED_NORMAL_STD
    assert cut * (1 - 1e-3) < truncated.abs().max() <= cut * (1 + 1e-7)
    untruncated = he_normal_(torch.empty(400, 500), generator=seeded())
    assert untruncated.abs().max() > 4 * math.sqrt(var)  # 200 000 draws reach 4 sigma: no cut
    for tensor in (uniform, truncated, untruncated):
        assert float(tensor.double().var()) == pytest.approx(var, rel=0.01)


# distributions: Kolmogorov-Smirnov ----------------------------------------------------------------


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_distribution_passes_kolmogorov_smirnov_and_the_wrong_ones_fail(distribution):
    weight = variance_scaling_(torch.empty(400, 500), 2.0, "fan_avg", distribution, seeded())
    var = 2.0 / 450
    assert ks_pvalue(weight, var, distribution) > 0.01
    for other in DISTRIBUTIONS:
        if other != distribution:
            assert ks_pvalue(weight, var, other) < 1e-6
    assert ks_pvalue(weight, 2.0 / 500, distribution) < 1e-6  # fan_in's variance: 10% off


@pytest.mark.parametrize("name", NAMED)
def test_named_initializer_passes_kolmogorov_smirnov(name):
    distribution, var = NAMED[name]
    weight = INITIALIZERS[name](torch.empty(64, 32, 5, 5), generator=seeded())
    assert ks_pvalue(weight, var(32 * 25, 64 * 25), distribution) > 0.01


# Keras 3 as oracle: its (*kernel, in, out) layout is torch's (out, in, *kernel) reordered ----------


def keras_shape(shape):
    return (*shape[2:], shape[1], shape[0])


def keras_scale(initializer, shape, distribution: str) -> float:
    """Keras's scale, read off a draw against Keras's own unit draw with the same seed."""
    drawn = initializer(shape)
    if distribution == "normal":
        unit = keras.random.normal(shape, seed=11)
    elif distribution == "uniform":
        unit = keras.random.uniform(shape, minval=-1.0, maxval=1.0, seed=11)
    else:
        unit = keras.random.truncated_normal(shape, seed=11)
    return drawn_scale(torch.as_tensor(drawn).cpu(), torch.as_tensor(unit).cpu())


@pytest.mark.parametrize("layer", ["linear", "conv2d", "conv3d"])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("mode", MODE_FAN)
def test_variance_scaling_matches_keras(mode, distribution, layer):
    shape = SHAPES[layer]
    ours = drawn_scale(
        variance_scaling_(torch.empty(shape), 0.6, mode, distribution, seeded()),
        unit_draw(shape, distribution),
    )
    initializer = keras.initializers.VarianceScaling(0.6, mode, KERAS_DISTRIBUTION[distribution], seed=11)
    assert ours == pytest.approx(keras_scale(initializer, keras_shape(shape), distribution), rel=1e-6)


# Keras's *Normal initializers truncate: the distributions differ, the variances agree
KERAS_NAMED = {
    "glorot_normal": (keras.initializers.GlorotNormal, "truncated_normal"),
    "glorot_uniform": (keras.initializers.GlorotUniform, "uniform"),
    "he_normal": (keras.initializers.HeNormal, "truncated_normal"),
    "he_uniform": (keras.initializers.HeUniform, "uniform"),
    "lecun_normal": (keras.initializers.LecunNormal, "truncated_normal"),
    "lecun_uniform": (keras.initializers.LecunUniform, "uniform"),
    "standard_normal": (lambda seed: keras.initializers.RandomNormal(0.0, 1.0, seed), "normal"),
}


@pytest.mark.parametrize("name", NAMED)
def test_named_initializer_variance_matches_keras(name):
    shape = SHAPES["conv2d"]
    distribution = NAMED[name][0]
    ours = drawn_scale(
        INITIALIZERS[name](torch.empty(shape), generator=seeded()), unit_draw(shape, distribution)
    )
    factory, keras_distribution = KERAS_NAMED[name]
    theirs = keras_scale(factory(seed=11), keras_shape(shape), keras_distribution)
    assert variance(ours, distribution) == pytest.approx(variance(theirs, keras_distribution), rel=1e-6)


# generators --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMED)
def test_generator_reproduces_and_leaves_the_global_stream_alone(name):
    initializer = INITIALIZERS[name]
    state = torch.get_rng_state()
    first = initializer(torch.empty(30, 20), generator=seeded(3))
    again = initializer(torch.empty(30, 20), generator=seeded(3))
    other = initializer(torch.empty(30, 20), generator=seeded(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(state, torch.get_rng_state())


def test_initializer_fills_a_parameter_in_place_without_autograd():
    weight = nn.Linear(20, 30).weight
    assert he_normal_(weight, generator=seeded()) is weight
    assert weight.grad_fn is None and weight.requires_grad
    assert drawn_scale(weight.detach(), unit_draw((30, 20), "normal")) == pytest.approx(
        math.sqrt(0.1), rel=1e-6
    )


def test_get_initializer_resolves_names_and_passes_callables():
    assert get_initializer("lecun_normal") is lecun_normal_
    assert {name: get_initializer(name) for name in NAMED} == INITIALIZERS
    custom = nn.init.orthogonal_
    assert get_initializer(custom) is custom
    assert standard_normal_ is INITIALIZERS["standard_normal"]


# the chapter's table -----------------------------------------------------------------------------

GLOROT = ["linear", "none", None, "tanh", "sigmoid", "softmax"]
HE = [
    "relu",
    "leaky_relu",
    "rrelu",
    "prelu",
    "elu",
    "gelu",
    "gelu_tanh",
    "gelu_sigmoid",
    "swish",
    "silu",
    "mish",
]
LECUN = ["selu"]
GLOROT_MODULES = [Sigmoid(), Tanh(), nn.Identity(), nn.Softmax(dim=1)]
HE_MODULES = [
    ReLU(),
    LeakyReLU(),
    nn.LeakyReLU(),
    RReLU(),
    PReLU(),
    ELU(),
    GELU(),
    GELU("tanh"),
    GELU("sigmoid"),
    nn.GELU(approximate="tanh"),
    Swish(),
    Swish(1.5, learnable=True),
    nn.SiLU(),
    Mish(),
]


def test_table_covers_every_activation_name():
    assert {name for name in GLOROT + HE + LECUN if name is not None} >= set(ACTIVATIONS)
    assert set(RECOMMENDED) <= set(GLOROT + HE + LECUN)


@pytest.mark.parametrize(
    ("activation", "expected"),
    [(name, "glorot_uniform") for name in GLOROT + GLOROT_MODULES]
    + [(name, "he_normal") for name in HE + HE_MODULES]
    + [("selu", "lecun_normal"), (SELU(), "lecun_normal")],
    ids=str,
)
def test_recommended_init_follows_the_chapter(activation, expected):
    assert recommended_init(activation) == expected


def test_recommended_init_rejects_unknown_activations():
    with pytest.raises(GradwellError, match=r"unknown activation 'rellu' \(did you mean 'relu'\?\); valid: "):
        recommended_init("rellu")
    with pytest.raises(GradwellError, match="unknown activation module Hardswish; known: "):
        recommended_init(nn.Hardswish())


@pytest.mark.parametrize(
    ("activation", "slope"),
    [
        ("leaky_relu", 0.2),
        (LeakyReLU(alpha=0.5), 0.5),
        (nn.LeakyReLU(), 0.01),
        ("prelu", 0.25),
        ("rrelu", (1 / 8 + 1 / 3) / 2),
        (RReLU(0.1, 0.3), 0.2),
    ],
    ids=str,
)
def test_recommended_initializer_uses_the_leaky_gain(activation, slope):
    initializer = recommended_initializer(activation)
    var = 2.0 / ((1 + slope**2) * 512)
    weight = initializer(torch.empty(512, 512), generator=seeded())
    assert variance(drawn_scale(weight, unit_draw((512, 512), "normal")), "normal") == pytest.approx(
        var, rel=1e-6
    )
    assert float(weight.double().var()) == pytest.approx(var, rel=0.01)
    assert ks_pvalue(weight, var, "normal") > 0.01


@pytest.mark.parametrize(
    ("activation", "initializer"),
    [("relu", he_normal_), ("gelu", he_normal_), ("selu", lecun_normal_), ("tanh", glorot_uniform_)],
)
def test_recommended_initializer_is_the_named_one_without_a_leak(activation, initializer):
    assert recommended_initializer(activation) is initializer


def test_leaky_gain_keeps_the_signal_through_50_layers(generator):
    # E[leaky(z)^2] = (1 + a^2) / 2 Var[z]: the gain 2 / (1 + a^2) keeps the second moment, plain He
    # multiplies it by 1 + a^2 = 1.25 per layer
    def second_moment(initializer):
        x = torch.randn(256, 128, generator=generator)
        for _ in range(50):
            x = nn.functional.leaky_relu(x @ initializer(torch.empty(128, 128), generator=generator).T, 0.5)
        return float(x.square().mean())

    assert 0.3 < second_moment(recommended_initializer(LeakyReLU(alpha=0.5))) < 3
    assert second_moment(he_normal_) > 1000


# a 100-layer self-normalizing network (Klambauer et al., 2017) --------------------------------------


def layer_statistics(initializer, generator, depth=100, width=100, inputs=784, batch=1000):
    x = torch.randn(batch, inputs, generator=generator)
    x = (x - x.mean(0)) / x.std(0)
    means, stds = [], []
    for _ in range(depth):
        x = torch.selu(x @ initializer(torch.empty(width, x.shape[1]), generator=generator).T)
        means.append(float(x.mean()))
        stds.append(float(x.std()))
    return np.array(means), np.array(stds)


def test_selu_network_with_lecun_normal_self_normalizes(generator):
    means, stds = layer_statistics(lecun_normal_, generator)
    assert np.abs(means).max() < 0.1
    assert stds.min() > 0.8 and stds.max() < 1.2


def test_selu_network_with_he_normal_does_not(generator):
    _, stds = layer_statistics(he_normal_, generator)
    assert stds.max() > 1.2


# bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "mode"), [((0, 5), "fan_out"), ((5, 0), "fan_in"), ((4, 3, 0), "fan_avg"), ((0, 0), "fan_avg")]
)
def test_zero_fan_raises(shape, mode):
    with pytest.raises(GradwellError, match=rf"{mode} is 0 for a tensor of shape \({shape[0]}, "):
        variance_scaling_(torch.empty(shape), mode=mode)


@pytest.mark.parametrize("initializer", [glorot_normal_, he_uniform_, lecun_uniform_])
def test_zero_dimensional_tensor_raises(initializer):
    with pytest.raises(GradwellError, match="cannot compute the fans of a 0-d tensor"):
        initializer(torch.tensor(1.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "fan_inn"},
            r"unknown mode 'fan_inn' \(did you mean 'fan_in'\?\); valid: fan_in, fan_out, fan_avg",
        ),
        ({"mode": "FAN_AVG"}, r"unknown mode 'FAN_AVG'.*valid: fan_in, fan_out, fan_avg"),
        (
            {"distribution": "normall"},
            r"unknown distribution 'normall' \(did you mean 'normal'\?\); "
            r"valid: normal, truncated_normal, uniform",
        ),
        ({"scale": -1.0}, r"scale must be a finite number in \(0, inf\); got -1.0"),
        ({"scale": 0.0}, r"scale must be a finite number in \(0, inf\); got 0.0"),
        ({"scale": float("nan")}, r"scale must be a finite number in \(0, inf\); got nan"),
        ({"scale": float("inf")}, r"scale must be a finite number in \(0, inf\); got inf"),
        ({"scale": "two"}, r"scale must be a number, got 'two'"),
        ({"distribution": ["x"]}, r"unknown distribution \['x'\]; valid: normal, truncated_normal, uniform"),
        ({"mode": ["x"]}, r"unknown mode \['x'\]; valid: fan_in, fan_out, fan_avg"),
        ({"mode": {}}, r"unknown mode \{\}; valid: fan_in, fan_out, fan_avg"),
    ],
    ids=str,
)
def test_bad_arguments_raise_before_touching_the_tensor(kwargs, message, generator):
    weight = torch.randn(30, 20, generator=generator)
    before = weight.clone()
    with pytest.raises(GradwellError, match=message):
        variance_scaling_(weight, **kwargs)
    assert torch.equal(weight, before)


@pytest.mark.parametrize("initializer", [he_normal_, glorot_uniform_, standard_normal_])
def test_an_integer_tensor_is_refused_by_name(initializer):
    with pytest.raises(GradwellError, match=r"floating-point tensor .*; got a tensor of dtype torch.int64"):
        initializer(torch.empty(3, 4, dtype=torch.int64))
    with pytest.raises(GradwellError, match=r"floating-point tensor .*; got \[\[1.0, 2.0\]\]"):
        initializer([[1.0, 2.0]])


def test_unknown_initializer_name_suggests_the_closest():
    with pytest.raises(
        GradwellError, match=r"unknown initializer 'he_norml' \(did you mean 'he_normal'\?\); valid: "
    ):
        get_initializer("he_norml")
