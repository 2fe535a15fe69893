"""Tests of gradwell.clip: the chapter's example, float64 references, torch and Keras oracles, properties."""

import math

import keras
import numpy as np
import pytest
import torch
from conftest import rel_error
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradwell.clip import clip_by_global_norm_, clip_by_norm_, clip_by_value_
from gradwell.errors import GradwellError

SHAPES = [(7,), (5, 4), (3, 2, 6), (1,)]


def random_tensors(generator, scales, dtype=torch.float32) -> list[torch.Tensor]:
    """Fresh tensors of several shapes, each multiplied by its own scale."""
    return [
        scale * torch.randn(shape, generator=generator, dtype=dtype)
        for shape, scale in zip(SHAPES, scales, strict=True)
    ]


def norm64(tensor) -> float:
    return float(torch.linalg.vector_norm(tensor.double()))


def global_norm64(tensors) -> float:
    return math.sqrt(sum(norm64(tensor) ** 2 for tensor in tensors))


# the chapter's example ---------------------------------------------------------------------------


def test_chapter_example_by_value_changes_the_direction():
    gradient = torch.tensor([0.9, 100.0])
    clip_by_value_(gradient, 1.0)
    assert torch.equal(gradient, torch.tensor([0.9, 1.0]))


def test_chapter_example_by_norm_keeps_the_direction():
    gradient = torch.tensor([0.9, 100.0])
    (norm,) = clip_by_norm_(gradient, 1.0)
    assert float(norm) == pytest.approx(math.sqrt(0.9**2 + 100.0**2), rel=1e-7)
    assert rel_error(gradient, np.array([0.9, 100.0]) / math.sqrt(0.9**2 + 100.0**2)) < 1e-6
    assert gradient.tolist() == pytest.approx([0.00899964, 0.9999595], abs=1e-7)  # the chapter's, rounded


# float64 references ------------------------------------------------------------------------------


def test_clip_by_value_matches_the_formula(generator):
    tensors = random_tensors(generator, [0.5, 2.0, 3.0, 0.1])
    bound = np.float32(0.7)  # the bound as float32 tensors hold it
    expected = [np.clip(tensor.numpy(), -bound, bound) for tensor in tensors]
    clip_by_value_(tensors, 0.7)
    for tensor, reference in zip(tensors, expected, strict=True):
        assert np.array_equal(tensor.numpy(), reference)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_clip_by_norm_matches_the_formula(dtype, tolerance, generator):
    tensors = random_tensors(generator, [0.1, 1.0, 3.0, 10.0], dtype)
    originals = [tensor.clone() for tensor in tensors]
    norms = clip_by_norm_(tensors, 1.5)
    for tensor, original, norm in zip(tensors, originals, norms, strict=True):
        expected = norm64(original)
        assert float(norm) == pytest.approx(expected, rel=tolerance)
        assert rel_error(tensor, original.double() * 1.5 / max(expected, 1.5)) < tolerance


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_clip_by_global_norm_matches_the_formula(dtype, tolerance, generator):
    tensors = random_tensors(generator, [0.1, 1.0, 3.0, 10.0], dtype)
    originals = [tensor.clone() for tensor in tensors]
    expected = global_norm64(originals)
    norm = clip_by_global_norm_(tensors, 2.0)
    assert norm.dim() == 0 and float(norm) == pytest.approx(expected, rel=tolerance)
    for tensor, original in zip(tensors, originals, strict=True):
        assert tensor.dtype == dtype
        assert rel_error(tensor, original.double() * 2.0 / expected) < tolerance


# oracles -----------------------------------------------------------------------------------------


def trained_model(generator) -> nn.Module:
    """A small model after one backward pass; the same generator state gives the same model."""
    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    for parameter in model.parameters():
        nn.init.normal_(parameter, generator=generator)
    x, y = torch.randn(64, 20, generator=generator), torch.randn(64, 5, generator=generator)
    nn.functional.mse_loss(model(x), y).backward()
    return model


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(5)


def grads(model):
    return [parameter.grad for parameter in model.parameters()]


@pytest.mark.parametrize("fraction", [0.3, 3.0], ids=["clipped", "inside"])
def test_global_norm_matches_torch_clip_grad_norm(fraction):
    ours, theirs = trained_model(seeded()), trained_model(seeded())
    max_norm = fraction * global_norm64(grads(ours))
    norm = clip_by_global_norm_(ours.parameters(), max_norm)
    torch_norm = nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    assert float(norm) == pytest.approx(float(torch_norm), rel=1e-6)
    for mine, torch_grad in zip(grads(ours), grads(theirs), strict=True):
        # torch divides by norm + 1e-6: a relative difference of 1e-6 / norm
        assert rel_error(mine, torch_grad) < 1e-6 + 2e-6 / float(norm)
        if fraction > 1:
            assert torch.equal(mine, torch_grad)


def test_value_matches_torch_clip_grad_value():
    ours, theirs = trained_model(seeded()), trained_model(seeded())
    clip_by_value_(ours.parameters(), 0.05)
    nn.utils.clip_grad_value_(theirs.parameters(), 0.05)
    for mine, torch_grad in zip(grads(ours), grads(theirs), strict=True):
        assert torch.equal(mine, torch_grad)


@pytest.mark.parametrize(
    ("option", "clip"),
    [("clipvalue", clip_by_value_), ("clipnorm", clip_by_norm_), ("global_clipnorm", clip_by_global_norm_)],
)
def test_matches_keras_optimizer_options(option, clip, generator):
    # SGD with learning rate 1 from zero weights leaves -(the clipped gradient) in the weights
    tensors = random_tensors(generator, [0.1, 1.0, 3.0, 10.0])
    variables = [keras.Variable(np.zeros(tensor.shape, "float32")) for tensor in tensors]
    keras.optimizers.SGD(learning_rate=1.0, **{option: 1.2}).apply_gradients(
        zip([tensor.clone() for tensor in tensors], variables, strict=True)
    )
    clip(tensors, 1.2)
    for tensor, variable in zip(tensors, variables, strict=True):
        assert rel_error(tensor, -torch.as_tensor(variable.value).detach().cpu()) < 1e-6


# properties --------------------------------------------------------------------------------------

scales = st.lists(st.floats(-3.0, 3.0).map(lambda exponent: 10.0**exponent), min_size=4, max_size=4)
bounds = st.floats(-2.0, 2.0).map(lambda exponent: 10.0**exponent)
seeds = st.integers(0, 2**31)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, scales=scales, max_norm=bounds)
def test_clip_by_norm_properties(seed, scales, max_norm):
    tensors = random_tensors(torch.Generator().manual_seed(seed), scales)
    originals = [tensor.clone() for tensor in tensors]
    clip_by_norm_(tensors, max_norm)
    for tensor, original in zip(tensors, originals, strict=True):
        assert norm64(tensor) <= max_norm * (1 + 1e-6)
        if norm64(original) <= max_norm:
            assert torch.equal(tensor, original)
        else:
            assert norm64(tensor) == pytest.approx(max_norm, rel=1e-6)
            assert rel_error(tensor, original.double() * max_norm / norm64(original)) < 1e-6
    once = [tensor.clone() for tensor in tensors]
    clip_by_norm_(tensors, max_norm)
    for tensor, first in zip(tensors, once, strict=True):
        assert torch.allclose(tensor, first, rtol=1e-6, atol=0)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, scales=scales, max_norm=bounds)
def test_clip_by_global_norm_properties(seed, scales, max_norm):
    tensors = random_tensors(torch.Generator().manual_seed(seed), scales)
    originals = [tensor.clone() for tensor in tensors]
    before = global_norm64(originals)
    clip_by_global_norm_(tensors, max_norm)
    assert global_norm64(tensors) <= max_norm * (1 + 1e-6)
    if before <= max_norm:
        assert all(torch.equal(tensor, original) for tensor, original in zip(tensors, originals, strict=True))
    else:
        # one factor for all: every direction and every ratio between tensors is kept
        expected = [original.double() * max_norm / before for original in originals]
        assert (
            rel_error(torch.cat([t.flatten() for t in tensors]), torch.cat([e.flatten() for e in expected]))
            < 1e-6
        )
    once = [tensor.clone() for tensor in tensors]
    clip_by_global_norm_(tensors, max_norm)
    for tensor, first in zip(tensors, once, strict=True):
        assert torch.allclose(tensor, first, rtol=1e-6, atol=0)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, scales=scales, clip_value=bounds)
def test_clip_by_value_properties(seed, scales, clip_value):
    tensors = random_tensors(torch.Generator().manual_seed(seed), scales)
    originals = [tensor.clone() for tensor in tensors]
    clip_by_value_(tensors, clip_value)
    bound = torch.tensor(clip_value, dtype=torch.float32)  # the bound as the tensors hold it
    for tensor, original in zip(tensors, originals, strict=True):
        inside = original.abs() <= bound
        assert torch.equal(tensor[inside], original[inside])
        assert torch.equal(tensor[~inside], bound * original[~inside].sign())
    once = [tensor.clone() for tensor in tensors]
    clip_by_value_(tensors, clip_value)
    assert all(torch.equal(tensor, first) for tensor, first in zip(tensors, once, strict=True))


# parameters, empty inputs, mixed dtypes ----------------------------------------------------------


@pytest.mark.parametrize("clip", [clip_by_value_, clip_by_norm_, clip_by_global_norm_])
def test_parameters_stand_for_their_grad_and_those_without_are_skipped(clip, generator):
    model = trained_model(generator)
    frozen = nn.Parameter(torch.randn(3, generator=generator))
    plain = 50 * torch.randn(4, generator=generator)
    weights = [parameter.detach().clone() for parameter in model.parameters()]
    before = [grad.clone() for grad in grads(model)]
    clip([*model.parameters(), frozen, plain], 0.01)
    for parameter, weight in zip(model.parameters(), weights, strict=True):
        assert torch.equal(parameter.detach(), weight)
    assert all(not torch.equal(grad, old) for grad, old in zip(grads(model), before, strict=True))
    assert frozen.grad is None
    assert plain.abs().max() <= 0.01 * (1 + 1e-6)


def test_empty_inputs():
    clip_by_value_([], 1.0)
    assert clip_by_norm_([], 1.0) == []
    assert float(clip_by_global_norm_([nn.Parameter(torch.ones(2))], 1.0)) == 0.0


def mixed(generator, scale16: float) -> list[torch.Tensor]:
    half = (scale16 * torch.randn(10_000, generator=generator)).half()
    return [half, 3 * torch.randn(50, generator=generator)]


@pytest.mark.parametrize("scale16", [0.5, 1000.0], ids=["small", "norm_beyond_float16"])
def test_mixed_dtypes_by_norm(scale16, generator):
    tensors = mixed(generator, scale16)
    originals = [tensor.clone() for tensor in tensors]
    norms = clip_by_norm_(tensors, 2.0)
    for tensor, original, norm, tolerance in zip(tensors, originals, norms, (1e-3, 1e-6), strict=True):
        assert tensor.dtype == original.dtype
        assert float(norm) == pytest.approx(norm64(original), rel=1e-6)
        assert rel_error(tensor, original.double() * 2.0 / norm64(original)) < tolerance
        assert norm64(tensor) <= 2.0 * (1 + tolerance)


@pytest.mark.parametrize("scale16", [0.5, 1000.0], ids=["small", "norm_beyond_float16"])
def test_mixed_dtypes_by_global_norm(scale16, generator):
    tensors = mixed(generator, scale16)
    originals = [tensor.clone() for tensor in tensors]
    expected = global_norm64(originals)
    norm = clip_by_global_norm_(tensors, 2.0)
    assert norm.dtype == torch.float32 and float(norm) == pytest.approx(expected, rel=1e-6)
    for tensor, original, tolerance in zip(tensors, originals, (1e-3, 1e-6), strict=True):
        assert tensor.dtype == original.dtype
        assert rel_error(tensor, original.double() * 2.0 / expected) < tolerance
    assert global_norm64(tensors) <= 2.0 * (1 + 1e-3)


def test_mixed_dtypes_by_value(generator):
    tensors = mixed(generator, 2.0)
    originals = [tensor.clone() for tensor in tensors]
    clip_by_value_(tensors, 1.5)
    for tensor, original in zip(tensors, originals, strict=True):
        assert tensor.dtype == original.dtype
        assert torch.equal(tensor, original.clamp(-1.5, 1.5))


# bad thresholds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "name"),
    [(clip_by_value_, "clip_value"), (clip_by_norm_, "max_norm"), (clip_by_global_norm_, "max_norm")],
)
@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), float("inf"), float("-inf")], ids=str)
def test_bad_threshold_raises_before_clipping(clip, name, threshold, generator):
    tensors = random_tensors(generator, [10.0] * 4)
    originals = [tensor.clone() for tensor in tensors]
    with pytest.raises(
        GradwellError, match=rf"{name} must be a finite number in \(0, inf\); got {threshold!r}"
    ):
        clip(tensors, threshold)
    assert all(torch.equal(tensor, original) for tensor, original in zip(tensors, originals, strict=True))


@pytest.mark.parametrize("clip", [clip_by_value_, clip_by_norm_, clip_by_global_norm_])
def test_non_number_threshold_raises(clip):
    with pytest.raises(GradwellError, match="must be a number, got 'one'"):
        clip([torch.ones(3)], "one")
