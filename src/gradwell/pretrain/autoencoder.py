"""Autoencoder pretraining: learn to reconstruct unlabeled inputs, keep the encoder.

The encoder's Linear layers W_1 ... W_L, each followed by its activation f_i, get a mirrored
decoder that runs them backwards:

    h_0 = x,    h_i = f_i(W_i h_{i-1} + b_i)              the encoder
    g_L = h_L,  g_{i-1} = f_{i-1}(V_i g_i + c_i)           the decoder, f_0 = identity

so each decoder layer ends with the activation of the encoder layer it mirrors the input of,
and g_0 is the reconstruction of x. With ``tied=True``, V_i = W_i^T: the decoder shares the
encoder's weights and owns only its biases (Hinton and Salakhutdinov, 2006), which halves the
weights to learn and keeps the two halves from drifting apart (a regularizer).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from gradwell.activations import activation_name
from gradwell.errors import DataError, GradwellError, unknown_name
from gradwell.init import glorot_uniform_
from gradwell.pretrain.unlabeled import Unlabeled, fit_unsupervised, in_unit_interval, unlabeled_tensor
from gradwell.train import Callback

# mse for any inputs; binary cross-entropy on logits for inputs in [0, 1] such as pixel intensities
LOSSES = ("mse", "binary_cross_entropy")
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class TiedLinear(nn.Module):
    """The transpose of an encoder's Linear: y = x W + c, with W (out, in) the encoder's own weight.

    >>> encoder_layer = nn.Linear(4, 2)
    >>> decoder_layer = TiedLinear(encoder_layer)
    >>> decoder_layer.weight is encoder_layer.weight, decoder_layer(torch.zeros(3, 2)).shape
    (True, torch.Size([3, 4]))
    """

    def __init__(self, encoder_layer: nn.Linear) -> None:
        super().__init__()
        self.weight = encoder_layer.weight  # (out, in) of the encoder layer: the same Parameter
        weight = encoder_layer.weight
        self.bias = nn.Parameter(torch.zeros(weight.shape[1], device=weight.device, dtype=weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.t(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[0]}, out_features={self.weight.shape[1]}, tied=True"


def is_activation(module: nn.Module) -> bool:
    try:
        activation_name(module)
    except GradwellError:
        return False
    return not isinstance(module, nn.Identity)


def encoder_layers(encoder: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]]:
    """Each Linear of `encoder`, in registration (= run, for nn.Sequential) order, with the
    activation that follows it before the next Linear (None when there is none)."""
    layers: list[list] = []
    for module in encoder.modules():
        if isinstance(module, CONVOLUTIONS):
            raise GradwellError(
                f"the autoencoder mirrors Linear layers; the encoder has a {type(module).__name__}, "
                "which has no mirror here"
            )
        if isinstance(module, nn.Linear):
            layers.append([module, None])
        elif layers and next(module.children(), None) is None and is_activation(module):
            layers[-1][1] = module
    if not layers:
        raise GradwellError(f"the encoder has no Linear layer to mirror: {encoder}")
    return [(linear, activation) for linear, activation in layers]


def mirror(encoder: nn.Module, tied: bool, generator: Generator) -> nn.Sequential:
    """The decoder of `encoder`: its Linear layers backwards (tied or Glorot uniform, zero biases)."""
    layers = encoder_layers(encoder)
    blocks = []
    for i in reversed(range(len(layers))):
        linear = layers[i][0]
        if tied:
            blocks.append(TiedLinear(linear))
        else:
            layer = nn.utils.skip_init(
                nn.Linear, linear.out_features, linear.in_features
            )  # no global RNG draw
            with torch.no_grad():
                glorot_uniform_(
                    layer.weight, generator=generator
                )  # the Keras default the builders use for outputs
                layer.bias.zero_()
            blocks.append(layer.to(linear.weight.device, linear.weight.dtype))
        if i > 0 and layers[i - 1][1] is not None:
            blocks.append(copy.deepcopy(layers[i - 1][1]))
    return nn.Sequential(*blocks)


def autoencoder(
    encoder: nn.Module,
    unlabeled: Unlabeled,
    *,
    epochs: int,
    tied: bool = False,
    loss: str = "mse",
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> nn.Module:
    """Pretrain `encoder` as the first half of an autoencoder; return it (trained in place).

    Args:
        encoder: a module of Linear layers and activations, e.g. an ``nn.Sequential`` of hidden
            blocks (``reuse(mlp, drop_top=1)`` without its head, or ``mlp(...)[:-1]``). Other layers
            (Flatten, BatchNorm, Dropout) are kept in the encoder and not mirrored.
        unlabeled: a float tensor (N, *features), a Split or a Dataset (its training inputs).
        epochs: passes over the unlabeled data.
        tied: the decoder uses the encoder's transposed weights (see the module docstring).
        loss: "mse", or "binary_cross_entropy" on logits for inputs in [0, 1] (the decoder then has
            no output activation: the loss applies the sigmoid).
        lr, batch_size, optimizer: Adam at 1e-3 in batches of 64, Keras's defaults, which suit
            a reconstruction loss; any name of ``gradwell.optim.create``.
        seed: seeds the decoder's initialization and the training run (shuffling, dropout).
        callbacks: ``gradwell.train`` callbacks; ``run.model`` is the whole autoencoder
            (``encoder`` and ``decoder`` children), so a callback can measure the reconstruction.

    The inputs are flattened for the reconstruction target; the encoder's first Linear must take
    that many features.

    >>> x = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))  # 64 unlabeled inputs
    >>> encoder = nn.Sequential(nn.Linear(8, 4), nn.Sigmoid())
    >>> trained = autoencoder(encoder, x, epochs=2, tied=True)
    >>> trained is encoder, trained(x).shape
    (True, torch.Size([64, 4]))
    """
    x = unlabeled_tensor(unlabeled)
    if loss not in LOSSES:
        raise unknown_name("autoencoder loss", loss, LOSSES)
    if loss == "binary_cross_entropy" and not in_unit_interval(x):
        raise DataError(
            f"binary_cross_entropy reconstructs inputs in [0, 1]; these span {float(x.min()):.3g}.."
            f"{float(x.max()):.3g}: use loss='mse'"
        )
    target = x.reshape(len(x), -1)  # (N, features)
    first = encoder_layers(encoder)[0][0]
    if first.in_features != target.shape[1]:
        raise GradwellError(
            f"the encoder's first Linear takes {first.in_features} features, but each input has "
            f"{target.shape[1]} (shape {tuple(x.shape[1:])}); flatten or pick a matching encoder"
        )
    decoder = mirror(encoder, tied, torch.Generator().manual_seed(seed))
    model = nn.Sequential(OrderedDict(encoder=encoder, decoder=decoder))
    fit_unsupervised(
        model, x, target, loss, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
        seed=seed, callbacks=callbacks, progress=progress,
    )  # fmt: skip
    return encoder
