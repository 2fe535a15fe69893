import itertools
import math
import warnings

import pytest
import torch
from scipy import stats
from torch import nn

from gradwell.errors import GradwellError
from gradwell.init import INITIALIZERS
from gradwell.models import cnn, hidden_blocks, mlp, summary
from gradwell.norm import BatchNorm

# expected Var[w] of each initializer, written from the papers' formulas, and whether it is normal
VARIANCES = {
    "glorot_normal": (lambda fi, fo: 2 / (fi + fo), True),
    "glorot_uniform": (lambda fi, fo: 2 / (fi + fo), False),
    "he_normal": (lambda fi, fo: 2 / fi, True),
    "he_uniform": (lambda fi, fo: 2 / fi, False),
    "lecun_normal": (lambda fi, fo: 1 / fi, True),
    "lecun_uniform": (lambda fi, fo: 1 / fi, False),
    "standard_normal": (lambda fi, fo: 1.0, True),
}


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def check_distribution(weight, variance, normal, tolerance=0.025):
    w = weight.detach().double().flatten()
    assert abs(float(w.var()) / variance - 1) < tolerance
    std = math.sqrt(variance)
    if normal:
        assert stats.kstest(w.numpy(), "norm", args=(0, std)).pvalue > 1e-3
    else:
        assert float(w.abs().max()) <= math.sqrt(3) * std * (1 + 1e-6)
        assert (
            stats.kstest(w.numpy(), "uniform", args=(-math.sqrt(3) * std, 2 * math.sqrt(3) * std)).pvalue
            > 1e-3
        )


def quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return mlp(**kwargs)


def test_hidden_widths_from_list_or_depth_and_width():
    model = mlp(12, 3, [7, 5])
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(12, 7), (7, 5), (5, 3)]
    model = mlp(12, 3, depth=4, width=6)
    assert [m.out_features for m in linears(model)] == [6, 6, 6, 6, 3]
    assert [m.out_features for m in linears(mlp(12, 3))] == [300, 100, 3]
    assert [m.out_features for m in linears(mlp(12, 3, []))] == [3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden": [4, 0]},
        {"hidden": [4, 2.5]},
        {"hidden": "300"},
        {"depth": 3},
        {"hidden": [4], "depth": 2, "width": 3},
        {"depth": -1, "width": 3},
        {"depth": 2, "width": 0},
        {"depth": 2, "width": [3, 4]},
        {"out_features": 0},
        {"in_features": (28, -1)},
    ],
)
def test_bad_widths_raise(kwargs):
    kwargs = {"in_features": 12, "out_features": 3, **kwargs}
    with pytest.raises(GradwellError):
        mlp(**kwargs)


def test_structure_names_and_blocks():
    model = mlp((28, 28), 10, [30, 20], input_batchnorm=True, dropout=0.1)
    assert list(dict(model.named_children())) == ["flatten", "input_norm", "hidden1", "hidden2", "output"]
    assert isinstance(model.flatten, nn.Flatten)
    assert isinstance(model.input_norm, BatchNorm) and model.input_norm.num_features == (784,)
    assert isinstance(model.output, nn.Linear) and model.output.out_features == 10
    assert [name for name, _ in hidden_blocks(model)] == ["hidden1", "hidden2"]
    assert list(dict(model.hidden1.named_children())) == ["linear", "activation", "dropout"]
    assert model(torch.randn(5, 28, 28)).shape == (5, 10)
    assert "flatten" not in dict(mlp(784, 10).named_children())
    assert "flatten" not in dict(mlp((784,), 10).named_children())


@pytest.mark.parametrize(
    ("activation", "expected", "normal"),
    [
        ("relu", lambda fi, fo: 2 / fi, True),
        ("elu", lambda fi, fo: 2 / fi, True),
        ("gelu", lambda fi, fo: 2 / fi, True),
        ("swish", lambda fi, fo: 2 / fi, True),
        ("mish", lambda fi, fo: 2 / fi, True),
        ("leaky_relu", lambda fi, fo: 2 / ((1 + 0.2**2) * fi), True),
        ("prelu", lambda fi, fo: 2 / ((1 + 0.25**2) * fi), True),
        ("selu", lambda fi, fo: 1 / fi, True),
        ("tanh", lambda fi, fo: 2 / (fi + fo), False),
        ("sigmoid", lambda fi, fo: 2 / (fi + fo), False),
        (None, lambda fi, fo: 2 / (fi + fo), False),
    ],
)
def test_auto_init_follows_the_chapters_table(activation, expected, normal, generator):
    model = mlp(250, 10, [150], activation=activation, generator=generator)
    hidden, output = linears(model)
    check_distribution(hidden.weight, expected(250, 150), normal)
    check_distribution(output.weight, 2 / (150 + 10), normal=False, tolerance=0.12)
    assert not hidden.bias.any() and not output.bias.any()


def test_auto_init_uses_the_activation_options(generator):
    model = mlp(
        250, 10, [150], activation="leaky_relu", activation_options={"alpha": 0.5}, generator=generator
    )
    assert model.hidden1.activation.negative_slope == 0.5
    check_distribution(model.hidden1.linear.weight, 2 / (1.25 * 250), normal=True)


@pytest.mark.parametrize("name", list(INITIALIZERS))
def test_every_named_init(name, generator):
    model = mlp(250, 10, [150], activation="tanh", init=name, generator=generator)
    variance, normal = VARIANCES[name]
    check_distribution(model.hidden1.linear.weight, variance(250, 150), normal)
    check_distribution(model.output.weight, 2 / (150 + 10), normal=False, tolerance=0.12)


def test_torch_init_keeps_torchs_default():
    torch.manual_seed(0)
    model = mlp(250, 10, [150], init="torch")
    limit = 1 / math.sqrt(250)
    check_distribution(model.hidden1.linear.weight, limit**2 / 3, normal=False)
    assert model.hidden1.linear.bias.abs().max() <= limit and model.hidden1.linear.bias.any()


def test_unknown_init_or_activation_names_the_valid_ones():
    with pytest.raises(GradwellError, match="he_normal"):
        mlp(4, 2, init="he_norml")
    with pytest.raises(GradwellError, match="relu"):
        mlp(4, 2, activation="rleu")
    with pytest.raises(GradwellError, match="init="):
        mlp(4, 2, activation=nn.Hardswish())
    assert isinstance(
        mlp(4, 2, [3], activation=nn.Hardswish(), init="he_normal").hidden1.activation, nn.Hardswish
    )


def test_generator_makes_init_reproducible_without_touching_the_global_rng():
    state = torch.get_rng_state()
    first = mlp(20, 3, [8, 8], generator=torch.Generator().manual_seed(5)).state_dict()
    second = mlp(20, 3, [8, 8], generator=torch.Generator().manual_seed(5)).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(first[k], second[k]) for k in first)
    third = mlp(20, 3, [8, 8], generator=torch.Generator().manual_seed(6)).state_dict()
    assert not torch.equal(first["hidden1.linear.weight"], third["hidden1.linear.weight"])


@pytest.mark.parametrize(
    ("position", "order", "bias"),
    [
        ("before", ["linear", "norm", "activation", "dropout"], False),
        ("after", ["linear", "activation", "norm", "dropout"], True),
        (None, ["linear", "activation", "dropout"], True),
        ("none", ["linear", "activation", "dropout"], True),  # TOML's spelling of None
    ],
)
def test_batchnorm_position_and_bias(position, order, bias):
    model = mlp(12, 3, [8, 6], batchnorm=position, dropout=0.2, bn_momentum=0.9, bn_eps=1e-3)
    for _, block in hidden_blocks(model):
        assert list(dict(block.named_children())) == order
        assert (block.linear.bias is not None) == bias
        if position in ("before", "after"):
            assert block.norm.momentum == 0.9 and block.norm.eps == 1e-3
    assert model.output.bias is not None
    model.train()
    loss = model(torch.randn(16, 12)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs", [{"batchnorm": "middle"}, {"dropout": 1.0}, {"dropout": -0.1}, {"bn_momentum": 2}]
)
def test_bad_options_raise(kwargs):
    with pytest.raises(GradwellError):
        mlp(12, 3, [4], **kwargs)


def test_each_block_gets_a_fresh_activation():
    for spec in ("prelu", nn.PReLU(), lambda: nn.PReLU()):
        model = mlp(12, 3, [8, 8, 8], activation=spec)
        ids = {id(block.activation.weight) for _, block in hidden_blocks(model)}
        assert len(ids) == 3 and len(list(model.parameters())) == 3 * 3 + 2
    with pytest.raises(GradwellError):
        mlp(12, 3, activation=lambda: 3)
    with pytest.raises(GradwellError):
        mlp(12, 3, activation=nn.PReLU(), activation_options={"init": 0.1})


def test_dropout_and_alpha_dropout():
    model = mlp(12, 3, [8], dropout=0.3)
    assert type(model.hidden1.dropout) is nn.Dropout and model.hidden1.dropout.p == 0.3
    model = quiet(in_features=12, out_features=3, hidden=[8], activation="selu", dropout=0.3)
    assert type(model.hidden1.dropout) is nn.AlphaDropout and model.hidden1.dropout.p == 0.3
    assert "dropout" not in dict(mlp(12, 3, [8]).hidden1.named_children())
    assert type(mlp(12, 3, [8], dropout=0.1, alpha_dropout=True).hidden1.dropout) is nn.AlphaDropout


@pytest.mark.parametrize(
    ("in_shape", "kwargs", "conv", "channels", "batch"),
    [
        ((40,), {}, nn.Conv1d, 1, (6, 40)),
        ((4, 40), {"dims": 1}, nn.Conv1d, 4, (6, 4, 40)),
        ((8, 8), {}, nn.Conv2d, 1, (6, 8, 8)),
        ((28, 28), {"channels": [4, 8, 8], "pool_every": 2}, nn.Conv2d, 1, (6, 28, 28)),
        ((3, 16, 12), {"batchnorm": "before", "pool": "avg"}, nn.Conv2d, 3, (6, 3, 16, 12)),
        ((3, 10, 10), {"pool": None, "dropout": 0.2, "input_batchnorm": True}, nn.Conv2d, 3, (6, 3, 10, 10)),
    ],
)
def test_cnn_shapes_and_layers(in_shape, kwargs, conv, channels, batch):
    model = cnn(in_shape, 5, **kwargs)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert convs and all(type(c) is conv for c in convs)
    assert convs[0].in_channels == channels
    assert [n for n, _ in hidden_blocks(model)] == [f"conv{i}" for i in range(1, len(convs) + 1)]
    assert list(dict(model.named_children()))[-2:] == ["global_pool", "output"]
    x = torch.randn(batch)
    model.train()
    out = model(x)
    assert out.shape == (6, 5)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    rows = summary(model, x[:2]).rows
    for previous, row in itertools.pairwise(rows):  # "same" padding keeps the size
        if row.name.endswith(".conv"):
            assert row.output_shape[2:] == previous.output_shape[2:], row.name


def test_cnn_pooling_schedule_and_bias():
    model = cnn((32,), 2, [4, 4, 4, 4], pool_every=2, batchnorm="before")
    pools = [name for name, block in hidden_blocks(model) if hasattr(block, "pool")]
    assert pools == ["conv2", "conv4"]
    assert all(block.conv.bias is None for _, block in hidden_blocks(model))
    assert all(
        block.conv.bias is not None for _, block in hidden_blocks(cnn((32,), 2, [4], batchnorm="after"))
    )


def test_cnn_auto_init_counts_the_receptive_field(generator):
    model = cnn((16, 12, 12), 10, [64, 64], kernel_size=5, generator=generator)
    check_distribution(model.conv2.conv.weight, 2 / (64 * 25), normal=True)
    assert not model.conv2.conv.bias.any()


@pytest.mark.parametrize(
    ("in_shape", "kwargs"),
    [
        ((2, 3, 4, 5), {}),
        ((40,), {"dims": 2}),
        ((3, 8, 8), {"dims": 1}),
        ((8,), {"dims": 3}),
        ((8, 8), {"channels": [4, 4, 4, 4]}),
        ((8, 8), {"pool": "min"}),
        ((8, 8), {"kernel_size": 0}),
        ((8, 8), {"pool_every": 0}),
    ],
)
def test_cnn_bad_input_raises(in_shape, kwargs):
    with pytest.raises(GradwellError):
        cnn(in_shape, 3, **kwargs)


def test_a_config_turns_pooling_off_with_none():
    # TOML has no null: pool = "none" is the config's way to write pool=None, as for batchnorm
    assert not any(hasattr(block, "pool") for _, block in hidden_blocks(cnn((8, 8), 3, [4, 4], pool="none")))
    with pytest.raises(GradwellError, match=r"unknown pool 'min'; valid: max, avg, none$"):
        cnn((8, 8), 3, pool="min")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: mlp(4, 2, [2**70]),
            r"hidden must be positive ints below 2\*\*63 .*; got \[1180591620717411303424\]",
        ),
        (
            lambda: mlp(4, 2**64),
            r"out_features must be a positive int below 2\*\*63 .*; got 18446744073709551616",
        ),
        (lambda: cnn((8, 8), 2, [10**30]), r"channels must be positive ints below 2\*\*63"),
        (
            lambda: cnn((8, 8), 2, [4], kernel_size=10**30),
            r"kernel_size must be a positive int below 2\*\*63",
        ),
    ],
)
def test_a_size_beyond_torchs_int64_is_named_not_an_overflow_inside_torch(make, message):
    # found by the config fuzzer: hidden = [2**70] was a TypeError from torch.empty, a traceback
    with pytest.raises(GradwellError, match=message):
        make()
