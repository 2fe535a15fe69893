"""Which parts of a model the doctor measures, and what the model is made of.

A *layer* here is the place where a signal is measured in the forward pass and where its
gradient is caught in the backward pass: one activation output, with the Linear or Conv weights
that feed it. For gradwell's builders these are the hidden blocks (``models.hidden_blocks``),
measured at their ``activation`` child's output, then the ``output`` layer's logits. Any other
``nn.Module`` is walked in registration order (the run order of a Sequential): each activation
module closes a layer holding the weights seen since the previous one, and weights left after
the last activation form a final "linear" layer measured at the last weight module's output. A
model without activation modules (activations called as functions in ``forward``) is measured at
each Linear or Conv output. A module called several times in one pass is measured at its first
call.

torch's hard (piecewise linear) units are measured as the smooth unit with the same bounds, so
that the statistics that matter for them apply: Hardsigmoid and Hardtanh(0, 1) as sigmoid
(saturated near 0 or 1), Hardtanh(-1, 1) as tanh (saturated near -1 or 1), ReLU6 and any
Hardtanh(0, b) as ReLU (dead units: exactly 0 below the lower bound, no gradient). A Hardtanh with
other bounds is an "other" layer: measured, but neither its saturation nor dead units are.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from torch import nn

from gradwell.activations import activation_name
from gradwell.errors import GradwellError
from gradwell.init import RECOMMENDED, compute_fans, recommended_init
from gradwell.models import check_self_normalizing, hidden_blocks
from gradwell.norm import BatchNorm

WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
NORMS = (BatchNorm, nn.modules.batchnorm._BatchNorm)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class Layer:
    """One measured place: `module`'s output, of activation `kind`, fed by `weights`.

    >>> layer = find_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))[0]
    >>> layer.name, layer.kind, type(layer.module).__name__, layer.weights[0].shape
    ('1', 'relu', 'ReLU', torch.Size([8, 4]))
    """

    name: str
    kind: str  # a canonical activation name (gradwell.activations), "linear" for logits, "other"
    module: nn.Module
    weights: tuple[nn.Parameter, ...]


# (min_val, max_val) of a Hardtanh to the smooth unit with the same bounds (stats.SATURATION)
CLIPPED = {(0.0, 1.0): "sigmoid", (-1.0, 1.0): "tanh"}


def clipped_kind(module: nn.Hardtanh) -> str:
    """The kind a Hardtanh (ReLU6 is one) is measured as; see the module docstring."""
    bounds = (float(module.min_val), float(module.max_val))
    return CLIPPED.get(bounds, "relu" if bounds[0] == 0.0 else "other")


def kind_of(module: nn.Module) -> str | None:
    """The canonical activation name of an activation module, None for any other module."""
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.Hardsigmoid):
        return "sigmoid"
    if isinstance(module, nn.Hardtanh):
        return clipped_kind(module)
    try:
        return activation_name(module)
    except GradwellError:
        return None


def block_kind(activation: nn.Module) -> str:
    """A builder block's activation name: "linear" for its nn.Identity, "other" if unknown."""
    if isinstance(activation, nn.Identity):
        return "linear"
    return kind_of(activation) or "other"


def find_layers(model: nn.Module) -> list[Layer]:
    """The layers of `model` in forward order (see the module docstring for the rule).

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> [(layer.name, layer.kind) for layer in find_layers(model)]  # measured at Tanh, then the logits
    [('1', 'tanh'), ('2', 'linear')]
    """
    blocks = hidden_blocks(model)
    output = getattr(model, "output", None)
    if blocks and isinstance(output, WEIGHT_LAYERS):
        layers = [
            Layer(name, block_kind(block.activation), block.activation, weights_in(block))
            for name, block in blocks
        ]
        return [*layers, Layer("output", "linear", output, (output.weight,))]
    return generic_layers(model)


def weights_in(module: nn.Module) -> tuple[nn.Parameter, ...]:
    return tuple(m.weight for m in module.modules() if isinstance(m, WEIGHT_LAYERS))


def generic_layers(model: nn.Module) -> list[Layer]:
    layers: list[Layer] = []
    pending: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        kind = kind_of(module)
        if isinstance(module, WEIGHT_LAYERS):
            pending.append((name, module))
        elif kind is not None:
            layers.append(Layer(name, kind, module, tuple(m.weight for _, m in pending)))
            pending = []
    if not layers:
        layers = [Layer(name, "linear", module, (module.weight,)) for name, module in pending]
    elif pending:
        name, last = pending[-1]
        layers.append(Layer(name, "linear", last, tuple(m.weight for _, m in pending)))
    if not layers:
        raise GradwellError(
            f"{type(model).__name__} has no Linear, Conv or activation module for the doctor to measure"
        )
    return layers


@dataclass(frozen=True)
class WeightScale:
    """Medians over the hidden layers of Var[w], Var[w] fan_in and Var[w] fan_avg."""

    var: float
    fan_in: float  # 2 for He, 1 for LeCun
    fan_avg: float  # 1 for Glorot


def weight_scale(layers: list[Layer]) -> WeightScale | None:
    """The variance of the hidden layers' weights, scaled by their fans; None without any."""
    found = []
    for layer in layers[:-1] or layers:
        for w in layer.weights:
            if w.dim() >= 2 and w.numel() > 1:
                var = float(w.detach().float().var())
                fan_in, fan_out = compute_fans(w.shape)
                found.append((var, var * fan_in, var * (fan_in + fan_out) / 2))
    if not found:
        return None
    return WeightScale(*(statistics.median(column) for column in zip(*found, strict=True)))


def near(value: float, target: float, tolerance: float = 0.25) -> bool:
    return abs(value / target - 1) < tolerance


def init_name(scale: WeightScale | None, activation: str) -> str:
    """A name for the weights' variance: "N(0, 1)", "He", "LeCun", "Glorot", torch's default, or
    the variance itself.

    Estimated from the weights, so it names the scale, not the recipe (after training it names
    where the weights went). When several names fit (LeCun = Glorot for square layers), the one the
    chapter recommends for `activation` wins.
    """
    if scale is None:
        return "unknown"
    if not math.isfinite(scale.fan_in):
        return "non-finite weights"
    candidates = {
        "N(0, 1)": near(scale.var, 1.0) and not near(scale.fan_in, 1.0),
        "He": near(scale.fan_in, 2.0),
        "Glorot": near(scale.fan_avg, 1.0),
        "LeCun": near(scale.fan_in, 1.0),
        "torch's default U(+-1/sqrt(fan_in))": near(scale.fan_in, 1 / 3),
    }
    fits = [name for name, ok in candidates.items() if ok]
    preferred = {"he_normal": "He", "lecun_normal": "LeCun", "glorot_uniform": "Glorot"}
    recommended = preferred.get(recommended_init(activation)) if activation in RECOMMENDED else None
    if recommended in fits:
        return recommended
    return fits[0] if fits else f"Var[w] = {scale.fan_in:.3g}/fan_in"


@dataclass(frozen=True)
class ModelFacts:
    """What the fixes need to know about the model, read off its modules and weights."""

    activation: str  # the most common hidden activation
    init: str  # a name for the hidden weights' variance (init_name)
    fan_in_scale: float | None  # median Var[w] fan_in of the hidden weights
    batchnorm: bool
    dropout: bool  # regular (not alpha) dropout with a positive rate
    depth: int  # hidden layers measured
    self_normalizing_problems: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "activation": self.activation,
            "init": self.init,
            "fan_in_scale": self.fan_in_scale,
            "batchnorm": self.batchnorm,
            "dropout": self.dropout,
            "depth": self.depth,
            "self_normalizing_problems": list(self.self_normalizing_problems),
        }


def model_facts(model: nn.Module, layers: list[Layer]) -> ModelFacts:
    hidden = layers[:-1] or layers
    kinds = [layer.kind for layer in hidden]
    activation = max(dict.fromkeys(kinds), key=kinds.count)
    scale = weight_scale(layers)
    return ModelFacts(
        activation=activation,
        init=init_name(scale, activation),
        fan_in_scale=scale.fan_in if scale is not None and math.isfinite(scale.fan_in) else None,
        batchnorm=any(isinstance(m, NORMS) for m in model.modules()),
        dropout=any(isinstance(m, DROPOUTS) and m.p > 0 for m in model.modules()),
        depth=len(layers) - 1,
        self_normalizing_problems=tuple(check_self_normalizing(model)),
    )
