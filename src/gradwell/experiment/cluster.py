"""Sweeps on a Ray cluster: an experiment's runs as Ray tasks (``gradwell compare --ray``).

Ray is an optional dependency (``pip install 'gradwell[ray]'``). `RayExecutor` is a
``concurrent.futures.Executor``, so ``gradwell.experiment.run(..., executor=RayExecutor())`` sends
the same tasks the local process pool would get to Ray instead, one CPU each, and gets the same
records back: every run is deterministic on a CPU, wherever it runs. The cluster's nodes need
gradwell installed (or a Ray runtime environment that installs it).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

from gradwell.errors import GradwellError

log = logging.getLogger(__name__)


def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` as a pool worker would: one torch thread, since tasks share the node's cores."""
    from gradwell.experiment.workers import init_worker

    init_worker()
    return fn(*args)


class RayExecutor(concurrent.futures.Executor):
    """Submit calls as Ray tasks of one CPU each, on the cluster at `address`.

    `address` None or "" starts a local Ray instance (shut down again with the executor); "auto"
    or "ray://host:port" joins a running cluster, which is left running.
    """

    def __init__(self, address: str | None = None, **init_options: Any) -> None:
        try:
            import ray
        except ImportError:
            raise GradwellError(
                "--ray needs Ray, which is not installed: pip install 'gradwell[ray]' (or run without --ray "
                "to use local worker processes)"
            ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=address or None, **init_options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise GradwellError(f"cannot reach the Ray cluster at {address!r}: {error}") from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))  # tasks that run at once
        log.info("Ray: %d CPUs in the cluster", self.workers)
        self.task = ray.remote(num_cpus=1)(in_worker)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if kwargs:
            raise TypeError("RayExecutor.submit takes positional arguments only")
        return self.task.remote(fn, *args).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
