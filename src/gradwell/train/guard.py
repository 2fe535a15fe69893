"""What the loop does when a run goes wrong: Ctrl-C, and a loss that stops being finite.

Ctrl-C: the first one asks the loop to stop after the current step (fit then writes a checkpoint
that resumes mid-epoch); a second one interrupts at once, as usual.

A non-finite loss: the loop learns of it at the end of the epoch, since it does not read the
device on every step. It then restores the state it snapshotted at the start of the epoch and
replays the epoch (deterministically: same RNG states, same batches) with a step that checks the
loss and the gradients, up to the first step where either is non-finite; the stability doctor's
probe of that step's batch names the first layer that produced a non-finite value. The model is
left with the weights it had before that step, which are still finite.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gradwell.errors import NonFiniteError
from gradwell.train import distributed, state

if TYPE_CHECKING:
    from gradwell.train.loop import Run

log = logging.getLogger(__name__)


# Ctrl-C, and what `kill`, job schedulers and container runtimes send before they kill
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped after a step on Ctrl-C or SIGTERM; `checkpoint` is where it was saved (or
    None), `signum` the signal (a command exits with 128 + signum, as the shell reports it)."""

    def __init__(self, message: str, checkpoint: Any = None, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signum = int(signum)


@contextmanager
def stop_on_signals(run: Run) -> Iterator[None]:
    """While training, the first Ctrl-C or SIGTERM sets ``run.interrupted`` (and ``run.signum``):
    the loop stops after the current step and checkpoints. A second one acts at once, as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        run.interrupted, run.signum = True, signum
        for number, old in previous.items():
            signal.signal(number, old)
        log.warning("stopping after the current step (%s again to stop at once)", signal.Signals(signum).name)

    previous.update({number: signal.signal(number, handler) for number in STOP_SIGNALS})
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def nonfinite_validation(run: Run, epoch_start: dict[str, Any]) -> NonFiniteError:
    """A training epoch that stayed finite while the model in eval mode does not: its non-finite
    buffers named (BatchNorm's moving variance overflows on unscaled inputs, for one), the run put
    back where the epoch began."""
    broken = [
        name for name, buffer in run.model.named_buffers()
        if buffer.is_floating_point() and not bool(torch.isfinite(buffer).all())
    ]  # fmt: skip
    state.apply(run, run.metrics, epoch_start)
    named = f" (non-finite: {', '.join(broken[:5])})" if broken else ""
    return NonFiniteError(
        f"the validation loss became non-finite in epoch {run.epoch + 1} while the training loss stayed "
        f"finite: the model in eval mode computes non-finite outputs{named}. The model keeps the weights "
        "and statistics from before that epoch, and the last checkpoint (if any) is untouched. Standardize "
        "the inputs (data.standardize) or lower the learning rate"
    )


ADVICE = (
    "Lower the learning rate, or clip the gradients (e.g. optimizer global_clipnorm); `gradwell diagnose` "
    "shows where gradients grow"
)


def nonfinite_error(
    run: Run,
    epoch_start: dict[str, Any],
    replay: Callable[[], tuple[int, Tensor, Tensor] | None],
    where: Callable[[Tensor, Tensor], str],
    reported_step: int,
) -> NonFiniteError:
    """Replay the epoch from `epoch_start` to its first bad step and say where it turned non-finite.

    `replay()` trains from the restored state with a step that checks the loss and the gradients
    on every step, stops before applying the first bad one, and returns (step, x, y) for it;
    `where(x, y)` names the place in the model (gradwell.train.nonfinite.describe's clause).
    """
    state.apply(run, run.metrics, epoch_start)
    found = replay()
    if found is None:  # the replay stayed finite: say what the run saw, from where the epoch began
        state.apply(run, run.metrics, epoch_start)
        return NonFiniteError(
            f"the training loss became non-finite at step {reported_step} (epoch {run.epoch + 1}), but a "
            "replay of the epoch, on the eager step that checks every update, stayed finite: the run was "
            "at the edge of diverging, where the order of float operations (another on the fused path or "
            "in a CUDA graph) or a nondeterministic kernel decides. The model keeps the weights from "
            f"before that epoch, and the last checkpoint (if any) is untouched. {ADVICE}"
        )
    step, x, y = found
    clause = distributed.first_text(where(x, y))  # any process's shard
    return NonFiniteError(
        f"training became non-finite at step {step} (epoch {run.epoch + 1}){clause}. The model keeps the "
        f"weights from before that step, and the last checkpoint (if any) is untouched. {ADVICE}"
    )
