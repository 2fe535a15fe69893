"""The chapter's transfer-learning case study over many seeds (``gradwell transfer``).

Model A learns some classes of a dataset; task B is the held-out classes with few labels. Each
seed trains B from scratch and B on A (``reuse`` + ``fine_tune``) and evaluates both, and the
summary gives every accuracy and their paired difference with a 95% interval: the chapter's B on
A looked good on one lucky seed, and only the spread over seeds tells a real gain from luck.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradwell import build
from gradwell import config as configs
from gradwell.config import Config
from gradwell.data import Dataset, split_by_classes
from gradwell.errors import CheckpointError, ConfigError
from gradwell.experiment.stats import Summary, summarize
from gradwell.run_folder import load_run
from gradwell.train.losses import evaluate_split
from gradwell.transfer import count_option, fine_tune, reuse

log = logging.getLogger(__name__)


@dataclass
class TransferOptions:
    """The ``[transfer]`` section of a ``gradwell transfer`` config."""

    classes_a: list[int] = field(default_factory=lambda: list(range(8)))  # the chapter: 8 classes for A
    classes_b: list[int] | None = None  # None: the classes A leaves out (the chapter's 2)
    limit_train: int | None = 200  # B's labeled training examples: the chapter's 200
    model_a: str = ""  # a `gradwell train` run folder to load A from; "" trains A on classes_a
    drop_top: int = 1  # A's output layer
    frozen_epochs: int = 4  # the chapter's 4 epochs with the reused layers frozen ...
    epochs: int = 16  # ... then 16 epochs with them unfrozen
    scratch_epochs: int | None = None  # B from scratch; None: frozen_epochs + epochs, as many passes
    lr: float = 0.01  # 200 examples give 7 steps an epoch: the chapter's 1e-3 leaves the head untrained
    lr_after_unfreeze: float | None = None  # None: lr / 10
    unfreeze_top: int | None = None  # None: unfreeze every reused layer
    optimizer: str = "nadam"
    batch_size: int = 32  # both B models; the chapter's (Keras's) default
    seeds: int = 1  # runs, with seeds train.seed, train.seed + 1, ...


def load_study_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, TransferOptions]:
    """A ``gradwell train`` config plus a ``[transfer]`` section, with ``section.key=value`` overrides.

    The usual sections describe model A (and B from scratch): the data, the model builder, its
    optimizer, schedule and training; ``[transfer]`` holds TransferOptions.
    """
    raw = configs.read_toml(Path(path))
    section = raw.pop("transfer", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [transfer] must be a table of keys")
    for override in sorted(overrides, key=lambda o: not configs.names_a_section(o)):
        key, sep, text = override.partition("=")
        if key.strip().startswith("transfer.") and sep:
            section[key.strip().removeprefix("transfer.")] = configs.parse_value(text.strip())
        else:
            configs.apply_override(raw, override)
    return configs.from_dict(raw, source=str(path)), configs.fill(TransferOptions, section, "transfer")


def load_model_a(path: str | Path) -> nn.Module:
    """Model A from a ``gradwell train`` run folder (transfer.model_a)."""
    try:
        return load_run(path).model
    except CheckpointError as error:
        raise CheckpointError(f"transfer.model_a: {error}") from None


def train_task(config: Config, dataset: Dataset, epochs: int, batch_size: int) -> nn.Module:
    """A fresh model of `config` trained on `dataset` with its optimizer, schedule and options."""
    prepared = build.prepare(config, dataset, epochs=epochs, batch_size=batch_size)
    prepared.fit(progress=False)
    return prepared.model


def accuracy(model: nn.Module, split: Any) -> float:
    return evaluate_split(model, split)["accuracy"]


def study_run(
    config: Config,
    options: TransferOptions,
    dataset: Dataset,
    model_a: nn.Module | None,
    device: torch.device,
) -> dict[str, float]:
    """One seed of the case study (the seed is ``config.train.seed``): test accuracies and their gap."""
    seed = config.train.seed
    task_a, task_b = split_by_classes(
        dataset, options.classes_a, options.classes_b, limit_train=options.limit_train, seed=seed
    )
    result: dict[str, float] = {"seed": seed}
    if model_a is None:
        model_a = train_task(config, task_a, config.train.epochs, config.train.batch_size)
        result["a"] = accuracy(model_a, task_a.test)
    scratch_epochs = options.scratch_epochs or options.frozen_epochs + options.epochs
    scratch = train_task(config, task_b, scratch_epochs, options.batch_size)
    b_on_a = reuse(
        model_a, options.drop_top, task_b.num_classes, generator=torch.Generator().manual_seed(seed)
    )
    fine_tune(
        b_on_a, task_b, frozen_epochs=options.frozen_epochs, epochs=options.epochs, lr=options.lr,
        lr_after_unfreeze=options.lr_after_unfreeze, unfreeze_top=options.unfreeze_top,
        optimizer=options.optimizer, batch_size=options.batch_size, seed=seed, device=device,
    )  # fmt: skip
    result["b_scratch"] = accuracy(scratch, task_b.test)
    result["b_on_a"] = accuracy(b_on_a, task_b.test)
    result["difference"] = result["b_on_a"] - result["b_scratch"]
    return result


@dataclass
class StudyResult:
    """Every seed's accuracies, and per metric the mean, std and 95% confidence interval."""

    runs: list[dict[str, float]]
    summary: dict[str, Summary]
    task_a: str
    task_b: str

    def to_dict(self) -> dict[str, Any]:
        summary = {key: value.to_dict() for key, value in self.summary.items()}
        return {"task_a": self.task_a, "task_b": self.task_b, "runs": self.runs, "summary": summary}


def study(
    config: Config,
    options: TransferOptions,
    seeds: int | None = None,
    on_run: Callable[[dict[str, float]], None] | None = None,
) -> StudyResult:
    """The whole A -> B pipeline for seeds ``train.seed + i``, i < `seeds` (default ``options.seeds``).

    Each seed draws B's labeled examples, initializes and trains A (unless ``options.model_a``
    names a run folder to load, the same for every seed), trains B from scratch (A's architecture
    and optimizer, `scratch_epochs`) and B on A (``reuse`` + ``fine_tune``), and evaluates every
    model on its task's test split. The summary covers A's accuracy ("a"), "b_scratch",
    "b_on_a" and their paired "difference" (B on A minus B from scratch): the chapter's B on A
    looked good on one lucky seed, and only the spread over seeds tells a real gain from luck.
    `on_run` is called with each seed's result as it comes.
    """
    seeds = count_option("seeds", options.seeds if seeds is None else seeds, 1)
    recipe = build.recipe(config)
    device, dataset = recipe.device, recipe.dataset
    model_a = load_model_a(options.model_a) if options.model_a else None
    task_a, task_b = split_by_classes(dataset, options.classes_a, options.classes_b)
    reuse(
        model_a or build.build_model(config, task_a), options.drop_top, task_b.num_classes
    )  # fail before training
    runs = []
    for i in range(seeds):
        run_config = replace(config, train=replace(config.train, seed=config.train.seed + i))
        runs.append(study_run(run_config, options, dataset, model_a, device))
        log.info("seed %d: %s", run_config.train.seed, runs[-1])
        if on_run is not None:
            on_run(runs[-1])
    metrics = [key for key in runs[0] if key != "seed"]
    return StudyResult(
        runs, {key: summarize([run[key] for run in runs]) for key in metrics}, task_a.name, task_b.name
    )
