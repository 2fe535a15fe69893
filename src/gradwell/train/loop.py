"""The training loop: data on the device, batches by index, metrics read once per epoch.

Small deep networks are bound by per-step overhead, not arithmetic, so the loop does per step
only what the step needs: index a shuffled batch out of tensors already on the device, run the
step, add the loss and the number of correct predictions to accumulators on the device. It reads
them (one host-device synchronization) once per epoch. No DataLoader, no worker processes, no
per-step `.item()`. Which step runs (a CUDA graph, the fused MLP step, or eager autograd) is the
choice of gradwell.train.paths; the loop treats every step alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from gradwell.data import Split
from gradwell.errors import ConfigError
from gradwell.selfnorm import warn_if_penalties_break_self_normalization
from gradwell.train import checkpoint, distributed, nonfinite, state
from gradwell.train.callbacks import Callback
from gradwell.train.guard import Interrupted, nonfinite_error, nonfinite_validation, stop_on_signals
from gradwell.train.losses import as_split, check_data_fits_model, evaluate_split
from gradwell.train.options import TrainOptions, training_options
from gradwell.train.paths import BuiltStep, choose
from gradwell.train.step import Metrics, StepContext

log = logging.getLogger(__name__)

Scheduler = LRScheduler | ReduceLROnPlateau


@dataclass
class History:
    """What `fit` returns: one dict of metrics per epoch, and why the run stopped.

    >>> history = History([{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5}], "completed 2 epochs")
    >>> history.metric("loss"), history.last["epoch"]
    ([0.9, 0.5], 2)
    """

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
    """The state of a run that callbacks see and may act on.

    >>> class StopAtHalf(Callback):
    ...     def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
    ...         if run.epoch >= run.epochs // 2:
    ...             run.stop("half way")
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    callbacks: list[Callback]
    device: torch.device
    options: TrainOptions
    steps_per_epoch: int
    shuffle: torch.Generator
    metrics: Metrics
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    position: int = 0  # batches done in the current epoch
    epoch_shuffle: Tensor | None = None  # the shuffling generator's state when this epoch drew its order
    history: History = field(default_factory=History)
    stop_reason: str = ""
    interrupted: bool = False  # set by the first Ctrl-C or SIGTERM: stop after the current step
    signum: int = signal.SIGINT  # which of the two it was
    stop_vote: distributed.StopVote = field(default_factory=distributed.StopVote)  # data-parallel Ctrl-C

    def stop(self, reason: str) -> None:
        """Ask the loop to stop at the end of this epoch."""
        self.stop_reason = reason

    @property
    def epochs(self) -> int:
        return self.options.epochs

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass(frozen=True)
class DeviceData:
    """The training split (and the validation split, when it has samples) on the run's device, as
    stored: images stay uint8 there and each batch is decoded when it is drawn."""

    train: Split
    val: Split | None

    @classmethod
    def of(cls, data: Any, device: torch.device) -> DeviceData:
        val = getattr(data, "val", None)
        val = as_split(val).to(device) if val is not None and len(val.y) > 0 else None
        return cls(as_split(data.train).to(device), val)


def fit(
    model: nn.Module,
    data: Any,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | None = None,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    options: TrainOptions | None = None,
    explain_nonfinite: nonfinite.Explain | None = None,
    **train_options: Any,
) -> History:
    """Train `model` on `data.train`, validating on `data.val` (when present) after each epoch.

    Args:
        data: a ``gradwell.data.Dataset`` or anything with ``train`` (and optionally ``val``)
            splits that have ``x`` and ``y`` tensors.
        optimizer: any torch optimizer over the model's parameters (gradwell's clip inside).
        scheduler: a torch LR scheduler. ReduceLROnPlateau steps once per epoch on the validation
            loss; any other steps after every optimizer step (``gradwell.optim.schedule``
            counts steps, like Keras schedules).
        callbacks: gradwell.train.Callback objects, called at fixed points of the loop.
        device: where to train; defaults to the device of the model's first parameter.
        checkpoint_dir: write a checkpoint there after every epoch, and on Ctrl-C after the
            current step (the last two are kept). Data-parallel, process 0 writes, and a Ctrl-C
            (torchrun forwards it to every process) stops them all one step later, at one step.
        resume: continue from the newest good checkpoint in `checkpoint_dir`, mid-epoch if it was
            written on Ctrl-C; the run then ends with the same weights as one never interrupted
            (bitwise on CPU).
        progress: show a progress bar (rich) on stderr.
        options: a gradwell.train.TrainOptions; keyword arguments below change single options.
        explain_nonfinite: ``(model, x, y, loss_fn) -> clause`` naming where a bad step's batch
            turns non-finite; by default gradwell.train.nonfinite.locate (the first module).
        **train_options: the fields of TrainOptions, Keras-like: ``epochs`` (required unless
            `options` is given), ``batch_size`` (32), ``loss`` ("cross_entropy", "mse",
            "binary_cross_entropy" or a function), ``l1``, ``l2`` (penalties on Linear and Conv
            weights, added to the loss), ``max_norm`` (after each step, each unit's incoming
            weights at most this norm), ``seed`` (shuffling and every random op of the run; the
            global RNG is left as it was), ``on_nonfinite`` ("stop": a non-finite loss ends the
            run with a NonFiniteError naming the step and where it turned non-finite, found by
            replaying the epoch, the model keeping the weights from before that step (from before
            the epoch where the replay stays finite); "skip": a non-finite step is not applied and
            is counted, reading the device every step),
            ``precision`` ("fp32" or "bf16" autocast of forward and loss), ``fast`` (the fastest
            training path that applies, gradwell.train.paths; False runs eagerly), ``compile``
            (torch.compile the forward pass: worth it on GPUs, rarely on CPUs) and
            ``sync_batchnorm`` (data-parallel runs: BatchNorm statistics over all processes).

    Returns the History: per epoch ``loss``, ``accuracy`` (classification), ``val_loss``,
    ``val_accuracy``, ``lr`` and ``time``. The training loss is the data loss alone, without
    the l1/l2 penalty, so that it compares with the validation loss.

    Raises gradwell's own errors (ConfigError, DataError, NonFiniteError) for bad arguments, data
    the model cannot take, and runs that diverge; `gradwell.train.guard.Interrupted` (a
    KeyboardInterrupt) on Ctrl-C, after writing the checkpoint.

    >>> from types import SimpleNamespace
    >>> from gradwell.data import Split
    >>> x = torch.randn(64, 4)
    >>> data = SimpleNamespace(train=Split(x, (x[:, 0] > 0).long()))  # any object with splits
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> history = fit(model, data, optimizer=optimizer, epochs=2, batch_size=16, progress=False)
    >>> len(history.epochs), sorted(history.last)[:3]
    (2, ['accuracy', 'epoch', 'loss'])
    """
    options = training_options(options, train_options)
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs a checkpoint_dir to resume from")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    data = DeviceData.of(data, device)
    check_data_fits_model(model, data.train, options.loss)
    warn_if_penalties_break_self_normalization(model, options.l1, options.l2)
    run, context, bar = start(model, optimizer, scheduler, callbacks, device, options, data, progress)
    decision, path = choose(context)
    log.info("%s", decision)
    run.history.path = str(decision)
    step = path.build(context)
    explain = explain_nonfinite or nonfinite.locate
    guard = EpochGuard(context, data, checkpoint_dir, lambda x, y: explain(model, x, y, context.loss_fn))
    try:
        with session(run, bar, options.seed):
            if resume:
                with step.user_view():
                    state.restore(run, run.metrics, checkpoint_dir)
            train_epochs(run, step, data, guard)
    finally:
        run.stop_vote.close()
        step.close()
    run.history.stop_reason = run.stop_reason or f"completed {options.epochs} epochs"
    return run.history


def start(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | None,
    callbacks: Sequence[Callback],
    device: torch.device,
    options: TrainOptions,
    data: DeviceData,
    progress: bool,
) -> tuple[Run, StepContext, Callback | None]:
    """The run's state, what the training paths see and the progress bar (None without one);
    data-parallel set up when under torchrun."""
    parallel = distributed.active()
    if parallel:
        distributed.check_batch_size(options.batch_size)
        if options.sync_batchnorm:
            distributed.sync_batchnorm(model)
    callbacks = list(callbacks)
    bar = None
    if progress and distributed.is_main():
        from gradwell.train.progress import ProgressBar  # rich's import costs a run without a bar

        bar = ProgressBar()
        callbacks.append(bar)
    run = Run(
        model, optimizer, scheduler, callbacks, device, options,
        options.steps_per_epoch(len(data.train), drop_last=parallel),
        torch.Generator(device=device).manual_seed(options.seed), Metrics(device),
    )  # fmt: skip
    forward = (
        distributed.wrap(model, device) if parallel else torch.compile(model) if options.compile else None
    )
    sample = data.train[: options.batch_size]
    context = StepContext(
        model, optimizer, scheduler, run.metrics, options, device, sample, parallel, forward
    )
    return run, context, bar


def session(run: Run, bar: Any, seed: int) -> ExitStack:
    """What training runs inside: a forked global RNG seeded with `seed`, the progress bar closed
    at the end, Ctrl-C turned into a stop after the current step."""
    device = run.device
    stack = ExitStack()
    stack.enter_context(
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type)
    )
    if bar is not None:
        stack.enter_context(closing(bar))
    stack.enter_context(stop_on_signals(run))
    if device.type == "cpu":  # torch.manual_seed would also seed every other device type (1 ms), unforked
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    return stack


@dataclass
class EpochGuard:
    """The end-of-epoch checks: a Ctrl-C (save, then stop) and a non-finite loss (replay the epoch
    to its first bad step, then say where)."""

    context: StepContext
    data: DeviceData
    checkpoint_dir: str | Path | None
    where: Callable[[Tensor, Tensor], str]

    def snapshot(self, run: Run) -> dict[str, Any] | None:
        """The state to replay the epoch from; none is kept when non-finite steps are skipped."""
        return state.snapshot(run, run.metrics) if self.context.options.on_nonfinite == "stop" else None

    def check(self, run: Run, first_nonfinite: int, epoch_start: dict[str, Any] | None) -> None:
        if run.interrupted:
            raise interrupted(run, self.checkpoint_dir)
        if first_nonfinite >= 0:  # the same step on every process (Metrics.read agrees on it)
            raise nonfinite_error(run, epoch_start, lambda: self.replay(run), self.where, first_nonfinite)

    def replay(self, run: Run) -> tuple[int, Tensor, Tensor] | None:
        checks = Metrics(run.device)
        checked = dataclasses.replace(self.context, metrics=checks).eager_step(on_nonfinite="skip")
        return replay_to_first_bad_step(run, checked, checks, self.data, self.context.options.batch_size)

    @property
    def saves(self) -> bool:
        """Whether this process writes a checkpoint after every epoch."""
        return self.checkpoint_dir is not None and distributed.is_main()


def train_epochs(run: Run, step: BuiltStep, data: DeviceData, guard: EpochGuard) -> None:
    """Epochs until the last one or a callback's stop; the optimizer is the user's again after."""
    for callback in run.callbacks:
        callback.on_train_begin(run)
    while run.epoch < run.epochs and not run.stop_reason:
        with step.user_view():
            epoch_start = guard.snapshot(run)
        started = time.perf_counter()
        logs, first_nonfinite = train_epoch(run, step, data.train, run.options.batch_size)
        with step.user_view():
            guard.check(run, first_nonfinite, epoch_start)
        if data.val is not None:
            val = evaluate_split(run.model, data.val, run.options.loss)
            if epoch_start is not None and not math.isfinite(val["loss"]):
                with step.user_view():
                    raise nonfinite_validation(run, epoch_start)
            logs.update({f"val_{k}": v for k, v in val.items()})
        end_epoch(run, logs, started)
        if guard.saves:
            with step.user_view():
                state.save(run, run.metrics, guard.checkpoint_dir)
        distributed.barrier()
    step.close()
    for callback in run.callbacks:
        callback.on_train_end(run)


def epoch_batches(run: Run, split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's batches from `run.position` on, in the order its shuffling state gives, as
    features (stored pixels decoded batch by batch).

    Data-parallel, each process gets its shard of every full global batch.
    """
    if run.position == 0:
        run.epoch_shuffle = run.shuffle.get_state()
    run.shuffle.set_state(run.epoch_shuffle)
    order = torch.randperm(len(split), generator=run.shuffle, device=run.shuffle.device)
    parallel = distributed.active()
    end = len(split) - len(split) % batch_size if parallel else len(split)
    for start in range(run.position * batch_size, end, batch_size):
        batch = split.rows(order[start : start + batch_size])
        yield distributed.shard(*batch) if parallel else batch


def train_epoch(run: Run, step: BuiltStep, split: Split, batch_size: int) -> tuple[dict[str, float], int]:
    """Train from `run.position` to the end of the epoch (or to a Ctrl-C).

    Returns the epoch's mean loss and accuracy, and the first step whose loss was non-finite (-1).
    """
    run.model.train()
    if run.position == 0:
        run.metrics.start_epoch(run.step)
    per_step = run.scheduler is not None and not isinstance(run.scheduler, ReduceLROnPlateau)
    # only callbacks that may hook into a step are asked, every step, whether they will
    watchers = [c for c in run.callbacks if type(c).needs_eager_step is not Callback.needs_eager_step]
    for xb, yb in epoch_batches(run, split, batch_size):
        eager = any(callback.needs_eager_step(run) for callback in watchers)
        for callback in run.callbacks:
            callback.on_step_begin(run)
        loss = step(xb, yb, eager=eager)
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
    run: Run, checked: Callable, checks: Metrics, data: DeviceData, batch_size: int
) -> tuple[int, Tensor, Tensor] | None:
    """Train with a step that refuses non-finite updates until it refuses one; return that step."""
    run.model.train()
    per_step = run.scheduler is not None and not isinstance(run.scheduler, ReduceLROnPlateau)
    for xb, yb in epoch_batches(run, data.train, batch_size):
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
        return Interrupted(
            f"interrupted after {where}; no checkpoint_dir, so nothing was saved", None, run.signum
        )
    path = checkpoint.checkpoint_path(checkpoint_dir, run.step)
    # mid-epoch, each process's running sums are its own shard's: the checkpoint keeps them all
    sums = {k: v.cpu() for k, v in run.metrics.state_dict().items()}
    shards = distributed.gather(sums) if distributed.active() else None
    if distributed.is_main():
        state.save(run, run.metrics, checkpoint_dir, shards)
    distributed.barrier()
    return Interrupted(
        f"interrupted after {where}; saved {path}: resume to go on from there", path, run.signum
    )


def end_epoch(run: Run, logs: dict[str, float], started: float) -> None:
    if isinstance(run.scheduler, ReduceLROnPlateau):
        run.scheduler.step(logs.get("val_loss", logs["loss"]))
    run.epoch += 1
    logs = {"epoch": run.epoch, **logs, "lr": run.lr, "time": time.perf_counter() - started}
    run.history.epochs.append(logs)
    log.info("epoch %d: %s", run.epoch, ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "epoch"))
    for callback in run.callbacks:
        callback.on_epoch_end(run, logs)
