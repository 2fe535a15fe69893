"""Sweeps on a Ray cluster: an experiment's runs as Ray tasks (``gradwell compare --ray``).

Ray is an optional dependency (``pip install 'gradwell[ray]'``). `RayExecutor` is a
``concurrent.futures.Executor``, so ``gradwell.experiment.run(..., executor=RayExecutor())`` sends
the same tasks the local process pool would get to Ray instead, one CPU each, and gets the same
records back: every run is deterministic on a CPU, wherever it runs. The cluster's nodes need
gradwell installed (or a Ray runtime environment that installs it).

A task whose worker process dies (a crash, ``os._exit``, the out-of-memory killer) fails its own
runs, once, and no other task: Ray does not retry it, since a run that kills its worker would
kill the next one too, and the failed record says that the worker died.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from collections.abc import Callable
from typing import Any

from gradwell.errors import GradwellError

log = logging.getLogger(__name__)

# Ray's errors for a task that never finished because its worker process (or the node) went away
DEATHS = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "LocalRayletDiedError")


class WorkerDiedError(RuntimeError):
    """The Ray worker process running a task died before the task finished."""


def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` as a pool worker would: one torch thread, since tasks share the node's cores."""
    from gradwell.experiment.workers import init_worker

    init_worker()
    return fn(*args)


class RayExecutor(concurrent.futures.Executor):
    """Submit calls as Ray tasks of one CPU each, on the cluster at `address`.

    `address` None or "" is Ray's default: the cluster in RAY_ADDRESS (``ray job submit`` sets it)
    or one that ``ray start`` started on this machine, else a new local Ray instance, shut down
    again with the executor; "local" always starts a new one; "auto" or "ray://host:port" joins a
    running cluster. A cluster joined is left running, and so is the instance of a process where
    Ray is already initialized, which is used as it is.
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
                where = (
                    f"the Ray cluster at {address!r}" if address else "Ray (RAY_ADDRESS or a local instance)"
                )
                raise GradwellError(f"cannot reach {where}: {error}") from None
        elif address or init_options:
            log.warning(
                "Ray is already initialized in this process: using it, not %r", address or init_options
            )
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))  # tasks that run at once
        log.info("Ray: %d CPUs in the cluster", self.workers)
        # no retries: Ray would rerun a task whose worker died up to 3 times, and a run that kills
        # its worker (or runs out of memory) deterministically would then cost 4 deaths to fail
        self.task = ray.remote(num_cpus=1, max_retries=0)(in_worker)
        self.deaths = tuple(getattr(ray.exceptions, name) for name in DEATHS if hasattr(ray.exceptions, name))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if kwargs:
            raise TypeError("RayExecutor.submit takes positional arguments only")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.task.remote(fn, *args).future().add_done_callback(functools.partial(self.settle, future))
        return future

    def settle(self, future: concurrent.futures.Future, done: concurrent.futures.Future) -> None:
        """Pass Ray's outcome on to `future`, a dead worker's as a WorkerDiedError that says so."""
        if done.cancelled():
            future.cancel()
            return
        error = done.exception()
        if error is None:
            future.set_result(done.result())
        elif isinstance(error, self.deaths):
            message = str(error).split("\n")[0]  # Ray's first line says which death; the rest is advice
            future.set_exception(
                WorkerDiedError(
                    f"the Ray worker process running this task died ({type(error).__name__}: {message}); "
                    "not retried, since a run that kills its worker would kill the next one too"
                )
            )
        else:
            future.set_exception(error)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
