"""gradwell.train.nonfinite: where a batch first turns non-finite, forward or backward, without a trace."""

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
