"""How one task of an experiment is trained: a config's seeds one at a time, seed-batched, or
a custom function of the seed. Every path goes through the recipe (gradwell.build), and every run
comes back as a record, failed or not.

- "batched": all seeds of the config at once as one seed-batched network
  (``gradwell.experiment.batched``), chosen by the runner for MLPs the batched path supports whose
  layers are small enough for batching to pay; each seed gets the run it would get alone. Each
  run's wall time is its share of the batch's.
- "single": one ``fit`` per seed (convolutional networks, early stopping, the plateau schedule,
  anything the batched path refuses; the reason is recorded).
- "custom": a function ``seed -> dict`` for experiments that are not one training run, such as
  transfer learning; it returns "history", "test" and "extra" entries.

A worker process loads each dataset once and keeps it for its later tasks.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from gradwell import build
from gradwell.config import Config
from gradwell.data import Dataset
from gradwell.experiment.batched import fit_seeds, stack_problem, too_large_to_pay
from gradwell.experiment.records import RunRecord, failed
from gradwell.train.callbacks import Callback
from gradwell.train.losses import evaluate_split

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module, Dataset], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """Seeds of one arm, trained in one worker."""

    label: str
    arm: Config | Callable[[int], dict[str, Any]]
    seeds: tuple[int, ...]
    batched: bool
    evaluate: Evaluate | None = None


def failed_task(task: Task, error: BaseException) -> list[RunRecord]:
    """A failed record for each seed of a task whose worker raised or died."""
    path = "custom" if not isinstance(task.arm, Config) else "batched" if task.batched else "single"
    return [failed(task.label, s, path, error) for s in task.seeds]


def execute(task: Task) -> list[RunRecord]:
    """Train one task's seeds; every run comes back, failed or not."""
    if not isinstance(task.arm, Config):
        return [run_custom(task.label, task.arm, task.seeds[0])]
    path = "single"
    if task.batched:
        records = train_batched(task)
        if isinstance(records, list):
            return records
        path = f"single ({records})"
    return [train_single(task.label, task.arm, seed, task.evaluate, path) for seed in task.seeds]


@functools.lru_cache(maxsize=4)
def cached_dataset(data_key: str) -> Dataset:
    """A config's dataset, loaded once per process (MNIST-1D is generated, which takes seconds)."""
    return build.load_data(Config(data=json.loads(data_key)))


def dataset_of(config: Config) -> Dataset:
    return cached_dataset(json.dumps(config.data, sort_keys=True))


class EpochLog(Callback):
    """Keeps the history of a run that may raise before fit returns it."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_epoch_end(self, run: Any, logs: dict[str, float]) -> None:
        self.epochs.append(dict(logs))


def finish(
    label: str,
    seed: int,
    path: str,
    model: nn.Module,
    dataset: Dataset,
    config: Config,
    history: list[dict[str, float]],
    evaluate: Evaluate | None,
) -> RunRecord:
    """A trained run's record: test metrics and the extra evaluation."""
    metrics = evaluate_split(model, dataset.test, config.train.loss)
    extra = evaluate(model, dataset) if evaluate is not None else {}
    return RunRecord(label, seed, "ok", path, history, metrics, extra)


def train_single(
    label: str, config: Config, seed: int, evaluate: Evaluate | None, path: str = "single"
) -> RunRecord:
    started = time.perf_counter()
    epochs = EpochLog()
    try:
        prepared = build.prepare(build.with_train(config, seed=seed), dataset_of(config))
        history = prepared.fit([epochs], progress=False)
        record = finish(label, seed, path, prepared.model, prepared.dataset, config, history.epochs, evaluate)
        record.stop_reason = history.stop_reason
    except Exception as error:
        return failed(label, seed, path, error, epochs.epochs, time.perf_counter() - started)
    record.seconds = time.perf_counter() - started
    return record


def train_batched(task: Task) -> list[RunRecord] | str:
    """All seeds of a task as one seed-batched network, or why the models cannot be stacked."""
    started = time.perf_counter()
    seeds = task.seeds
    try:
        recipe = build.recipe(task.arm, dataset_of(task.arm))
        models = [recipe.model(seed) for seed in seeds]
        recipe.check(models[0])
    except Exception as error:
        return [failed(task.label, s, "batched", error) for s in seeds]
    problem = stack_problem(models, recipe.optimizer(models[0])) or too_large_to_pay(models)
    if problem is not None:
        log.info("%s: %s; training one seed at a time", task.label, problem)
        return problem
    try:
        runs = fit_seeds(
            models, recipe.dataset, seeds=seeds, optimizer=recipe.optimizer, schedule=recipe.schedule,
            device=recipe.device, options=recipe.options,
        )  # fmt: skip
    except Exception as error:
        return [failed(task.label, s, "batched", error, seconds=time.perf_counter() - started) for s in seeds]
    share = (time.perf_counter() - started) / len(seeds)
    records = []
    for seed, model, seed_run in zip(seeds, models, runs, strict=True):
        history = seed_run.history.epochs
        if seed_run.error is not None:
            records.append(failed(task.label, seed, "batched", seed_run.error, history, share))
            continue
        try:
            record = finish(
                task.label, seed, "batched", model, recipe.dataset, task.arm, history, task.evaluate
            )
        except Exception as error:
            record = failed(task.label, seed, "batched", error, history)
        record.seconds, record.stop_reason = share, seed_run.history.stop_reason
        records.append(record)
    return records


def run_custom(label: str, function: Callable[[int], dict[str, Any]], seed: int) -> RunRecord:
    """A function of the seed returning {"history": [...], "test": {...}, "extra": {...}}."""
    started = time.perf_counter()
    try:
        out = function(seed)
    except Exception as error:
        return failed(label, seed, "custom", error, seconds=time.perf_counter() - started)
    return RunRecord(
        label,
        seed,
        "ok",
        "custom",
        list(out.get("history", [])),
        dict(out.get("test", {})),
        dict(out.get("extra", {})),
        time.perf_counter() - started,
        "completed",
    )
