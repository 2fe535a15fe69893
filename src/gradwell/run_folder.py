"""A ``gradwell train`` run folder read back: its config, its data and its trained model.

The folder holds config.toml (the resolved config) and model.safetensors (the final weights); the
model is rebuilt from the config through the recipe (gradwell.build) and the weights loaded into
it, so `gradwell diagnose RUN_DIR`, `gradwell fold` and `gradwell transfer` see the run's model.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from safetensors import safe_open
from torch import nn

from gradwell import build
from gradwell import config as configs
from gradwell import data as datasets
from gradwell.config import Config
from gradwell.errors import CheckpointError, ConfigError, GradwellError
from gradwell.fold import FoldWarning, fold_batchnorm
from gradwell.train import checkpoint

MODEL_FILE = "model.safetensors"
LOCK_FILE = ".lock"  # held (flock) by the process training in the folder, holding its pid


def check_output(config: Config) -> None:
    """ConfigError, before anything is written, when the run folder could not be made where
    [output] says: a name that is a path, a dir that is a file or cannot be written to."""
    name, directory = config.output.name, Path(config.output.dir)
    if name and (Path(name).name != name or name in (".", "..")):
        raise ConfigError(f"output.name = {name!r} must be a folder name, not a path (see output.dir)")
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"output.dir = {str(directory)!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir = {str(directory)!r}: no permission to write in {existing}")
    if config.output.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError('output.tensorboard = true needs tensorboard: pip install "gradwell[tensorboard]"')


def create_run_dir(config: Config) -> Path:
    """A new run folder under output.dir, named output.name (a timestamp when empty), -2, -3, ...
    added when taken; made in one step, so two runs started at once never share one."""
    name = config.output.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    Path(config.output.dir).mkdir(parents=True, exist_ok=True)
    for suffix in itertools.count(1):
        path = Path(config.output.dir) / (name if suffix == 1 else f"{name}-{suffix}")
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            return path


def check_target(path: Path, what: str) -> Path:
    """`path` as a file that can be written: ConfigError naming `what` when its folder is missing
    or read-only, or `path` is a folder."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give the path of a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{what} {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: no permission to write in {path.parent}")
    return path


def check_run_folder(path: str | Path, needs: str = "config.toml") -> Path:
    """`path` as a run folder holding `needs`; CheckpointError naming what is missing."""
    run_dir = Path(path)
    wanted = "config.toml" + ("" if needs == "config.toml" else f" and {needs}")
    if not run_dir.is_dir() or not (run_dir / "config.toml").is_file() or not (run_dir / needs).is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run folder of gradwell train: it needs {wanted}")
    if (run_dir / "config.toml").stat().st_size == 0:
        raise CheckpointError(
            f"{run_dir / 'config.toml'} is empty: the write of the run's config was cut off"
        )
    return run_dir


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while it trains there: another gradwell process that tries
    is refused, with this one's pid. The lock (flock) goes with the process, however it ends."""
    descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise GradwellError(
            f"run folder {run_dir} is in use by another gradwell process (pid {holder}); "
            "wait for it to end, or stop it, before training there"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, str(os.getpid()).encode())
    try:
        yield
    finally:
        os.close(descriptor)  # releases the lock


@dataclass
class TrainedRun:
    """A finished ``gradwell train`` run, loaded back: its config, its data and its trained model."""

    run_dir: Path
    config: Config
    dataset: datasets.Dataset = field(repr=False)
    model: nn.Module = field(repr=False)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """The model's state dict as a safetensors file, written atomically (no half-written weights),
    with the sha256 of its tensors, which every load checks."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    checkpoint.save_weights(path, tensors, metadata)


def load_run(path: str | Path, weights: str = MODEL_FILE) -> TrainedRun:
    """Rebuild a run folder's model from its config.toml and load its `weights` file, on the CPU.

    `weights` is a file name in the run folder, or any path.

    A weights file written by `gradwell fold` (with ``folded`` in its metadata) loads into the model
    with its BatchNorm layers folded, the architecture it was saved from.
    """
    run_dir = check_run_folder(path, weights)
    weights_path = run_dir / weights
    config = configs.load(run_dir / "config.toml")
    dataset = build.load_data(config)
    model = build.build_model(config, dataset)
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
