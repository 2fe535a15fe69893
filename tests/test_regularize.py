import math

import pytest
import torch
from conftest import rel_error
from torch import nn

from gradwell.errors import GradwellError
from gradwell.models import cnn, mlp
from gradwell.norm import BatchNorm
from gradwell.regularize import l1_l2_penalty, max_norm_, mc_dropout_predict, regularized_weights


def model_with_everything():
    """Linear, Conv, ConvTranspose weights; biases; BatchNorm (gradwell's and torch's); PReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ConvTranspose2d(4, 3, 2),
        nn.PReLU(),
        nn.Flatten(),
        BatchNorm(3 * 7 * 7),
        nn.Linear(3 * 7 * 7, 5),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # BN gamma/beta and PReLU away from their defaults
    return model


def test_regularized_weights_are_the_linear_and_conv_kernels_only():
    model = model_with_everything()
    expected = [model[0].weight, model[2].weight, model[6].weight]
    assert [id(w) for w in regularized_weights(model)] == [id(w) for w in expected]
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert len(regularized_weights(tied)) == 1


def test_l1_l2_penalty_matches_the_float64_formula_and_its_gradient():
    model = model_with_everything()
    l1, l2 = 1e-3, 3e-2
    weights = [model[0].weight, model[2].weight, model[6].weight]
    expected = sum(l1 * w.double().abs().sum() + l2 * w.double().square().sum() for w in weights)
    penalty = l1_l2_penalty(model, l1=l1, l2=l2)
    assert penalty.dim() == 0 and rel_error(penalty.detach(), expected.detach()) < 1e-6
    penalty.backward()
    for w in weights:
        assert rel_error(w.grad, l1 * w.detach().double().sign() + 2 * l2 * w.detach().double()) < 1e-6
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    assert others and all(p.grad is None for p in others)


def test_l1_l2_penalty_matches_keras_regularizer():
    import keras

    model = mlp(20, 4, [16], batchnorm="after")
    l1, l2 = 2e-3, 5e-3
    kernels = [model.hidden1.linear.weight, model.output.weight]
    regularizer = keras.regularizers.L1L2(l1=l1, l2=l2)
    expected = sum(float(regularizer(w.detach().T.contiguous())) for w in kernels)
    assert rel_error(l1_l2_penalty(model, l1, l2).detach(), expected) < 1e-6
    only_l2 = sum(float(keras.regularizers.L2(l2)(w.detach().T.contiguous())) for w in kernels)
    assert rel_error(l1_l2_penalty(kernels, l2=l2).detach(), only_l2) < 1e-6


def test_l2_penalty_gradient_is_sgd_weight_decay_at_twice_l2():
    model = mlp(10, 3, [6], init="he_normal")
    weights = regularized_weights(model)
    l1_l2_penalty(weights, l2=0.05).backward()
    assert all(rel_error(w.grad, 0.1 * w.detach()) < 1e-6 for w in weights)


def test_zero_penalty_is_a_cheap_zero_and_float64_stays_float64():
    model = mlp(10, 3, [6])
    penalty = l1_l2_penalty(model)
    assert penalty.dim() == 0 and float(penalty) == 0 and not penalty.requires_grad
    model = model.double()
    assert l1_l2_penalty(model, l1=0.1).dtype == torch.float64
    assert float(l1_l2_penalty(nn.ReLU(), l1=0.1)) == 0


@pytest.mark.parametrize("kwargs", [{"l1": -0.1}, {"l2": float("nan")}, {"l2": float("inf")}, {"l1": "a"}])
def test_bad_penalty_strengths_raise(kwargs):
    with pytest.raises(GradwellError):
        l1_l2_penalty(mlp(10, 3, [6]), **kwargs)


def reference_max_norm(weight, r, axes):
    w = weight.detach().double()
    norm = w.square().sum(dim=axes, keepdim=True).sqrt()
    return torch.where(norm > r, w * r / norm, w)


def test_max_norm_bounds_each_unit_and_keeps_directions(generator):
    layer = nn.Linear(30, 12)
    with torch.no_grad():
        layer.weight.copy_(
            torch.randn(12, 30, generator=generator) * torch.rand(12, 1, generator=generator) * 0.5
        )
        layer.bias.normal_(0, 10, generator=generator)
    before, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    r = 1.2
    norms = before.norm(dim=1)
    assert (norms > r).any() and (norms < r).any()
    max_norm_(layer, r)
    after = layer.weight.detach()
    assert rel_error(after, reference_max_norm(before, r, (1,))) < 1e-6
    assert torch.all(after.norm(dim=1) <= r * (1 + 1e-6))
    inside = norms <= r
    assert torch.equal(after[inside], before[inside])
    assert torch.allclose(nn.functional.cosine_similarity(after, before, dim=1), torch.ones(12))
    assert torch.equal(layer.bias, bias)
    max_norm_(layer, r)
    assert rel_error(layer.weight.detach(), after) < 1e-6


def test_max_norm_matches_keras_for_dense_and_conv_kernels(generator):
    import keras

    model = cnn((3, 8, 8), 6, [5], kernel_size=3)
    with torch.no_grad():
        for w in regularized_weights(model):
            w.mul_(torch.rand(w.shape[0], *[1] * (w.dim() - 1), generator=generator) * 4)
    conv, dense = model.conv1.conv.weight, model.output.weight
    keras_conv = keras.constraints.MaxNorm(1.5, axis=[0, 1, 2])(
        conv.detach().permute(2, 3, 1, 0).contiguous()
    )
    keras_dense = keras.constraints.MaxNorm(1.5, axis=0)(dense.detach().T.contiguous())
    max_norm_(model, 1.5)
    assert rel_error(conv.detach(), torch.as_tensor(keras_conv).permute(3, 2, 0, 1)) < 1e-6
    assert rel_error(dense.detach(), torch.as_tensor(keras_dense).T) < 1e-6


def test_max_norm_other_axes_and_tensors(generator):
    weight = torch.randn(6, 4, 3, generator=generator)
    expected = reference_max_norm(weight, 0.7, (0, 2))
    max_norm_([weight], 0.7, axis=(0, -1))
    assert rel_error(weight, expected) < 1e-6
    vector = torch.randn(20, generator=generator) * 2
    expected = vector.clamp(-1, 1)
    max_norm_(vector)
    assert rel_error(vector, expected) < 1e-6


@pytest.mark.parametrize(
    "kwargs", [{"max_value": 0.0}, {"max_value": -1}, {"max_value": math.nan}, {"axis": 2}]
)
def test_bad_max_norm_raises(kwargs):
    with pytest.raises(GradwellError):
        max_norm_(nn.Linear(3, 2), **kwargs)


def test_mc_dropout_mean_and_std_match_the_linear_model_formula(generator):
    # y = b + sum_j w_j x_j m_j / (1 - p), m_j ~ Bernoulli(1 - p): E[y] = eval output,
    # Var[y] = p / (1 - p) * sum_j w_j^2 x_j^2
    p = 0.3
    model = nn.Sequential(nn.Dropout(p), nn.Linear(20, 3)).double()
    x = torch.randn(8, 20, generator=generator, dtype=torch.float64)
    samples = 4000
    mean, std = mc_dropout_predict(model, x, samples, probabilities=False, seed=1)
    expected_std = (p / (1 - p) * (x.square() @ model[1].weight.detach().square().T)).sqrt()
    assert rel_error(std, expected_std) < 0.06
    with torch.no_grad():
        expected_mean = model.eval()(x)
    assert torch.all((mean - expected_mean).abs() < 4.5 * expected_std / math.sqrt(samples))


def test_mc_dropout_keeps_batchnorm_in_inference_and_restores_modes(generator):
    model = nn.Sequential(BatchNorm(6), nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Dropout(0.0), nn.Linear(4, 3))
    model.train()
    for _ in range(5):
        model(torch.randn(32, 6, generator=generator) * 3 + 2)
    model[4].eval()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(10, 6, generator=generator)
    mean, std = mc_dropout_predict(model, x, samples=5)
    assert modes == [m.training for m in model.modules()]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        expected = model.eval()(x).softmax(1)
    assert rel_error(mean, expected) < 1e-6 and float(std.max()) < 1e-6


def test_mc_dropout_probabilities_and_alpha_dropout():
    torch.manual_seed(0)
    model = mlp(12, 5, [16, 16], activation="selu", dropout=0.2)
    x = torch.randn(7, 12)
    mean, std = mc_dropout_predict(model, x, samples=30, seed=0)
    assert mean.shape == std.shape == (7, 5)
    assert rel_error(mean.sum(1), torch.ones(7)) < 1e-6 and float(std.min()) > 0
    binary = nn.Sequential(nn.Linear(12, 1), nn.Dropout(0.0))
    mean, _ = mc_dropout_predict(binary, x, samples=3)
    with torch.no_grad():
        assert rel_error(mean, torch.sigmoid(binary(x))) < 1e-6


def test_mc_dropout_seed_is_reproducible_and_leaves_the_global_rng_alone():
    model = mlp(12, 5, [16], dropout=0.5)
    x = torch.randn(9, 12)
    state = torch.get_rng_state()
    first = mc_dropout_predict(model, x, samples=20, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    second = mc_dropout_predict(model, x, samples=20, seed=3)
    third = mc_dropout_predict(model, x, samples=20, seed=4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])
    mc_dropout_predict(model, x, samples=20)
    assert not torch.equal(state, torch.get_rng_state())


def test_mc_dropout_chunks_give_the_same_samples():
    # one sample per pass or all in one pass: same masks in the same order with the same seed
    model = mlp(12, 5, [16], dropout=0.5)
    x = torch.randn(9, 12)
    together = mc_dropout_predict(model, x, samples=12, seed=3)
    chunked = mc_dropout_predict(model, x, samples=12, seed=3, batch_size=20)
    assert rel_error(chunked[0], together[0]) < 1e-6 and rel_error(chunked[1], together[1]) < 1e-5


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        (nn.Linear(4, 3), {}),
        (nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1)), {"samples": 0}),
        (nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1)), {"batch_size": 0}),
        (nn.Sequential(nn.Linear(4, 1), nn.Flatten(0), nn.Dropout(0.1)), {}),
    ],
)
def test_bad_mc_dropout_calls_raise(model, kwargs):
    with pytest.raises(GradwellError):
        mc_dropout_predict(model, torch.randn(5, 4), **kwargs)
