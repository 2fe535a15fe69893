"""Checkpoints: one safetensors file per save, written atomically, verified by checksum on load.

Everything a bitwise-exact resume needs (weights, optimizer and scheduler state, RNG states,
callback state, history) goes into one file. Tensors are stored as safetensors tensors; the rest
of the state tree (ints, floats, strings, lists, dicts with int keys) as JSON in the file's
metadata. Nothing is unpickled on load, so a checkpoint file cannot run code.

A checkpoint is written to a temporary file in the same folder, flushed, fsynced and renamed over
its final name, so a crash leaves either the old file or the new one, never half of one. A sha256
of the tensor bytes, stored in the metadata, catches a file damaged afterwards; `latest` then
falls back to the previous good checkpoint and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from gradwell.errors import CheckpointError
from gradwell.files import write_atomically

log = logging.getLogger(__name__)

FORMAT = "gradwell-checkpoint-1"
NAME = re.compile(r"^step-(\d+)\.safetensors$")


def flatten_state(tree: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split a state tree into a JSON skeleton and the tensors it refers to by name."""
    tensors: dict[str, Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": path}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if not isinstance(key, (str, int)):
                    raise CheckpointError(f"cannot store a dict key of type {type(key).__name__} at {path}")
                items.append([key, encode(item, f"{path}.{key}")])
            return {"__dict__": items}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(item, f"{path}.{i}") for i, item in enumerate(value)]}
        if isinstance(value, list):
            return [encode(item, f"{path}.{i}") for i, item in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise CheckpointError(f"cannot store a value of type {type(value).__name__} at {path}")

    return encode(tree, "state"), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Rebuild the tree written by `flatten_state`."""
    if isinstance(skeleton, list):
        return [unflatten_state(item, tensors) for item in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(item, tensors) for item in skeleton["__tuple__"])
        return {key: unflatten_state(item, tensors) for key, item in skeleton["__dict__"]}
    return skeleton


def checkpoint_digest(tensors: dict[str, Tensor], state: str) -> str:
    """sha256 over the state's JSON (step, epoch, history, hyperparameters) and then the names,
    dtypes, shapes and bytes of the tensors, in name order: a change to either is detected."""
    digest = hashlib.sha256(state.encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write a state tree to `path` atomically, with its checksum."""
    skeleton, tensors = flatten_state(state)
    state_json = json.dumps(skeleton)
    metadata = {"format": FORMAT, "state": state_json, "sha256": checkpoint_digest(tensors, state_json)}
    write_atomically(Path(path), save_safetensors(tensors, metadata=metadata))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save`; CheckpointError if it is missing, damaged or foreign."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    try:
        tensors = load_safetensors(payload)
        metadata = read_metadata(payload)
    except (SafetensorError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or not a safetensors file: {error}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gradwell checkpoint (format {metadata.get('format')!r})")
    if checkpoint_digest(tensors, metadata.get("state", "")) != metadata.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted: its checksum does not match its contents")
    return unflatten_state(json.loads(metadata["state"]), tensors)


def read_metadata(payload: bytes) -> dict[str, str]:
    """The string metadata of a safetensors payload (its JSON header's __metadata__)."""
    header_size = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + header_size])
    return header.get("__metadata__", {})


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Where the checkpoint taken after `step` optimizer steps lives."""
    return Path(directory) / f"step-{step:09d}.safetensors"


def saved_steps(directory: str | Path) -> list[int]:
    """Step numbers of the checkpoints in `directory`, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (NAME.match(entry.name) for entry in directory.iterdir())
    return sorted((int(match.group(1)) for match in found if match), reverse=True)


def latest(directory: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint in `directory` that loads cleanly, or None when there is none.

    A damaged newer checkpoint is skipped with a warning naming it, and the previous one is used.
    The damaged file is renamed ``*.corrupt``, kept for inspection but out of the way: otherwise
    `prune` would keep it, as one of the newest, and delete the good checkpoints written after it.
    """
    for step in saved_steps(directory):
        path = checkpoint_path(directory, step)
        try:
            return load(path)
        except CheckpointError as error:
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(FileNotFoundError):  # another process of a parallel run moved it
                path.replace(aside)
            log.warning("%s; moved it to %s and fell back to the previous checkpoint", error, aside.name)
    return None


def save_weights(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """A state dict as a safetensors file with the sha256 of its tensors, written atomically."""
    metadata = {**(metadata or {}), "sha256": checkpoint_digest(tensors, "")}
    write_atomically(path, save_safetensors(tensors, metadata=metadata))


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (older ones are never needed for a resume), and
    the temporary files of writes that a killed process left behind."""
    for step in saved_steps(directory)[keep:]:
        checkpoint_path(directory, step).unlink(missing_ok=True)
    remove_orphans(directory)


def remove_orphans(directory: str | Path) -> None:
    """Delete the temporary files of `write_atomically` (``.NAME.*.tmp``) that no write will finish.

    Only the run's one writing process calls this, between its own writes (a run folder is
    locked to one run), so no temporary file it finds is still being written.
    """
    directory = Path(directory)
    if directory.is_dir():
        for orphan in directory.glob(".*.tmp"):
            orphan.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted write", orphan.name)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a .safetensors file, or from a foreign torch file (.pt, .pth, .bin).

    A safetensors file gradwell wrote (`save_weights`) carries the sha256 of its tensors, checked
    here; one written by another tool has none and loads as it is.

    Torch files are pickles, and unpickling can run code: they load with ``weights_only=True``,
    which admits tensors and plain containers only, and anything else is refused with a
    CheckpointError. Nothing in the file runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        payload = path.read_bytes()
        try:
            tensors, metadata = load_safetensors(payload), read_metadata(payload)
        except (SafetensorError, ValueError) as error:
            raise CheckpointError(f"{path} is damaged or not a safetensors file: {error}") from None
        if "sha256" in metadata and checkpoint_digest(tensors, "") != metadata["sha256"]:
            raise CheckpointError(f"weights file {path} is corrupted: its checksum does not match its data")
        return tensors
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors ({first_line}); "
            "gradwell loads weights only, never code"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable torch file: {error}") from None
    if isinstance(weights, dict) and "state_dict" in weights:
        weights = weights["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return weights


def load_weights(model: nn.Module, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load `weights` into `model` strictly, naming every missing, unexpected or misshapen tensor."""
    check_weights(model, weights, source)
    model.load_state_dict(weights)


def check_weights(model: nn.Module, weights: dict[str, Tensor], source: str = "checkpoint") -> None:
    """CheckpointError naming every missing, unexpected or misshapen tensor, if `weights` do not fit."""
    expected = model.state_dict()
    problems = [f"missing {name}" for name in expected if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in expected]
    problems += [
        f"{name}: {tuple(weights[name].shape)} in the {source}, {tuple(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"the {source} does not match this model's architecture: {shown}")
