"""Restricted Boltzmann machines trained by contrastive divergence (Hinton, 2002).

Visible units v (V), hidden units h in {0, 1}^H, weight W (H, V) in torch's Linear layout,
visible bias b, hidden bias c. The energy, for Bernoulli visible units v in {0, 1}^V, and for
Gaussian visible units of unit variance (standardized real inputs; Hinton, 2010, section 13.2):

    E(v, h) = -b.v - c.h - h.W v                 (bernoulli)
    E(v, h) = |v - b|^2 / 2 - c.h - h.W v        (gaussian)

Both give factorized conditionals:

    p(h_j = 1 | v) = sigmoid(W v + c)_j
    p(v_i = 1 | h) = sigmoid(W^T h + b)_i        (bernoulli)
    v | h ~ N(W^T h + b, I)                       (gaussian)

and the free energy F(v) = -log sum_h exp(-E(v, h)):

    F(v) = -b.v - sum_j softplus((W v + c)_j)                (bernoulli)
    F(v) = |v - b|^2 / 2 - sum_j softplus((W v + c)_j)       (gaussian)

The log-likelihood gradient is the data average of -dF/dtheta minus the model's. CD-k estimates
the model's from the end v_k of a k-step Gibbs chain v -> h -> v started at the data;
persistent CD (PCD; Tieleman, 2008) keeps the chain running across updates instead of
restarting it, which follows the model's distribution more closely:

    dW = <p(h|v) v^T>_data - <p(h|v_k) v_k^T>_chain
    db = <v>_data - <v_k>_chain,    dc = <p(h|v)>_data - <p(h|v_k)>_chain

which is exactly -d/dtheta [mean F(data) - mean F(v_k)] with v_k held fixed. The chain runs on
sampled states; the statistics use hidden probabilities, which lowers their variance (Hinton,
2010, section 3).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from gradwell.activations import get_activation
from gradwell.errors import DataError, GradwellError, check_finite, unknown_name
from gradwell.pretrain.unlabeled import Unlabeled, in_unit_interval, unlabeled_tensor

log = logging.getLogger(__name__)

VISIBLE = ("bernoulli", "gaussian")
# Hinton (2010): 0.1 suits binary units; Gaussian visible units need one or two orders of magnitude less
DEFAULT_LR = {"bernoulli": 0.1, "gaussian": 0.01}


def check_visible(visible: str) -> str:
    if visible not in VISIBLE:
        raise unknown_name("visible unit type", visible, VISIBLE)
    return visible


def hidden_probabilities(v: Tensor, weight: Tensor, hidden_bias: Tensor) -> Tensor:
    """p(h = 1 | v) = sigmoid(v W^T + c): (N, V) -> (N, H)."""
    return torch.sigmoid(F.linear(v, weight, hidden_bias))


def visible_mean(h: Tensor, weight: Tensor, visible_bias: Tensor, visible: str) -> Tensor:
    """E[v | h]: sigmoid(h W + b) for Bernoulli units, h W + b for Gaussian ones: (N, H) -> (N, V)."""
    z = F.linear(h, weight.t(), visible_bias)
    return torch.sigmoid(z) if check_visible(visible) == "bernoulli" else z


def sample_h_given_v(
    v: Tensor, weight: Tensor, hidden_bias: Tensor, generator: Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(p(h = 1 | v), a binary sample of h).

    >>> weight, hidden_bias = torch.zeros(4, 3), torch.zeros(4)  # 4 hidden units, 3 visible ones
    >>> p, h = sample_h_given_v(torch.ones(2, 3), weight, hidden_bias, torch.Generator().manual_seed(0))
    >>> p[0], h.shape, set(h.unique().tolist()) <= {0.0, 1.0}
    (tensor([0.5000, 0.5000, 0.5000, 0.5000]), torch.Size([2, 4]), True)
    """
    p = hidden_probabilities(v, weight, hidden_bias)
    return p, torch.bernoulli(p, generator=generator)


def sample_v_given_h(
    h: Tensor, weight: Tensor, visible_bias: Tensor, visible: str, generator: Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(E[v | h], a sample of v): Bernoulli draws, or the mean plus unit-variance Gaussian noise.

    >>> weight, visible_bias = torch.ones(2, 3), torch.zeros(3)
    >>> h = torch.tensor([[1.0, 0.0]])
    >>> mean, v = sample_v_given_h(h, weight, visible_bias, "gaussian", torch.Generator().manual_seed(0))
    >>> mean, v.shape  # h W + b, and that plus N(0, 1) noise
    (tensor([[1., 1., 1.]]), torch.Size([1, 3]))
    """
    mean = visible_mean(h, weight, visible_bias, visible)
    if visible == "bernoulli":
        return mean, torch.bernoulli(mean, generator=generator)
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean, mean + noise


def free_energy(v: Tensor, weight: Tensor, visible_bias: Tensor, hidden_bias: Tensor, visible: str) -> Tensor:
    """F(v) per sample, (N, V) -> (N,); the formulas of the module docstring.

    >>> weight, visible_bias, hidden_bias = torch.zeros(2, 3), torch.zeros(3), torch.zeros(2)
    >>> free_energy(torch.ones(1, 3), weight, visible_bias, hidden_bias, "bernoulli")  # -2 log 2
    tensor([-1.3863])
    """
    hidden = F.softplus(F.linear(v, weight, hidden_bias)).sum(-1)
    if check_visible(visible) == "bernoulli":
        return -(v @ visible_bias) - hidden
    return 0.5 * ((v - visible_bias) ** 2).sum(-1) - hidden


def gibbs_chain(
    v: Tensor,
    weight: Tensor,
    visible_bias: Tensor,
    hidden_bias: Tensor,
    visible: str,
    k: int,
    generator: Generator | None,
) -> Tensor:
    """k steps v -> h -> v of block Gibbs sampling on sampled states; returns v_k."""
    for _ in range(k):
        _, h = sample_h_given_v(v, weight, hidden_bias, generator)
        _, v = sample_v_given_h(h, weight, visible_bias, visible, generator)
    return v


def cd_gradient(
    data: Tensor,
    weight: Tensor,
    visible_bias: Tensor,
    hidden_bias: Tensor,
    visible: str,
    *,
    k: int = 1,
    chain: Tensor | None = None,
    generator: Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dW, db, dc, v_k): the CD-k estimate of the log-likelihood's ascent direction.

    The chain starts at `data` (CD), or at `chain`, the persistent particles of PCD, which may be
    as many as the batch or not. Returns the chain's end v_k too: PCD's next start.

    >>> v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    >>> weight, visible_bias, hidden_bias = torch.zeros(2, 3), torch.zeros(3), torch.zeros(2)
    >>> grads = cd_gradient(v, weight, visible_bias, hidden_bias, "bernoulli", k=1)
    >>> d_weight, d_visible, d_hidden, v_k = grads
    >>> d_weight.shape, torch.equal(d_visible, v.mean(0) - v_k.mean(0))
    (torch.Size([2, 3]), True)
    """
    v_k = gibbs_chain(
        data if chain is None else chain, weight, visible_bias, hidden_bias, visible, k, generator
    )
    p_data = hidden_probabilities(data, weight, hidden_bias)  # (N, H)
    p_model = hidden_probabilities(v_k, weight, hidden_bias)  # (M, H)
    d_weight = p_data.t() @ data / len(data) - p_model.t() @ v_k / len(v_k)  # (H, V)
    return d_weight, data.mean(0) - v_k.mean(0), p_data.mean(0) - p_model.mean(0), v_k


class RBM(nn.Module):
    """A restricted Boltzmann machine with Bernoulli or unit-variance Gaussian visible units.

    Args:
        n_visible, n_hidden: the numbers of units.
        visible: "bernoulli" for inputs in [0, 1] (binary or probabilities, e.g. pixel
            intensities), "gaussian" for standardized real inputs (the unit variance is assumed).
        generator: for a reproducible initialization.

    Weights start from N(0, 0.01^2), biases at 0 (Hinton, 2010): small random weights break the
    symmetry between hidden units. Parameters: ``weight`` (n_hidden, n_visible), ``visible_bias``,
    ``hidden_bias``; they are learned by ``fit`` (contrastive divergence), not by autograd.
    Calling the module gives the hidden probabilities, like ``transform``.

    >>> g = torch.Generator().manual_seed(0)
    >>> v = (torch.rand(64, 6, generator=g) < 0.3).float()  # binary data
    >>> rbm = RBM(6, 3, generator=g)
    >>> before = rbm.reconstruction_error(v)
    >>> rbm.fit(v, epochs=5).transform(v).shape, rbm.reconstruction_error(v) < before
    (torch.Size([64, 3]), True)
    """

    def __init__(
        self, n_visible: int, n_hidden: int, visible: str = "bernoulli", *, generator: Generator | None = None
    ) -> None:
        super().__init__()
        for name, value in (("n_visible", n_visible), ("n_hidden", n_hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GradwellError(f"RBM {name} must be a positive int; got {value!r}")
        self.visible = check_visible(visible)
        self.weight = nn.Parameter(torch.randn(n_hidden, n_visible, generator=generator) * 0.01)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    @property
    def n_visible(self) -> int:
        return self.weight.shape[1]

    @property
    def n_hidden(self) -> int:
        return self.weight.shape[0]

    def inputs(self, data: Unlabeled) -> Tensor:
        """`data` flattened to (N, n_visible) on the RBM's device and dtype, checked."""
        x = unlabeled_tensor(data)
        x = x.reshape(len(x), -1).to(self.weight.device, self.weight.dtype)
        if x.shape[1] != self.n_visible:
            raise DataError(
                f"the RBM has {self.n_visible} visible units; the data have {x.shape[1]} features"
            )
        if self.visible == "bernoulli" and not in_unit_interval(x):
            raise DataError(
                f"Bernoulli visible units take values in [0, 1]; the data span {float(x.min()):.3g}.."
                f"{float(x.max()):.3g}: standardize them and use visible='gaussian'"
            )
        return x

    @torch.no_grad()
    def transform(self, v: Unlabeled) -> Tensor:
        """p(h = 1 | v): the features the RBM passes to the next layer, (N, n_hidden)."""
        return hidden_probabilities(self.inputs(v), self.weight, self.hidden_bias)

    def forward(self, v: Tensor) -> Tensor:
        return self.transform(v)

    def free_energy(self, v: Unlabeled) -> Tensor:
        """F(v) per sample, (N,): lower for inputs the RBM finds more probable."""
        return free_energy(self.inputs(v), self.weight, self.visible_bias, self.hidden_bias, self.visible)

    @torch.no_grad()
    def reconstruction_error(self, data: Unlabeled) -> float:
        """Mean squared error between v and its mean-field reconstruction E[v | p(h | v)].

        Deterministic (no sampling), so two calls compare; a rough progress measure, not the
        likelihood that CD approximately climbs (Hinton, 2010, section 5).
        """
        v = self.inputs(data)
        h = hidden_probabilities(v, self.weight, self.hidden_bias)
        return float(((v - visible_mean(h, self.weight, self.visible_bias, self.visible)) ** 2).mean())

    @torch.no_grad()
    def fit(
        self,
        data: Unlabeled,
        *,
        epochs: int = 10,
        k: int = 1,
        persistent: bool = False,
        lr: float | None = None,
        momentum: float = 0.5,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        seed: int = 0,
    ) -> RBM:
        """Train by CD-k (or PCD-k with `persistent`) with momentum; returns the RBM itself.

        Each batch: velocity <- momentum * velocity + lr * (gradient - weight_decay * W) (the
        decay on the weights only), then theta <- theta + velocity. Defaults after Hinton (2010):
        lr 0.1 for Bernoulli visible units, 0.01 for Gaussian ones (they need a smaller rate),
        momentum 0.5 (his value for the start of training), CD-1, mini-batches of 32. The
        persistent chains start at the first batch. Sampling and shuffling draw from a generator
        seeded with `seed`: the global RNG is untouched.
        """
        x = self.inputs(data)
        for name, value in (("epochs", epochs), ("k", k), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GradwellError(f"RBM.fit {name} must be a positive int; got {value!r}")
        lr = check_finite("RBM lr", DEFAULT_LR[self.visible] if lr is None else lr, low=0.0, low_open=True)
        momentum = check_finite("RBM momentum", momentum, low=0.0, high=1.0, high_open=True)
        weight_decay = check_finite("RBM weight_decay", weight_decay, low=0.0)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        params = (self.weight, self.visible_bias, self.hidden_bias)
        velocities = [torch.zeros_like(p) for p in params]
        chain = None
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=generator, device=x.device)
            for start in range(0, len(x), batch_size):
                batch = x[order[start : start + batch_size]]
                if persistent and chain is None:
                    chain = batch
                *grads, end = cd_gradient(
                    batch,
                    *params,
                    self.visible,
                    k=k,
                    chain=chain if persistent else None,
                    generator=generator,
                )
                chain = end if persistent else None
                grads[0] = grads[0] - weight_decay * self.weight
                for param, velocity, grad in zip(params, velocities, grads, strict=True):
                    param.add_(velocity.mul_(momentum).add_(grad, alpha=lr))
            if log.isEnabledFor(logging.INFO):  # the error costs a pass over the data
                log.info("RBM epoch %d: reconstruction error %.4g", epoch + 1, self.reconstruction_error(x))
        return self

    def as_layer(self) -> nn.Sequential:
        """A block ``linear`` + ``activation`` (sigmoid) computing p(h | v) with a copy of the weights,
        shaped like gradwell's builder blocks, to stack and fine-tune as a feedforward layer."""
        linear = nn.utils.skip_init(  # no default init: it would draw from the global RNG
            nn.Linear, self.n_visible, self.n_hidden, device=self.weight.device, dtype=self.weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            linear.bias.copy_(self.hidden_bias)
        return nn.Sequential(OrderedDict(linear=linear, activation=get_activation("sigmoid")))

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, visible={self.visible!r}"
