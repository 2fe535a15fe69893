"""gradwell.train.nonfinite: where a batch first turns non-finite, forward or backward, without a trace."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwell.norm import BatchNorm
from gradwell.train.nonfinite import describe, locate


class InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class BadBackward(nn.Module):
    def forward(self, x):
        return InfiniteGradient.apply(x)


def batch(n=16):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 2, (n,), generator=generator)


def test_a_finite_pass_names_nothing_and_a_non_finite_batch_names_itself():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = batch()
    assert locate(model, x, y, F.cross_entropy) == ""
    x[3, 1] = float("nan")
    assert locate(model, x, y, F.cross_entropy) == ": the batch itself holds non-finite values"


def test_the_first_module_with_a_non_finite_output_is_named_not_those_passing_it_on():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    x, y = batch()
    assert locate(model, x, y, F.cross_entropy) == ": the first non-finite value appeared in the output of 2"


def test_a_finite_forward_with_a_non_finite_gradient_names_the_output_nearest_the_loss_it_reaches():
    model = nn.Sequential(nn.Linear(4, 4), BadBackward(), nn.ReLU(), nn.Linear(4, 2))
    x, y = batch()
    expected = describe(None, "0")  # the gradient of the first Linear's output is the first to be infinite
    assert expected == ": the forward pass was finite; the gradient became non-finite at 0"
    assert locate(model, x, y, F.cross_entropy) == expected


def test_locating_leaves_modes_buffers_gradients_and_the_global_rng_as_they_were():
    model = nn.Sequential(nn.Linear(4, 8), BatchNorm(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = batch()
    state = torch.random.get_rng_state()
    locate(model, x, y, F.cross_entropy)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fused"])
def test_a_finite_epoch_whose_validation_goes_non_finite_stops_with_the_buffers_named(fast):
    from gradwell import models, optim
    from gradwell.data import Dataset, Split
    from gradwell.errors import NonFiniteError
    from gradwell.train import fit

    x = torch.randn(128, 6, generator=torch.Generator().manual_seed(0)) * 1e20  # unscaled features
    y = (x[:, 0] > 0).long()
    data = Dataset(Split(x[:96], y[:96]), Split(x[96:], y[96:]), Split(x[:0], y[:0]), 2, "unscaled")
    model = models.mlp(6, 2, hidden=[8], input_batchnorm=True, generator=torch.Generator().manual_seed(0))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = optim.create("sgd", model.parameters(), lr=0.01)
    expected = r"validation loss became non-finite in epoch 1 while the training .*input_norm\.running_var"
    with pytest.raises(NonFiniteError, match=expected):
        fit(model, data, optimizer=optimizer, epochs=3, batch_size=32, fast=fast, progress=False)
    for key, value in model.state_dict().items():  # back where the epoch began: the weights untrained
        assert torch.equal(value, before[key]), key
