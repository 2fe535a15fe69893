"""A run's whole state as one tree: what a checkpoint holds, and what a replay restarts from.

`capture` takes everything that decides the rest of a run (weights, optimizer and scheduler
state, RNG states, the epoch's shuffling, the position inside the epoch and its running metrics,
callback state, history); `apply` puts it back. Restoring it and training on gives, on the CPU,
bit for bit the run that was never stopped.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from gradwell.train import checkpoint, distributed

if TYPE_CHECKING:
    from gradwell.train.loop import Run
    from gradwell.train.step import Metrics

log = logging.getLogger(__name__)

KEEP = 2  # checkpoints kept: the newest, and the one before it in case the newest is damaged


def callback_keys(callbacks: list[Any]) -> list[str]:
    """Each callback's key in a checkpoint: its class name, numbered from the second of a class on
    (``Monitor``, ``Monitor#2``), so that processes with different callbacks (only process 0 logs
    metrics) and a resume that adds one still match every callback to its own state."""
    names = [type(callback).__name__ for callback in callbacks]
    return [name if names[:i].count(name) == 0 else f"{name}#{names[:i].count(name) + 1}" for i, name in
            enumerate(names)]  # fmt: skip


def capture(run: Run, metrics: Metrics, shards: list[Any] | None = None) -> dict[str, Any]:
    """The run's state; tensors are the live ones (checkpoint.save copies them, `snapshot` clones).

    `shards` are every process's running metric sums, in process order, for a data-parallel run
    stopped mid-epoch; `metrics` alone is this process's.
    """
    rng = {"torch": torch.get_rng_state(), "shuffle": run.shuffle.get_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    return {
        "epoch": run.epoch,
        "step": run.step,
        "position": run.position,
        "epoch_shuffle": run.epoch_shuffle,
        "metrics": metrics.state_dict(),
        "metric_shards": shards or [],
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "rng": rng,
        "callbacks": {
            key: c.state_dict() for key, c in zip(callback_keys(run.callbacks), run.callbacks, strict=True)
        },
        "history": run.history.epochs,
        "stop_reason": run.stop_reason,
    }


def snapshot(run: Run, metrics: Metrics) -> dict[str, Any]:
    """A copy of the state in memory, for replaying an epoch (e.g. to find a non-finite step).

    Tensors are cloned and containers rebuilt by pytree; only other leaves go through deepcopy,
    whose per-tensor path took most of a short ``fit``'s fixed cost (18 ms for a 6-layer net).
    """
    return tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, Tensor) else copy.deepcopy(leaf), capture(run, metrics)
    )


def apply(run: Run, metrics: Metrics, state: dict[str, Any]) -> None:
    """Put the run back in `state`."""
    checkpoint.load_weights(run.model, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    run.shuffle.set_state(state["rng"]["shuffle"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], run.device)
    for i, (key, callback) in enumerate(zip(callback_keys(run.callbacks), run.callbacks, strict=True)):
        positional = f"{i}:{type(callback).__name__}"  # how checkpoints before 2026-12 named it
        saved = state["callbacks"].get(key, state["callbacks"].get(positional))
        if saved is not None:
            callback.load_state_dict(saved)
        elif callback.state_dict():
            log.warning("the checkpoint has no state for callback %s: it starts afresh", key)
    run.epoch, run.step, run.position = state["epoch"], state["step"], state["position"]
    run.epoch_shuffle = state["epoch_shuffle"]
    shards = state.get("metric_shards") or []
    parallel = len(shards) == distributed.world_size() > 1
    metrics.load_state_dict(shards[distributed.rank()] if parallel else state["metrics"])
    run.history.epochs = list(state["history"])
    run.stop_reason = state["stop_reason"]


def save(run: Run, metrics: Metrics, directory: str | Path, shards: list[Any] | None = None) -> Path:
    """Write the run's checkpoint for its current step (see `capture`); keep the newest KEEP."""
    path = checkpoint.checkpoint_path(directory, run.step)
    checkpoint.save(path, capture(run, metrics, shards))
    checkpoint.prune(directory, keep=KEEP)
    return path


def restore(run: Run, metrics: Metrics, directory: str | Path) -> bool:
    """Put the run in the state of the newest good checkpoint; False (a fresh start) if none."""
    state = checkpoint.latest(directory)
    if state is None:
        log.warning("no checkpoint to resume from in %s: starting from scratch", directory)
        return False
    apply(run, metrics, state)
    log.info("resumed at step %d (epoch %d, batch %d of it)", run.step, run.epoch + 1, run.position)
    return True
