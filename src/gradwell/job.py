"""The main job: a config in, a trained model and a run folder out (`gradwell train`).

Everything a config names is built and checked (data loaded, model, optimizer and schedule
created) before the run folder is made or a step is taken, so a bad config fails fast and
writes nothing. Under torchrun every process trains and process 0 writes. The run folder holds:

    config.toml          the resolved config (defaults filled in), to rerun or resume
    metrics.jsonl        one JSON object per epoch
    checkpoints/         the last two checkpoints (safetensors), for --resume
    model.safetensors    the final weights (`load_run` rebuilds the model from them)
    learning_curves.png  loss and accuracy per epoch
    result.json          test metrics, epochs, time and the stability doctor's verdicts
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from gradwell import config as configs
from gradwell import data as datasets
from gradwell import models, optim
from gradwell.config import Config, TrainConfig, check_call
from gradwell.diagnose import Monitor, Report, probe_split
from gradwell.errors import CheckpointError, ConfigError, NonFiniteError, unknown_name
from gradwell.fold import FoldWarning, fold_batchnorm
from gradwell.plots import learning_curves
from gradwell.train import EarlyStopping, checkpoint, distributed, fit
from gradwell.train.callbacks import MetricsLogger
from gradwell.train.loop import check_data_fits_model, check_fit_arguments, evaluate

log = logging.getLogger(__name__)

BUILDERS = {"mlp": models.mlp, "cnn": models.cnn}
MODEL_FILE = "model.safetensors"


@dataclass
class Prepared:
    """Everything a run needs, built and checked from a config."""

    config: Config
    dataset: datasets.Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device


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
        }


def resolve_device(name: str) -> torch.device:
    """The device train.device names; under torchrun, this process's device whatever it names."""
    if distributed.active():
        return distributed.device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device = {name!r} is not a device; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"train.device = {name!r}: gradwell trains on cpu or cuda; valid: auto, cpu, cuda, cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}, but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def load_data(config: Config) -> datasets.Dataset:
    options = dict(config.data)
    name = options.pop("name", "mnist1d")
    standardize = options.pop("standardize", True)
    if not isinstance(standardize, bool):
        raise ConfigError(f"data.standardize = {standardize!r} has the wrong type: expected bool")
    dataset = datasets.load(name, **options)
    return datasets.standardize(dataset)[0] if standardize else dataset


def build_model(config: Config, dataset: datasets.Dataset) -> nn.Module:
    options = dict(config.model)
    kind = options.pop("kind", "mlp")
    if not isinstance(kind, str) or kind not in BUILDERS:
        raise unknown_name("model kind", kind, BUILDERS)
    builder = BUILDERS[kind]
    check_call("model", builder, options, skip=("in_features", "in_shape", "out_features", "generator"))
    generator = torch.Generator().manual_seed(config.train.seed)
    return builder(dataset.feature_shape, dataset.num_classes, **options, generator=generator)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    options = dict(config.optimizer)
    return optim.create(options.pop("name", "nadam"), model.parameters(), **options)


def build_schedule(config: Config, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """The config's schedule over a run of `steps` optimizer steps (None for name = "none").

    1cycle spans the run by default: its last rate is the one the last step uses.
    """
    options = dict(config.schedule)
    name = options.pop("name", "none")
    if name == "none":
        return None
    if name == "onecycle":
        options.setdefault("total_steps", steps)
        options.setdefault("max_lr", float(optimizer.param_groups[0]["lr"]))
    return optim.schedule(name, optimizer, **options)


def fit_options(train: TrainConfig) -> dict[str, Any]:
    """``fit``'s keyword arguments from a config's [train] section, all of them but the device."""
    return dict(
        epochs=train.epochs, batch_size=train.batch_size, loss=train.loss, l1=train.l1, l2=train.l2,
        max_norm=train.max_norm, seed=train.seed, on_nonfinite=train.on_nonfinite, precision=train.precision,
        fast=train.fast, compile=train.compile, sync_batchnorm=train.sync_batchnorm,
    )  # fmt: skip


def early_stopping(train: TrainConfig) -> list[EarlyStopping]:
    """The config's early stopping, as a callback list (empty without train.early_stopping)."""
    return [EarlyStopping(patience=train.early_stopping)] if train.early_stopping is not None else []


def prepare(config: Config) -> Prepared:
    """Load the data and build model, optimizer and schedule; every config error surfaces here."""
    train = config.train
    check_fit_arguments(
        train.epochs, train.batch_size, loss=train.loss, l1=train.l1, l2=train.l2, max_norm=train.max_norm,
        precision=train.precision, on_nonfinite=train.on_nonfinite,
    )  # fmt: skip
    early_stopping(train)  # its patience, checked now
    device = resolve_device(train.device)
    dataset = load_data(config)
    model = build_model(config, dataset).to(device)
    check_data_fits_model(model, dataset.train.x.to(device), dataset.train.y.to(device), train.loss)
    optimizer = build_optimizer(config, model)
    steps = train.epochs * -(-len(dataset.train) // train.batch_size)
    scheduler = build_schedule(config, optimizer, steps)
    return Prepared(config, dataset, model, optimizer, scheduler, device)


def new_run_dir(config: Config) -> Path:
    name = config.output.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(config.output.dir) / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(config.output.dir) / f"{name}-{suffix}"
    return path


def run(config: Config, run_dir: Path | None = None, resume: bool = False) -> JobResult:
    """Train as `config` says, in `run_dir` (a new folder under output.dir by default)."""
    prepared = prepare(config)
    main = distributed.is_main()
    run_dir = Path(distributed.broadcast(str(run_dir or new_run_dir(config))))
    if (
        resume
    ):  # before config.toml is rewritten: a config that does not fit must not replace the one that did
        check_resumable(prepared.model, run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(tomli_w.dumps(config.to_dict()))
    train = config.train
    callbacks = [MetricsLogger(run_dir / "metrics.jsonl")] if main else []
    monitor = Monitor()
    callbacks += [*early_stopping(train), monitor]
    started = time.perf_counter()
    try:
        history = fit(
            prepared.model, prepared.dataset, optimizer=prepared.optimizer, scheduler=prepared.scheduler,
            callbacks=callbacks, device=prepared.device, checkpoint_dir=run_dir / "checkpoints",
            resume=resume, progress=config.output.progress, **fit_options(train),
        )  # fmt: skip
    except NonFiniteError as error:  # a diverging run is where the doctor matters most
        error.doctor = diagnose_divergence(prepared, monitor, run_dir, error, write=main)
        raise
    seconds = time.perf_counter() - started
    test = prepared.dataset.test
    test_metrics = evaluate(
        prepared.model, test.x.to(prepared.device), test.y.to(prepared.device), train.loss
    )
    result = JobResult(
        run_dir, test_metrics, history.epochs, history.stop_reason, seconds, prepared.model, prepared.dataset,
        path=history.path,
    )  # fmt: skip
    # every process probes: synced BatchNorm layers gather their statistics from all of them
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


@dataclass
class TrainedRun:
    """A finished ``gradwell train`` run, loaded back: its config, its data and its trained model."""

    run_dir: Path
    config: Config
    dataset: datasets.Dataset = field(repr=False)
    model: nn.Module = field(repr=False)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """The model's state dict as a safetensors file, written atomically (no half-written weights)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    checkpoint.write_atomically(path, save(tensors, metadata=metadata))


def load_run(path: str | Path, weights: str = MODEL_FILE) -> TrainedRun:
    """Rebuild a run folder's model from its config.toml and load its `weights` file, on the CPU.

    `weights` is a file name in the run folder, or any path.

    A weights file written by `gradwell fold` (with ``folded`` in its metadata) loads into the model
    with its BatchNorm layers folded, the architecture it was saved from.
    """
    run_dir = Path(path)
    weights_path = run_dir / weights
    if not (run_dir / "config.toml").is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} is not a run folder of gradwell train: it needs config.toml and {weights}"
        )
    config = configs.load(run_dir / "config.toml")
    dataset = load_data(config)
    model = build_model(config, dataset)
    tensors = checkpoint.read_weights(weights_path)
    if written_folded(weights_path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FoldWarning)  # reported when the weights were folded
            model = fold_batchnorm(model)
    checkpoint.load_weights(model, tensors, source=str(weights_path))
    return TrainedRun(run_dir, config, dataset, model)


def written_folded(path: Path) -> bool:
    """Whether `gradwell fold` wrote these weights (``folded`` in the safetensors metadata)."""
    if path.suffix != ".safetensors":
        return False
    with safe_open(path, "pt") as file:  # the header alone, not the tensors again
        return "folded" in (file.metadata() or {})
