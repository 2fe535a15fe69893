"""The machine's speed states, and what each does to gradwell's lead over Keras.

On the shared 2-core VMs these benchmarks run on, gradwell's speed on the default job's network
(bench_loop.py's ``default``) does not drift smoothly: it jumps between a fast and a slow state, each
lasting seconds to minutes, with the code unchanged. This script tells the two apart and measures
the Keras ratio in each, on that network or (``--network``) the 100-layer SELU one. For
``--seconds`` it takes samples, each of them in turn:

- three probes of the machine: a 64 x 256 x 256 matrix product (2 threads), torch's BatchNorm
  kernel on 64 x 256 (training, as the fused step calls it) and a pure Python loop;
- one gradwell ``fit`` of ``--steps`` steps (100 by default: the issue's shorter epoch) and one
  Keras 3 ``fit`` (torch backend) of as many, on the same network and data (bench_loop.py's loops).

It splits the samples into two states by gradwell's step time (two means on its logarithm,
scipy.cluster.vq.kmeans2) and prints each state's share of the samples, the medians of every
probe and loop, and the Keras / gradwell ratio within samples (the two fits back to
back): its geometric mean with a 95% t interval. ``--plot`` draws the samples over time. Two
means always make two groups: where the machine kept one state, the two medians of gradwell's
step time come out close, and the split is noise.

    python benchmarks/bench_machine_states.py --seconds 300 --plot states.png
    python benchmarks/bench_machine_states.py --network selu100 --steps 300
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from bench_loop import NETWORKS, gradwell_loop, keras_loop, within_rounds

PROBES = ("product 64x256x256", "BatchNorm 64x256", "Python loop")
LOOPS = ("gradwell fit", "Keras 3 fit")
TARGETS = {"default": 4.0, "selu100": 5.0}  # issue 16's Keras / gradwell targets, drawn on the plot


def microseconds(work: Callable[[], object], reps: int) -> float:
    started = time.perf_counter()
    for _ in range(reps):
        work()
    return (time.perf_counter() - started) / reps * 1e6


def probes() -> dict[str, Callable[[], float]]:
    """Each probe: a callable giving its time per call in us."""
    a, w = torch.randn(64, 256), torch.randn(256, 256)
    x, ones, zeros = torch.randn(64, 256), torch.ones(256), torch.zeros(256)
    mean, var = torch.zeros(256), torch.ones(256)

    def python_loop() -> int:
        return sum(i for i in range(20_000))

    return {
        PROBES[0]: lambda: microseconds(lambda: a.mm(w), 200),
        PROBES[1]: lambda: microseconds(
            lambda: torch.native_batch_norm(x, ones, zeros, mean, var, True, 1.0, 1e-5), 200
        ),
        PROBES[2]: lambda: microseconds(python_loop, 20),
    }


def sample(
    measures: dict[str, Callable[[], float]], loops: dict[str, Callable[[int], None]], steps: int
) -> dict:
    """One sample: every probe, then us per step of each loop over one `steps`-step fit."""
    row = {"time": time.time(), **{name: measure() for name, measure in measures.items()}}
    for name, train in loops.items():
        row[name] = microseconds(lambda train=train: train(steps), 1) / steps
    return row


def states(rows: list[dict]) -> list[int]:
    """0 (fast) or 1 (slow) per sample: two means on the log of gradwell's step time."""
    import numpy as np
    from scipy.cluster.vq import kmeans2

    logs = np.log([row[LOOPS[0]] for row in rows])
    centers, labels = kmeans2(logs.reshape(-1, 1), 2, seed=0, minit="++")
    return [int(label) for label in (labels if centers[0, 0] <= centers[1, 0] else 1 - labels)]


def report(rows: list[dict], labels: list[int]) -> None:
    print(f"{'median, us per call or step':28s} {'fast state':>12s} {'slow state':>12s} {'slow / fast':>12s}")
    grouped = [[row for row, label in zip(rows, labels, strict=True) if label == s] for s in (0, 1)]
    print(f"{'samples':28s} {len(grouped[0]):12d} {len(grouped[1]):12d}")
    for name in (*PROBES, *LOOPS):
        fast, slow = (statistics.median(row[name] for row in g) if g else math.nan for g in grouped)
        print(f"{name:28s} {fast:12.1f} {slow:12.1f} {slow / fast:11.2f}x")
    print("Keras / gradwell step time within samples: geometric mean (95% interval) [min, max]")
    for state, group in (("fast state", grouped[0]), ("slow state", grouped[1]), ("all samples", rows)):
        if len(group) > 1:
            print(f"  {state:12s} {within_rounds(*([row[name] for row in group] for name in LOOPS[::-1]))}")


def plot(rows: list[dict], labels: list[int], network: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [row["time"] - rows[0]["time"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    colors = ["tab:blue" if label == 0 else "tab:red" for label in labels]
    top.scatter(seconds, [row[LOOPS[0]] / 1000 for row in rows], c=colors, s=8, label="gradwell")
    top.scatter(seconds, [row[LOOPS[1]] / 1000 for row in rows], c="grey", s=8, label="Keras 3")
    title = f"{network}: gradwell in blue (fast state) and red (slow), Keras 3 in grey"
    top.set(ylabel="ms per step", yscale="log", title=title)
    top.legend()
    bottom.scatter(seconds, [row[LOOPS[1]] / row[LOOPS[0]] for row in rows], c=colors, s=8)
    bottom.axhline(TARGETS[network], color="black", linewidth=0.8)
    bottom.set(xlabel="seconds", ylabel="Keras / gradwell step time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    keras_networks = [name for name, network in NETWORKS.items() if network.keras is not None]
    parser.add_argument("--network", choices=keras_networks, default="default")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to sample")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per fit in a sample")
    parser.add_argument("--plot", help="write the samples over time to this image file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    network = NETWORKS[args.network]
    samples = args.steps * network.batch
    x, y = torch.randn(samples, network.inputs), torch.randint(0, network.classes, (samples,))
    loops = {
        LOOPS[0]: gradwell_loop(network, x, y, network.batch, torch.device("cpu")),
        LOOPS[1]: keras_loop(network, x, y, network.batch),
    }
    for train in loops.values():  # warm-up: first calls
        train(args.steps)
    measures, rows, ends = probes(), [], time.time() + args.seconds
    while time.time() < ends:
        rows.append(sample(measures, loops, args.steps))
    print(f"{args.network}, {args.steps}-step fits, {len(rows)} samples in {args.seconds:.0f} s, ", end="")
    print(f"2 threads, torch {torch.__version__}")
    labels = states(rows)
    report(rows, labels)
    if args.plot:
        plot(rows, labels, args.network, args.plot)


if __name__ == "__main__":
    main()
