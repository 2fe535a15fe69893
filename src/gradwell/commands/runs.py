"""The experiment runner's options on the command line (`compare`, `diagnose --try-fixes`): worker
processes, or Ray."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import sys
from collections.abc import Iterator


def add_runner_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--workers", type=int, help="worker processes (default: one per core; 0: none)")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the config x seed grid as Ray tasks: on the cluster in RAY_ADDRESS or a new local "
        "Ray instance, or on the cluster at ADDRESS (e.g. auto, ray://host:10001; local: always a new "
        "instance); a run whose worker dies fails, not retried; needs pip install 'gradwell[ray]'",
    )


@contextlib.contextmanager
def executor_for(args: argparse.Namespace) -> Iterator[concurrent.futures.Executor | None]:
    """A Ray executor for --ray (None without it: the runner makes its own worker processes)."""
    if args.ray is None:
        yield None
        return
    from gradwell.experiment.cluster import RayExecutor

    # Ray prints its workers' output and its own error messages (a worker died) on stdout, which is
    # gradwell's results (the JSON of --json): they go to stderr until Ray stops
    with contextlib.redirect_stdout(sys.stderr), RayExecutor(args.ray or None) as executor:
        yield executor
