"""The doctor on a dataset and a config: what `gradwell train` runs after training,
`gradwell diagnose CONFIG.toml` runs on a fresh model and `gradwell diagnose RUN_DIR` on a trained one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gradwell.diagnose.monitor import Monitor
from gradwell.diagnose.probe import probe
from gradwell.diagnose.report import Report
from gradwell.errors import ConfigError, NonFiniteError

if TYPE_CHECKING:
    from gradwell.config import Config

log = logging.getLogger(__name__)

BATCH = 256  # enough samples for stable percentiles and a meaningful "dead on every sample"
SAMPLES_PER_RUN = 100  # a diagnostic run samples about this many steps, whatever its length


def probe_split(
    model: nn.Module,
    split: Any,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    *,
    monitor: Monitor | None = None,
    size: int = BATCH,
    seed: int = 0,
) -> Report:
    """Probe `model` on `size` samples of a data split (``x``, ``y``), drawn at random by `seed`."""
    device = next(model.parameters()).device
    pick = torch.randperm(len(split.y), generator=torch.Generator().manual_seed(seed))[:size]
    return probe(model, split.x[pick].to(device), split.y[pick].to(device), loss, monitor=monitor, seed=seed)


def diagnose_config(config: Config, epochs: int = 0) -> Report:
    """Build the model and data a config describes and probe the model at initialization, or after
    `epochs` epochs of the config's training with a Monitor (a diverging run stops and is
    diagnosed as it stands)."""
    from gradwell import job
    from gradwell.train.loop import fit

    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an int >= 0; got {epochs!r}")
    prepared = job.prepare(config)
    train = config.train
    monitor = None
    if epochs:
        steps = epochs * -(-len(prepared.dataset.train.y) // train.batch_size)
        monitor = Monitor(every=max(1, steps // SAMPLES_PER_RUN))
        try:
            fit(
                prepared.model,
                prepared.dataset,
                optimizer=prepared.optimizer,
                scheduler=prepared.scheduler,
                epochs=epochs,
                batch_size=train.batch_size,
                loss=train.loss,
                callbacks=[monitor],
                l1=train.l1,
                l2=train.l2,
                max_norm=train.max_norm,
                seed=train.seed,
                device=prepared.device,
                progress=config.output.progress,
            )
        except NonFiniteError as error:
            log.warning("%s", error)
    return probe_split(prepared.model, prepared.dataset.train, train.loss, monitor=monitor, seed=train.seed)


def diagnose_run(run_dir: str | Path) -> Report:
    """Probe the trained model of a ``gradwell train`` run folder on its training data, as the run
    left it (the report the run wrote also had the Monitor's history of the training itself)."""
    from gradwell import job

    run = job.load_run(run_dir)
    train = run.config.train
    return probe_split(run.model, run.dataset.train, train.loss, seed=train.seed)
