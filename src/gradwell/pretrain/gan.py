"""GAN pretraining: train a generator G against a discriminator D, keep D's lower layers.

The chapter's other unsupervised pretraining besides autoencoders: "reuse the lower layers of the
GAN's discriminator". D(x) is a logit that x is real; G(z) maps noise z ~ N(0, I) to fake inputs.
Each step trains D on a batch of real and a batch of fake inputs (one forward pass over both),
then G through D's weights, held (Goodfellow et al., 2014), with the non-saturating G loss:

    L_D = ( BCE(D(x), 1) + BCE(D(G(z)), 0) ) / 2        = log 2 when D cannot tell
    L_G = BCE(D(G(z)), 1) = -log sigmoid(D(G(z)))       instead of log(1 - sigmoid(D(G(z))))

The minimax G loss log(1 - D) saturates while D rejects G's samples easily, early in training;
-log D has the same fixed point and strong gradients then. L_D is averaged over real and fake, so
a D that guesses scores log 2 (0.693): below it, D tells real from fake.

- Vectors (N, F): MLPs; D's hidden blocks use LeakyReLU 0.2 (as DCGAN's D), G's ReLU and a linear
  output, since standardized features are unbounded.
- Images (N, C, H, W): a small DCGAN (Radford et al., 2016): D is strided 4x4 convolutions (stride
  2 halves H and W, no pooling), LeakyReLU 0.2 and BatchNorm after the first; G projects z, then
  transposed 4x4 convolutions with BatchNorm and ReLU, and a tanh output mapped onto the data's
  range [min, max] (so D, and later the reused layers, see inputs as they are, unrescaled). Weights
  N(0, 0.02) as DCGAN. D's features are globally averaged over space before its logit, so the
  reused layers give (N, channels) features whatever the image size (28x28 and 32x32 alike).
- A module of your own as D's lower layers (like ``autoencoder``'s encoder), trained in place.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from gradwell.activations import positive_int
from gradwell.diagnose import watch
from gradwell.errors import DataError, GradwellError, check_finite
from gradwell.pretrain.auxiliary import embedding_width
from gradwell.pretrain.greedy import check_widths
from gradwell.pretrain.unlabeled import Unlabeled, unlabeled_tensor

LEAK = 0.2  # DCGAN's LeakyReLU slope in D
MIN_SAMPLES = 2  # a batch needs two inputs for BatchNorm's statistics; fewer give nothing to learn


@dataclass
class GANPretraining:
    """What ``gan`` returns. `layers` is what ``autoencoder`` and ``greedy_layerwise`` return: the
    pretrained lower layers, an ``nn.Sequential`` ready for ``reuse(layers, drop_top=0, head=K)``.

    `history` has one value per training step under "d_loss", "g_loss", "d_real" and "d_fake"
    (D's mean probability of "real" on real and on fake inputs); `reports` has the stability
    doctor's ``Report`` of "generator" and "discriminator" when ``watch_every`` was given.

    >>> x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # 32 images
    >>> result = gan(x, [4, 8], epochs=1, batch_size=16, watch_every=1)
    >>> result.layers(x).shape, len(result.history["d_loss"]), result.reports["discriminator"].history.steps
    (torch.Size([32, 8]), 2, [0, 1])
    """

    layers: nn.Sequential
    generator: nn.Module
    discriminator: nn.Sequential  # layers + its logit
    history: dict[str, list[float]] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)


class ToRange(nn.Module):
    """Map tanh's (-1, 1) onto [low, high]: y = low + (high - low) (t + 1) / 2."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, t: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * (torch.tanh(t) + 1) / 2

    def extra_repr(self) -> str:
        return f"low={self.low:.4g}, high={self.high:.4g}"


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D = (BCE(D(x), 1) + BCE(D(G(z)), 0)) / 2: log 2 for logits of 0.

    >>> round(float(discriminator_loss(torch.zeros(4), torch.zeros(4))), 4)
    0.6931
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def generator_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating L_G = -log sigmoid(D(G(z))) (Goodfellow et al., 2014).

    >>> round(float(generator_loss(torch.zeros(4))), 4)
    0.6931
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def mlp_pair(features: int, widths: list[int], noise_dim: int) -> tuple[nn.Sequential, nn.Module]:
    """D's hidden blocks (Linear + LeakyReLU 0.2) and a mirrored ReLU generator with a linear output."""
    blocks, fan_in = OrderedDict(), features
    for i, width in enumerate(widths, 1):
        blocks[f"hidden{i}"] = nn.Sequential(
            OrderedDict(linear=nn.Linear(fan_in, width), activation=nn.LeakyReLU(LEAK))
        )
        fan_in = width
    return nn.Sequential(blocks), mlp_generator(noise_dim, widths[::-1], features)


def mlp_generator(noise_dim: int, widths: Sequence[int], features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, width in zip([noise_dim, *widths], widths, strict=False):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1] if widths else noise_dim, features))


def check_images(shape: Sequence[int], widths: list[int]) -> None:
    factor = 2 ** len(widths)
    if shape[1] % factor or shape[2] % factor:
        raise GradwellError(
            f"the DCGAN halves H and W {len(widths)} times (one per width in {widths}); images of "
            f"{shape[1]}x{shape[2]} must have H and W divisible by {factor}: pad or crop them, or "
            "give fewer widths"
        )


def dcgan_pair(
    shape: Sequence[int], widths: list[int], noise_dim: int, low: float, high: float
) -> tuple[nn.Sequential, nn.Module]:
    """D's strided convolutions (then global average pooling) and a DCGAN generator for `shape`."""
    check_images(shape, widths)
    blocks, channels = OrderedDict(), shape[0]
    for i, width in enumerate(widths, 1):
        block = OrderedDict(conv=nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=i == 1))
        if i > 1:  # DCGAN: no BatchNorm on D's input layer
            block["norm"] = nn.BatchNorm2d(width)
        blocks[f"conv{i}"] = nn.Sequential(OrderedDict(**block, activation=nn.LeakyReLU(LEAK)))
        channels = width
    layers = nn.Sequential(OrderedDict(**blocks, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    h, w = shape[1] // 2 ** len(widths), shape[2] // 2 ** len(widths)
    up: list[nn.Module] = [
        nn.Linear(noise_dim, widths[-1] * h * w, bias=False),
        nn.Unflatten(1, (widths[-1], h, w)),  # (N, top width, H / 2^L, W / 2^L)
        nn.BatchNorm2d(widths[-1]),
        nn.ReLU(),
    ]
    outs = [*widths[::-1][1:], shape[0]]
    for i, (fan_in, out) in enumerate(zip(widths[::-1], outs, strict=True)):
        last = i == len(outs) - 1
        up.append(nn.ConvTranspose2d(fan_in, out, 4, stride=2, padding=1, bias=last))  # doubles H, W
        up += [ToRange(low, high)] if last else [nn.BatchNorm2d(out), nn.ReLU()]
    return layers, nn.Sequential(*up)


@torch.no_grad()
def dcgan_init_(module: nn.Module, generator: Generator) -> None:
    """Radford et al.'s initialization: weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            m.weight.normal_(0.0, 0.02, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.normal_(1.0, 0.02, generator=generator)
        else:
            continue
        if m.bias is not None:
            m.bias.zero_()


def module_generator(layers: nn.Module, x: Tensor, noise_dim: int) -> nn.Module:
    """G for D's lower layers given as a module: an MLP mirroring its Linear widths, reshaped to x."""
    widths = [m.out_features for m in layers.modules() if isinstance(m, nn.Linear)][::-1]
    if not widths:
        raise GradwellError(
            "a generator is built to mirror the Linear widths of the layers given; these have none: "
            "give the widths as a list of ints instead"
        )
    g = mlp_generator(noise_dim, widths, x[0].numel())
    if x.dim() == 4:
        low, high = float(x.min()), float(x.max())
        return nn.Sequential(g, ToRange(low, high), nn.Unflatten(1, tuple(x.shape[1:])))
    return g


def check_input(unlabeled: Unlabeled) -> Tensor:
    x = unlabeled_tensor(unlabeled)  # float, finite, non-empty, else a DataError
    if x.dim() not in (2, 4):
        raise DataError(
            f"gan takes vectors (N, features) or images (N, channels, height, width); got shape "
            f"{tuple(x.shape)}: flatten or add a channel axis"
        )
    if len(x) < MIN_SAMPLES:
        raise DataError(f"gan needs at least {MIN_SAMPLES} unlabeled inputs; got {len(x)}")
    if x.dim() == 4 and not float(x.max()) > float(x.min()):
        raise DataError(f"the images are constant ({float(x.min()):.4g}): there is nothing to learn")
    return x


def build_pair(
    x: Tensor, layers: Sequence[int] | nn.Module, noise_dim: int, seed: int
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(D's lower layers, G, D) for `x`, initialized from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torch's default initializations, for the MLPs
        if isinstance(layers, nn.Module):
            body, g = layers, module_generator(layers, x, noise_dim)
        elif x.dim() == 2:
            body, g = mlp_pair(x.shape[1], check_widths(layers), noise_dim)
        else:
            low, high = float(x.min()), float(x.max())
            body, g = dcgan_pair(tuple(x.shape[1:]), check_widths(layers), noise_dim, low, high)
            dcgan_init_(body, torch.Generator().manual_seed(seed))
            dcgan_init_(g, torch.Generator().manual_seed(seed + 1))
        if not isinstance(layers, nn.Module):
            body = body.to(x.device, x.dtype)
        width = embedding_width(body, x)  # the features D's logit reads
        d = nn.Sequential(OrderedDict(layers=body, output=nn.Linear(width, 1)))
    return body, g.to(x.device, x.dtype), d.to(x.device, x.dtype)


def judge(d: nn.Module, real: Tensor, fake: Tensor, twin: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """D's logits on the real and the fake batch, from one forward pass over both (N each).

    One pass: BatchNorm normalizes real and fake with the same statistics, so D cannot tell them
    apart by batch statistics alone, and the doctor sees one pass per step. With `twin` (a copy of
    D), the pass runs through the twin holding D's own parameters and buffers
    (``torch.func.functional_call``): D's gradients, but none of D's hooks, so D's doctor sees D's
    steps only and not G's.
    """
    both = torch.cat([real, fake])  # (2N, *input shape)
    if twin is None:
        logits = d(both)
    else:
        state = {**dict(d.named_parameters()), **dict(d.named_buffers())}
        logits = torch.func.functional_call(twin, state, (both,))
    return logits.squeeze(-1).split(len(real))


def train_step(
    real: Tensor,
    nets: tuple[nn.Module, nn.Module, nn.Module],
    optimizers: tuple[Any, Any],
    noise: Tensor,
) -> dict[str, Tensor]:
    """One D step on a real and a fake batch, then one G step through D's (held) weights."""
    g, d, twin = nets
    g_opt, d_opt = optimizers
    fake = g(noise)  # (N, *input shape)
    d_opt.zero_grad(set_to_none=True)
    real_logits, fake_logits = judge(d, real, fake.detach())
    d_loss = discriminator_loss(real_logits, fake_logits)
    d_loss.backward()
    d_opt.step()
    d.requires_grad_(False)  # G's loss reaches G through D; D's weight gradients are not needed
    try:
        g_opt.zero_grad(set_to_none=True)
        g_loss = generator_loss(judge(d, real, fake, twin)[1])
        g_loss.backward()
        g_opt.step()
    finally:
        d.requires_grad_(True)
    return {
        "d_loss": d_loss.detach(),
        "g_loss": g_loss.detach(),
        "d_real": torch.sigmoid(real_logits.detach()).mean(),
        "d_fake": torch.sigmoid(fake_logits.detach()).mean(),
    }


def gan(
    unlabeled: Unlabeled,
    layers: Sequence[int] | nn.Module = (128, 64),
    *,
    epochs: int,
    noise_dim: int = 32,
    lr: float = 2e-4,
    beta1: float = 0.5,
    batch_size: int = 64,
    seed: int = 0,
    watch_every: int | None = None,
) -> GANPretraining:
    """Train a GAN on `unlabeled` inputs; return D's lower layers (``.layers``) and the rest.

    Args:
        unlabeled: a float tensor (N, F) or (N, C, H, W), a Split or a Dataset (its training inputs).
        layers: D's hidden widths, bottom first (vectors: Linear widths; images: convolution
            channels, each halving H and W); G mirrors them. Or a module to use as D's lower layers
            and train in place (``mlp(...)[:-1]``, as ``autoencoder`` takes), G then mirroring its
            Linear widths.
        epochs: passes over the unlabeled data, one D step and one G step per batch.
        noise_dim: the size of z; 32 is plenty for small inputs (DCGAN used 100 for 64x64 images).
        lr, beta1: Adam at 2e-4 with beta1 = 0.5 for both nets: Radford et al. found 1e-3 too high
            and the usual 0.9 momentum made training oscillate and unstable.
        batch_size: 64, a common GAN batch (DCGAN used 128 on far more data).
        seed: seeds the initializations, shuffling and noise; the global RNG is left alone.
        watch_every: attach ``gradwell.watch(net, its_optimizer, every=watch_every)`` to G and D
            and return their reports.

    Returns a ``GANPretraining``: its ``layers`` take the place of what ``autoencoder`` returns
    (``reuse(layers, drop_top=0, head=K)``, or ``reuse(mlp, drop_top=1, head=K)`` on the model
    whose hidden layers were given), so the two pretrainings swap in user code and comparisons.

    >>> x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))  # 64 unlabeled vectors
    >>> result = gan(x, [16, 4], epochs=1)
    >>> [name for name, _ in result.layers.named_children()], result.layers(x).shape
    (['hidden1', 'hidden2'], torch.Size([64, 4]))
    """
    x = check_input(unlabeled)
    check_finite("lr", lr, low=0.0, low_open=True)
    check_finite("beta1", beta1, low=0.0, high=1.0, high_open=True)
    for name, value in (("epochs", epochs), ("noise_dim", noise_dim), ("batch_size", batch_size)):
        positive_int(name, value)
    body, g, d = build_pair(x, layers, noise_dim, seed)
    twin = copy.deepcopy(d)  # D's shape for G's step, before any doctor hooks D (see ``judge``)
    optimizers = tuple(torch.optim.Adam(net.parameters(), lr=lr, betas=(beta1, 0.999)) for net in (g, d))
    doctors = {}
    if watch_every is not None:
        doctors = {"generator": watch(g, optimizers[0], every=watch_every)}
        doctors["discriminator"] = watch(d, optimizers[1], every=watch_every)
    history: dict[str, list[Tensor]] = {"d_loss": [], "g_loss": [], "d_real": [], "d_fake": []}
    rng = torch.Generator(device=x.device).manual_seed(seed)
    g.train(), d.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=rng, device=x.device)
            for start in range(0, len(x) - 1, batch_size):  # a last batch of one is left out
                real = x[order[start : start + batch_size]]
                noise = torch.randn(len(real), noise_dim, generator=rng, device=x.device, dtype=x.dtype)
                for key, value in train_step(real, (g, d, twin), optimizers, noise).items():
                    history[key].append(value)  # tensors: read once, at the end
        reports = {name: doctor.report() for name, doctor in doctors.items()}
    finally:
        for doctor in doctors.values():
            doctor.close()
    values = {key: torch.stack(v).tolist() if v else [] for key, v in history.items()}
    return GANPretraining(body, g, d, values, reports)
