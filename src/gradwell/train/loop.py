"""The training loop: data on the device, batches by index, metrics read once per epoch.

Small deep networks are bound by per-step overhead, not arithmetic, so the loop does per step
only what the step needs: index a shuffled batch out of tensors already on the device, run the
step, add the loss and the number of correct predictions to accumulators on the device. It reads
them (one host-device synchronization) once per epoch. No DataLoader, no worker processes, no
per-step `.item()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from gradwell.errors import ConfigError, DataError, check_finite, unknown_name
from gradwell.models import warn_if_penalties_break_self_normalization
from gradwell.train import checkpoint, distributed, state
from gradwell.train.callbacks import Callback
from gradwell.train.fastpath import (
    GraphedStep,
    TrainingPath,
    choose_path,
    needs_eager_step,
    prepare_for_capture,
    restore_after_capture,
)
from gradwell.train.fused import FusedStep, why_not_fused
from gradwell.train.guard import Interrupted, explain_nonfinite, stop_on_sigint
from gradwell.train.step import Metrics, check_step_options, make_step

log = logging.getLogger(__name__)

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,  # on logits, integer class labels
    "mse": F.mse_loss,
    "binary_cross_entropy": F.binary_cross_entropy_with_logits,  # on logits, float 0/1 labels
}
CLASSIFICATION = ("cross_entropy",)
ELEMENTWISE = ("mse", "binary_cross_entropy")  # targets shaped like the outputs

Scheduler = LRScheduler | ReduceLROnPlateau


@dataclass
class History:
    """What `fit` returns: one dict of metrics per epoch, and why the run stopped."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str = ""
    path: str = ""  # which training path ran, and why

    def metric(self, name: str) -> list[float]:
        return [logs[name] for logs in self.epochs if name in logs]

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


@dataclass
class Run:
    """The state of a run that callbacks see and may act on."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    callbacks: list[Callback]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    shuffle: torch.Generator
    metrics: Metrics
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    position: int = 0  # batches done in the current epoch
    epoch_shuffle: Tensor | None = None  # the shuffling generator's state when this epoch drew its order
    history: History = field(default_factory=History)
    stop_reason: str = ""
    interrupted: bool = False  # set by the first Ctrl-C: stop after the current step
    stop_vote: distributed.StopVote = field(default_factory=distributed.StopVote)  # data-parallel Ctrl-C

    def stop(self, reason: str) -> None:
        """Ask the loop to stop at the end of this epoch."""
        self.stop_reason = reason

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def resolve_loss(loss: str | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise unknown_name("loss", loss, LOSSES)
    return LOSSES[loss]


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, loss: str | Callable = "cross_entropy", batch_size: int = 1024
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of `model` on (x, y), in eval mode.

    The model's training mode is restored afterwards.
    """
    loss_fn = resolve_loss(loss)
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), device=x.device, dtype=torch.float64)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = model(xb)
            total += loss_fn(out, yb).double() * len(xb)
            if loss in CLASSIFICATION:
                correct += (out.argmax(-1) == yb).sum()
    finally:
        model.train(was_training)
    metrics = {"loss": float(total) / len(x)}
    if loss in CLASSIFICATION:
        metrics["accuracy"] = int(correct) / len(x)
    return metrics


def fit(
    model: nn.Module,
    data: Any,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int = 32,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    scheduler: Scheduler | None = None,
    callbacks: Sequence[Callback] = (),
    l1: float = 0.0,
    l2: float = 0.0,
    max_norm: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_nonfinite: str = "stop",
    progress: bool = True,
    precision: str = "fp32",
    fast: bool = True,
    compile: bool = False,
    sync_batchnorm: bool = False,
) -> History:
    """Train `model` on `data.train`, validating on `data.val` (when present) after each epoch.

    Args:
        data: a ``gradwell.data.Dataset`` or anything with ``train`` (and optionally ``val``)
            splits that have ``x`` and ``y`` tensors.
        optimizer: any torch optimizer over the model's parameters (gradwell's clip inside).
        scheduler: a torch LR scheduler. ReduceLROnPlateau steps once per epoch on the validation
            loss; any other steps after every optimizer step (``gradwell.optim.schedule``
            counts steps, like Keras schedules).
        l1, l2: penalties on the weights of Linear and Conv layers, added to the loss.
        max_norm: after each step, rescale each unit's incoming weights to this L2 norm at most.
        seed: seeds the shuffling and every random op in the run (dropout); the global RNG is
            left as it was when `fit` returns.
        device: where to train; defaults to the device of the model's first parameter.
        checkpoint_dir: write a checkpoint there after every epoch, and on Ctrl-C after the
            current step (the last two are kept). Data-parallel, process 0 writes, and a Ctrl-C
            (torchrun forwards it to every process) stops them all one step later, at one step.
        resume: continue from the newest good checkpoint in `checkpoint_dir`, mid-epoch if it was
            written on Ctrl-C; the run then ends with the same weights as one never interrupted
            (bitwise on CPU).
        on_nonfinite: "stop" (default): a non-finite loss ends the run with a NonFiniteError that
            names the step and the first layer that produced the value, found by replaying the
            epoch; the model keeps the weights from before that step. "skip": a step with a
            non-finite loss or gradient is not applied and is counted (``skipped`` in the
            history); this reads the device on every step.
        progress: show a progress bar (rich) on stderr.
        precision: "fp32", or "bf16" for bfloat16 autocast of forward and loss (weights, gradients
            and optimizer state stay in float32).
        fast: on a CUDA device, capture the whole step in a CUDA graph where it applies
            (gradwell.train.fastpath says which path runs and why, in the log and in
            ``History.path``); False always runs eagerly.
        compile: run the forward pass through ``torch.compile``, which fuses bias, activation and
            their backward into fewer kernels; worth it on GPUs, where kernel launches dominate,
            rarely on CPUs, where the compile takes longer than it saves on short runs.
        sync_batchnorm: when training data-parallel, BatchNorm statistics over all processes'
            shards together (gradwell.train.distributed says how runs under torchrun work).

    Returns the History: per epoch ``loss``, ``accuracy`` (classification), ``val_loss``,
    ``val_accuracy``, ``lr`` and ``time``. The training loss is the data loss alone, without
    the l1/l2 penalty, so that it compares with the validation loss.

    Raises gradwell's own errors (ConfigError, DataError, NonFiniteError) for bad arguments, data
    the model cannot take, and runs that diverge; `gradwell.train.guard.Interrupted` (a
    KeyboardInterrupt) on Ctrl-C, after writing the checkpoint.
    """
    check_fit_arguments(
        epochs, batch_size, checkpoint_dir=checkpoint_dir, resume=resume, loss=loss, l1=l1, l2=l2,
        max_norm=max_norm, precision=precision, on_nonfinite=on_nonfinite,
    )  # fmt: skip
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    x, y = data.train.x.to(device), data.train.y.to(device)
    val = getattr(data, "val", None)
    val = (val.x.to(device), val.y.to(device)) if val is not None and len(val.y) > 0 else None
    check_data_fits_model(model, x, y, loss)
    warn_if_penalties_break_self_normalization(model, l1, l2)
    parallel = distributed.active()
    if parallel:
        distributed.check_batch_size(batch_size)
        if sync_batchnorm:
            distributed.sync_batchnorm(model)
    callbacks = list(callbacks)
    bar = None
    if progress and distributed.is_main():
        from gradwell.train.progress import ProgressBar

        bar = ProgressBar()
        callbacks.append(bar)
    metrics = Metrics(device)
    run = Run(
        model, optimizer, scheduler, callbacks, device, epochs,
        len(x) // batch_size if parallel else -(-len(x) // batch_size),
        torch.Generator(device=device).manual_seed(seed), metrics,
    )  # fmt: skip
    options = dict(
        l1=l1, l2=l2, max_norm=max_norm, accuracy=loss in CLASSIFICATION, precision=precision,
        forward=distributed.wrap(model, device) if parallel else torch.compile(model) if compile else None,
    )  # fmt: skip
    blockers = dict(
        l1=l1 > 0,
        l2=l2 > 0,
        bf16=precision != "fp32",
        skip=on_nonfinite == "skip",
        compile=compile,
        parallel=parallel,
    )
    fast = fast and on_nonfinite == "stop" and not parallel
    step, path = select_step(
        run, resolve_loss(loss), x[:batch_size], y[:batch_size], options, on_nonfinite, fast, blockers
    )
    unfused = step.unfused if isinstance(step, FusedStep) else nullcontext

    def replay() -> tuple[int, Tensor, Tensor] | None:
        checks = Metrics(device)
        checked = make_step(model, resolve_loss(loss), optimizer, checks, on_nonfinite="skip", **options)
        return replay_to_first_bad_step(run, checked, checks, x, y, batch_size)

    capturable = [group.get("capturable", False) for group in optimizer.param_groups]
    if path.name == "cuda-graph":
        prepare_for_capture(optimizer, device)
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with (
            torch.random.fork_rng(devices=rng_devices, device_type=device.type),
            closing(bar) if bar else nullcontext(),
            stop_on_sigint(run),
        ):
            torch.manual_seed(seed)
            if resume:
                with unfused():
                    state.restore(run, metrics, checkpoint_dir)
            for callback in callbacks:
                callback.on_train_begin(run)
            while run.epoch < epochs and not run.stop_reason:
                with unfused():
                    epoch_start = state.snapshot(run, metrics) if on_nonfinite == "stop" else None
                started = time.perf_counter()
                logs, first_nonfinite = train_epoch(run, step, x, y, batch_size)
                with unfused():
                    check_epoch(run, first_nonfinite, epoch_start, replay, resolve_loss(loss), checkpoint_dir)
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in evaluate(model, *val, loss).items()})
                end_epoch(run, logs, started)
                if checkpoint_dir is not None and distributed.is_main():
                    with unfused():
                        state.save(run, metrics, checkpoint_dir)
                distributed.barrier()
            if isinstance(step, FusedStep):
                step.swap_out()
            for callback in callbacks:
                callback.on_train_end(run)
    finally:
        run.stop_vote.close()
        if path.name == "cuda-graph":
            restore_after_capture(optimizer, capturable)
        if isinstance(step, FusedStep) and optimizer.param_groups is not step.user_groups:
            step.swap_out()
    run.history.stop_reason = run.stop_reason or f"completed {epochs} epochs"
    return run.history


def select_step(
    run: Run,
    loss_fn: Callable,
    x: Tensor,
    y: Tensor,
    options: dict[str, Any],
    on_nonfinite: str,
    fast: bool,
    blockers: dict[str, bool],
) -> tuple[Callable, TrainingPath]:
    """The step of the fastest path that applies (fastpath.choose_path), and the path, logged."""
    step = make_step(run.model, loss_fn, run.optimizer, run.metrics, on_nonfinite=on_nonfinite, **options)
    not_fused = why_not_fused(run.model, run.optimizer, **blockers)
    path = choose_path(run.device, run.optimizer, run.scheduler, fast, not_fused)
    log.info("%s", path)
    run.history.path = str(path)
    if path.name == "cuda-graph":
        step = GraphedStep(step, x, y)
    elif path.name == "fused-mlp":
        step = FusedStep(
            run.model,
            loss_fn,
            run.optimizer,
            run.metrics,
            accuracy=options["accuracy"],
            max_norm=options["max_norm"],
        )
    return step, path


def check_epoch(
    run: Run,
    first_nonfinite: int,
    epoch_start: dict[str, Any] | None,
    replay: Callable,
    loss_fn: Callable,
    checkpoint_dir: str | Path | None,
) -> None:
    """Raise for a Ctrl-C (after saving) or a non-finite loss (named by a replay) in the epoch."""
    if run.interrupted:
        raise interrupted(run, checkpoint_dir)
    if first_nonfinite >= 0:  # the same step on every process (Metrics.read agrees on it)
        raise explain_nonfinite(run, epoch_start, replay, loss_fn, first_nonfinite)


def check_fit_arguments(
    epochs: int,
    batch_size: int,
    *,
    checkpoint_dir: Any = None,
    resume: bool = False,
    loss: Any = "cross_entropy",
    l1: float = 0.0,
    l2: float = 0.0,
    max_norm: float | None = None,
    precision: str = "fp32",
    on_nonfinite: str = "stop",
) -> None:
    """Every argument of `fit` that does not need the model or the data, checked at once.

    `gradwell.job.prepare` calls it too, so that a bad [train] value fails before a run folder exists.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive int; got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs a checkpoint_dir to resume from")
    resolve_loss(loss)
    check_finite("l1", l1, low=0.0)
    check_finite("l2", l2, low=0.0)
    if max_norm is not None:
        check_finite("max_norm", max_norm, low=0.0, low_open=True)
    check_step_options(precision, on_nonfinite)


def check_data_fits_model(model: nn.Module, x: Tensor, y: Tensor, loss: Any) -> None:
    """Fail before training when the data cannot go through the model, naming both shapes."""
    if len(x) == 0 or len(x) != len(y):
        raise DataError(
            f"the training split has {len(x)} samples and {len(y)} labels; it needs as many "
            "of each, and at least one"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0])
        raise DataError(f"training sample {bad} holds a non-finite value (NaN or infinity)")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(x[:2])
    except RuntimeError as error:
        raise DataError(f"the model cannot take inputs of shape {tuple(x.shape[1:])}: {error}") from None
    finally:
        model.train(was_training)
    if loss in ELEMENTWISE and (y.shape[1:] != output.shape[1:] or not y.is_floating_point()):
        raise DataError(
            f"loss {loss!r} compares each output with a float target of the same shape: the model "
            f"gives {tuple(output.shape[1:])} per sample, the labels are {y.dtype} of shape "
            f"{tuple(y.shape[1:])}; for integer class labels use loss 'cross_entropy'"
        )
    if loss == "cross_entropy" and output.dim() == 2 and int(y.max()) >= output.shape[1]:
        raise DataError(
            f"labels go up to {int(y.max())}, but the model has {output.shape[1]} outputs; "
            f"it needs {int(y.max()) + 1} for these classes"
        )


def epoch_batches(run: Run, x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's batches from `run.position` on, in the order its shuffling state gives.

    Data-parallel, each process gets its shard of every full global batch.
    """
    if run.position == 0:
        run.epoch_shuffle = run.shuffle.get_state()
    run.shuffle.set_state(run.epoch_shuffle)
    order = torch.randperm(len(x), generator=run.shuffle, device=run.shuffle.device)
    parallel = distributed.active()
    end = len(x) - len(x) % batch_size if parallel else len(x)
    for start in range(run.position * batch_size, end, batch_size):
        index = order[start : start + batch_size]
        yield distributed.shard(x[index], y[index]) if parallel else (x[index], y[index])


def train_epoch(
    run: Run, step: Callable, x: Tensor, y: Tensor, batch_size: int
) -> tuple[dict[str, float], int]:
    """Train from `run.position` to the end of the epoch (or to a Ctrl-C).

    Returns the epoch's mean loss and accuracy, and the first step whose loss was non-finite (-1).
    """
    run.model.train()
    if run.position == 0:
        run.metrics.start_epoch(run.step)
    per_step = run.scheduler is not None and not isinstance(run.scheduler, ReduceLROnPlateau)
    takes_eager = isinstance(step, GraphedStep | FusedStep)  # can run a step eagerly when asked
    for xb, yb in epoch_batches(run, x, y, batch_size):
        eager = takes_eager and needs_eager_step(run.callbacks, run)
        for callback in run.callbacks:
            callback.on_step_begin(run)
        loss = step(xb, yb, eager=eager) if takes_eager else step(xb, yb)
        run.step += 1
        run.position += 1
        if per_step:
            run.scheduler.step()
        for callback in run.callbacks:
            callback.on_step_end(run, loss)
        if run.stop_vote(run.interrupted):  # data-parallel: every process at the same step
            run.interrupted = True
            return {}, -1
    run.position = 0
    return run.metrics.read()


def replay_to_first_bad_step(
    run: Run, checked: Callable, checks: Metrics, x: Tensor, y: Tensor, batch_size: int
) -> tuple[int, Tensor, Tensor] | None:
    """Train with a step that refuses non-finite updates until it refuses one; return that step."""
    run.model.train()
    per_step = run.scheduler is not None and not isinstance(run.scheduler, ReduceLROnPlateau)
    for xb, yb in epoch_batches(run, x, y, batch_size):
        checked(xb, yb)
        if distributed.any_process(int(checks.skipped) > 0):  # data-parallel: all stop together
            return run.step, xb, yb
        run.step += 1
        if per_step:
            run.scheduler.step()
    return None


def interrupted(run: Run, checkpoint_dir: str | Path | None) -> Interrupted:
    """Save where the run stopped on Ctrl-C and say how to go on."""
    where = f"step {run.step} (epoch {run.epoch + 1}, batch {run.position})"
    if checkpoint_dir is None:
        return Interrupted(f"interrupted after {where}; no checkpoint_dir, so nothing was saved")
    path = checkpoint.checkpoint_path(checkpoint_dir, run.step)
    if distributed.is_main():
        state.save(run, run.metrics, checkpoint_dir)
    distributed.barrier()
    return Interrupted(f"interrupted after {where}; saved {path}: resume to go on from there", path)


def end_epoch(run: Run, logs: dict[str, float], started: float) -> None:
    if isinstance(run.scheduler, ReduceLROnPlateau):
        run.scheduler.step(logs.get("val_loss", logs["loss"]))
    run.epoch += 1
    logs = {"epoch": run.epoch, **logs, "lr": run.lr, "time": time.perf_counter() - started}
    run.history.epochs.append(logs)
    log.info("epoch %d: %s", run.epoch, ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "epoch"))
    for callback in run.callbacks:
        callback.on_epoch_end(run, logs)
