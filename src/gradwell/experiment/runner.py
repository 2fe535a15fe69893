"""Run every config with every seed, in parallel processes, and record every run.

``run(configs, seeds)`` trains each config once per seed (``train.seed`` set to the seed) and
keeps, for each run: the per-epoch history, the final and best epochs' metrics, the test metrics,
its wall time and, when it fails, the error (type and message). A failed run stays in the
results as failed; the statistics leave it out, or score it as the caller says.

Two paths train a config:

- "batched": all seeds of the config at once as one seed-batched network
  (``gradwell.experiment.batched``), chosen automatically for MLPs the batched path supports whose
  layers are small enough for batching to pay; it gives each seed the run it would get alone, at
  a fraction of the cost. Each run's wall time is its share of the batch's.
- "single": one ``gradwell.train.fit`` per seed (convolutional networks, early stopping, the
  plateau schedule, anything the batched path refuses; the reason is recorded).

A config may also be a function ``seed -> dict`` (path "custom") for experiments that are not one
training run, such as transfer learning: it returns "history", "test" and "extra" entries.

Runs go to a pool of worker processes started with "spawn" (torch and fork do not mix), each
using one thread so that workers do not compete for cores; ``workers=0`` or 1 runs everything in
this process. A worker loads each dataset once and keeps it for its later tasks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradwell import job
from gradwell.config import Config
from gradwell.config import load as load_config
from gradwell.data import Dataset
from gradwell.errors import GradwellError
from gradwell.experiment.batched import fit_seeds, stack_problem, too_large_to_pay
from gradwell.train import fit
from gradwell.train.callbacks import Callback
from gradwell.train.loop import check_data_fits_model
from gradwell.train.loop import evaluate as evaluate_model

log = logging.getLogger(__name__)

Arm = Config | str | Path | Callable[[int], dict[str, Any]]
Evaluate = Callable[[nn.Module, Dataset], dict[str, float]]
LOWER_IS_BETTER = ("loss", "nll", "ece", "error", "seconds")


@dataclass
class RunRecord:
    """One config trained with one seed."""

    label: str
    seed: int
    status: str  # "ok" or "failed"
    path: str  # "batched", "single" or "custom"
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stop_reason: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def best(self) -> dict[str, float]:
        """The best validation accuracy and loss over the epochs, and the epoch of the first."""
        best: dict[str, float] = {}
        with_accuracy = [e for e in self.history if "val_accuracy" in e]
        if with_accuracy:
            top = max(with_accuracy, key=lambda e: e["val_accuracy"])
            best.update(val_accuracy=top["val_accuracy"], epoch=top["epoch"])
        losses = [e["val_loss"] for e in self.history if "val_loss" in e]
        if losses:
            best["val_loss"] = min(losses)
        return best

    def metric(self, name: str) -> float | None:
        """A metric of this run; None when it failed or lacks it. See ``metric_value``."""
        return metric_value(self, name) if self.ok else None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "final": self.final, "best": self.best}


def metric_value(record: RunRecord, name: str) -> float | None:
    """``test_accuracy`` / ``test_loss``: on the test set after training; ``best_val_accuracy``,
    ``best_val_loss``: the best epoch's; ``val_accuracy``, ``loss``, ...: the last epoch's;
    ``loss@3``: epoch 3's; any other name: an extra metric of the run."""
    if name.startswith("test_") and name[5:] in record.test:
        return record.test[name[5:]]
    if name.startswith("best_") and name[5:] in record.best:
        return record.best[name[5:]]
    key, at, epoch = name.partition("@")
    if at:
        rows = [e for e in record.history if e["epoch"] == int(epoch)]
        return rows[0].get(key) if rows else None
    if name in record.final:
        return record.final[name]
    return record.extra.get(name)


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are maximized; losses, errors and calibration errors minimized."""
    return not any(word in metric for word in LOWER_IS_BETTER)


@dataclass
class Results:
    """Every run of an experiment, in label order then seed order."""

    labels: list[str]
    seeds: list[int]
    records: list[RunRecord]
    paths: dict[str, str]  # label -> the path that trained it, with the reason when not batched
    seconds: float = 0.0

    def runs(self, label: str) -> list[RunRecord]:
        return sorted((r for r in self.records if r.label == label), key=lambda r: r.seed)

    def values(self, label: str, metric: str, failed_value: float | None = None) -> list[float | None]:
        """The metric per seed (in ``seeds`` order); a failed run gives `failed_value` (None: left out)."""
        by_seed = {r.seed: r for r in self.records if r.label == label}
        values = []
        for seed in self.seeds:
            record = by_seed.get(seed)
            value = record.metric(metric) if record is not None else None
            values.append(failed_value if record is not None and not record.ok else value)
        return values

    def failed(self, label: str) -> list[RunRecord]:
        return [r for r in self.runs(label) if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "seeds": self.seeds,
            "paths": self.paths,
            "seconds": self.seconds,
            "runs": [r.to_dict() for r in self.records],
        }

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Results:
        raw = json.loads(Path(path).read_text())
        fields = {f.name for f in dataclasses.fields(RunRecord)}
        records = [RunRecord(**{k: v for k, v in r.items() if k in fields}) for r in raw["runs"]]
        return cls(raw["labels"], raw["seeds"], records, raw["paths"], raw["seconds"])


@dataclass(frozen=True)
class Task:
    """Seeds of one arm, trained in one worker."""

    label: str
    arm: Config | Callable[[int], dict[str, Any]]
    seeds: tuple[int, ...]
    batched: bool
    evaluate: Evaluate | None = None


def labelled(configs: Sequence[Arm] | Mapping[str, Arm]) -> dict[str, Config | Callable]:
    """Label each arm: a mapping's key, a file's stem, a function's name, else config1, config2, ..."""
    items = list(configs.items()) if isinstance(configs, Mapping) else [(None, c) for c in configs]
    arms: dict[str, Config | Callable] = {}
    for i, (name, arm) in enumerate(items, 1):
        if isinstance(arm, (str, Path)):
            name = name or Path(arm).stem
            arm = load_config(arm)
        elif not isinstance(arm, Config) and callable(arm):
            name = name or getattr(arm, "__name__", None) or getattr(arm, "func", arm).__name__
        elif not isinstance(arm, Config):
            raise GradwellError(
                f"a config must be a Config, a TOML path or a function of the seed; got {arm!r}"
            )
        name = str(name or f"config{i}")
        unique, n = name, 1
        while unique in arms:
            n += 1
            unique = f"{name}-{n}"
        arms[unique] = arm
    return arms


def config_problem(config: Config) -> str | None:
    """Why a config must be trained one seed at a time, or None when the batched path may take it."""
    kind = config.model.get("kind", "mlp")
    if kind != "mlp":
        return f"model kind {kind!r} (only MLPs are seed-batched)"
    if config.schedule.get("name") == "performance":
        return "the 'performance' schedule follows each seed's validation loss"
    if config.train.early_stopping is not None:
        return "early stopping ends each seed at its own epoch"
    if config.train.on_nonfinite != "stop":
        return "on_nonfinite='skip' skips each seed's bad steps on its own"
    if config.train.precision != "fp32":
        return f"precision {config.train.precision!r} (the seed-batched network trains in fp32)"
    return None


def seed_chunks(seeds: tuple[int, ...], arms: int, workers: int) -> list[tuple[int, ...]]:
    """Split one arm's seeds so that `arms` x chunks tasks keep `workers` busy to the end.

    The fewest chunks that minimize ceil(arms * chunks / workers) / chunks, the time the slowest
    worker takes in units of one whole arm: fewer chunks keep batches (and their speedup) large.
    """
    if workers <= 1:
        return [seeds]
    best = min(range(1, len(seeds) + 1), key=lambda c: (math.ceil(arms * c / workers) / c, c))
    size = math.ceil(len(seeds) / best)
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def make_tasks(
    arms: dict[str, Config | Callable], seeds: tuple[int, ...], workers: int, evaluate: Evaluate | None
) -> tuple[list[Task], dict[str, str]]:
    tasks, paths = [], {}
    for label, arm in arms.items():
        if not isinstance(arm, Config):
            paths[label] = "custom"
            tasks += [Task(label, arm, (s,), False) for s in seeds]
            continue
        problem = config_problem(arm) or ("a single seed" if len(seeds) < 2 else None)
        if problem is None:
            paths[label] = "batched"
            tasks += [
                Task(label, arm, chunk, True, evaluate) for chunk in seed_chunks(seeds, len(arms), workers)
            ]
        else:
            paths[label] = f"single ({problem})"
            tasks += [Task(label, arm, (s,), False, evaluate) for s in seeds]
    return tasks, paths


def default_workers(arms: dict[str, Config | Callable], runs: int) -> int:
    """One process per core, at most one per run; 1 (in-process) when a config trains on a GPU."""
    on_gpu = torch.cuda.is_available() and any(
        isinstance(arm, Config) and arm.train.device != "cpu" for arm in arms.values()
    )
    return 1 if on_gpu else max(1, min(os.cpu_count() or 1, runs))


def run(
    configs: Sequence[Arm] | Mapping[str, Arm],
    seeds: Iterable[int] = range(10),
    workers: int | None = None,
    *,
    evaluate: Evaluate | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> Results:
    """Train every config with every seed; return every run, failed ones included.

    Args:
        configs: Configs, TOML paths or functions of the seed, or a mapping label -> one of these.
        seeds: the seeds, shared by all configs so that they can be compared seed by seed.
        workers: processes; None: one per core (at most one per run), or the `executor`'s
            ``workers`` when it has them (a Ray cluster's CPUs); 0 or 1: in this process.
        evaluate: ``(model, dataset) -> {name: value}`` after training, recorded as extra
            metrics (a module-level function, so that worker processes can receive it).
        executor: a pool to reuse across experiments (see ``pool``); `workers` then only shapes
            how the seeds are split.
    """
    arms = labelled(configs)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise GradwellError("run needs at least one seed")
    runs = len(arms) * len(seeds)
    if workers is None:  # an executor that knows its size (a Ray cluster's CPUs) shapes the split
        workers = min(executor.workers, runs) if hasattr(executor, "workers") else default_workers(arms, runs)
    workers = int(workers)
    tasks, paths = make_tasks(arms, seeds, max(workers, 1), evaluate)
    started = time.perf_counter()
    if executor is None and workers > 1:
        with pool(workers) as own:
            records = gather(own, tasks)
    elif executor is not None:
        records = gather(executor, tasks)
    else:
        records = [record for task in tasks for record in execute(task)]
    records.sort(key=lambda r: (list(arms).index(r.label), r.seed))
    paths = {label: resolved_path(paths[label], records, label) for label in arms}
    return Results(list(arms), list(seeds), records, paths, time.perf_counter() - started)


def resolved_path(planned: str, records: list[RunRecord], label: str) -> str:
    """The path the runs took: a worker falls back from batched to single when it finds a reason."""
    taken = sorted({r.path for r in records if r.label == label})
    return planned if taken in ([], [planned]) or planned.startswith("single") else " / ".join(taken)


def pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes for ``run``: "spawn"ed, one torch thread each."""
    context = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker)


def init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: threads of parallel workers would compete


def gather(executor: concurrent.futures.Executor, tasks: list[Task]) -> list[RunRecord]:
    """Every task's runs from `executor`.

    A worker process that dies (a crash, the out-of-memory killer) breaks a process pool and
    every task still in it, and which task killed it is unknown; so each of those tasks runs
    again in a pool of its own, where only the culprit fails. The others are not lost.
    """
    records, orphans = [], []
    futures = {}
    for task in tasks:
        try:
            futures[executor.submit(execute, task)] = task
        except BrokenProcessPool:  # broken by an earlier experiment sharing it
            orphans.append(task)
    for future in concurrent.futures.as_completed(futures):
        task = futures[future]
        try:
            records += future.result()
        except BrokenProcessPool:
            orphans.append(task)
        except Exception as error:
            records += failed_task(task, error)
    for task in orphans:
        records += run_alone(task)
    return records


def run_alone(task: Task) -> list[RunRecord]:
    """A task in a worker process of its own: if that dies too, this task killed it."""
    with pool(1) as alone:
        try:
            return alone.submit(execute, task).result()
        except Exception as error:
            return failed_task(task, error)


def failed_task(task: Task, error: BaseException) -> list[RunRecord]:
    """A failed record for each seed of a task whose worker raised or died."""
    path = "custom" if not isinstance(task.arm, Config) else "batched" if task.batched else "single"
    return [failed(task.label, s, path, error) for s in task.seeds]


def failed(
    label: str,
    seed: int,
    path: str,
    error: BaseException,
    history: Sequence[dict[str, float]] = (),
    seconds: float = 0.0,
) -> RunRecord:
    message = f"{type(error).__name__}: {error}"
    return RunRecord(label, seed, "failed", path, list(history), seconds=seconds, error=message)


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
    return job.load_data(Config(data=json.loads(data_key)))


def dataset_of(config: Config) -> Dataset:
    return cached_dataset(json.dumps(config.data, sort_keys=True))


def with_seed(config: Config, seed: int) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))


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
    device = next(model.parameters()).device
    test = dataset.test
    metrics = (
        evaluate_model(model, test.x.to(device), test.y.to(device), config.train.loss) if len(test.y) else {}
    )
    extra = evaluate(model, dataset) if evaluate is not None else {}
    return RunRecord(label, seed, "ok", path, history, metrics, extra)


def train_single(
    label: str, config: Config, seed: int, evaluate: Evaluate | None, path: str = "single"
) -> RunRecord:
    started = time.perf_counter()
    epochs = EpochLog()
    try:
        config = with_seed(config, seed)
        dataset = dataset_of(config)
        device = job.resolve_device(config.train.device)
        model = job.build_model(config, dataset).to(device)
        optimizer = job.build_optimizer(config, model)
        train = config.train
        steps = train.epochs * -(-len(dataset.train) // train.batch_size)
        history = fit(
            model, dataset, optimizer=optimizer, scheduler=job.build_schedule(config, optimizer, steps),
            callbacks=[epochs, *job.early_stopping(train)], device=device, progress=False,
            **job.fit_options(train),
        )  # fmt: skip
        record = finish(label, seed, path, model, dataset, config, history.epochs, evaluate)
        record.stop_reason = history.stop_reason
    except Exception as error:
        return failed(label, seed, path, error, epochs.epochs, time.perf_counter() - started)
    record.seconds = time.perf_counter() - started
    return record


def train_batched(task: Task) -> list[RunRecord] | str:
    """All seeds of a task as one seed-batched network, or why the models cannot be stacked."""
    started = time.perf_counter()
    config, seeds = task.arm, task.seeds
    try:
        dataset = dataset_of(config)
        device = job.resolve_device(config.train.device)
        models = [job.build_model(with_seed(config, s), dataset).to(device) for s in seeds]
        check_data_fits_model(
            models[0], dataset.train.x.to(device), dataset.train.y.to(device), config.train.loss
        )
    except Exception as error:
        return [failed(task.label, s, "batched", error) for s in seeds]
    problem = stack_problem(models) or too_large_to_pay(models)
    if problem is not None:
        log.info("%s: %s; training one seed at a time", task.label, problem)
        return problem
    train = config.train
    steps = train.epochs * -(-len(dataset.train) // train.batch_size)
    try:
        runs = fit_seeds(
            models,
            dataset,
            seeds=seeds,
            optimizer=functools.partial(job.build_optimizer, config),
            schedule=lambda optimizer: job.build_schedule(config, optimizer, steps),
            epochs=train.epochs,
            batch_size=train.batch_size,
            loss=train.loss,
            l1=train.l1,
            l2=train.l2,
            max_norm=train.max_norm,
            device=device,
        )
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
            record = finish(task.label, seed, "batched", model, dataset, config, history, task.evaluate)
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
