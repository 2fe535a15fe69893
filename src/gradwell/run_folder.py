"""A ``gradwell train`` run folder read back: its config, its data and its trained model.

The folder holds config.toml (the resolved config) and model.safetensors (the final weights); the
model is rebuilt from the config through the recipe (gradwell.build) and the weights loaded into
it, so `gradwell diagnose RUN_DIR`, `gradwell fold` and `gradwell transfer` see the run's model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from gradwell import build
from gradwell import config as configs
from gradwell import data as datasets
from gradwell.config import Config
from gradwell.errors import CheckpointError
from gradwell.fold import FoldWarning, fold_batchnorm
from gradwell.train import checkpoint

MODEL_FILE = "model.safetensors"


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
