"""fold_batchnorm: folded == unfolded in eval, torch.nn.utils.fusion as the oracle, clear refusals."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_error
from torch import nn
from torch.nn.utils.fusion import (
    fuse_conv_bn_eval,
    fuse_conv_bn_weights,
    fuse_linear_bn_eval,
    fuse_linear_bn_weights,
)

from gradwell.errors import GradwellError
from gradwell.fold import BATCH_NORMS, FoldWarning, fold_batchnorm, fold_into_next, fold_into_previous
from gradwell.norm import BatchNorm


def error(actual, expected) -> float:
    return rel_error(torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach())


def randomize(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Random weights everywhere and random moving statistics, gamma and beta in every BatchNorm."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                values = values.abs() + 0.2
            elif name.endswith("running_mean"):
                values = 2.0 * values + 1.0
            tensor.copy_(values)
    return model


def bn_statistics(features: int, generator: torch.Generator, dtype=torch.float64):
    """(mean, var, gamma, beta) far from the identity BatchNorm."""
    draw = lambda: torch.randn(features, generator=generator, dtype=dtype)  # noqa: E731
    return 2.0 * draw() + 1.0, draw().abs() + 0.2, draw(), draw()


def no_batch_norm_left(model: nn.Module) -> bool:
    return not any(isinstance(m, BATCH_NORMS) for m in model.modules())


def fold_quietly(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FoldWarning)
        return fold_batchnorm(model)


def assert_folds_exactly(model: nn.Module, x: torch.Tensor, tolerance: float) -> nn.Module:
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_quietly(model)
    assert error(folded(x), model(x)) < tolerance
    assert no_batch_norm_left(folded) and not no_batch_norm_left(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # only the BatchNorms' keys go; only biases of layers that had none come
    gone = before.keys() - folded.state_dict().keys()
    came = folded.state_dict().keys() - before.keys()
    assert all(isinstance(model.get_submodule(k.rpartition(".")[0]), BATCH_NORMS) for k in gone)
    assert all(k.endswith("bias") and model.get_submodule(k.rpartition(".")[0]).bias is None for k in came)
    return folded


MODELS = {
    # BN between the layer and its activation, as in the chapter's first example
    "mlp_bn_before_activation": lambda: (
        nn.Sequential(
            nn.Linear(8, 16),
            BatchNorm(16),
            nn.ReLU(),
            nn.Linear(16, 12, bias=False),
            nn.BatchNorm1d(12),
            nn.ELU(),
            nn.Linear(12, 3),
        ),
        (9, 8),
    ),
    # BN after the activation: folds into the next Linear, through Dropout
    "mlp_bn_after_activation": lambda: (
        nn.Sequential(
            nn.Linear(8, 16),
            nn.ReLU(),
            BatchNorm(16),
            nn.Dropout(0.3),
            nn.Linear(16, 12),
            nn.Tanh(),
            nn.BatchNorm1d(12),
            nn.AlphaDropout(0.1),
            nn.Linear(12, 3, bias=False),
        ),
        (9, 8),
    ),
    # the chapter's "BN as the first layer" instead of standardizing the inputs
    "bn_first": lambda: (
        nn.Sequential(BatchNorm(8, axis=-1), nn.Linear(8, 16), nn.SELU(), nn.Linear(16, 3)),
        (9, 8),
    ),
    "two_bns_in_a_row": lambda: (
        nn.Sequential(
            nn.ReLU(), nn.BatchNorm1d(8), BatchNorm(8), nn.Linear(8, 4), BatchNorm(4), BatchNorm(4)
        ),
        (9, 8),
    ),
    "nested_sequentials": lambda: (
        nn.Sequential(
            nn.Sequential(nn.Linear(8, 16), nn.Sequential(nn.Identity())),
            nn.Sequential(BatchNorm(16), nn.ReLU(), nn.BatchNorm1d(16)),
            nn.Sequential(nn.Sequential(nn.Dropout(), nn.Linear(16, 3))),
        ),
        (9, 8),
    ),
    "conv1d": lambda: (
        nn.Sequential(
            nn.Conv1d(3, 6, 3, padding=1),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.Conv1d(6, 4, 3, bias=False),
            BatchNorm(4, axis=-2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 8, 3),
        ),
        (5, 3, 10),
    ),
    "conv2d": lambda: (
        nn.Sequential(
            nn.Conv2d(3, 5, 3, padding=1, bias=False),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            BatchNorm(5),  # after the activation, into a convolution without zero padding
            nn.Conv2d(5, 4, 3, padding=1, padding_mode="reflect", stride=2),
            nn.ReLU(),
            nn.BatchNorm2d(4),
            nn.Dropout2d(),
            nn.Conv2d(4, 4, 1),
            nn.ELU(),
            nn.BatchNorm2d(4),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 3),
        ),
        (5, 3, 6, 6),
    ),
    "conv_transpose2d": lambda: (
        nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
        (5, 3, 4, 4),
    ),
    # each pixel with its own statistics (axis=(1, 2) on (N, 6, 5)), then Flatten -> Linear
    "per_pixel_bn_then_flatten": lambda: (
        nn.Sequential(BatchNorm((6, 5), axis=(1, 2)), nn.Flatten(), nn.Linear(30, 4)),
        (7, 6, 5),
    ),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_folded_model_equals_the_original_in_eval(generator, name, dtype, tolerance):
    model, shape = MODELS[name]()
    model = randomize(model, generator).to(dtype)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    assert_folds_exactly(model, x, tolerance)


def test_statistics_from_training_fold_too(generator):
    model = nn.Sequential(
        nn.Linear(6, 10), BatchNorm(10, momentum=0.5), nn.ReLU(), nn.BatchNorm1d(10), nn.Linear(10, 2)
    )
    for _ in range(5):
        model(3.0 * torch.randn(16, 6, generator=generator) + 2.0)
    assert_folds_exactly(model, torch.randn(4, 6, generator=generator), 1e-5)


def test_frozen_batch_norm_folds_and_the_result_is_in_eval_mode(generator):
    model = randomize(nn.Sequential(nn.Linear(4, 6), BatchNorm(6), nn.ReLU()), generator)
    model[1].frozen = True
    folded = fold_quietly(model)
    assert model.training and not folded.training
    model.train()  # frozen: normalizes with its moving statistics even in training mode
    x = torch.randn(5, 4, generator=generator)
    assert error(folded(x), model(x)) < 1e-5


def test_fold_into_previous_agrees_with_torch_fusion(generator):
    mean, var, gamma, beta = bn_statistics(6, generator)
    for weight, bias, transpose in [
        (torch.randn(6, 4, generator=generator, dtype=torch.float64), None, False),  # Linear
        (torch.randn(6, 3, 3, 3, generator=generator, dtype=torch.float64), torch.randn(6), False),
        (torch.randn(3, 6, 2, 2, generator=generator, dtype=torch.float64), torch.randn(6), True),
    ]:
        bias = None if bias is None else bias.double()
        ours = fold_into_previous(weight, bias, mean, var, 1e-3, gamma, beta, channel_axis=int(transpose))
        if weight.dim() == 2:
            theirs = fuse_linear_bn_weights(weight, bias, mean, var, 1e-3, gamma, beta)
        else:
            theirs = fuse_conv_bn_weights(weight, bias, mean, var, 1e-3, gamma, beta, transpose)
        assert error(ours[0], theirs[0]) < 1e-12
        assert error(ours[1], theirs[1]) < 1e-12


def test_fold_batchnorm_agrees_with_fuse_conv_bn_eval(generator):
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), generator).eval()
    ours = fold_quietly(model)[0]
    theirs = fuse_conv_bn_eval(model[0], model[1])
    assert error(ours.weight, theirs.weight) < 1e-6
    assert error(ours.bias, theirs.bias) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_agrees_with_fuse_linear_bn_eval(generator, bias):
    torch_model = randomize(nn.Sequential(nn.Linear(5, 6, bias=bias), nn.BatchNorm1d(6)).double(), generator)
    theirs = fuse_linear_bn_eval(torch_model[0].eval(), torch_model[1].eval())
    # gradwell's BatchNorm with the same statistics: fuse_linear_bn_eval reads only torch's num_features
    ours = nn.Sequential(nn.Linear(5, 6, bias=bias), BatchNorm(6)).double()
    assert ours.load_state_dict(torch_model.state_dict(), strict=False).missing_keys == []
    for model in (torch_model, ours):
        folded = fold_quietly(model)[0]
        assert error(folded.weight, theirs.weight) < 1e-12
        assert error(folded.bias, theirs.bias) < 1e-12


def test_fold_into_next_is_the_composition_of_the_two_maps(generator):
    mean, var, gamma, beta = bn_statistics(5, generator)
    eps = 1e-5

    def normalize(x, shape):
        def view(t):
            return t.reshape(shape)

        return view(gamma) * (x - view(mean)) / torch.sqrt(view(var) + eps) + view(beta)

    # Linear: y = W BN(x) + b
    weight, bias = torch.randn(3, 5, generator=generator, dtype=torch.float64), torch.randn(3).double()
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    w, b = fold_into_next(weight, bias, mean, var, eps, gamma, beta)
    assert error(F.linear(x, w, b), F.linear(normalize(x, (1, 5)), weight, bias)) < 1e-12
    # convolution without padding, and Linear after Flatten of (N, C, H, W)
    kernel = torch.randn(4, 5, 2, 2, generator=generator, dtype=torch.float64)
    x = torch.randn(7, 5, 3, 3, generator=generator, dtype=torch.float64)
    w, b = fold_into_next(kernel, None, mean, var, eps, gamma, beta)
    assert error(F.conv2d(x, w, b), F.conv2d(normalize(x, (1, 5, 1, 1)), kernel)) < 1e-12
    weight = torch.randn(3, 45, generator=generator, dtype=torch.float64)
    w, b = fold_into_next(weight, bias, mean, var, eps, gamma, beta)
    expected = F.linear(normalize(x, (1, 5, 1, 1)).flatten(1), weight, bias)
    assert error(F.linear(x.flatten(1), w, b), expected) < 1e-12


def test_pure_functions_keep_the_layer_dtype(generator):
    mean, var, gamma, beta = bn_statistics(4, generator, dtype=torch.float32)
    weight = torch.randn(4, 3, generator=generator)
    for w, b in (
        fold_into_previous(weight, None, mean, var, 1e-5, None, beta),
        fold_into_next(weight.T, None, mean, var, 1e-5, gamma, None),
    ):
        assert w.dtype == b.dtype == torch.float32


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.linear(x))


shared_linear = nn.Linear(4, 4)

# (model, input shape, qualified name of the BatchNorm left, words of the reason)
UNFOLDABLE = {
    "zero_padded_conv_after": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3, padding=1)
        ),
        (2, 2, 6, 6),
        "'2'",
        "'3' pads with zeros",
    ),
    "grouped_conv_after": (
        lambda: nn.Sequential(nn.Tanh(), BatchNorm(4), nn.Conv1d(4, 4, 1, groups=2)),
        (2, 4, 5),
        "'1'",
        "'2' is a grouped convolution",
    ),
    "not_inside_a_sequential": (
        lambda: nn.Sequential(nn.Linear(4, 4), Block(), nn.Linear(4, 2)),
        (3, 4),
        "'1.bn'",
        "its parent '1' is not an nn.Sequential",
    ),
    "the_whole_model": (lambda: BatchNorm(4), (3, 4), "(the model)", "it is the whole model"),
    "kept_axis_is_not_the_channel_axis": (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 1), BatchNorm(5, axis=2), nn.ReLU()),
        (2, 2, 5, 4),
        "'1'",
        "'0' writes channels on axis 1, not axis 2",
    ),
    "per_pixel_bn_into_linear": (
        lambda: nn.Sequential(nn.Linear(4, 4), BatchNorm((3, 4), axis=(1, 2)), nn.ReLU(), nn.Linear(4, 2)),
        (2, 3, 4),
        "'1'",
        "'0' is a Linear, whose features are the last axis, not axis (1, 2)",
    ),
    "non_leading_axis_into_flatten": (
        lambda: nn.Sequential(nn.ReLU(), BatchNorm(4, axis=2), nn.Flatten(), nn.Linear(12, 2)),
        (2, 3, 4),
        "'1'",
        "it keeps axis 2, not the leading axes 1..k",
    ),
    "flatten_of_some_axes": (
        lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Flatten(2), nn.Linear(4, 2)),
        (2, 3, 2, 2),
        "'1'",
        "'2' is not nn.Flatten() followed by a Linear",
    ),
    "bn2d_after_linear": (
        lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm2d(3)),
        (2, 3, 5, 4),
        "'1'",
        "'0' is a Linear, whose features are the last axis, not axis 1",
    ),
    "batch_statistics_in_eval": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)),
        (3, 4),
        "'1'",
        "track_running_stats=False",
    ),
    "last_after_an_activation": (
        lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), BatchNorm(4)),
        (3, 4),
        "'2'",
        "'1' is a ReLU, not a Linear or convolution), nor into the layer after (it comes last",
    ),
    "shared_layer": (
        lambda: nn.Sequential(shared_linear, BatchNorm(4), nn.ReLU(), shared_linear),
        (3, 4),
        "'1'",
        "is used more than once",
    ),
}


@pytest.mark.parametrize("case", UNFOLDABLE)
def test_unfoldable_batch_norm_stays_and_is_named(generator, case):
    build, shape, name, reason = UNFOLDABLE[case]
    model = randomize(build(), generator).eval()
    x = torch.randn(shape, generator=generator)
    with pytest.warns(FoldWarning) as caught:
        folded = fold_batchnorm(model)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"{name} was not folded" in message and reason in message
    assert not no_batch_norm_left(folded)
    assert error(folded(x), model(x)) < 1e-5
    with pytest.raises(GradwellError) as raised:
        fold_batchnorm(model, strict=True)
    assert str(raised.value) == message


def test_only_the_unfoldable_one_stays(generator):
    model, _ = UNFOLDABLE["zero_padded_conv_after"][:2]
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), model())
    model = randomize(model, generator).eval()
    with pytest.warns(FoldWarning, match="'2.2' was not folded"):
        folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[2][2], nn.BatchNorm2d)
    x = torch.randn(2, 3, 6, 6, generator=generator)
    assert error(folded(x), model(x)) < 1e-5


@pytest.mark.parametrize("model", ["x", None, [nn.Linear(2, 2), nn.BatchNorm1d(2)]], ids=str)
def test_something_other_than_a_module_is_refused(model):
    with pytest.raises(GradwellError, match=r"fold_batchnorm needs an nn.Module .*; got "):
        fold_batchnorm(model)


def test_unbuilt_lazy_model_is_refused():
    with pytest.raises(GradwellError, match=r"unbuilt lazy modules \('1'\); run one batch"):
        fold_batchnorm(nn.Sequential(nn.Linear(3, 4), BatchNorm()))
