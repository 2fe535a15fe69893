"""Where one thread beats two: the fused step's passes on one thread against torch's number of threads.

The fused CPU step runs its forward and backward passes on one thread when at least half of the
network's multiply-adds are in Linear products (batch x in x out) of fewer than
fused_ops.SERIAL_BELOW (fused_ops.runs_serial); the optimizer and the batched weight gradients keep
torch's threads. This benchmark draws that line. For MLPs of several widths and batch sizes (10
hidden layers, BatchNorm before each ReLU, SGD with momentum) and for bench_loop.py's networks, it
trains gradwell ``fit`` with the passes on one thread and on torch's threads, interleaved in
rotating order. It prints the median product's multiply-adds, the median steps/s of each, the ratio
within rounds (geometric mean, 95% interval, range) and which of the two the rule picks.

    python benchmarks/bench_serial_layers.py [--rounds 7] [--steps 100]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import torch
from bench_loop import NETWORKS, Network, gradwell_loop, within_rounds

from gradwell.train import fused_ops

SETTINGS = {"one thread": math.inf, "torch's threads": 0.0}  # SERIAL_BELOW for each


def sweep() -> dict[str, Network]:
    """MLPs whose products range from 0.1 to 8 million multiply-adds per layer."""
    found = {}
    for batch in (32, 64):
        for width in (64, 100, 160, 256, 360):
            model = {"depth": 10, "width": width, "activation": "relu", "batchnorm": "before"}
            optimizer = ("momentum", {"lr": 0.01})
            found[f"{width} wide, batch {batch}"] = Network(width, 10, batch, model, optimizer, None)
    return found


def measure(network: Network, steps: int, rounds: int) -> dict[str, list[float]]:
    """Steps/s of gradwell fit per setting of SERIAL_BELOW, the settings in rotating order each round."""
    samples = steps * network.batch
    x, y = torch.randn(samples, network.inputs), torch.randint(0, network.classes, (samples,))
    train = gradwell_loop(network, x, y, network.batch, torch.device("cpu"))
    kept = fused_ops.SERIAL_BELOW
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        train(10)
        for r in range(rounds):
            names = list(SETTINGS)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fused_ops.SERIAL_BELOW = SETTINGS[name]
                started = time.perf_counter()
                train(steps)
                rates[name].append(steps / (time.perf_counter() - started))
    finally:
        fused_ops.SERIAL_BELOW = kept
    return rates


def products(network: Network) -> list[int]:
    """The multiply-adds of each Linear layer's product."""
    widths = [network.inputs] + [network.model["width"]] * network.model["depth"] + [network.classes]
    return [network.batch * fan_in * fan_out for fan_in, fan_out in itertools.pairwise(widths)]


def row(name: str, network: Network, rates: dict[str, list[float]]) -> str:
    medians = "  ".join(f"{statistics.median(rates[setting]):8.1f}" for setting in SETTINGS)
    ratio = within_rounds(rates["one thread"], rates["torch's threads"])
    picked = "one" if fused_ops.runs_serial(products(network)) else "torch's"
    median = statistics.median(products(network))
    return f"{name:20s} {median / 1e6:6.2f}M  {medians}   {ratio:30s}  {picked}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"2 threads, {args.rounds} rounds of {args.steps} steps, torch {torch.__version__}; steps/s")
    print(f"SERIAL_BELOW = {fused_ops.SERIAL_BELOW:,} multiply-adds")
    header = f"{'network':20s} {'median':>7s}  {'one':>8s}  {'torch':>8s}   {'one / torch, per round':30s}"
    print(f"{header}  picked")
    for name, network in {**sweep(), **NETWORKS}.items():
        print(row(name, network, measure(network, args.steps, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
