"""BatchNorm against the chapter's equations in float64, Keras 3 BatchNormalization and autograd."""

import math

import keras
import numpy as np
import pytest
import torch
from conftest import rel_error

from gradwell.errors import GradwellError
from gradwell.norm import BatchNorm


def error(actual, expected) -> float:
    """rel_error on values that may carry gradients (outputs of layers, Keras variables)."""
    return rel_error(torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach())


def randn(generator, *shape, dtype=torch.float64):
    # a mean and scale far from (0, 1), so normalizing is not a no-op
    return (3.0 * torch.randn(*shape, generator=generator, dtype=dtype) + 1.5).to(dtype)


def reference_train(x, kept, gamma, beta, eps):
    """The chapter's four equations, written plainly in float64."""
    reduced = [d for d in range(x.dim()) if d not in kept]
    shape = [x.shape[d] if d in kept else 1 for d in range(x.dim())]
    mu = x.mean(dim=reduced, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=reduced, keepdim=True)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    z = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    return z, mu.reshape(gamma.shape), var.reshape(gamma.shape)


def reference_eval(x, kept, gamma, beta, moving_mean, moving_var, eps):
    shape = [x.shape[d] if d in kept else 1 for d in range(x.dim())]
    x_hat = (x - moving_mean.reshape(shape)) / torch.sqrt(moving_var.reshape(shape) + eps)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape)


def random_affine(layer, generator):
    with torch.no_grad():
        shape = layer.running_mean.shape
        layer.weight.copy_(torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(shape, generator=generator, dtype=torch.float64))


# (input shape, axis, the kept axes made non-negative)
CASES = [
    ((16, 7), 1, (1,)),
    ((16, 7), -1, (1,)),
    ((8, 6, 5), (1, 2), (1, 2)),
    ((8, 4, 3, 5), 1, (1,)),
    ((8, 4, 3, 5), (1, -1), (1, 3)),
]


@pytest.mark.parametrize(("shape", "axis", "kept"), CASES)
def test_training_and_moving_averages_follow_the_chapter(generator, shape, axis, kept):
    momentum, eps = 0.9, 1e-3
    layer = BatchNorm(tuple(shape[d] for d in kept), axis=axis, momentum=momentum, eps=eps).double()
    random_affine(layer, generator)
    gamma, beta = layer.weight.detach().clone(), layer.bias.detach().clone()
    moving_mean = torch.zeros(gamma.shape, dtype=torch.float64)
    moving_var = torch.ones(gamma.shape, dtype=torch.float64)
    for _ in range(3):
        x = randn(generator, *shape)
        expected, mu, var = reference_train(x, kept, gamma, beta, eps)
        assert error(layer(x), expected) < 1e-12
        moving_mean = moving_mean * momentum + mu * (1 - momentum)
        moving_var = moving_var * momentum + var * (1 - momentum)  # biased, as the chapter
        assert error(layer.running_mean, moving_mean) < 1e-12
        assert error(layer.running_var, moving_var) < 1e-12
    layer.eval()
    x = randn(generator, *shape)
    expected = reference_eval(x, kept, gamma, beta, moving_mean, moving_var, eps)
    assert error(layer(x), expected) < 1e-12


def keras_bn(axis, input_shape, layer, **options):
    """A Keras BatchNormalization with the same momentum, epsilon, gamma and beta as `layer`."""
    k = keras.layers.BatchNormalization(axis=axis, momentum=layer.momentum, epsilon=layer.eps, **options)
    k.build(input_shape)
    if layer.scale:
        k.gamma.assign(layer.weight.detach().reshape(-1).numpy())
    if layer.center:
        k.beta.assign(layer.bias.detach().reshape(-1).numpy())
    return k


# (input shape, gradwell axis, how Keras sees the input, Keras axis)
KERAS_CASES = [
    ((32, 10), 1, (32, 10), 1),
    ((32, 28, 28), (1, 2), (32, 784), -1),
    ((16, 6, 5, 4), 1, (16, 6, 5, 4), 1),
]


@pytest.mark.parametrize(("shape", "axis", "keras_shape", "keras_axis"), KERAS_CASES)
def test_agrees_with_keras_in_training_and_inference(generator, shape, axis, keras_shape, keras_axis):
    layer = BatchNorm(axis=axis, momentum=0.9, eps=1e-3)
    layer(randn(generator, *shape, dtype=torch.float32))  # build it, then reset the moving statistics
    layer.running_mean.zero_()
    layer.running_var.fill_(1.0)
    random_affine(layer, generator)
    k = keras_bn(keras_axis, keras_shape, layer)
    for _ in range(4):
        x = randn(generator, *shape, dtype=torch.float32).requires_grad_()
        x_k = x.detach().reshape(keras_shape).requires_grad_()
        ours, theirs = layer(x), k(x_k, training=True)
        assert error(ours.reshape(keras_shape), theirs) < 1e-5
        # the backward pass too: same gradient with respect to the input
        direction = torch.randn(keras_shape, generator=generator)
        (ours.reshape(keras_shape) * direction).sum().backward()
        (theirs * direction).sum().backward()
        assert error(x.grad.reshape(keras_shape), x_k.grad) < 1e-4
    assert error(layer.running_mean.reshape(-1), k.moving_mean.value) < 1e-5
    assert error(layer.running_var.reshape(-1), k.moving_variance.value) < 1e-5
    layer.eval()
    x = randn(generator, *shape, dtype=torch.float32)
    assert error(layer(x).reshape(keras_shape), k(x.reshape(keras_shape), training=False)) < 1e-5


def test_parameter_counts_match_keras_on_the_flattened_input(generator):
    layer = BatchNorm(axis=(1, 2))
    layer(randn(generator, 4, 28, 28, dtype=torch.float32))
    k = keras.layers.BatchNormalization()
    k.build((4, 784))
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in layer.buffers())
    assert layer.num_features == (28, 28)
    assert trainable == sum(math.prod(w.shape) for w in k.trainable_weights) == 2 * 784
    assert buffers == sum(math.prod(w.shape) for w in k.non_trainable_weights) == 2 * 784
    assert {n for n, _ in layer.named_parameters()} == {"weight", "bias"}
    assert {n for n, _ in layer.named_buffers()} == {"running_mean", "running_var"}


def test_lazy_layer_infers_its_features_and_matches_a_built_one(generator):
    lazy, built = BatchNorm(axis=(1, 3)), BatchNorm((4, 6), axis=(1, 3))
    assert lazy.num_features == ()
    x = randn(generator, 5, 4, 3, 6, dtype=torch.float32)
    assert torch.equal(lazy(x), built(x))
    assert lazy.num_features == (4, 6)
    assert not lazy.has_uninitialized_params()
    assert torch.equal(lazy.running_var, built.running_var)
    assert lazy.weight.shape == lazy.bias.shape == (4, 6)


def test_lazy_layer_loads_a_saved_state(generator):
    built = BatchNorm(axis=(1, 2))
    built(randn(generator, 5, 3, 4, dtype=torch.float32))
    lazy = BatchNorm(axis=(1, 2))
    lazy.load_state_dict(built.state_dict())
    built.eval()
    lazy.eval()
    x = randn(generator, 5, 3, 4, dtype=torch.float32)
    assert torch.equal(lazy(x), built(x))


def test_frozen_layer_uses_and_keeps_its_moving_statistics_in_training(generator):
    layer = BatchNorm(5, momentum=0.9, eps=1e-3)
    for _ in range(3):
        layer(randn(generator, 8, 5, dtype=torch.float32))
    random_affine(layer, generator)
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    # Keras: a non-trainable BatchNormalization normalizes with its moving statistics
    k = keras_bn(-1, (8, 5), layer, trainable=False)
    k.moving_mean.assign(mean.numpy())
    k.moving_variance.assign(var.numpy())
    layer.frozen = True
    layer.train()
    x = randn(generator, 8, 5, dtype=torch.float32)
    expected = reference_eval(
        x.double(), (1,), layer.weight.double(), layer.bias.double(), mean.double(), var.double(), 1e-3
    )
    out = layer(x)
    assert error(out, expected) < 1e-6
    assert error(out, k(x, training=True)) < 1e-6
    assert torch.equal(layer.running_mean, mean)
    assert torch.equal(layer.running_var, var)
    assert "frozen=True" in repr(layer)


@pytest.mark.parametrize(("center", "scale"), [(False, False), (True, False), (False, True)])
def test_center_and_scale_can_be_dropped(generator, center, scale):
    layer = BatchNorm(6, center=center, scale=scale, momentum=0.9, eps=1e-3)
    assert (layer.bias is not None) == center
    assert (layer.weight is not None) == scale
    assert len(list(layer.parameters())) == center + scale
    if scale:
        with torch.no_grad():
            layer.weight.copy_(torch.rand(6, generator=generator) + 0.5)
    if center:
        with torch.no_grad():
            layer.bias.copy_(torch.randn(6, generator=generator))
    k = keras_bn(-1, (10, 6), layer, center=center, scale=scale)
    for training in (True, False):
        layer.train(training)
        x = randn(generator, 10, 6, dtype=torch.float32)
        assert error(layer(x), k(x, training=training)) < 1e-5


@pytest.mark.parametrize(("shape", "axis"), [((6, 3), 1), ((4, 3, 2), (1, 2)), ((3, 2, 3, 2), 1)])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_pass_gradcheck_in_float64(generator, shape, axis, training):
    layer = BatchNorm(axis=axis).double()
    layer(randn(generator, *shape))  # build, and move the moving statistics away from (0, 1)
    random_affine(layer, generator)
    layer.train(training)
    x = randn(generator, *shape).requires_grad_()
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()

    def forward(x, gamma, beta):
        return torch.func.functional_call(layer, {"weight": gamma, "bias": beta}, (x,))

    assert torch.autograd.gradcheck(forward, (x, gamma, beta))


def test_works_in_float64_and_keeps_the_dtype(generator):
    layer = BatchNorm(axis=(1, 2)).double()
    out = layer(randn(generator, 4, 3, 2))
    assert out.dtype == layer.running_mean.dtype == torch.float64
    assert np.isfinite(out.detach().numpy()).all()


@pytest.mark.parametrize(
    ("layer", "shape", "message"),
    [
        (lambda: BatchNorm(axis=3), (8, 5), "axis 3 is out of range for an input of shape (8, 5)"),
        (lambda: BatchNorm(axis=-2), (8, 5), "axis -2 is out of range"),
        (lambda: BatchNorm(axis=(1, -2)), (8, 5, 4), "tuple of distinct axes in 1..2"),
        (lambda: BatchNorm(5), (8, 6), "built for features of shape (5,) on axis 1"),
        (lambda: BatchNorm((4, 3), axis=(1, 2)), (8, 4, 5), "has (4, 5) there"),
        (lambda: BatchNorm(), (8,), "2 dimensions or more"),
        (lambda: BatchNorm(5), (1, 5), "more than 1 value per feature in training"),
        (lambda: BatchNorm(axis=(1, 2)), (1, 4, 5), "(1, 4, 5) with axis (1, 2) has 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(generator, layer, shape, message):
    with pytest.raises(GradwellError) as error:
        layer()(randn(generator, *shape, dtype=torch.float32))
    assert message in str(error.value)


@pytest.mark.parametrize("layer", [lambda: BatchNorm(3), lambda: BatchNorm(), lambda: BatchNorm(axis=(1, 2))])
def test_an_integer_input_is_refused_by_name(generator, layer):
    x = torch.randint(-5, 5, (4, 3, 2), generator=generator)
    with pytest.raises(GradwellError, match=r"floating-point input .*; got dtype torch.int64"):
        layer()(x)


def test_one_value_per_feature_is_fine_in_inference(generator):
    layer = BatchNorm(5).eval()
    x = randn(generator, 1, 5, dtype=torch.float32)
    assert error(layer(x), x / math.sqrt(1 + 1e-5)) < 1e-6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"axis": 0}, "other than 0 (the batch axis); got 0"),
        ({"axis": (1, 0)}, "got (1, 0)"),
        ({"axis": ()}, "got ()"),
        ({"axis": 1.0}, "got 1.0"),
        ({"axis": True}, "got True"),
        ({"momentum": 1.5}, "momentum must be a finite number in [0, 1]; got 1.5"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
        ({"momentum": "high"}, "momentum must be a number, got 'high'"),
        ({"eps": 0.0}, "eps must be a finite number in (0, inf); got 0.0"),
        ({"eps": float("inf")}, "eps"),
        ({"num_features": 0}, "num_features 0 must give one positive size per kept axis 1"),
        ({"num_features": 5, "axis": (1, 2)}, "num_features 5 must give one positive size"),
        ({"num_features": 2.5}, "num_features 2.5"),
        ({"num_features": True}, "num_features True"),
        ({"num_features": (3, 4)}, "num_features (3, 4) must give one positive size per kept axis 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(options, message):
    with pytest.raises(GradwellError) as error:
        BatchNorm(**options)
    assert message in str(error.value)
