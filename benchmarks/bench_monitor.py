"""Overhead of the stability doctor: the Monitor in `fit`, `watch` in a plain PyTorch loop and the
Lightning callback in a `lightning.Trainer` run (run by hand, not a test).

    python benchmarks/bench_monitor.py [--steps 1000] [--repeats 5] [--every 200] [--threads 1]
                                       [--loops fit,watch,lightning]

Two networks: gradwell's default run (6 x 256 Swish MLP, BatchNorm before each activation, Nadam,
batch 64, 40 features as MNIST-1D) and the chapter's 100 x 100 SELU MLP (LeCun init, Nadam,
batch 32). Each timed run is a fresh model trained with `fit` for `steps` optimizer steps on random
standardized inputs, with and without the doctor at its default setting (every 200 steps): in
gradwell's `fit` with a Monitor; in a plain PyTorch loop (the same modules, torch.optim.NAdam) with
`gradwell.watch(model, optimizer)`; in a `lightning.Trainer` run (the same modules in a
LightningModule, torch.optim.NAdam) with `gradwell.integrations.lightning.DoctorCallback`. The
two variants alternate in each repeat, in alternating order, so that drifts in machine load hit
both.

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
import itertools
import logging
import os
import statistics
import time
import warnings
from types import SimpleNamespace

import torch

from gradwell import models, optim
from gradwell.diagnose import Monitor, watch
from gradwell.diagnose.watch import DEFAULT_EVERY
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


def fresh(options: dict) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return models.mlp(40, 10, **options, generator=torch.Generator().manual_seed(0))


def fit_run(
    options: dict, batch: int, dataset: SimpleNamespace, every: int | None
) -> tuple[float, list[float]]:
    """(seconds for one epoch of `fit` on a fresh model, seconds of each step)."""
    model = fresh(options)
    optimizer = optim.create("nadam", model.parameters(), lr=0.002)
    clock = Clock()
    callbacks = [clock.start, *([Monitor(every)] if every else []), clock.stop]
    start = time.perf_counter()
    fit(model, dataset, optimizer=optimizer, epochs=1, batch_size=batch, callbacks=callbacks, progress=False)
    return time.perf_counter() - start, clock.times


def watch_run(
    options: dict, batch: int, dataset: SimpleNamespace, every: int | None
) -> tuple[float, list[float]]:
    """The same in a plain PyTorch loop, watched by `gradwell.watch` (counted by its hooks)."""
    model = fresh(options).train()
    optimizer = torch.optim.NAdam(model.parameters(), lr=0.002)
    doctor = watch(model, optimizer, every=every) if every else None
    x, y = dataset.train.x, dataset.train.y
    times = []
    start = time.perf_counter()
    for i in range(0, len(x) - batch + 1, batch):
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    if doctor is not None:
        doctor.close()
    return time.perf_counter() - start, times


def lightning_run(
    options: dict, batch: int, dataset: SimpleNamespace, every: int | None
) -> tuple[float, list[float]]:
    """The same in a `lightning.Trainer` run, with the doctor's Lightning callback."""
    import lightning
    from torch.utils.data import DataLoader, TensorDataset

    from gradwell.integrations.lightning import DoctorCallback

    for name in ("lightning", "lightning.pytorch"):  # set on import: quiet its banners afterwards
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = fresh(options)

        def training_step(self, batch: tuple, index: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.NAdam(self.parameters(), lr=0.002)

    times: list[float] = []
    began = [0.0]

    class Start(lightning.Callback):
        def on_train_batch_start(self, *args: object) -> None:
            began[0] = time.perf_counter()

    class Stop(lightning.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            times.append(time.perf_counter() - began[0])

    # the clock around the doctor's callback, so that its hooks count
    callbacks = [Start(), *([DoctorCallback(every=every)] if every else []), Stop()]
    loader = DataLoader(TensorDataset(dataset.train.x, dataset.train.y), batch_size=batch)
    trainer = lightning.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Module(), loader)
    return time.perf_counter() - start, times


LOOPS = {"fit": fit_run, "watch": watch_run, "lightning": lightning_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loops", default="fit,watch,lightning", help="which loops, comma-separated")
    args = parser.parse_args()
    logging.getLogger("gradwell").setLevel(logging.ERROR)  # the doctor's verdicts on random labels
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()}")
    print(f"{args.steps} steps per run, {args.repeats} interleaved repeats, every={args.every}\n")
    header = ("loop", "network", "run ratio", "plain step", "unsampled", "sampled +", "overhead at every")
    print(
        f"{header[0]:9s} {header[1]:40s} {header[2]:>9s} {header[3]:>10s} {header[4]:>9s} {header[5]:>10s} "
        f"{header[6]:>17s}"
    )
    for loop, (name, (options, batch)) in itertools.product(args.loops.split(","), NETWORKS.items()):
        timed_run = LOOPS[loop]
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
            f"{loop:9s} {name:40s} {ratio - 1:+9.1%} {plain * 1e3:8.2f}ms {unsampled * 1e3:7.2f}ms "
            f"{extra * 1e3:8.1f}ms {extra / (args.every * plain):+17.1%}",
            flush=True,
        )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
