"""Which parts of a model the doctor measures, and what the model is made of.

A *layer* here is the place where a signal is measured in the forward pass and where its
gradient is caught in the backward pass. For gradwell's builders these are the hidden blocks
(``models.hidden_blocks``), measured at their ``activation`` child's output with the Linear or
Conv weights that feed it, then the ``output`` layer's logits.

Any other ``nn.Module`` is measured everywhere its forward pass does something the doctor knows
(gradwell.diagnose.record traces it, in the order the pass runs): the output of every activation
module, every Linear ("linear"), convolution ("conv"), embedding, LayerNorm or RMSNorm
("layernorm"), GroupNorm, BatchNorm and attention module (nn.MultiheadAttention, or any module
with parameters whose class name ends in "Attention"), and also the activations a ``forward``
calls as functions (``torch.relu``, ``F.gelu``, ``x.sigmoid()``, softmax: each activation's record
lists its functional forms) and its residual additions (``x + f(x)`` of two tensors of one
shape), named after the module whose ``forward`` called them ("block1.relu", "block1.add#2").
Without a pass (``find_layers``) only the modules are listed, in registration order. Weights
belong to the layer of the module that holds them; activations and additions hold none.

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
# the kinds of the modules that are not activations, by class (the first match wins)
STRUCTURE: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Linear,), "linear"),
    ((nn.modules.conv._ConvNd,), "conv"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
    ((nn.LayerNorm, nn.RMSNorm), "layernorm"),
    ((nn.GroupNorm,), "groupnorm"),
    ((*NORMS, nn.modules.instancenorm._InstanceNorm), "batchnorm"),
    ((nn.MultiheadAttention,), "attention"),
)
STRUCTURAL_KINDS = frozenset({kind for _, kind in STRUCTURE} | {"residual"})
# kinds whose units lie along axis 1 of the output (channels); the others' along the last axis
CHANNELS_FIRST = frozenset({"conv", "batchnorm", "groupnorm"})
# kinds whose weights say how the model was initialized (gradwell.init's fans apply to them)
INITIALIZED = frozenset({"linear", "conv"})


@dataclass(frozen=True)
class Layer:
    """One measured place: `module`'s output, of activation `kind`, fed by `weights`.

    >>> first, relu, _ = find_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> first.name, first.kind, type(first.module).__name__, first.weights[0].shape, relu.weights
    ('0', 'linear', 'Linear', torch.Size([8, 4]), ())
    """

    name: str
    kind: str  # an activation's canonical name (gradwell.activations), a STRUCTURE kind, "other"
    module: nn.Module | None  # None for an activation called as a function, or an addition
    weights: tuple[nn.Parameter, ...]
    axis: int = 1  # where its output's units lie: features or channels (1), a sequence's (-1)


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


def module_kind(module: nn.Module) -> str | None:
    """What the doctor measures a module as: its activation name or STRUCTURE kind; None if it
    measures it not at all (containers, dropout, a module it does not know).

    >>> module_kind(nn.Conv2d(3, 8, 3)), module_kind(nn.GELU()), module_kind(nn.Sequential())
    ('conv', 'gelu', None)
    """
    kind = kind_of(module)
    if kind is not None:
        return kind
    found = next((kind for classes, kind in STRUCTURE if isinstance(module, classes)), None)
    if found is None and named_attention(module):
        inner = any(
            named_attention(m) or isinstance(m, nn.MultiheadAttention)
            for m in module.modules()
            if m is not module
        )
        found = None if inner else "attention"  # a wrapper of the attention (BERT's) is not another
    return found


def named_attention(module: nn.Module) -> bool:
    """A module with parameters whose class name ends in "Attention" (Hugging Face's, timm's)."""
    return type(module).__name__.endswith("Attention") and any(True for _ in module.parameters())


def module_weights(module: nn.Module, kind: str) -> tuple[nn.Parameter, ...]:
    """The weights (not biases) a measured module's layer holds: none for an activation."""
    if kind not in STRUCTURAL_KINDS:
        return ()
    if isinstance(module, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        found = [getattr(module, name) for name in names]
        return (*(w for w in found if w is not None), module.out_proj.weight)
    if kind == "attention":  # its own matrices; those of its Linear children are theirs
        return tuple(p for p in module.parameters(recurse=False) if p.dim() >= 2)
    weight = getattr(module, "weight", None)
    return (weight,) if isinstance(weight, nn.Parameter) else ()


def block_kind(activation: nn.Module) -> str:
    """A builder block's activation name: "linear" for its nn.Identity, "other" if unknown."""
    if isinstance(activation, nn.Identity):
        return "linear"
    return kind_of(activation) or "other"


def find_layers(model: nn.Module) -> list[Layer]:
    """The layers of `model` in forward order (see the module docstring for the rule), without
    running it: for a model other than gradwell's builders, its measured modules in registration
    order (a traced pass adds the functional activations and additions, in the pass's order).

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> [(layer.name, layer.kind) for layer in find_layers(model)]
    [('0', 'linear'), ('1', 'tanh'), ('2', 'linear')]
    """
    blocks = hidden_blocks(model)
    output = getattr(model, "output", None)
    if blocks and isinstance(output, WEIGHT_LAYERS):
        layers = [
            Layer(name, block_kind(block.activation), block.activation, weights_in(block))
            for name, block in blocks
        ]
        return [*layers, Layer("output", "linear", output, (output.weight,))]
    return module_layers(model)


def is_built(model: nn.Module) -> bool:
    """A model of gradwell's builders, whose layers are its blocks (no trace needed)."""
    return bool(hidden_blocks(model)) and isinstance(getattr(model, "output", None), WEIGHT_LAYERS)


def weights_in(module: nn.Module) -> tuple[nn.Parameter, ...]:
    return tuple(m.weight for m in module.modules() if isinstance(m, WEIGHT_LAYERS))


def module_layers(model: nn.Module) -> list[Layer]:
    """A layer for every module the doctor measures, in registration order; what lies inside an
    activation module or an nn.MultiheadAttention is theirs (its out_proj is never called)."""
    layers: list[Layer] = []
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside):
            continue
        kind = module_kind(module)
        if kind is not None:
            axis = 1 if kind in CHANNELS_FIRST else -1
            layers.append(Layer(name, kind, module, module_weights(module, kind), axis))
            if kind not in STRUCTURAL_KINDS or isinstance(module, nn.MultiheadAttention):
                inside = (*inside, name)
    if not layers:
        raise GradwellError(
            f"{type(model).__name__} has no Linear, Conv, normalization, attention or activation module "
            "for the doctor to measure"
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
        if layer.kind in STRUCTURAL_KINDS and layer.kind not in INITIALIZED:
            continue
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
    residual: bool = False  # residual additions seen (a traced pass)
    post_ln: bool = False  # Transformer layers normalizing after the residual addition (norm_first=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "activation": self.activation,
            "init": self.init,
            "fan_in_scale": self.fan_in_scale,
            "batchnorm": self.batchnorm,
            "dropout": self.dropout,
            "depth": self.depth,
            "self_normalizing_problems": list(self.self_normalizing_problems),
            "residual": self.residual,
            "post_ln": self.post_ln,
        }


TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def model_facts(model: nn.Module, layers: list[Layer], skips_normalized: bool = False) -> ModelFacts:
    """The facts of `model` measured at `layers`. `skips_normalized`: a traced pass saw a residual
    addition whose skip input was a LayerNorm's output, LayerNorm(x + f(x)) feeding the next
    block: post-LN (BERT's, the original Transformer's; pre-LN adds to the previous sum). torch's
    Transformer layers say it themselves (norm_first)."""
    hidden = layers[:-1] or layers
    # softmax normalizes attention or the output: not the hidden activation the fixes speak of
    activations = [layer.kind for layer in hidden if layer.kind not in STRUCTURAL_KINDS | {"softmax"}]
    kinds = activations or ["linear"]
    activation = max(dict.fromkeys(kinds), key=kinds.count)
    scale = weight_scale(layers)
    transformer = [m for m in model.modules() if isinstance(m, TRANSFORMER_LAYERS)]
    return ModelFacts(
        activation=activation,
        init=init_name(scale, activation),
        fan_in_scale=scale.fan_in if scale is not None and math.isfinite(scale.fan_in) else None,
        batchnorm=any(isinstance(m, NORMS) for m in model.modules()),
        dropout=any(isinstance(m, DROPOUTS) and m.p > 0 for m in model.modules()),
        depth=len(layers) - 1 if is_built(model) else len(activations),
        self_normalizing_problems=tuple(check_self_normalizing(model)),
        residual=any(layer.kind == "residual" for layer in layers),
        post_ln=any(not m.norm_first for m in transformer) if transformer else skips_normalized,
    )
