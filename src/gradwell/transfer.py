"""Transfer learning: copy a trained network, reuse its lower layers, freeze them, fine-tune.

The chapter's recipe for task B with few labels, given a model A trained on a similar task::

    model_b_on_a = reuse(model_a, drop_top=1, head=2)   # copies of A's lower layers, a new head
    fine_tune(model_b_on_a, task_b, frozen_epochs=4, epochs=16, lr=1e-3)

``fine_tune`` first trains the new head with the reused layers frozen (a random head's large
gradients would otherwise wreck the reused weights), then unfreezes the top reused layers and
goes on with a lower learning rate and a fresh optimizer.

"Layers" are the top-level children of an ``nn.Sequential``, which is how gradwell's builders
make models: ``[flatten] [input_norm] hidden1 ... hiddenN output``. ``clone``, ``freeze``,
``unfreeze`` and ``layerwise_lr`` work on any module; ``reuse`` and ``fine_tune`` need an
``nn.Sequential``. Whether transfer actually helps is a question for many seeds: see
``gradwell transfer --seeds`` and ``gradwell.experiment.transfer_study``, which run the
chapter's case study.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Generator, Tensor, nn

from gradwell import optim
from gradwell.errors import GradwellError, check_finite
from gradwell.models import output_layer
from gradwell.norm import BatchNorm
from gradwell.train import Callback, History, fit
from gradwell.train.losses import as_split

log = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=nn.Module)
Layers = nn.Module | Iterable[nn.Module]

# the attribute holding the forward pre-hook that keeps a frozen torch BatchNorm in inference mode
FROZEN_HOOK = "gradwell_frozen_hook"


def clone(model: ModuleT) -> ModuleT:
    """A copy of `model`, architecture and weights, that shares no tensor with the original.

    Keras's ``clone_model`` copies the architecture only, so the chapter has to follow it with
    ``set_weights``; forgetting that gives a freshly initialized network. Here the weights come
    along (``copy.deepcopy``), and so do the buffers (BatchNorm statistics), ``requires_grad``
    flags and frozen BatchNorms. Gradients are not copied. Training the clone leaves the original
    bitwise unchanged.

    Raises GradwellError on a model with lazy layers that have not seen a batch yet: they have no
    weights to copy.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> copied = clone(model)
    >>> torch.equal(copied[0].weight, model[0].weight), copied[0].weight is model[0].weight
    (True, False)
    """
    lazy = [
        name
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
        if nn.parameter.is_lazy(tensor)
    ]
    if lazy:
        raise GradwellError(
            f"cannot clone a model with uninitialized lazy tensors ({', '.join(lazy[:4])}): they have "
            "no weights to copy yet; run one batch through the model first"
        )
    return copy.deepcopy(model)


def modules_of(layers: Layers, action: str) -> list[nn.Module]:
    """`layers` as a list of modules: one module, or any iterable of them."""
    if isinstance(layers, nn.Module):
        return [layers]
    try:
        modules = list(layers)
    except TypeError:
        raise GradwellError(f"{action} takes a module or an iterable of modules; got {layers!r}") from None
    wrong = [m for m in modules if not isinstance(m, nn.Module)]
    if wrong:
        raise GradwellError(f"{action} takes modules; got {type(wrong[0]).__name__} {wrong[0]!r}")
    return modules


def stay_in_inference_mode(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a frozen torch BatchNorm: normalize with the moving statistics."""
    module.training = False


def set_batchnorm_frozen(module: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze one BatchNorm: gradwell's through its flag, torch's through a hook.

    Any module with a ``running_mean`` buffer counts as torch's kind (BatchNorm1d/2d/3d,
    SyncBatchNorm, InstanceNorm with running statistics).
    """
    if isinstance(module, BatchNorm):
        module.frozen = frozen
        return
    if not isinstance(getattr(module, "running_mean", None), Tensor):
        return
    handle = getattr(module, FROZEN_HOOK, None)
    if handle is not None:
        handle.remove()
        delattr(module, FROZEN_HOOK)
    if frozen:
        setattr(module, FROZEN_HOOK, module.register_forward_pre_hook(stay_in_inference_mode))


def freeze(layers: Layers) -> Layers:
    """Make `layers` (a module or an iterable of modules) non-trainable, at once; returns them.

    Every parameter gets ``requires_grad=False``, so no gradient reaches it and optimizers skip it
    (build the next optimizer over the trainable parameters only, as ``fine_tune`` does). Every
    BatchNorm inside keeps its moving mean and variance and normalizes with them even when the
    model is put in training mode: the Keras semantics of a non-trainable BatchNormalization
    layer, which the chapter relies on. gradwell's BatchNorm gets ``frozen = True``; a torch
    BatchNorm gets a forward pre-hook that sets its ``training`` flag to False before each call
    (``model.train()`` sets it back, the hook wins at the next forward). No recompile: the next
    forward pass sees the change. Dropout layers inside stay active in training mode, as in Keras.

    >>> model = nn.Sequential(nn.Linear(4, 8), BatchNorm(8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = freeze(model[:3])  # all but the output layer
    >>> [p.requires_grad for p in model.parameters()], model[1].frozen
    ([False, False, False, False, True, True], True)
    """
    for module in modules_of(layers, "freeze"):
        module.requires_grad_(False)
        for sub in module.modules():
            set_batchnorm_frozen(sub, True)
    return layers


def unfreeze(layers: Layers) -> Layers:
    """Undo ``freeze``: every parameter of `layers` trainable, every BatchNorm back to normal.

    A torch BatchNorm takes its training mode from the next ``model.train()`` / ``model.eval()``.

    >>> model = freeze(nn.Sequential(nn.Linear(4, 8), BatchNorm(8), nn.Linear(8, 2)))
    >>> _ = unfreeze(model[1:])
    >>> [p.requires_grad for p in model.parameters()], model[1].frozen
    ([False, False, True, True, True, True], False)
    """
    for module in modules_of(layers, "unfreeze"):
        module.requires_grad_(True)
        for sub in module.modules():
            set_batchnorm_frozen(sub, False)
    return layers


def check_sequential(model: nn.Module, action: str) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise GradwellError(
            f"{action} needs an nn.Sequential, whose top-level children are the layers; got "
            f"{type(model).__name__}. Wrap the layers you want in an nn.Sequential first"
        )
    return list(model.named_children())


def count_option(name: str, value: Any, low: int, high: int | None = None, why: str = "") -> int:
    """`value` as an int in [low, high] (no upper bound when None), or an error saying what is valid."""
    valid = isinstance(value, int) and not isinstance(value, bool)
    if not valid or value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise GradwellError(
            f"{name}={value!r} is invalid{': ' + why if why else ''}; it must be an int {span}"
        )
    return value


def output_size(layers: Sequence[nn.Module]) -> int | None:
    """How many features the last Linear or Conv among `layers` produces (None if none)."""
    for module in reversed([m for layer in layers for m in layer.modules()]):
        for attribute in ("out_features", "out_channels"):
            if isinstance(size := getattr(module, attribute, None), int):
                return size
    return None


def make_head(
    head: int | nn.Module | None,
    features: int | None,
    dropped: Sequence[nn.Module],
    reference: Tensor,
    generator: Generator | None,
) -> nn.Module:
    """The new output layer of ``reuse``: a given module (size-checked) or a fresh Linear."""
    if isinstance(head, nn.Module):
        expects = next((m.in_features for m in head.modules() if isinstance(m, nn.Linear)), None)
        if features is not None and expects is not None and expects != features:
            raise GradwellError(
                f"the head takes {expects} input features, but the reused layers output {features}; "
                f"give it in_features={features}"
            )
        return head
    if features is None:
        raise GradwellError(
            "cannot tell how many features the reused layers output (no Linear or Conv layer among "
            "them); pass the head as a module"
        )
    if head is None:
        head = output_size(dropped)
        if head is None:
            raise GradwellError(
                "nothing dropped tells how many outputs the new head needs; pass head=K for K classes"
            )
    outputs = count_option("head", head, 1, why="the number of outputs of the new head")
    return output_layer(features, outputs, "auto", generator).to(reference.device, reference.dtype)


def reuse(
    model: nn.Sequential,
    drop_top: int = 1,
    head: int | nn.Module | None = None,
    *,
    generator: Generator | None = None,
) -> nn.Sequential:
    """A new model: copies of `model`'s layers but the top `drop_top`, and a new output head.

    Args:
        model: an ``nn.Sequential`` (gradwell's ``mlp`` / ``cnn``, a ``greedy_layerwise`` stack);
            it is left untouched, the kept layers are ``clone``s that share nothing with it.
        drop_top: how many top-level layers to drop from the top; 1 drops the output layer, as in
            the chapter. 0 keeps every layer (a pretrained stack without an output layer). At
            least one layer must remain.
        head: the new output layer: an int K builds a Linear with K outputs (logits), Glorot
            uniform weights and zero biases, like the builders' output layers; None takes K from
            the dropped output layer (same number of classes as task A); a module is used as it
            is, after checking that its first Linear takes as many features as the kept layers
            output. For a binary task B, use ``head=2``: a 2-logit softmax is a sigmoid unit on
            the difference of the logits (the chapter's single sigmoid output), and keeps
            gradwell's cross-entropy loss and accuracy, which expect class indices.
        generator: for a reproducible initialization of a built head.

    The head is named ``output`` (``head`` if a kept layer has that name) and is trainable;
    the kept layers keep their names and their ``requires_grad`` flags.

    >>> model_a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> reuse(model_a, drop_top=1, head=2)
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (output): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    layers = check_sequential(model, "reuse")
    why = f"the model has {len(layers)} top-level layers and at least one must remain"
    drop_top = count_option("drop_top", drop_top, 0, len(layers) - 1, why)
    copied = list(clone(model).named_children())
    kept, dropped = copied[: len(copied) - drop_top], copied[len(copied) - drop_top :]
    reference = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0))
    new_head = make_head(
        head, output_size([m for _, m in kept]), [m for _, m in dropped], reference, generator
    )
    name = "head" if any(n == "output" for n, _ in kept) else "output"
    return nn.Sequential(OrderedDict([*kept, (name, new_head)]))


def layers_with_parameters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The top-level children that hold parameters (Flatten or pooling layers hold none)."""
    return [(n, m) for n, m in model.named_children() if any(True for _ in m.parameters())]


def layerwise_lr(model: nn.Module, base_lr: float, decay: float) -> list[dict[str, Any]]:
    """Parameter groups with learning rates that shrink towards the input, for any torch optimizer.

        lr_i = base_lr * decay ** depth_i

    where depth_i counts the top-level layers holding parameters from the top (the output layer
    has depth 0). This is ULMFiT's discriminative fine-tuning (Howard and Ruder, 2018; they use
    decay = 1/2.6): lower layers hold general features that need less change. Only trainable
    parameters are listed (a frozen layer still counts for the depth, so freezing does not shift
    the others' rates); parameters held by the model itself join the top group; a parameter shared
    by several layers goes with the topmost. Each group also has a ``name`` key, the layer's name.
    Layers are taken in registration order, which is the order an ``nn.Sequential`` runs them in.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> groups = layerwise_lr(model, 0.01, 0.5)
    >>> [(group["name"], group["lr"]) for group in groups]  # from the top down
    [('4', 0.01), ('2', 0.005), ('0', 0.0025)]
    >>> optimizer = optim.create("sgd", groups)
    """
    check_finite("base_lr", base_lr, low=0.0, low_open=True)
    check_finite("decay", decay, low=0.0, high=1.0, low_open=True)
    ranked = [(n, list(m.parameters())) for n, m in reversed(layers_with_parameters(model))] or [("", [])]
    ranked[0][1].extend(model.parameters(recurse=False))
    groups, seen = [], set()
    for depth, (name, params) in enumerate(ranked):
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": base_lr * decay**depth, "name": name})
    return groups


@dataclass
class FineTuneHistory:
    """What ``fine_tune`` returns: the History of each phase (empty for a phase of 0 epochs)."""

    frozen: History  # phase 1: the new layers alone, the reused ones frozen
    unfrozen: History  # phase 2: after unfreezing, at the lower learning rate

    @property
    def epochs(self) -> list[dict[str, float]]:
        """Both phases' epochs in order, numbered on from phase 1, each with its ``phase`` (1 or 2)."""
        first = [{**logs, "phase": 1} for logs in self.frozen.epochs]
        second = [{**logs, "epoch": len(first) + logs["epoch"], "phase": 2} for logs in self.unfrozen.epochs]
        return first + second

    @property
    def last(self) -> dict[str, float]:
        epochs = self.epochs
        return epochs[-1] if epochs else {}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def check_outputs(model: nn.Module, data: Any) -> None:
    """Fail before training when the model's logits do not match the data's number of classes."""
    classes = getattr(data, "num_classes", None)
    reference = next(model.parameters())
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        outputs = model(as_split(data.train)[:2][0].to(reference.device)).shape[-1]
    finally:
        for module, training in modes.items():
            module.training = training
    if classes is not None and outputs != classes:
        raise GradwellError(
            f"the model outputs {outputs} logits, but {getattr(data, 'name', 'the data')} has {classes} "
            f"classes; give it a head with reuse(model, head={classes})"
        )


def train_phase(
    model: nn.Module,
    data: Any,
    epochs: int,
    params: list[Any],
    lr: float,
    optimizer: str,
    options: dict[str, Any],
    **fit_options: Any,
) -> History:
    """One phase of ``fine_tune``: a fresh optimizer over `params`, then ``fit``."""
    if epochs == 0:
        return History(stop_reason="skipped (0 epochs)")
    return fit(
        model, data, optimizer=optim.create(optimizer, params, lr=lr, **options), epochs=epochs, **fit_options
    )


def fine_tune(
    model: nn.Sequential,
    data: Any,
    *,
    frozen_epochs: int,
    epochs: int,
    lr: float,
    lr_after_unfreeze: float | None = None,
    new_layers: int = 1,
    unfreeze_top: int | None = None,
    layer_decay: float | None = None,
    optimizer: str = "nadam",
    optimizer_options: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    callbacks: Sequence[Callback] = (),
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FineTuneHistory:
    """The chapter's fine-tuning recipe on a model made by ``reuse``; trains `model` in place.

    1. Freeze the reused layers (all top-level layers but the top `new_layers`) and train the new
       ones for `frozen_epochs` epochs at `lr`: a random head sends large error gradients down,
       which would wreck the reused weights.
    2. Unfreeze the top `unfreeze_top` reused layers holding parameters (None: all of them) and
       train for `epochs` more epochs at `lr_after_unfreeze` (default ``lr / 10``: the reused
       weights need small changes), with a fresh optimizer: moments gathered while most weights
       were frozen do not fit the new problem. With `layer_decay` (in (0, 1]), the unfrozen
       layers get ``layerwise_lr(model, lr_after_unfreeze, layer_decay)``: lower rates below.

    Each optimizer is ``gradwell.optim.create(optimizer, trainable_params, lr=...,
    **optimizer_options)`` over the trainable parameters only. Nadam by default (gradwell's
    default optimizer); the chapter uses ``optimizer="sgd"``. Either phase may have 0 epochs:
    ``frozen_epochs=0`` fine-tunes at once, ``epochs=0`` trains the head alone (feature
    extraction). Phase 1 runs ``fit`` with `seed`, phase 2 with ``seed + 1``; `callbacks` see both.
    The remaining arguments go to ``gradwell.train.fit``. The model ends as phase 2 leaves it:
    the reused layers below `unfreeze_top` stay frozen.

    Raises GradwellError before any training when the model's outputs do not match
    ``data.num_classes`` or an option is out of range.

    >>> from gradwell.data import load, split_by_classes
    >>> task_a, task_b = split_by_classes(load("digits"), range(8), limit_train=40)  # B: 2 classes
    >>> model_a = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))  # trained on A
    >>> model = reuse(model_a, head=2)
    >>> history = fine_tune(model, task_b, frozen_epochs=1, epochs=1, lr=1e-3)
    >>> [(logs["epoch"], logs["phase"]) for logs in history.epochs]
    [(1, 1), (2, 2)]
    """
    layers = [module for _, module in check_sequential(model, "fine_tune")]
    new_layers = count_option("new_layers", new_layers, 1, len(layers) - 1, "at least one layer is reused")
    frozen_epochs = count_option("frozen_epochs", frozen_epochs, 0)
    epochs = count_option("epochs", epochs, 0)
    if frozen_epochs + epochs == 0:
        raise GradwellError("fine_tune needs frozen_epochs or epochs above 0; both are 0")
    lr = check_finite("lr", lr, low=0.0, low_open=True)
    lr_after = lr / 10 if lr_after_unfreeze is None else lr_after_unfreeze
    lr_after = check_finite("lr_after_unfreeze", lr_after, low=0.0, low_open=True)
    if layer_decay is not None:
        check_finite("layer_decay", layer_decay, low=0.0, high=1.0, low_open=True)
    options = dict(optimizer_options or {})
    if "lr" in options:
        raise GradwellError("give the learning rate as fine_tune's lr, not in optimizer_options")
    reused = layers[:-new_layers]
    tunable = [layer for layer in reused if any(True for _ in layer.parameters())]
    top = (
        len(tunable) if unfreeze_top is None else count_option("unfreeze_top", unfreeze_top, 0, len(tunable))
    )
    if device is not None:
        model.to(device)
    if loss == "cross_entropy":
        check_outputs(model, data)
    fit_options = dict(
        batch_size=batch_size, loss=loss, callbacks=callbacks, device=device, progress=progress
    )
    freeze(reused)
    unfreeze(layers[-new_layers:])
    first = train_phase(
        model, data, frozen_epochs, trainable(model), lr, optimizer, options, seed=seed, **fit_options
    )
    unfreeze(tunable[len(tunable) - top :])
    params = trainable(model) if layer_decay is None else layerwise_lr(model, lr_after, layer_decay)
    second = train_phase(
        model, data, epochs, params, lr_after, optimizer, options, seed=seed + 1, **fit_options
    )
    return FineTuneHistory(first, second)
