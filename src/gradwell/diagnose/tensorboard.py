"""`TensorBoardLog`: the doctor's statistics of sampled steps as TensorBoard curves and histograms.

Tags, grouped by TensorBoard on their first segment:

- ``doctor/<stat>/<layer>``: per layer, the statistics of DOCTOR_STATS (a layer name keeps its
  dots, ``doctor/act_std/blocks.0.act``); ``doctor/loss``, ``doctor/grad_norm``, ``doctor/lr``.
- ``activations/<layer>``, ``gradients/<layer>``: histograms of the sampled values.
- ``<prefix>/<name>`` (``scalars``): anything else, the epoch metrics say.

NaN is never written: in the doctor's vectors it marks a statistic that does not apply (saturation
of a ReLU) or was not measured, so a ReLU layer has no "saturated" curve. An infinity is written:
TensorBoard marks it on the curve, where a divergence should show.

The folder is checked when the log is made, so a bad one fails before training starts; once
training runs, a failed write (disk full, the folder removed) logs one warning and turns the log
off, and training goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwell.diagnose.stats import STATS
from gradwell.errors import GradwellError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)

# the statistics drawn per layer, each a symptom the doctor's rules read
DOCTOR_STATS = (
    "act_std",  # the forward signal shrinking or growing from layer to layer
    "dead",  # the fraction of dead ReLU units (ReLU layers only)
    "saturated",  # sigmoid and tanh outputs stuck in their flat tails (those layers only)
    "out_grad_scale",  # the backward signal per unit, comparable across widths: vanishing, exploding
    "weight_grad_norm",  # the gradient the optimizer receives, before clipping
    "update_ratio",  # ||W_after - W_before|| / ||W_before||: about 1e-3 for a layer that learns
)
SAMPLE_KINDS = ("activations", "gradients")
# a sampled step of a 100-layer network with histograms is about 800 events: a queue that holds
# them lets `write` return while tensorboard's writer thread puts them on disk (its default is 10)
MAX_QUEUE = 1024
# linear buckets over each sample's range, twice TensorBoard's own default (30, its summary_v2):
# torch's default, 1549 exponential buckets, makes a 10 KB event whose checksum tensorboard
# computes in pure Python, about 3 ms of the writer thread per histogram against 0.3 ms
HISTOGRAM_BINS = 64


def doctor_scalars(
    layers: Sequence[str],
    stats: np.ndarray,
    loss: float | None = None,
    lr: float | None = None,
    grad_norm: float | None = None,
) -> dict[str, float]:
    """Tag -> value of one sampled step: DOCTOR_STATS per layer, then loss, grad_norm and lr; NaN
    left out. `stats` is (layers, STATS).

    >>> stats = np.full((2, len(STATS)), np.nan)
    >>> stats[:, STATS.index("dead")] = [0.25, np.nan]  # the logits are not a ReLU layer
    >>> doctor_scalars(["blocks.0.act", "output"], stats, loss=0.5)
    {'doctor/dead/blocks.0.act': 0.25, 'doctor/loss': 0.5}
    """
    stats = np.asarray(stats, dtype=np.float64)
    if stats.shape != (len(layers), len(STATS)):
        raise GradwellError(
            f"stats of shape {stats.shape} for {len(layers)} layers; expected (layers, STATS) = "
            f"({len(layers)}, {len(STATS)})"
        )
    columns = [STATS.index(stat) for stat in DOCTOR_STATS]
    values = {
        f"doctor/{stat}/{layer}": float(row[column])
        for stat, column in zip(DOCTOR_STATS, columns, strict=True)
        for layer, row in zip(layers, stats, strict=True)
    }
    values |= {"doctor/loss": loss, "doctor/grad_norm": grad_norm, "doctor/lr": lr}
    return {tag: float(v) for tag, v in values.items() if v is not None and not math.isnan(float(v))}


def histogram_samples(samples: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Tag -> the finite values of each sample, ``<kind>/<layer>``; an empty one left out.

    >>> histogram_samples({"gradients": {"output": np.array([1.0, np.nan, -2.0]), "hidden": []}})
    {'gradients/output': array([ 1., -2.])}
    """
    unknown = set(samples) - set(SAMPLE_KINDS)
    if unknown:
        raise GradwellError(f"unknown sample kinds {sorted(unknown)}; valid: {', '.join(SAMPLE_KINDS)}")
    found = {}
    for kind, layers in samples.items():
        for layer, values in layers.items():
            flat = np.asarray(values, dtype=np.float64).reshape(-1)
            flat = flat[np.isfinite(flat)]
            if flat.size:
                found[f"{kind}/{layer}"] = flat
    return found


def check_log_dir(path: Path) -> None:
    """GradwellError naming `path` when it cannot be a folder this process writes in."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise GradwellError(f"TensorBoard log_dir {str(path)!r} {what}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GradwellError(f"TensorBoard log_dir {str(path)!r}: no permission to write in {existing}")


class TensorBoardLog:
    """The doctor's statistics of sampled steps, written for TensorBoard into `log_dir`.

    One event file per log, made with the log; tensorboard's writer thread writes the events, and
    `close` (or leaving the ``with`` block) flushes them. Tags: see the module's docstring.

    >>> import shutil, tempfile
    >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    >>> stats = np.full((2, len(STATS)), np.nan)  # (layers, STATS) of one sampled step
    >>> stats[:, STATS.index("act_std")] = [0.9, 0.5]
    >>> folder = tempfile.mkdtemp()
    >>> with TensorBoardLog(folder) as board:
    ...     board.write(200, ["hidden1", "output"], stats, loss=0.69,
    ...                 samples={"activations": {"hidden1": np.array([-1.0, 0.5, 2.0])}})
    ...     board.scalars(1, {"val_loss": 0.6}, prefix="epoch")
    >>> events = EventAccumulator(folder, size_guidance={"scalars": 0, "histograms": 0})
    >>> tags = events.Reload().Tags()
    >>> sorted(tags["scalars"])
    ['doctor/act_std/hidden1', 'doctor/act_std/output', 'doctor/loss', 'epoch/val_loss']
    >>> tags["histograms"]
    ['activations/hidden1']
    >>> [(e.step, round(e.value, 4)) for e in events.Scalars("doctor/act_std/output")]
    [(200, 0.5)]
    >>> shutil.rmtree(folder)
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise GradwellError(
                f'TensorBoardLog needs tensorboard ({error}): pip install "gradwell[tensorboard]"'
            ) from None
        self.log_dir = Path(log_dir)
        check_log_dir(self.log_dir)
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer: SummaryWriter | None = SummaryWriter(str(self.log_dir), max_queue=MAX_QUEUE)
        except OSError as error:
            raise GradwellError(
                f"TensorBoard log_dir {str(self.log_dir)!r} cannot be written: {error}"
            ) from None

    def write(
        self,
        step: int,
        layers: Sequence[str],
        stats: np.ndarray,
        *,
        loss: float | None = None,
        lr: float | None = None,
        grad_norm: float | None = None,
        samples: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        """One sampled step: `stats` is (layers, STATS); `samples` {"activations": {layer: values},
        "gradients": {...}} become histograms (non-finite values dropped, an empty one skipped)."""
        scalars = doctor_scalars(layers, stats, loss=loss, lr=lr, grad_norm=grad_norm)
        self.emit(step, scalars, histogram_samples(samples or {}))

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        """`values` as ``<prefix>/<name>`` (``<name>`` without a prefix), NaN left out: epoch metrics."""
        head = f"{prefix.rstrip('/')}/" if prefix else ""
        try:
            numbers = {f"{head}{name}": float(value) for name, value in values.items()}
        except (TypeError, ValueError) as error:
            raise GradwellError(
                f"TensorBoardLog.scalars takes numbers; got {dict(values)!r} ({error})"
            ) from None
        self.emit(step, {tag: v for tag, v in numbers.items() if not math.isnan(v)}, {})

    def emit(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray]) -> None:
        """The writes of one call; the first failure warns once and turns the log off."""
        if self.writer is None:
            return
        try:
            # a removed folder is seen here, before anything is queued for the writer thread
            if not os.path.isdir(self.log_dir):
                raise FileNotFoundError(f"the folder {self.log_dir} no longer exists")
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            for tag, values in histograms.items():
                self.writer.add_histogram(tag, values, step, bins=HISTOGRAM_BINS)
        except Exception as error:
            self.fail(error)

    def fail(self, error: Exception) -> None:
        log.warning(
            "TensorBoard log %s: writing failed (%s: %s); its later writes are skipped, training goes on",
            self.log_dir,
            type(error).__name__,
            error,
        )
        writer, self.writer = self.writer, None
        with contextlib.suppress(Exception):  # stops the writer thread; what it still held is lost
            writer.close()

    def close(self) -> None:
        """Flush the events to disk and close the file; later writes are ignored."""
        if self.writer is None:
            return
        try:
            self.writer.close()
            self.writer = None
        except Exception as error:  # a write the writer thread failed on, after the last call
            self.fail(error)

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
