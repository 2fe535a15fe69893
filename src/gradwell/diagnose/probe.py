"""`probe`: one forward and backward pass, measured layer by layer, with the doctor's verdicts.

The pass runs in training mode (batch statistics, dropout on), since that is where gradients
matter, but leaves no trace: the modules' modes, every buffer (BatchNorm's moving statistics),
the parameters' ``.grad`` and the global RNG are as they were before. Weight gradients come from
``torch.autograd.grad``, the output gradients from tensor hooks on each layer's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from gradwell.clip import global_norm
from gradwell.diagnose.layers import Layer, ModelFacts, find_layers, is_built, model_facts
from gradwell.diagnose.record import Recorder
from gradwell.diagnose.report import LayerReport, Report
from gradwell.diagnose.rules import Thresholds, diagnose
from gradwell.diagnose.stats import STATS, finite_or_none
from gradwell.errors import GradwellError
from gradwell.train.losses import resolve_loss
from gradwell.train.nonfinite import NonFinite, describe, untouched

if TYPE_CHECKING:
    from gradwell.diagnose.monitor import Monitor

SAMPLES = 4096  # values per layer kept for the histograms


def probe(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    *,
    monitor: Monitor | None = None,
    thresholds: Thresholds | None = None,
    seed: int = 0,
) -> Report:
    """Measure `model` on one batch, at initialization or at any point of training.

    Per layer (see ``gradwell.diagnose.layers`` for what a layer is): the activations' mean, std
    and percentiles, the saturated and dead fractions, the norm and std of the gradient with
    respect to the layer's output and to its weights, the weights' norm, non-finite counts; for
    the model: the loss, the global gradient norm, the first module whose output is non-finite
    while its inputs are finite, and the first layer (in backward order) with a non-finite
    gradient. With a `monitor` that watched training, its history joins the report and the
    verdicts, and the initialization is named from the weights it saw when training began.
    `seed` seeds dropout for this pass only.

    >>> from gradwell.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> model = mlp(8, 3, depth=10, width=32, activation="sigmoid", init="standard_normal", generator=g)
    >>> report = probe(model, torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    >>> report.healthy, "saturation" in [verdict.name for verdict in report.verdicts]
    (False, True)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GradwellError("the model has no trainable parameters: there are no gradients to probe")
    loss_fn = resolve_loss(loss_fn)
    static = find_layers(model) if is_built(model) else None
    with (
        untouched(model),
        Recorder(model, static, keep_samples=SAMPLES) as recorder,
        NonFinite(model) as nonfinite,
    ):
        torch.manual_seed(seed)
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    layers = measured(model, recorder)
    by_param = {id(p): g for p, g in zip(params, grads, strict=True) if g is not None}
    table = recorder.table(layers, loss.device, grads=by_param).cpu()
    report = Report(
        layers=layer_reports(layers, table),
        loss=float(loss.detach()),
        grad_norm=float(global_norm([g for g in grads if g is not None])),
        nonfinite_forward=nonfinite.first(inputs),
        nonfinite_backward=first_nonfinite_gradient(layers, table),
        model=facts(model, layers, monitor, recorder.skips_normalized),
        history=monitor.history() if monitor is not None else None,
        samples={
            "activations": host_samples(layers, recorder.act_samples),
            "gradients": host_samples(layers, recorder.grad_samples),
        },
        unseen=recorder.unseen(),
        gradients="of the probed batch's loss, by autograd: no clipping, no loss scaling",
    )
    report.verdicts = diagnose(report, thresholds or Thresholds())
    return report


def facts(
    model: nn.Module, layers: list[Layer], monitor: Monitor | None, skips_normalized: bool = False
) -> ModelFacts:
    """The model's facts; the initialization is named from the weights the Monitor saw when
    training began, since trained weights have drifted from it."""
    now = model_facts(model, layers, skips_normalized)
    if monitor is None or monitor.facts is None:
        return now
    return dataclasses.replace(now, init=monitor.facts.init, fan_in_scale=monitor.facts.fan_in_scale)


def measured(model: nn.Module, recorder: Recorder) -> list[Layer]:
    """The layers the pass measured; an error if it found none (nothing the doctor knows)."""
    if not recorder.layers:
        raise GradwellError(
            f"{type(model).__name__} has no Linear, Conv, normalization, attention or activation "
            "(module or function) for the doctor to measure"
        )
    return recorder.layers


def host_samples(layers: list[Layer], samples: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Sampled values per layer name, in forward order, as float numpy arrays."""
    return {
        layer.name: samples[layer.name].float().cpu().numpy() for layer in layers if layer.name in samples
    }


def layer_reports(layers: list[Layer], table: Tensor) -> list[LayerReport]:
    """One LayerReport per row of a (layers, STATS) host table; NaN and infinities become None
    (the non-finite counts say which it was)."""
    values = table.tolist()
    return [
        LayerReport(layer.name, layer.kind, {k: finite_or_none(v) for k, v in zip(STATS, row, strict=True)})
        for layer, row in zip(layers, values, strict=True)
    ]


def first_nonfinite_gradient(layers: list[Layer], table: Tensor) -> str | None:
    """The layer nearest the output whose output gradient has non-finite values."""
    column = table[:, STATS.index("out_grad_nonfinite")]
    for i in reversed(range(len(layers))):
        if column[i] > 0:
            return layers[i].name
    return None


def explain_nonfinite(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> str:
    """Where the doctor's probe of a bad step's batch first sees a non-finite value: the clause
    `gradwell.train.fit` adds to its NonFiniteError when handed this (``explain_nonfinite=``)."""
    report = probe(model, inputs, targets, loss_fn)
    return describe(report.nonfinite_forward, report.nonfinite_backward)
