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
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from gradwell.errors import ConfigError, NonFiniteError, unknown_name
from gradwell.train import checkpoint
from gradwell.train.callbacks import Callback
from gradwell.train.fastpath import (
    GraphedStep,
    choose_path,
    needs_eager_step,
    prepare_for_capture,
    restore_after_capture,
)
from gradwell.train.step import Metrics, make_step

log = logging.getLogger(__name__)

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,  # on logits, integer class labels
    "mse": F.mse_loss,
    "binary_cross_entropy": F.binary_cross_entropy_with_logits,  # on logits, float 0/1 labels
}
CLASSIFICATION = ("cross_entropy",)

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
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: History = field(default_factory=History)
    stop_reason: str = ""

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
    progress: bool = True,
    precision: str = "fp32",
    fast: bool = True,
    compile: bool = False,
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
        checkpoint_dir: write a checkpoint there after every epoch (the last two are kept).
        resume: continue from the newest good checkpoint in `checkpoint_dir`; the run then ends
            with the same weights as one never interrupted (bitwise on CPU).
        progress: show a progress bar (rich) on stderr.
        precision: "fp32", or "bf16" for bfloat16 autocast of forward and loss (weights, gradients
            and optimizer state stay in float32).
        fast: on a CUDA device, capture the whole step in a CUDA graph where it applies
            (gradwell.train.fastpath says which path runs and why, in the log and in
            ``History.path``); False always runs eagerly.
        compile: run the forward pass through ``torch.compile``, which fuses bias, activation and
            their backward into fewer kernels; worth it on GPUs, where kernel launches dominate,
            rarely on CPUs, where the compile takes longer than it saves on short runs.

    Returns the History: per epoch ``loss``, ``accuracy`` (classification), ``val_loss``,
    ``val_accuracy``, ``lr`` and ``time``. The training loss is the data loss alone, without
    the l1/l2 penalty, so that it compares with the validation loss.
    """
    check_run_arguments(epochs, batch_size, checkpoint_dir, resume)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    x, y = data.train.x.to(device), data.train.y.to(device)
    val = getattr(data, "val", None)
    val = (val.x.to(device), val.y.to(device)) if val is not None and len(val.y) > 0 else None
    callbacks = list(callbacks)
    bar = None
    if progress:
        from gradwell.train.progress import ProgressBar

        bar = ProgressBar()
        callbacks.append(bar)
    run = Run(model, optimizer, scheduler, callbacks, device, epochs, -(-len(x) // batch_size))
    metrics = Metrics(device)
    step = make_step(
        model,
        resolve_loss(loss),
        optimizer,
        metrics,
        l1=l1,
        l2=l2,
        max_norm=max_norm,
        accuracy=loss in CLASSIFICATION,
        precision=precision,
        forward=torch.compile(model) if compile else None,
    )
    path = choose_path(device, optimizer, scheduler, fast)
    log.info("%s", path)
    run.history.path = str(path)
    capturable = [group.get("capturable", False) for group in optimizer.param_groups]
    if path.name == "cuda-graph":
        prepare_for_capture(optimizer, device)
        step = GraphedStep(step, x[:batch_size], y[:batch_size])
    shuffle = torch.Generator(device=device).manual_seed(seed)
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with (
            torch.random.fork_rng(devices=rng_devices, device_type=device.type),
            closing(bar) if bar else nullcontext(),
        ):
            torch.manual_seed(seed)
            if resume:
                restore(run, shuffle, checkpoint_dir)
            for callback in callbacks:
                callback.on_train_begin(run)
            while run.epoch < epochs and not run.stop_reason:
                started = time.perf_counter()
                logs = train_epoch(run, step, metrics, x, y, batch_size, shuffle)
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in evaluate(model, *val, loss).items()})
                end_epoch(run, logs, started)
                if checkpoint_dir is not None:
                    save(run, shuffle, checkpoint_dir)
            for callback in callbacks:
                callback.on_train_end(run)
    finally:
        if path.name == "cuda-graph":
            restore_after_capture(optimizer, capturable)
    run.history.stop_reason = run.stop_reason or f"completed {epochs} epochs"
    return run.history


def check_run_arguments(epochs: int, batch_size: int, checkpoint_dir: Any, resume: bool) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive int; got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs a checkpoint_dir to resume from")


def train_epoch(
    run: Run,
    step: Callable,
    metrics: Metrics,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: torch.Generator,
) -> dict[str, float]:
    """One pass over the shuffled training set; returns its mean loss and accuracy."""
    run.model.train()
    order = torch.randperm(len(x), generator=shuffle, device=shuffle.device)
    metrics.start_epoch(run.step)
    per_step = run.scheduler is not None and not isinstance(run.scheduler, ReduceLROnPlateau)
    graphed = isinstance(step, GraphedStep)
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        eager = graphed and needs_eager_step(run.callbacks, run)
        for callback in run.callbacks:
            callback.on_step_begin(run)
        loss = step(x[index], y[index], eager=eager) if graphed else step(x[index], y[index])
        run.step += 1
        if per_step:
            run.scheduler.step()
        for callback in run.callbacks:
            callback.on_step_end(run, loss)
    logs, first_nonfinite = metrics.read(len(x))
    if first_nonfinite >= 0:
        raise NonFiniteError(
            f"the training loss became non-finite at step {first_nonfinite} (epoch {run.epoch + 1}); "
            "lower the learning rate or clip the gradients"
        )
    return logs


def end_epoch(run: Run, logs: dict[str, float], started: float) -> None:
    if isinstance(run.scheduler, ReduceLROnPlateau):
        run.scheduler.step(logs.get("val_loss", logs["loss"]))
    run.epoch += 1
    logs = {"epoch": run.epoch, **logs, "lr": run.lr, "time": time.perf_counter() - started}
    run.history.epochs.append(logs)
    log.info("epoch %d: %s", run.epoch, ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "epoch"))
    for callback in run.callbacks:
        callback.on_epoch_end(run, logs)


def rng_state(run: Run, shuffle: torch.Generator) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    return state


def callback_key(index: int, callback: Callback) -> str:
    return f"{index}:{type(callback).__name__}"


def save(run: Run, shuffle: torch.Generator, directory: str | Path) -> None:
    state = {
        "epoch": run.epoch,
        "step": run.step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "rng": rng_state(run, shuffle),
        "callbacks": {callback_key(i, c): c.state_dict() for i, c in enumerate(run.callbacks)},
        "history": run.history.epochs,
        "stop_reason": run.stop_reason,
    }
    checkpoint.save(checkpoint.checkpoint_path(directory, run.epoch), state)
    checkpoint.prune(directory, keep=2)


def restore(run: Run, shuffle: torch.Generator, directory: str | Path) -> None:
    """Put the run back in the state of the newest good checkpoint (a fresh start if none)."""
    state = checkpoint.latest(directory)
    if state is None:
        log.info("no checkpoint in %s: starting from scratch", directory)
        return
    checkpoint.load_weights(run.model, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    shuffle.set_state(state["rng"]["shuffle"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], run.device)
    for i, callback in enumerate(run.callbacks):
        key = callback_key(i, callback)
        if key in state["callbacks"]:
            callback.load_state_dict(state["callbacks"][key])
        elif callback.state_dict():
            log.warning("the checkpoint has no state for callback %s: it starts afresh", key)
    run.epoch, run.step = state["epoch"], state["step"]
    run.history.epochs = list(state["history"])
    run.stop_reason = state["stop_reason"]
    log.info("resumed from epoch %d (step %d)", run.epoch, run.step)
