"""Overhead of the stability doctor's Monitor on `fit` (run by hand, not a test).

    python benchmarks/bench_monitor.py [--steps 1000] [--repeats 5] [--every 200] [--threads 1]

Two networks: gradwell's default run (6 x 256 Swish MLP, BatchNorm before each activation, Nadam,
batch 64, 40 features as MNIST-1D) and the chapter's 100 x 100 SELU MLP (LeCun init, Nadam,
batch 32). Each timed run is a fresh model trained with `fit` for `steps` optimizer steps on random
standardized inputs, with and without a Monitor at its default setting (every 200 steps). The two
variants alternate in each repeat, in alternating order, so that drifts in machine load hit both.

Two measures: the whole run (median of the paired time ratios, monitored / plain), and each
step timed inside the runs by a pair of callbacks around the Monitor's (so its hooks count):
the mean unsampled step of a monitored run against the mean step of a plain run (the Monitor
should cost nothing there), and the extra time of a sampled step over an unsampled one of the
same runs, which gives the overhead at `every` as extra / (every x plain step). The second is
the steadier on a shared machine: both of its terms come from the same runs. Means, not
medians: under CPU contention step times are bimodal and their median jumps between the modes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from types import SimpleNamespace

import torch

from gradwell import models, optim
from gradwell.diagnose import Monitor
from gradwell.diagnose.monitor import DEFAULT_EVERY
from gradwell.train import Callback, fit

NETWORKS = {
    "6x256 swish BN (default run), batch 64": (
        {"depth": 6, "width": 256, "activation": "swish", "batchnorm": "before"},
        64,
    ),
    "100x100 SELU, batch 32": ({"depth": 100, "width": 100, "activation": "selu"}, 32),
}


class Clock:
    """Two callbacks, one before and one after the others, timing each step between them."""

    def __init__(self) -> None:
        self.started = 0.0
        self.times: list[float] = []
        clock = self

        class Start(Callback):
            def on_step_begin(self, run: object) -> None:
                clock.started = time.perf_counter()

        class Stop(Callback):
            def on_step_end(self, run: object, loss: torch.Tensor) -> None:
                clock.times.append(time.perf_counter() - clock.started)

        self.start, self.stop = Start(), Stop()


def data(steps: int, batch: int) -> SimpleNamespace:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, 40, generator=generator)
    y = torch.randint(0, 10, (steps * batch,), generator=generator)
    return SimpleNamespace(train=SimpleNamespace(x=x, y=y), val=None)


def timed_run(
    options: dict, batch: int, dataset: SimpleNamespace, every: int | None
) -> tuple[float, list[float]]:
    """(seconds for one epoch of `fit` on a fresh model, seconds of each step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = models.mlp(40, 10, **options, generator=torch.Generator().manual_seed(0))
    optimizer = optim.create("nadam", model.parameters(), lr=0.002)
    clock = Clock()
    callbacks = [clock.start, *([Monitor(every)] if every else []), clock.stop]
    start = time.perf_counter()
    fit(model, dataset, optimizer=optimizer, epochs=1, batch_size=batch, callbacks=callbacks, progress=False)
    return time.perf_counter() - start, clock.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()}")
    print(f"{args.steps} steps per run, {args.repeats} interleaved repeats, Monitor(every={args.every})\n")
    header = ("network", "run ratio", "plain step", "unsampled", "sampled +", "overhead at every")
    print(
        f"{header[0]:40s} {header[1]:>9s} {header[2]:>10s} {header[3]:>9s} {header[4]:>10s} {header[5]:>17s}"
    )
    for name, (options, batch) in NETWORKS.items():
        dataset = data(args.steps, batch)
        timed_run(options, batch, data(50, batch), args.every)  # warm-up
        runs: dict[bool, list[float]] = {False: [], True: []}
        steps: dict[str, list[float]] = {"plain": [], "unsampled": [], "sampled": []}
        for repeat in range(args.repeats):
            for monitored in (False, True) if repeat % 2 else (True, False):
                seconds, times = timed_run(options, batch, dataset, args.every if monitored else None)
                runs[monitored].append(seconds)
                if monitored:
                    steps["sampled"] += times[:: args.every]
                    steps["unsampled"] += [t for i, t in enumerate(times) if i % args.every]
                else:
                    steps["plain"] += times
        ratio = statistics.median(m / p for m, p in zip(runs[True], runs[False], strict=True))
        plain, unsampled = statistics.fmean(steps["plain"]), statistics.fmean(steps["unsampled"])
        extra = statistics.fmean(steps["sampled"]) - unsampled
        print(
            f"{name:40s} {ratio - 1:+9.1%} {plain * 1e3:8.2f}ms {unsampled * 1e3:7.2f}ms "
            f"{extra * 1e3:8.1f}ms {extra / (args.every * plain):+17.1%}"
        )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
