"""The main job: a config in, a trained model and a run folder out (`gradwell train`).

Everything a config names is built and checked by the recipe (gradwell.build) before the run
folder is made or a step is taken, so a bad config fails fast and writes nothing. Under torchrun
every process trains and process 0 writes. The run folder holds:

    config.toml          the resolved config (defaults filled in, max_lr = "find" as found), to rerun
                         or resume
    metrics.jsonl        one JSON object per epoch
    checkpoints/         the last two checkpoints (safetensors), for --resume
    model.safetensors    the final weights (gradwell.run_folder.load_run rebuilds the model)
    learning_curves.png  loss and accuracy per epoch
    result.json          test metrics, epochs, time and the stability doctor's verdicts (and
                         lr_find: the search behind a max_lr = "find")
    tensorboard/         with output.tensorboard: the doctor's per-layer curves and histograms
                         of the sampled steps, and the epoch metrics (`tensorboard --logdir`)
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from torch import nn

from gradwell import build
from gradwell import data as datasets
from gradwell.build import Prepared
from gradwell.config import Config
from gradwell.diagnose import Monitor, Report, probe_split
from gradwell.diagnose.probe import explain_nonfinite
from gradwell.errors import NonFiniteError, ProcessLostError
from gradwell.files import write_atomically
from gradwell.plots import learning_curves
from gradwell.run_folder import MODEL_FILE, check_output, create_run_dir, locked, save_weights
from gradwell.train import checkpoint, distributed
from gradwell.train.callbacks import MetricsLogger
from gradwell.train.launch import tell_launcher
from gradwell.train.losses import evaluate_split

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    run_dir: Path
    test: dict[str, float]
    epochs: list[dict[str, float]]
    stop_reason: str
    seconds: float
    model: nn.Module = field(repr=False)
    dataset: datasets.Dataset = field(repr=False)
    path: str = ""  # the training path that ran, and why
    doctor: Report | None = field(default=None, repr=False)  # the final model probed on 256 samples
    lr_find: dict[str, Any] | None = None  # schedule.max_lr = "find": the rate found (build.Prepared.found)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "test": self.test,
            "epochs": len(self.epochs),
            "final": self.epochs[-1] if self.epochs else {},
            "stop_reason": self.stop_reason,
            "seconds": self.seconds,
            "path": self.path,
            "doctor": self.doctor.to_dict() if self.doctor is not None else None,
            **({"lr_find": self.lr_find} if self.lr_find is not None else {}),
        }


def run(config: Config, run_dir: Path | None = None, resume: bool = False) -> JobResult:
    """Train as `config` says, in `run_dir` (a new folder under output.dir by default).

    Process 0 holds the run folder while it trains (gradwell.run_folder.locked): a second
    gradwell process on the same folder is refused before it writes anything.
    """
    if run_dir is None:
        check_output(config)
    prepared = build.prepare(config)
    main = distributed.is_main()
    with ExitStack() as stack:
        if main:
            run_dir = run_dir or create_run_dir(config)
            stack.enter_context(locked(Path(run_dir)))
            tell_launcher(Path(run_dir))
        return train_in(prepared, Path(distributed.broadcast(str(run_dir))), resume)


def train_in(prepared: Prepared, run_dir: Path, resume: bool) -> JobResult:
    """The job's run in `run_dir`, which process 0 holds and the others share."""
    config, main = prepared.config, distributed.is_main()
    if (
        resume
    ):  # before config.toml is rewritten: a config that does not fit must not replace the one that did
        check_resumable(prepared.model, run_dir)
    if main:  # atomically: a kill while it is written must leave the old config, never an empty one
        checkpoint.remove_orphans(run_dir)
        write_atomically(run_dir / "config.toml", tomli_w.dumps(config.to_dict()).encode())
    board = run_dir / "tensorboard" if config.output.tensorboard and main else None
    monitor = Monitor(tensorboard=board)
    callbacks = [*([MetricsLogger(run_dir / "metrics.jsonl")] if main else []), monitor]
    started = time.perf_counter()
    try:
        history = prepared.fit(
            callbacks, checkpoint_dir=run_dir / "checkpoints", resume=resume,
            explain_nonfinite=explain_nonfinite,
        )  # fmt: skip
    except NonFiniteError as error:  # a diverging run is where the doctor matters most
        error.doctor = diagnose_divergence(prepared, monitor, run_dir, error, write=main)
        raise
    except RuntimeError as error:
        if not distributed.peer_lost(error):
            raise
        reason = str(error).splitlines()[0][:160]
        raise ProcessLostError(
            f"another training process of this run ended while it trained ({reason}); the last "
            f"checkpoint is in {run_dir / 'checkpoints'}: go on with: gradwell train --resume {run_dir}"
        ) from None
    seconds = time.perf_counter() - started
    test_metrics = evaluate_split(prepared.model, prepared.dataset.test, config.train.loss)
    result = JobResult(
        run_dir, test_metrics, history.epochs, history.stop_reason, seconds, prepared.model, prepared.dataset,
        path=history.path, lr_find=prepared.found,
    )  # fmt: skip
    # every process probes: synced BatchNorm layers gather their statistics from all of them
    train = config.train
    result.doctor = probe_split(
        prepared.model, prepared.dataset.train, train.loss, monitor=monitor, seed=train.seed
    )
    if main:
        save_weights(prepared.model, run_dir / MODEL_FILE)
        learning_curves(history.epochs, run_dir / "learning_curves.png", title=run_dir.name)
        (run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def check_resumable(model: nn.Module, run_dir: Path) -> None:
    """CheckpointError if the newest good checkpoint in `run_dir` does not fit `model`."""
    saved = checkpoint.latest(run_dir / "checkpoints")
    if saved is not None:
        checkpoint.check_weights(model, saved["model"], source=f"checkpoint in {run_dir / 'checkpoints'}")


def diagnose_divergence(
    prepared: Prepared, monitor: Monitor, run_dir: Path, error: NonFiniteError, write: bool = True
) -> Report:
    """The doctor's report on a run that went non-finite, also written to result.json if `write`.

    `fit` leaves the model with the weights from before the bad step, so the probe sees the
    gradients that were about to blow up, and the Monitor adds the gradient norms seen so far.
    """
    train = prepared.config.train
    doctor = probe_split(prepared.model, prepared.dataset.train, train.loss, monitor=monitor, seed=train.seed)
    if not write:
        return doctor
    result = {
        "run_dir": str(run_dir),
        "stop_reason": "non-finite",
        "error": str(error),
        "doctor": doctor.to_dict(),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return doctor
