"""`watch`: the stability doctor in any training loop, yours, Lightning's or Hugging Face's.

    doctor = gradwell.watch(model, optimizer)     # every 200th optimizer step is measured
    for x, y in batches:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    print(doctor.report())                        # verdicts, fixes, the history of the samples

On a sampled step the doctor measures what the forward pass does (gradwell.diagnose.record: each
layer's activations, dead and saturated units, the gradient with respect to its output, its
weights' gradients and update ratio, the global gradient norm) and keeps it on the device. An
optimizer's step hooks count the steps (a post-hook: the measurement ends once the update is
done, and the next sampled one begins after the step before it); without an optimizer, call
``doctor.step()`` after each update. On every other step the doctor does nothing but an integer
test: no hook on the model, no tensor operation, no synchronization. The host sees the numbers
when a report, the history or TensorBoard asks for them (with ``tensorboard=DIR``, once per
sampled step).

The gradients shown are those the backward pass leaves, before any clipping the loop does before
``optimizer.step()``; with ``scaler=`` (a ``torch.amp.GradScaler``) they are divided by its loss
scale, so they read as the model's own. ``Report.gradients`` says which it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from gradwell.activations import BY_FUNCTION
from gradwell.diagnose.history import History
from gradwell.diagnose.layers import Layer, ModelFacts, find_layers, is_built, model_facts
from gradwell.diagnose.record import Recorder
from gradwell.diagnose.report import Report, report_from_history
from gradwell.diagnose.stats import STATS
from gradwell.errors import ConfigError, GradwellError
from gradwell.train.options import positive_count

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gradwell.diagnose.rules import Thresholds

# One sampled step costs several steps' time (hooks, quantiles, a copy of the weights): about 5 of
# the fused MLP step's on the chapter's 100-layer SELU network. Every 200th step keeps the overhead
# under 3% there and under 1% on the default network (benchmarks/bench_monitor.py).
DEFAULT_EVERY = 200
QUANTILE_SAMPLE = 1024  # values per layer behind the percentiles (stats.QUANTILE_SAMPLE)
SAMPLES = 1024  # values per layer kept for the histograms (report plots, TensorBoard)
UNSCALED = ("out_grad_norm", "out_grad_std", "out_grad_scale", "weight_grad_norm", "weight_grad_std")
# the names a traced function call can have after its module's: "block.relu", "block.add#2"
FUNCTION_LABELS = sorted({f.__name__.rstrip("_") for f in BY_FUNCTION} | {"add"})


def layer_filter(
    layers: str | re.Pattern | Sequence[str | re.Pattern] | None,
) -> Callable[[str], bool] | None:
    """A layer-name test: a glob (``"encoder.*"``), a compiled regular expression
    (``re.compile(r"layer\\d+\\.relu")``, searched), or a list of them (any one matches).

    >>> keep = layer_filter(["hidden1", re.compile("out")])
    >>> keep("hidden1"), keep("output"), keep("hidden2")
    (True, True, False)
    """
    if layers is None:
        return None
    single = isinstance(layers, (str, re.Pattern))
    patterns = [layers] if single else list(layers) if isinstance(layers, (list, tuple)) else [layers]
    bad = [p for p in patterns if not isinstance(p, (str, re.Pattern))]
    if bad or not patterns:
        raise ConfigError(
            f"layers must be a glob, a compiled regular expression or a list of them; got {layers!r}"
        )
    tests = [
        p.search if isinstance(p, re.Pattern) else lambda n, p=p: fnmatch.fnmatchcase(n, p) for p in patterns
    ]
    return lambda name: any(test(name) for test in tests)


def check_filter(model: nn.Module, select: Callable[[str], bool], layers: object) -> None:
    """ConfigError when `select` can match no layer the model could have, with the closest names."""
    modules = [name for name, _ in model.named_modules() if name]
    candidates = [layer.name for layer in find_layers(model)] if is_built(model) else []
    candidates += modules + [f"{m}.{label}" for m in ["", *modules] for label in FUNCTION_LABELS]
    if any(select(name.lstrip(".")) for name in candidates):
        return
    wanted = layers.pattern if isinstance(layers, re.Pattern) else str(layers)
    close = difflib.get_close_matches(wanted, modules, n=3, cutoff=0.3) or modules[:3]
    raise ConfigError(f"layers={layers!r} matches no layer of {type(model).__name__}; closest: {close}")


class Doctor:
    """The doctor attached to a model: see the module docstring, and ``watch`` to make one.

    `driven` leaves the counting to a caller of ``begin`` and ``end`` (the Monitor, in gradwell's
    own loop); `host` holds the records already on the host (a resumed run's).

    Counting by hand, with the loss (a device tensor, not read until the report):

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    >>> doctor = Doctor(model, every=2, optimizer_name="Adam")
    >>> for _ in range(4):
    ...     x = torch.randn(16, 4)
    ...     optimizer.zero_grad()
    ...     loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
    ...     loss.backward()
    ...     optimizer.step()
    ...     doctor.step(loss, lr=0.01)
    >>> history = doctor.history()
    >>> history.steps, history.layers, len(history.loss)
    ([0, 2], ['0', '1', '2'], 2)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int = DEFAULT_EVERY,
        layers: str | re.Pattern | Sequence[str | re.Pattern] | None = None,
        tensorboard: str | Path | None = None,
        scaler: Any = None,
        driven: bool = False,
        optimizer_name: str = "",
        gradients: str = "",
        host: dict[str, list] | None = None,
    ) -> None:
        check_watchable(model, optimizer, every)
        self.model, self.every, self.scaler = model, every, scaler
        self.select = layer_filter(layers)
        if self.select is not None:
            check_filter(model, self.select, layers)
        self.static = find_layers(model) if is_built(model) else None
        self.initial = initial_facts(model, self.static)
        self.facts: ModelFacts | None = None
        self.layers: list[Layer] | None = None
        self.recorder: Recorder | None = None
        self.count = 0  # optimizer steps seen
        self.missed = 0  # sampled steps without a forward and backward pass of the model
        self.pending: list[tuple[int, Tensor, Tensor | None, Tensor, Any, dict, bool]] = []
        self.host = host if host is not None else empty_host()
        self.samples: dict[str, dict[str, np.ndarray]] = {}  # the last sampled step's, on the host
        self.unseen: dict[str, None] = {}  # an ordered set of notes
        self.optimizer_name = optimizer_name or (type(optimizer).__name__ if optimizer is not None else "")
        self.gradients = gradients or gradients_label(scaler)
        self.log = tensorboard_log(tensorboard)
        self.hook = optimizer.register_step_post_hook(self.after_update) if optimizer is not None else None
        if not driven:
            self.begin()

    def begin(self) -> None:
        """Measure the next forward and backward pass of the model."""
        try:
            self.recorder = Recorder(
                self.model, self.static, select=self.select, keep_samples=SAMPLES,
                quantile_sample=QUANTILE_SAMPLE, weight_grads=True, scaler=self.scaler,
            ).__enter__()  # fmt: skip
        except Exception as error:  # the doctor's own failure: never the training's
            self.failed(error, self.count)

    def end(self, step: int, loss: Tensor | float | None = None, lr: Any = None) -> None:
        """The sampled pass is over and its update done: keep its numbers, on the device."""
        try:
            self.record(step, loss, lr)
        except Exception as error:  # the doctor's own failure: never the training's
            self.failed(error, step)

    def record(self, step: int, loss: Tensor | float | None, lr: Any) -> None:
        recorder, self.recorder = self.recorder, None
        recorder.__exit__()
        if recorder.failure is not None:
            self.unseen.update(dict.fromkeys(recorder.unseen()))
            return
        if not recorder.activations and not recorder.moments:
            self.missed += 1
            return
        self.settle_layers(recorder, step)
        device = next(self.model.parameters()).device
        table, norm = recorder.table(self.layers, device), recorder.grad_norm(device)
        if recorder.scale is not None:
            table, norm = unscale(table, norm, recorder.scale)
        self.unseen.update(dict.fromkeys(recorder.unseen()))
        samples = {"activations": recorder.act_samples, "gradients": recorder.grad_samples}
        scaled = recorder.scale is not None
        self.pending.append((step, table, device_scalar(loss), norm, detached(lr), samples, scaled))
        if self.log is not None:
            self.flush()

    def settle_layers(self, recorder: Recorder, step: int) -> None:
        """The first sampled pass fixes the layers (and the facts); later ones add notes."""
        if self.layers is None:
            self.layers = recorder.layers
            self.facts = traced_facts(self.model, self.layers, self.initial, recorder.skips_normalized)
            return
        known = {layer.name for layer in self.layers}
        for name in recorder.found:
            if name not in known:
                self.unseen[f"{name}: first ran at step {step}, after the layers were fixed"] = None

    def after_update(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        """The optimizer's step post-hook: end a sampled step, begin the next one when it is due."""
        self.advance(None, optimizer.param_groups[0]["lr"] if self.recorder is not None else None)

    def advance(self, loss: Tensor | float | None, lr: Any) -> None:
        """One optimizer step done: end a sampled one, begin the next when it is due."""
        if self.recorder is not None:
            self.end(self.count, loss, lr)
        self.count += 1
        if self.count % self.every == 0:
            self.begin()

    def failed(self, error: Exception, step: int) -> None:
        """An error of the doctor's own: logged and noted (``unseen``), never raised into training."""
        if self.recorder is not None:
            self.recorder.__exit__()
            self.recorder = None
        note = f"step {step}: the doctor failed: {type(error).__name__}: {error}"
        self.unseen[note] = None
        log.warning("the stability doctor skipped %s", note)

    def step(self, loss: Tensor | float | None = None, lr: float | None = None) -> None:
        """Count one optimizer step (after it): for a doctor watching without an optimizer. The
        loss and learning rate, when given, join the history (a tensor loss is not read yet)."""
        if self.hook is not None:
            raise GradwellError(
                "this doctor counts its optimizer's steps through the optimizer's hooks: "
                "do not also call doctor.step() (watch without optimizer= to count by hand)"
            )
        self.advance(loss, lr)

    def flush(self) -> None:
        """Move the pending records to the host (one synchronization), and to TensorBoard."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        tables = torch.stack([p[1] for p in pending]).cpu()
        norms = torch.stack([p[3] for p in pending]).float().cpu().tolist()
        for (step, _, loss, _, lr, samples, scaled), stats, norm in zip(pending, tables, norms, strict=True):
            if scaled and not math.isfinite(
                norm
            ):  # an overflow GradScaler skips: AMP at work, no instability
                self.unseen[f"step {step}: the loss scaler found inf or NaN gradients and skipped it"] = None
                continue
            loss = None if loss is None else float(loss)
            lr = None if lr is None else float(lr)
            for key, value in (
                ("steps", step),
                ("stats", stats),
                ("loss", loss),
                ("grad_norm", norm),
                ("lr", lr),
            ):
                self.host[key].append(value)
            self.samples = {
                kind: {n: v.float().cpu().numpy() for n, v in s.items()} for kind, s in samples.items()
            }
            if self.log is not None:
                names = [layer.name for layer in self.layers]
                self.log.write(
                    step, names, stats.numpy(), loss=loss, lr=lr, grad_norm=norm, samples=self.samples
                )

    def history(self) -> History:
        """What the doctor recorded, on the host."""
        self.flush()
        layers = self.layers or []
        stats = self.host["stats"]
        return History(
            layers=[layer.name for layer in layers],
            kinds=[layer.kind for layer in layers],
            steps=list(self.host["steps"]),
            stats=torch.stack(stats).numpy() if stats else np.zeros((0, len(layers), len(STATS))),
            loss=list(self.host["loss"]),
            lr=[math.nan if v is None else v for v in self.host["lr"]],
            grad_norm=list(self.host["grad_norm"]),
            optimizer=self.optimizer_name,
        )

    def report(self, thresholds: Thresholds | None = None) -> Report:
        """The verdicts from the last sampled step, with the whole history: a Report, as probe's."""
        history = self.history()
        if not history.steps:
            raise GradwellError(self.why_nothing())
        return report_from_history(
            history, self.facts, thresholds, samples=self.samples, unseen=list(self.unseen),
            gradients=self.gradients,
        )  # fmt: skip

    def why_nothing(self) -> str:
        """Why no step was sampled yet, and what to do."""
        if self.missed:
            return (
                f"the doctor's {self.missed} sampled step(s) saw no forward and backward pass of the model "
                f"with gradients: does the loop train this {type(self.model).__name__}?"
            )
        if self.hook is not None:
            return (
                "the optimizer's step hooks never ran: pass watch() the optimizer the loop steps "
                "(Lightning and Hugging Face: use gradwell.integrations), or watch without one and call "
                "doctor.step() after each step"
            )
        return "no step counted yet: call doctor.step() after each optimizer step (or pass the optimizer)"

    def close(self) -> None:
        """Remove every hook, move the records to the host, close the TensorBoard log."""
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        if self.recorder is not None:
            self.recorder.__exit__()
            self.recorder = None
        self.flush()
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> Doctor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    every: int = DEFAULT_EVERY,
    layers: str | re.Pattern | Sequence[str | re.Pattern] | None = None,
    tensorboard: str | Path | None = None,
    scaler: Any = None,
) -> Doctor:
    """Attach the stability doctor to `model` in any training loop; see the module docstring.

    Every `every`-th optimizer step is measured (step 0 first), counted by `optimizer`'s step
    hooks or by ``doctor.step()``; `layers` keeps the layers whose names match (a glob, a compiled
    regular expression, or a list of them); `tensorboard` is a folder for per-layer scalars and
    histograms; `scaler` a GradScaler whose scale the gradients are divided by.

    >>> import torch.nn.functional as F
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 2)
    ...     def forward(self, x):
    ...         return self.b(F.relu(self.a(x)))
    >>> _ = torch.manual_seed(0)
    >>> model = Net()
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> doctor = watch(model, optimizer, every=5)
    >>> for _ in range(10):
    ...     x = torch.randn(32, 8)
    ...     optimizer.zero_grad()
    ...     F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    ...     optimizer.step()
    >>> report = doctor.report()
    >>> [(layer.name, layer.kind) for layer in report.layers], report.history.steps
    ([('a', 'linear'), ('relu', 'relu'), ('b', 'linear')], [0, 5])
    >>> doctor.close()
    """
    return Doctor(model, optimizer, every=every, layers=layers, tensorboard=tensorboard, scaler=scaler)


def check_watchable(model: object, optimizer: object, every: object) -> None:
    if not isinstance(model, nn.Module):
        raise GradwellError(f"watch takes an nn.Module; got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise GradwellError(
            f"{type(model).__name__} has no trainable parameters: there are no gradients to watch"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise GradwellError(
            f"optimizer must be a torch.optim.Optimizer (its step hooks count the steps); got "
            f"{type(optimizer).__name__}: pass its inner torch optimizer, or none and call doctor.step()"
        )
    positive_count("every", every)


def initial_facts(model: nn.Module, static: list[Layer] | None) -> ModelFacts | None:
    """The facts at the start, while the weights are the initial ones (None: no module to read)."""
    try:
        return model_facts(model, static if static is not None else find_layers(model))
    except GradwellError:
        return None


def traced_facts(
    model: nn.Module, layers: list[Layer], initial: ModelFacts | None, skips_normalized: bool
) -> ModelFacts:
    """The facts of the layers a pass found, the initialization named from the initial weights."""
    now = model_facts(model, layers, skips_normalized)
    if initial is None:
        return now
    return dataclasses.replace(now, init=initial.init, fan_in_scale=initial.fan_in_scale)


def gradients_label(scaler: Any) -> str:
    if scaler is not None:
        return "as the backward pass left them, before any clipping, divided by the GradScaler's scale"
    return "as the backward pass left them, before any clipping (under loss scaling, pass scaler=)"


def unscale(table: Tensor, norm: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient statistics divided by the loss scale, on the device."""
    scale = scale.to(table.device)
    columns = [STATS.index(name) for name in UNSCALED]
    table = table.clone()
    table[:, columns] = table[:, columns] / scale
    return table, norm / scale


def device_scalar(value: Tensor | float | None) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.detach().float().reshape(())
    return torch.tensor(float(value))


def detached(lr: Any) -> Any:
    """A learning rate to keep: a tensor's copy (capturable optimizers keep it on the device)."""
    return lr.detach().clone() if isinstance(lr, Tensor) else lr


def empty_host() -> dict[str, list]:
    return {"steps": [], "stats": [], "loss": [], "grad_norm": [], "lr": []}


def tensorboard_log(folder: str | Path | None):
    if folder is None:
        return None
    from gradwell.diagnose.tensorboard import TensorBoardLog

    return TensorBoardLog(folder)
