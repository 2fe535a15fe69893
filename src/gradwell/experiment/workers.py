"""Worker processes for experiments: a "spawn"ed pool, one torch thread each, and a gathering of
results that survives a worker's death (only the task that killed it fails)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool

import torch

from gradwell.experiment.execution import Task, execute, failed_task
from gradwell.experiment.records import RunRecord


def pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes for ``run``: "spawn"ed, one torch thread each."""
    context = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker)


def init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: threads of parallel workers would compete


def gather(
    executor: concurrent.futures.Executor,
    tasks: list[Task],
    on_done: Callable[[list[RunRecord]], None] | None = None,
) -> list[RunRecord]:
    """Every task's runs from `executor`; `on_done` sees each task's runs as they come.

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
            done = future.result()
        except BrokenProcessPool:
            orphans.append(task)
            continue
        except Exception as error:
            done = failed_task(task, error)
        records += done
        if on_done is not None:
            on_done(done)
    for task in orphans:
        done = run_alone(task)
        records += done
        if on_done is not None:
            on_done(done)
    return records


def run_alone(task: Task) -> list[RunRecord]:
    """A task in a worker process of its own: if that dies too, this task killed it."""
    with pool(1) as alone:
        try:
            return alone.submit(execute, task).result()
        except Exception as error:
            return failed_task(task, error)
