"""Run every config with every seed, in parallel processes, and record every run.

``run(configs, seeds)`` trains each config once per seed (``train.seed`` set to the seed) and
keeps every run as a record (gradwell.experiment.records), failed ones included. The runner plans:
it labels the arms, chooses each config's path ("batched": all seeds as one seed-batched network
where that pays, "single": one run per seed, with the reason; "custom": a function of the seed)
and splits the seeds into tasks that keep the workers busy to the end. How a task trains is
gradwell.experiment.execution's; the worker processes are gradwell.experiment.workers' ("spawn"ed,
one thread each; ``workers=0`` or 1 runs everything in this process).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gradwell.build import FIND
from gradwell.config import Config
from gradwell.config import load as load_config
from gradwell.errors import GradwellError
from gradwell.experiment import workers as worker_pool
from gradwell.experiment.batched import options_problem
from gradwell.experiment.execution import Evaluate, Task, execute
from gradwell.experiment.records import Results, RunRecord

Arm = Config | str | Path | Callable[[int], dict[str, Any]]


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
    if config.schedule.get("max_lr") == FIND:
        return "schedule.max_lr = 'find' searches each seed's own rate, on its own model, as a lone run does"
    if config.train.early_stopping is not None:
        return "early stopping ends each seed at its own epoch"
    return options_problem(config.train)


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
    on_done: Callable[[list[RunRecord]], None] | None = None,
) -> Results:
    """Train every config with every seed; return every run, failed ones included.

    Args:
        configs: Configs, TOML paths or functions of the seed, or a mapping label -> one of these.
        seeds: the seeds, shared by all configs so that they can be compared seed by seed.
        workers: processes; None: one per core (at most one per run), or the `executor`'s
            ``workers`` when it has them (a Ray cluster's CPUs); 0 or 1: in this process.
        evaluate: ``(model, dataset) -> {name: value}`` after training, recorded as extra
            metrics (a module-level function, so that worker processes can receive it).
        executor: a pool to reuse across experiments (``gradwell.experiment.workers.pool``);
            `workers` then only shapes how the seeds are split.
        on_done: called with each task's runs as they finish (a progress bar counts them).

    >>> from gradwell import config
    >>> small = ["data.name=digits", "model.depth=1", "model.width=16", "train.epochs=1"]
    >>> results = run({"elu": config.load(None, [*small, "model.activation=elu"])}, seeds=[0, 1], workers=0)
    >>> [record.status for record in results.runs("elu")], results.paths["elu"]
    (['ok', 'ok'], 'batched')
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
        with worker_pool.pool(workers) as own:
            records = worker_pool.gather(own, tasks, on_done)
    elif executor is not None:
        records = worker_pool.gather(executor, tasks, on_done)
    else:
        records = []
        for task in tasks:
            done = execute(task)
            records += done
            if on_done is not None:
                on_done(done)
    records.sort(key=lambda r: (list(arms).index(r.label), r.seed))
    paths = {label: resolved_path(paths[label], records, label) for label in arms}
    data = {label: data_name(arm) for label, arm in arms.items() if isinstance(arm, Config)}
    return Results(list(arms), list(seeds), records, paths, time.perf_counter() - started, data)


def data_name(config: Config) -> str:
    """The name of the data set a config trains on (gradwell.build.load_data's default: mnist1d)."""
    return str(config.data.get("name", "mnist1d"))


def resolved_path(planned: str, records: list[RunRecord], label: str) -> str:
    """The path the runs took: a worker falls back from batched to single when it finds a reason."""
    taken = sorted({r.path for r in records if r.label == label})
    return planned if taken in ([], [planned]) or planned.startswith("single") else " / ".join(taken)
