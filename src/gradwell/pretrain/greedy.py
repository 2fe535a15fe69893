"""Greedy layer-wise pretraining: the pre-2010 recipe for deep networks (Hinton et al., 2006;
Bengio et al., 2007).

Train one layer at a time on unlabeled data, each on the output of the layers below, which are
fixed from then on: an RBM (a deep belief network's layers) or a one-layer autoencoder (stacked
autoencoders). The stack then gets an output layer and is fine-tuned on the labeled data:

    stack = greedy_layerwise([128, 64], unlabeled, kind="rbm", epochs_per_layer=10)
    model = reuse(stack, drop_top=0, head=num_classes)
    fine_tune(model, labeled, frozen_epochs=2, epochs=20, lr=1e-3)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from gradwell.activations import get_activation
from gradwell.errors import GradwellError, unknown_name
from gradwell.init import recommended_initializer
from gradwell.models import initialize
from gradwell.pretrain.autoencoder import autoencoder
from gradwell.pretrain.rbm import RBM
from gradwell.pretrain.unlabeled import Unlabeled, in_unit_interval, unlabeled_tensor

KINDS = ("autoencoder", "rbm")


def check_widths(widths: Sequence[int]) -> list[int]:
    try:
        widths = list(widths)
    except TypeError:
        widths = None
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise GradwellError(
            f"widths must be a non-empty list of positive ints, one per layer; got {widths!r}"
        )
    return widths


def rbm_layer(
    codes: torch.Tensor, width: int, visible: str, seed: int, epochs: int, lr: float | None, **options
) -> nn.Sequential:
    """An RBM trained on `codes`, as a Linear + sigmoid block."""
    if visible == "auto":
        visible = "bernoulli" if in_unit_interval(codes) else "gaussian"
    rbm = RBM(codes.shape[1], width, visible, generator=torch.Generator().manual_seed(seed)).to(codes.device)
    return rbm.fit(codes, epochs=epochs, lr=lr, seed=seed, **options).as_layer()


def autoencoder_layer(
    codes: torch.Tensor, width: int, activation: str, seed: int, epochs: int, lr: float | None, **options
) -> nn.Sequential:
    """A Linear + activation block trained as the encoder of a one-layer autoencoder on `codes`."""
    act = get_activation(activation)
    linear = nn.utils.skip_init(nn.Linear, codes.shape[1], width)  # the default init would draw globally
    linear = initialize(linear, recommended_initializer(act), torch.Generator().manual_seed(seed))
    block = nn.Sequential(OrderedDict(linear=linear, activation=act)).to(codes.device)
    return autoencoder(block, codes, epochs=epochs, lr=1e-3 if lr is None else lr, seed=seed, **options)


def greedy_layerwise(
    widths: Sequence[int],
    unlabeled: Unlabeled,
    *,
    kind: str = "autoencoder",
    epochs_per_layer: int,
    activation: str = "sigmoid",
    visible: str = "auto",
    k: int = 1,
    persistent: bool = False,
    tied: bool = False,
    lr: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    on_layer: Callable[[int, nn.Sequential], None] | None = None,
) -> nn.Sequential:
    """A stack of hidden layers of `widths`, pretrained one at a time; ready for ``reuse``.

    Layer i is trained on the outputs of layers 1 .. i-1, computed once and without gradients, so
    the layers below are frozen while it trains (no optimizer ever holds them again here).

    Args:
        widths: the hidden layers' sizes, bottom first.
        unlabeled: a float tensor (N, *features), a Split or a Dataset (its training inputs).
        kind: "rbm" trains each layer as an RBM by contrastive divergence (its hidden
            probabilities feed the next); "autoencoder" as the encoder of a one-layer autoencoder
            (mean squared error, linear reconstruction).
        epochs_per_layer: passes over the data for each layer.
        activation: the autoencoder layers' activation; the RBM's is the sigmoid, by definition.
        visible: the first RBM's visible units: "bernoulli", "gaussian" (standardized inputs) or
            "auto" (Bernoulli when the data lie in [0, 1]). Higher RBMs see probabilities:
            Bernoulli units.
        k, persistent: CD-k and persistent CD for the RBMs (``RBM.fit``).
        tied: tied decoder weights for the autoencoders.
        lr: the learning rate; None: RBM.fit's default for the visible type, Adam's 1e-3 for
            autoencoders.
        batch_size, seed: mini-batch size, and the seed of layer i is ``seed + i``.
        on_layer: called as ``on_layer(i, stack)`` after layer i is trained (to watch progress).

    Returns ``nn.Sequential([flatten,] hidden1, ..., hiddenN)``, each block ``linear`` +
    ``activation`` like gradwell's builders make them, with every parameter trainable. Add a head
    with ``reuse(stack, drop_top=0, head=num_classes)``.

    >>> x = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))  # in [0, 1]: Bernoulli units
    >>> stack = greedy_layerwise([6, 4], x, kind="rbm", epochs_per_layer=1)
    >>> [name for name, _ in stack.named_children()], stack(x).shape
    (['hidden1', 'hidden2'], torch.Size([64, 4]))
    """
    x = unlabeled_tensor(unlabeled)
    widths = check_widths(widths)
    if kind not in KINDS:
        raise unknown_name("pretraining kind", kind, KINDS)
    if kind == "rbm" and activation != "sigmoid":
        raise GradwellError(
            f"RBM layers compute sigmoid probabilities; activation={activation!r} needs kind='autoencoder'"
        )
    layers = OrderedDict(flatten=nn.Flatten()) if x.dim() > 2 else OrderedDict()
    stack = nn.Sequential(layers)
    codes = x.reshape(len(x), -1)  # (N, features)
    for i, width in enumerate(widths, 1):
        if kind == "rbm":
            options = {"k": k, "persistent": persistent, "batch_size": batch_size}
            block = rbm_layer(
                codes, width, visible if i == 1 else "bernoulli", seed + i, epochs_per_layer, lr, **options
            )
        else:
            options = {"tied": tied, "batch_size": batch_size}
            block = autoencoder_layer(codes, width, activation, seed + i, epochs_per_layer, lr, **options)
        stack.add_module(f"hidden{i}", block)
        with torch.no_grad():
            codes = block.eval()(codes)
        if on_layer is not None:
            on_layer(i, stack)
    return stack.train()
