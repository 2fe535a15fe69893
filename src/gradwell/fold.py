"""Fold BatchNorm layers into a neighbouring Linear or convolution for inference.

In inference a BatchNorm is a fixed affine map of each feature (`gradwell.norm.batch_norm_affine`):

    BN(x) = a * x + s,    a = gamma / sqrt(var + eps),    s = beta - mu * a

with the moving mean mu and variance var. Composed with the layer before it, y = W x + b:

    W' = W * a     (row o of W times a_o)        b' = (b - mu) * a + beta = b * a + s

and composed with the layer after it, y = W BN(x) + b (the BN after an activation, or first):

    W' = W diag(a)  (column i of W times a_i)    b' = b + W s

Folding removes one full pass over the activations per BatchNorm at no cost in accuracy, the
inference-time step of Jacob et al. (2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"); torch.nn.utils.fusion does the first case for one
pair of modules. gradwell folds both directions (DESIGN.md: Linear/Conv -> BN into the layer
before, BN -> Linear into the layer after) through a whole model, for gradwell's BatchNorm (its
moving statistics follow the chapter's convention, see `gradwell.norm`) and torch's alike: in
eval mode both compute the same affine map of their running statistics.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from gradwell.errors import GradwellError
from gradwell.norm import BatchNorm, batch_norm_affine, format_axis

logger = logging.getLogger(__name__)

BATCH_NORMS = (BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# identities in eval mode, so a BatchNorm folds through them
EVAL_NO_OPS = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class FoldWarning(UserWarning):
    """A BatchNorm that `fold_batchnorm` left in place, named with the reason."""


def fold_into_previous(
    weight: Tensor,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    eps: float,
    gamma: Tensor | None,
    beta: Tensor | None,
    channel_axis: int = 0,
) -> tuple[Tensor, Tensor]:
    """(W', b') of a layer followed by a BatchNorm: W' = W * a along `channel_axis`, b' = b * a + s.

    `channel_axis` is the output axis of the weight: 0 for Linear and Conv, 1 for ConvTranspose
    (groups 1). The arithmetic runs in float64, the result has the layer's dtype.
    """
    scale, shift = batch_norm_affine(mean.double(), var.double(), eps, as_double(gamma), as_double(beta))
    shape = [1] * weight.dim()
    shape[channel_axis] = -1
    new_weight = weight.double() * scale.reshape(shape)
    new_bias = shift if bias is None else bias.double() * scale + shift
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def fold_into_next(
    weight: Tensor,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    eps: float,
    gamma: Tensor | None,
    beta: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(W', b') of a layer that reads a BatchNorm's output: W' = W diag(a), b' = b + W s.

    The inputs that row o of `weight` reads, ``weight[o].flatten()``, must form one block of equal
    length per BatchNorm feature, in the features' order: a Linear's columns (block 1), a
    convolution's (in_channels, *kernel) with groups 1 (block = kernel size), or a Linear after
    ``nn.Flatten`` of features kept on the leading axes (block = the flattened trailing axes).
    """
    features, inputs = mean.numel(), weight[0].numel()
    if inputs % features:
        raise GradwellError(f"a weight with {inputs} inputs per output cannot read {features} features")
    scale, shift = batch_norm_affine(mean.double(), var.double(), eps, as_double(gamma), as_double(beta))
    blocks = weight.double().reshape(weight.shape[0], features, -1)  # (out, features, block)
    new_weight = (blocks * scale.reshape(1, -1, 1)).reshape(weight.shape)
    new_bias = (blocks * shift.reshape(1, -1, 1)).sum(dim=(1, 2))
    if bias is not None:
        new_bias = new_bias + bias.double()
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def as_double(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().double()


@dataclass
class Slot:
    """One module in a Sequential chain, in execution order, with where it lives."""

    name: str
    parent: nn.Sequential
    key: str

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.key)


def fold_batchnorm(model: nn.Module, strict: bool = False) -> nn.Module:
    """A copy of `model`, in eval mode, with every BatchNorm it can fold folded away.

    Folds gradwell's BatchNorm and torch's BatchNorm1d/2d/3d inside ``nn.Sequential`` models,
    nested ones included (the execution order is the flattened order), through eval-mode no-ops
    (Dropout, AlphaDropout, Identity):

    - into the layer before it: Linear, Conv1d/2d/3d or ConvTranspose1d/2d/3d (groups 1) whose
      output features are the BatchNorm's kept axis; a missing bias is created;
    - else into the layer after it: a Linear reading the features on its last axis, a Linear after
      ``nn.Flatten()`` of features kept on the leading axes (BN2d -> Flatten -> Linear), or a
      convolution with groups 1 whose padding is not zeros (zeros would skip the shift).

    A folded BatchNorm becomes ``nn.Identity``, so every other state_dict key is kept. The copy
    computes what `model` computes in eval mode (in training mode a BatchNorm would use batch
    statistics), hence it is returned in eval mode; `model` itself is not touched.

    Shapes are not traced: a BatchNorm keeping axis 1 next to a Linear is taken to see (N, F)
    batches, the case for which torch's ``fuse_linear_bn_eval`` makes the same assumption.

    A BatchNorm that cannot be folded stays, and each one is named with the reason in a
    `FoldWarning`, or in one GradwellError when `strict` is True.

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), BatchNorm(8), nn.ReLU(), BatchNorm(8), nn.Linear(8, 2))
    >>> _ = model(torch.randn(16, 4))  # training: the moving statistics move
    >>> fast = fold_batchnorm(model)
    >>> [type(layer).__name__ for layer in fast]
    ['Linear', 'Identity', 'ReLU', 'Identity', 'Linear']
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(fast(x), model.eval()(x), atol=1e-6)
    True
    """
    if not isinstance(model, nn.Module):
        raise GradwellError(
            f"fold_batchnorm needs an nn.Module (an nn.Sequential or a model holding some); got {model!r}"
        )
    uninitialized = [n for n, m in model.named_modules() if lazy_and_unbuilt(m)]
    if uninitialized:
        raise GradwellError(
            f"cannot fold a model with unbuilt lazy modules ({', '.join(map(label, uninitialized))}); "
            "run one batch through it first"
        )
    folded = copy.deepcopy(model).eval()
    reasons = fold_all(folded)
    messages = [
        f"{type(folded.get_submodule(name)).__name__} {label(name)} was not folded: {reason}"
        for name, reason in reasons.items()
    ]
    if messages and strict:
        raise GradwellError("; ".join(messages))
    for message in messages:
        warnings.warn(message, FoldWarning, stacklevel=2)
    return folded


def lazy_and_unbuilt(module: nn.Module) -> bool:
    return isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()


def fold_all(model: nn.Module) -> dict[str, str]:
    """Fold in place until nothing more folds; return {name: reason} of each BatchNorm left."""
    chains = sequential_chains(model)
    in_chain = {slot.name for chain in chains for slot in chain}
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    reasons = {
        name: outside_sequential(name)
        for name, module in model.named_modules()
        if isinstance(module, BATCH_NORMS) and name not in in_chain
    }
    pending = [(chain, i) for chain in chains for i, slot in enumerate(chain) if is_batch_norm(slot)]
    # a fold can open the way for another (BN -> BN -> Linear), so sweep until nothing changes
    while pending:
        left = [(chain, i) for chain, i in pending if not fold_at(chain, i, uses, reasons)]
        if len(left) == len(pending):
            break
        pending = left
    return reasons


def outside_sequential(name: str) -> str:
    if not name:
        return "it is the whole model, with no layer to fold into"
    parent = label(name.rpartition(".")[0])
    return f"its parent {parent} is not an nn.Sequential, so what runs before and after it is unknown"


def label(name: str) -> str:
    """A qualified module name as messages show it."""
    return repr(name) if name else "(the model)"


def is_batch_norm(slot: Slot) -> bool:
    return isinstance(slot.module, BATCH_NORMS)


def sequential_chains(model: nn.Module) -> list[list[Slot]]:
    """Each outermost Sequential of `model`, flattened into its leaf modules in execution order."""
    chains = []

    def visit(module: nn.Module, name: str, in_sequential: bool) -> None:
        if isinstance(module, nn.Sequential) and not in_sequential:
            chains.append(list(leaves(module, name)))
        for key, child in module.named_children():
            visit(child, f"{name}.{key}" if name else key, isinstance(module, nn.Sequential))

    visit(model, "", False)
    return chains


def leaves(sequential: nn.Sequential, name: str) -> Iterator[Slot]:
    for key, child in sequential.named_children():
        qualified = f"{name}.{key}" if name else key
        if isinstance(child, nn.Sequential):
            yield from leaves(child, qualified)
        else:
            yield Slot(qualified, sequential, key)


def fold_at(chain: list[Slot], i: int, uses: Counter[int], reasons: dict[str, str]) -> bool:
    """Fold the BatchNorm at chain[i] into a neighbour; on failure record why and return False."""
    slot = chain[i]
    bn = slot.module
    why = unfoldable_batch_norm(bn, uses)
    if why is None:
        before, after = neighbour(chain, i, -1), neighbour(chain, i, +1)
        why_before = fold_before(bn, before, uses) if before else "it comes first"
        if why_before is None:
            return replaced(slot, before, reasons)
        why_after = fold_after(chain, bn, after, uses) if after else "it comes last"
        if why_after is None:
            return replaced(slot, after, reasons)
        why = f"not into the layer before ({why_before}), nor into the layer after ({why_after})"
    reasons[slot.name] = why
    return False


def replaced(slot: Slot, into: Slot, reasons: dict[str, str]) -> bool:
    logger.info("folded BatchNorm %s into %s", slot.name, into.name)
    setattr(slot.parent, slot.key, nn.Identity())
    reasons.pop(slot.name, None)
    return True


def neighbour(chain: list[Slot], i: int, step: int) -> Slot | None:
    """The next module before (step -1) or after (step +1) chain[i] that is not an eval-mode no-op."""
    i += step
    while 0 <= i < len(chain) and isinstance(chain[i].module, EVAL_NO_OPS):
        i += step
    return chain[i] if 0 <= i < len(chain) else None


def unfoldable_batch_norm(bn: nn.Module, uses: Counter[int]) -> str | None:
    if uses[id(bn)] > 1:
        return "the same module is used more than once in the model"
    if bn.running_mean is None:
        return "it has no running statistics (track_running_stats=False) and normalizes every batch"
    return None


def fold_before(bn: nn.Module, before: Slot, uses: Counter[int]) -> str | None:
    """Fold `bn` into the layer before it, or return why not."""
    layer = before.module
    if isinstance(layer, nn.Linear):
        if not keeps_last_axis(bn):
            return f"{before.name!r} is a Linear, whose features are the last axis, not axis {axis_of(bn)}"
        outputs, channel_axis = layer.out_features, 0
    elif isinstance(layer, CONVS + TRANSPOSED_CONVS):
        if not keeps_channel_axis(bn, layer):
            return f"{before.name!r} writes channels on axis 1, not axis {axis_of(bn)}"
        if isinstance(layer, TRANSPOSED_CONVS) and layer.groups != 1:
            return f"{before.name!r} is a grouped transposed convolution"
        outputs, channel_axis = layer.out_channels, int(isinstance(layer, TRANSPOSED_CONVS))
    else:
        return f"{before.name!r} is a {type(layer).__name__}, not a Linear or convolution"
    why = unfoldable_layer(before, outputs, bn, uses)
    if why is None:
        set_weights(layer, fold_into_previous(layer.weight, layer.bias, *statistics(bn), channel_axis))
    return why


def fold_after(chain: list[Slot], bn: nn.Module, after: Slot, uses: Counter[int]) -> str | None:
    """Fold `bn` into the layer after it (through one nn.Flatten for a Linear), or return why not."""
    layer = after.module
    if isinstance(layer, nn.Flatten):
        return fold_through_flatten(chain, bn, after, uses)
    if isinstance(layer, nn.Linear):
        if not keeps_last_axis(bn):
            return f"{after.name!r} is a Linear, which reads the last axis, not axis {axis_of(bn)}"
        inputs = layer.in_features
    elif isinstance(layer, CONVS):
        why = conv_reads_batch_norm(bn, after)
        if why:
            return why
        inputs = layer.in_channels
    else:
        return f"{after.name!r} is a {type(layer).__name__}, not a Linear or convolution"
    why = unfoldable_layer(after, inputs, bn, uses)
    if why is None:
        set_weights(layer, fold_into_next(layer.weight, layer.bias, *statistics(bn)))
    return why


def fold_through_flatten(chain: list[Slot], bn: nn.Module, flatten: Slot, uses: Counter[int]) -> str | None:
    after = neighbour(chain, chain.index(flatten), +1)
    layer = after.module if after else None
    if (flatten.module.start_dim, flatten.module.end_dim) != (1, -1) or not isinstance(layer, nn.Linear):
        return f"{flatten.name!r} is not nn.Flatten() followed by a Linear"
    if not keeps_leading_axes(bn):
        return (
            f"it keeps axis {axis_of(bn)}, not the leading axes 1..k that Flatten lays out feature by feature"
        )
    features = bn.running_mean.numel()
    if layer.in_features % features:
        return f"{after.name!r} reads {layer.in_features} inputs, not a multiple of {features} features"
    why = shared(after, uses)
    if why is None:
        set_weights(layer, fold_into_next(layer.weight, layer.bias, *statistics(bn)))
    return why


def conv_reads_batch_norm(bn: nn.Module, after: Slot) -> str | None:
    conv = after.module
    if not keeps_channel_axis(bn, conv):
        return f"{after.name!r} reads channels on axis 1, not axis {axis_of(bn)}"
    if conv.groups != 1:
        return f"{after.name!r} is a grouped convolution"
    if conv.padding_mode == "zeros" and pads(conv):
        return f"{after.name!r} pads with zeros, which would not receive the BatchNorm's shift"
    return None


def pads(conv: nn.Module) -> bool:
    if conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return any(conv.padding)


def unfoldable_layer(slot: Slot, size: int, bn: nn.Module, uses: Counter[int]) -> str | None:
    features = bn.running_mean.numel()
    if size != features:
        return f"{slot.name!r} has {size} features where the BatchNorm has {features}"
    return shared(slot, uses)


def shared(slot: Slot, uses: Counter[int]) -> str | None:
    return f"{slot.name!r} is used more than once in the model" if uses[id(slot.module)] > 1 else None


def statistics(bn: nn.Module) -> tuple[Tensor, Tensor, float, Tensor | None, Tensor | None]:
    """(mean, var, eps, gamma, beta) of the eval-mode BatchNorm, flattened in feature order."""
    flat = [None if t is None else t.reshape(-1) for t in (bn.weight, bn.bias)]
    return bn.running_mean.reshape(-1), bn.running_var.reshape(-1), bn.eps, flat[0], flat[1]


def set_weights(layer: nn.Module, weights: tuple[Tensor, Tensor]) -> None:
    weight, bias = weights
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is None:
            layer.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(bias)


def axis_of(bn: nn.Module) -> str:
    return format_axis(bn.axis if isinstance(bn, BatchNorm) else (1,))


def keeps_last_axis(bn: nn.Module) -> bool:
    """True for a BatchNorm over the last axis of the (N, F) batches of a Linear."""
    if isinstance(bn, BatchNorm):
        return bn.axis in ((1,), (-1,))
    return isinstance(bn, (nn.BatchNorm1d, nn.SyncBatchNorm))


def keeps_channel_axis(bn: nn.Module, conv: nn.Module) -> bool:
    """True when `bn` keeps axis 1, the channels of the convolution's (N, C, *spatial) tensors."""
    if isinstance(bn, BatchNorm):
        return bn.axis in ((1,), (1 - (2 + len(conv.kernel_size)),))
    return True


def keeps_leading_axes(bn: nn.Module) -> bool:
    """True when `bn` keeps axes 1..k, which nn.Flatten() lays out as consecutive blocks."""
    if isinstance(bn, BatchNorm):
        return sorted(bn.axis) == list(range(1, len(bn.axis) + 1))
    return True
