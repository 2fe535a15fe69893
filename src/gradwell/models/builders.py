"""Model builders that apply the chapter's recipes by default.

``mlp`` and ``cnn`` return a plain ``nn.Sequential`` whose top-level children are the model's
layers, so folding, transfer learning (``reuse(drop_top=...)``) and freezing work on it:

    flatten      nn.Flatten, only when the input is a shape such as (28, 28)         (mlp)
    unflatten    nn.Unflatten adding a channel axis to a (L,) or (H, W) input       (cnn)
    input_norm   BatchNorm of the inputs, only with ``input_batchnorm=True``
    hidden1 ...  (mlp) / conv1 ... (cnn): one nn.Sequential block per hidden layer, holding
                 ``linear`` / ``conv``, ``norm``, ``activation``, ``pool`` and ``dropout`` in
                 the order they run
    global_pool  (cnn) global average pooling and a flatten
    output       nn.Linear producing logits: no softmax, the losses take logits

A block is any top-level ``nn.Sequential`` child with an ``activation`` child (``hidden_blocks``
lists them); the stability doctor probes each block's activation output.

Defaults follow the chapter: the initializer of its table for the activation (``init="auto"``),
biases at 0 (Keras), BatchNorm with momentum 0.99, the layer before a BatchNorm without a bias
(the BatchNorm's beta takes its place), AlphaDropout with SELU, and a warning when a SELU network
breaks the conditions of self-normalization (Klambauer et al., 2017; ``gradwell.selfnorm``).
``gradwell.models.summary(model)`` shows a built model's layers the way Keras does.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Generator, nn

from gradwell.activations import get_activation
from gradwell.errors import GradwellError, check_finite, unknown_name
from gradwell.init import INITIALIZERS, Initializer, get_initializer, recommended_initializer
from gradwell.norm import BatchNorm
from gradwell.selfnorm import warn_if_not_self_normalizing

ActivationSpec = str | nn.Module | Callable[..., nn.Module] | None
BATCHNORM_POSITIONS = (None, "before", "after")
POOLS = ("max", "avg", None)
MAX_SIZE = 2**63 - 1  # torch's sizes are int64: a larger one fails deep inside torch.empty
DEFAULT_HIDDEN = (300, 100)  # the chapter's MNIST MLP


@dataclass(frozen=True)
class BlockOptions:
    """What every hidden block of a builder shares; built once by ``block_options``."""

    activation: Callable[[], nn.Module]
    init: Initializer | None  # None keeps torch's default initialization
    batchnorm: str | None
    bn_momentum: float
    bn_eps: float
    dropout: float
    alpha_dropout: bool


def activation_factory(spec: ActivationSpec, options: Mapping[str, float] | None) -> Callable[[], nn.Module]:
    """A function returning a fresh activation module per call: PReLU and a learnable Swish
    carry parameters that each layer must own."""
    options = dict(options or {})
    if isinstance(spec, nn.Module):
        if options:
            raise GradwellError(f"activation_options {options} need an activation name, not a module")
        return lambda: copy.deepcopy(spec)
    if callable(spec):

        def build() -> nn.Module:
            module = spec(**options)
            if not isinstance(module, nn.Module):
                raise GradwellError(f"activation factory {spec!r} returned {module!r}, not an nn.Module")
            return module

        build()
        return build
    get_activation(spec, **options)  # an unknown name or bad options fail here, before any layer
    return lambda: get_activation(spec, **options)


def hidden_initializer(init: str | Initializer, activation: nn.Module) -> Initializer | None:
    """The hidden layers' initializer: the chapter's for `activation`, a named one, or torch's (None)."""
    if init == "torch":
        return None
    if init != "auto":
        if isinstance(init, str) and init not in INITIALIZERS:
            raise unknown_name("init", init, ["auto", "torch", *INITIALIZERS])
        return get_initializer(init)
    try:
        return recommended_initializer(activation)
    except GradwellError as error:
        raise GradwellError(f"{error}; pass init= explicitly for this activation") from None


def block_options(
    activation: ActivationSpec,
    activation_options: Mapping[str, float] | None,
    init: str | Initializer,
    batchnorm: str | None,
    bn_momentum: float,
    bn_eps: float,
    dropout: float,
    alpha_dropout: bool | None,
) -> BlockOptions:
    """Validate the options shared by ``mlp`` and ``cnn`` (every bad value fails before any layer)."""
    make_activation = activation_factory(activation, activation_options)
    if batchnorm == "none":  # TOML has no null: the way a config turns a default batchnorm off
        batchnorm = None
    if batchnorm not in BATCHNORM_POSITIONS:
        raise unknown_name("batchnorm position", batchnorm, ["none", "before", "after"])
    selu = isinstance(make_activation(), nn.SELU)
    return BlockOptions(
        activation=make_activation,
        init=hidden_initializer(init, make_activation()),
        batchnorm=batchnorm,
        bn_momentum=check_finite("bn_momentum", bn_momentum, low=0.0, high=1.0),
        bn_eps=check_finite("bn_eps", bn_eps, low=0.0, low_open=True),
        dropout=check_finite("dropout", dropout, low=0.0, high=1.0, high_open=True),
        alpha_dropout=selu if alpha_dropout is None else bool(alpha_dropout),
    )


def initialize(layer: nn.Module, init: Initializer | None, generator: Generator | None) -> nn.Module:
    """Fill the layer's weight with `init` and zero its bias (Keras); None keeps torch's default."""
    if init is None:
        layer.reset_parameters()
        return layer
    if generator is None:
        init(layer.weight)
    else:
        init(layer.weight, generator=generator)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def make_layer(cls: type[nn.Module], *args: object, options: BlockOptions, generator: Generator | None, **kw):
    """A Linear or Conv layer, initialized by `options.init` without touching torch's global RNG."""
    layer = nn.utils.skip_init(cls, *args, **kw)
    return initialize(layer, options.init, generator)


def block(
    layer: nn.Module, units: int, options: BlockOptions, pool: nn.Module | None = None
) -> nn.Sequential:
    """layer -> [norm] -> activation -> [norm] -> [pool] -> [dropout], by the options."""
    kind = "linear" if isinstance(layer, nn.Linear) else "conv"
    parts: OrderedDict[str, nn.Module] = OrderedDict([(kind, layer)])
    norm = BatchNorm(units, momentum=options.bn_momentum, eps=options.bn_eps)
    if options.batchnorm == "before":
        parts["norm"] = norm
    parts["activation"] = options.activation()
    if options.batchnorm == "after":
        parts["norm"] = norm
    if pool is not None:
        parts["pool"] = pool
    if options.dropout > 0:
        dropout = nn.AlphaDropout if options.alpha_dropout else nn.Dropout
        parts["dropout"] = dropout(options.dropout)
    return nn.Sequential(parts)


def positive_ints(name: str, values: object) -> tuple[int, ...]:
    """`values` (an int or a sequence of ints) as a tuple of positive ints, or an error naming them."""
    if isinstance(values, int):
        values = (values,)
    ok = isinstance(values, Sequence) and not isinstance(values, str)
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise GradwellError(f"{name} must be positive ints; got {values!r}")
    if max(values, default=0) > MAX_SIZE:
        raise GradwellError(f"{name} must be positive ints below 2**63 (torch's sizes); got {values!r}")
    return tuple(values)


def positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GradwellError(f"{name} must be a positive int; got {value!r}")
    if value > MAX_SIZE:
        raise GradwellError(f"{name} must be a positive int below 2**63 (torch's sizes); got {value!r}")
    return value


def hidden_widths(hidden: Sequence[int] | None, depth: int | None, width: int | None) -> tuple[int, ...]:
    """The hidden layers' widths from `hidden`, or from `depth` x `width`, or the default (300, 100)."""
    if depth is None and width is None:
        return DEFAULT_HIDDEN if hidden is None else positive_ints("hidden", hidden)
    if hidden is not None or depth is None or width is None:
        raise GradwellError(
            f"give either hidden=[widths] or both depth= and width=; got hidden={hidden!r}, "
            f"depth={depth!r}, width={width!r}"
        )
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise GradwellError(f"depth must be an int >= 0; got {depth!r}")
    return (positive_int("width", width),) * depth


def output_layer(in_features: int, out_features: int, init: str | Initializer, generator: Generator | None):
    """The logits layer: Glorot uniform (the chapter's table for none/softmax) unless init="torch"."""
    layer = nn.utils.skip_init(nn.Linear, in_features, positive_int("out_features", out_features))
    return initialize(layer, None if init == "torch" else INITIALIZERS["glorot_uniform"], generator)


def mlp(
    in_features: int | Sequence[int],
    out_features: int,
    hidden: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    width: int | None = None,
    activation: ActivationSpec = "relu",
    activation_options: Mapping[str, float] | None = None,
    init: str | Initializer = "auto",
    batchnorm: str | None = None,
    input_batchnorm: bool = False,
    bn_momentum: float = 0.99,
    bn_eps: float = 1e-5,
    dropout: float = 0.0,
    alpha_dropout: bool | None = None,
    generator: Generator | None = None,
) -> nn.Sequential:
    """A multilayer perceptron ``[flatten] [input_norm] hidden1 ... hiddenN output``.

    Args:
        in_features: the input size, or the input's shape without the batch axis, e.g. (28, 28),
            which adds a Flatten first.
        out_features: the number of logits.
        hidden: the hidden layers' widths; default (300, 100), the chapter's MNIST network.
            Or ``depth`` and ``width`` for equal layers (depth=100, width=100: the SELU network).
        activation: a name of ``get_activation``, an activation module (copied for each layer) or a
            factory called once per layer; ``activation_options`` go to the name's constructor.
        init: "auto" applies the chapter's table (``recommended_initializer``: Glorot for
            none/tanh/sigmoid, He for the ReLU family, ELU, GELU, Swish, Mish with the exact leaky
            gain, LeCun for SELU) to the hidden layers; or a ``gradwell.init`` name or initializer;
            or "torch" for torch's default everywhere. The output layer gets Glorot uniform
            (the table's entry for linear/softmax outputs) unless "torch". Biases start at 0.
        batchnorm: None (or "none"), "before" the activation (the hidden Linear then has no bias: BN's beta
            replaces it) or "after" it (the Linear keeps its bias), as in the chapter's examples.
        input_batchnorm: a BatchNorm on the inputs, the chapter's first layer.
        bn_momentum, bn_eps: the BatchNorms' settings (Keras's momentum 0.99).
        dropout: the rate, in [0, 1), after each hidden activation (and its BN when "after").
        alpha_dropout: AlphaDropout instead of Dropout; default: exactly when the activation is
            SELU, whose mean and variance regular dropout would break.
        generator: for a reproducible initialization; None draws from torch's global RNG.

    Warns ``SelfNormalizationWarning`` when a SELU network breaks self-normalization.

    >>> import torch
    >>> net = mlp((4, 4), 3, [8], batchnorm="before", generator=torch.Generator().manual_seed(0))
    >>> list(dict(net.named_children())), list(dict(net.hidden1.named_children()))
    (['flatten', 'hidden1', 'output'], ['linear', 'norm', 'activation'])
    >>> net.hidden1.linear  # no bias: the BatchNorm's beta takes its place
    Linear(in_features=16, out_features=8, bias=False)
    >>> net(torch.randn(5, 4, 4)).shape
    torch.Size([5, 3])
    >>> [block.activation for _, block in hidden_blocks(mlp(6, 2, depth=2, width=4, activation="selu"))]
    [SELU(), SELU()]
    """
    widths = hidden_widths(hidden, depth, width)
    shape = positive_ints("in_features", in_features)
    options = block_options(
        activation, activation_options, init, batchnorm, bn_momentum, bn_eps, dropout, alpha_dropout
    )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if isinstance(in_features, Sequence) and len(shape) > 1:
        layers["flatten"] = nn.Flatten()
    features = math.prod(shape)
    if input_batchnorm:
        layers["input_norm"] = BatchNorm(features, momentum=options.bn_momentum, eps=options.bn_eps)
    bias = options.batchnorm != "before"
    for i, units in enumerate(widths, 1):
        linear = make_layer(nn.Linear, features, units, bias=bias, options=options, generator=generator)
        layers[f"hidden{i}"] = block(linear, units, options)
        features = units
    layers["output"] = output_layer(features, out_features, init, generator)
    return finish(nn.Sequential(layers), tuple(shape), init)


def conv_input(in_shape: Sequence[int], dims: int | None) -> tuple[int, tuple[int, ...], bool]:
    """(channels, spatial shape, needs a channel axis) of a cnn input shape.

    (L,) is a 1-channel signal, (H, W) a 1-channel image, (C, H, W) an image; ``dims=1`` reads
    two numbers as (C, L) instead.
    """
    shape = positive_ints("in_shape", in_shape)
    if dims not in (None, 1, 2):
        raise GradwellError(f"dims must be 1 (Conv1d), 2 (Conv2d) or None (from in_shape); got {dims!r}")
    dims = dims or (1 if len(shape) == 1 else 2)
    if len(shape) not in (dims, dims + 1):
        valid = "(L,) or (C, L)" if dims == 1 else "(H, W) or (C, H, W)"
        raise GradwellError(f"in_shape {tuple(shape)} does not fit a {dims}-D cnn; valid: {valid}")
    if len(shape) == dims:
        return 1, shape, True
    return shape[0], shape[1:], False


def check_poolable(spatial: tuple[int, ...], pools: int, in_shape: object) -> None:
    """Fail before building when `pools` halvings would shrink a spatial axis below 1."""
    if pools and min(spatial) < 2**pools:
        raise GradwellError(
            f"in_shape {tuple(in_shape)} is too small for {pools} poolings of size 2; "
            'use fewer channels, a larger pool_every or pool=None ("none" in a config)'
        )


def cnn(
    in_shape: Sequence[int],
    out_features: int,
    channels: Sequence[int] = (32, 64),
    *,
    kernel_size: int = 3,
    dims: int | None = None,
    activation: ActivationSpec = "relu",
    activation_options: Mapping[str, float] | None = None,
    init: str | Initializer = "auto",
    batchnorm: str | None = None,
    input_batchnorm: bool = False,
    bn_momentum: float = 0.99,
    bn_eps: float = 1e-5,
    dropout: float = 0.0,
    alpha_dropout: bool | None = None,
    pool: str | None = "max",
    pool_every: int = 1,
    generator: Generator | None = None,
) -> nn.Sequential:
    """A small convolutional stack ``[unflatten] [input_norm] conv1 ... convN global_pool output``.

    Each block is a stride-1 "same"-padded convolution with `channels[i]` filters of
    `kernel_size`, then BN / activation / dropout as in ``mlp`` (BN normalizes each channel), with
    a size-2 max or average pooling (`pool`: "max", "avg", or None or "none" for no pooling) after
    every `pool_every` blocks, before the dropout. Global average pooling then feeds the output Linear.

    `in_shape` has no batch axis: (L,) and (C, L) build Conv1d layers, (H, W) and (C, H, W)
    Conv2d layers; a shape without channels gets an nn.Unflatten adding one, so mnist1d's (40,),
    digits' (8, 8) and MNIST's (28, 28) work as they are. Two numbers mean (H, W) unless
    ``dims=1``, which reads them as (C, L). The other options are ``mlp``'s.

    >>> import torch
    >>> net = cnn((8, 8), 10, channels=[4, 8], batchnorm="after", dropout=0.1)
    >>> list(dict(net.named_children()))
    ['unflatten', 'conv1', 'conv2', 'global_pool', 'output']
    >>> list(dict(net.conv1.named_children()))
    ['conv', 'activation', 'norm', 'pool', 'dropout']
    >>> net(torch.randn(2, 8, 8)).shape, type(cnn((40,), 2, [4]).conv1.conv).__name__
    (torch.Size([2, 10]), 'Conv1d')
    """
    in_channels, spatial, unflatten = conv_input(in_shape, dims)
    widths = positive_ints("channels", channels)
    kernel_size = positive_int("kernel_size", kernel_size)
    pool_every = positive_int("pool_every", pool_every)
    if pool == "none":  # TOML has no null: the way a config turns pooling off
        pool = None
    if pool not in POOLS:
        raise unknown_name("pool", pool, ["max", "avg", "none"])
    check_poolable(spatial, 0 if pool is None else len(widths) // pool_every, in_shape)
    options = block_options(
        activation, activation_options, init, batchnorm, bn_momentum, bn_eps, dropout, alpha_dropout
    )
    d = len(spatial)
    conv = (nn.Conv1d, nn.Conv2d)[d - 1]
    pooling = {"max": (nn.MaxPool1d, nn.MaxPool2d), "avg": (nn.AvgPool1d, nn.AvgPool2d)}.get(pool)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if unflatten:
        layers["unflatten"] = nn.Unflatten(1, (1, spatial[0]))  # (N, H, W) -> (N, 1, H, W)
    if input_batchnorm:
        layers["input_norm"] = BatchNorm(in_channels, momentum=options.bn_momentum, eps=options.bn_eps)
    bias = options.batchnorm != "before"
    for i, width in enumerate(widths, 1):
        layer = make_layer(
            conv,
            in_channels,
            width,
            kernel_size,
            padding="same",
            bias=bias,
            options=options,
            generator=generator,
        )
        pool_layer = pooling[d - 1](2) if pooling and i % pool_every == 0 else None
        layers[f"conv{i}"] = block(layer, width, options, pool_layer)
        in_channels = width
    global_pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)[d - 1](1)
    layers["global_pool"] = nn.Sequential(OrderedDict(pool=global_pool, flatten=nn.Flatten()))
    layers["output"] = output_layer(in_channels, out_features, init, generator)
    return finish(nn.Sequential(layers), tuple(positive_ints("in_shape", in_shape)), init)


def finish(model: nn.Sequential, input_shape: tuple[int, ...], init: str | Initializer) -> nn.Sequential:
    """The built model, remembering its input shape (without the batch axis) for `summary`."""
    model.input_shape = input_shape
    warn_if_not_self_normalizing(model, init)
    return model


def hidden_blocks(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """The top-level blocks of a built model: nn.Sequential children with an ``activation`` child.

    >>> [name for name, _ in hidden_blocks(mlp(4, 2, [3, 3], input_batchnorm=True))]
    ['hidden1', 'hidden2']
    """
    return [
        (name, child)
        for name, child in model.named_children()
        if isinstance(child, nn.Sequential) and hasattr(child, "activation")
    ]
