"""The doctor on a dataset and a config: what `gradwell train` runs after training,
`gradwell diagnose CONFIG.toml` runs on a fresh model and `gradwell diagnose RUN_DIR` on a trained one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gradwell import build
from gradwell.diagnose.monitor import Monitor
from gradwell.diagnose.probe import explain_nonfinite, probe
from gradwell.diagnose.report import Report
from gradwell.errors import ConfigError, NonFiniteError
from gradwell.run_folder import load_run
from gradwell.train.losses import as_split

if TYPE_CHECKING:
    from gradwell.config import Config
    from gradwell.data import Dataset

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
    """Probe `model` on `size` samples of a data split (``x``, ``y``), drawn at random by `seed`.

    >>> from gradwell.data import load
    >>> from gradwell.models import mlp
    >>> digits = load("digits")
    >>> model = mlp(64, 10, hidden=[32], generator=torch.Generator().manual_seed(0))
    >>> report = probe_split(model, digits.train)
    >>> report.layers[0].name, report.verdicts[0].name
    ('hidden1', 'healthy')
    """
    device = next(model.parameters()).device
    pick = torch.randperm(len(split.y), generator=torch.Generator().manual_seed(seed))[:size]
    x, y = as_split(split)[pick]  # stored pixels: only the picked samples are decoded
    return probe(model, x.to(device), y.to(device), loss, monitor=monitor, seed=seed)


def diagnose_config(config: Config, epochs: int = 0, dataset: Dataset | None = None) -> Report:
    """Build the model and data a config describes and probe the model at initialization, or after
    `epochs` epochs of the config's training with a Monitor (a diverging run stops and is
    diagnosed as it stands).

    The training is the config's in every [train] value but its length: the schedule spans the
    `epochs` trained, as it would span train.epochs in ``gradwell train``. `dataset`: the config's
    data, loaded already (build.load_data); None loads it.

    >>> from gradwell import config as configs
    >>> config = configs.load(None, ["data.name=digits", "model.depth=2", "model.width=16"])
    >>> diagnose_config(config).history is None  # at initialization: no training, no history
    True
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ConfigError(f"epochs must be an int >= 0; got {epochs!r}")
    prepared = build.prepare(config, dataset, **({"epochs": epochs} if epochs else {}))
    train = prepared.config.train
    monitor = None
    if epochs:
        monitor = Monitor(every=max(1, prepared.steps // SAMPLES_PER_RUN))
        try:
            prepared.fit([monitor], explain_nonfinite=explain_nonfinite)
        except NonFiniteError as error:
            log.warning("%s", error)
    return probe_split(prepared.model, prepared.dataset.train, train.loss, monitor=monitor, seed=train.seed)


def diagnose_run(run_dir: str | Path) -> Report:
    """Probe the trained model of a ``gradwell train`` run folder on its training data, as the run
    left it (the report the run wrote also had the Monitor's history of the training itself).

    >>> from gradwell import config as configs, job
    >>> small = ["data.name=digits", "model.depth=2", "model.width=16", "train.epochs=1"]
    >>> result = job.run(configs.load(None, [*small, "output.progress=false", "output.name=doc"]))
    >>> diagnose_run(result.run_dir).layers[-1].name
    'output'
    """
    run = load_run(run_dir)
    train = run.config.train
    return probe_split(run.model, run.dataset.train, train.loss, seed=train.seed)
