"""Whose matrix product: oneDNN's against MKL's, for the fused step's Linear layers on a CPU.

torch's matmul calls MKL on a CPU. On this project's AMD EPYC machines MKL reports its generic code
path (MKL_VERBOSE=1), not an AVX-512 one, and oneDNN's kernel (the one torch.compile's CPU code calls
for a Linear layer) is up to twice as fast for all but small products. The fused step takes
oneDNN's for its z = a W^T + b and da = dz W from fused_ops.ONEDNN_FROM multiply-adds (float32
only). This benchmark draws that line:

- products: for batches of 32 to 128 and square layers 100 to 512 wide, on 1 and 2 threads, the
  ratio of MKL's median time over rounds to oneDNN's for each of the three products (above 1: oneDNN
  faster; the weight gradient's with the copy into its place in the flat buffer that oneDNN, which
  writes no given output, would need), and the kernel the rule picks for z and da;
- networks: the fused step of each of bench_loop.py's networks (FusedStep alone on one random batch,
  so that nothing else in a round varies), with oneDNN's products from `--onednn-from` multiply-adds
  (the rule's ONEDNN_FROM by default) and with MKL's everywhere, in alternating rounds; steps/s and
  the ratio within rounds. A network with no product that large compares a setting with itself,
  which shows the measurement's own spread.

    python benchmarks/bench_products.py [--rounds 8] [--steps 300] [--onednn-from 2000000]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from bench_loop import NETWORKS, Network, gradwell_model, within_rounds
from bench_step_parts import timed

from gradwell import optim
from gradwell.train import fused_ops
from gradwell.train.fused import FusedStep
from gradwell.train.step import Metrics


def product_ratios(batch: int, width: int, rounds: int) -> list[float]:
    """MKL's median time / oneDNN's over rounds (bench_step_parts.timed), for z = a W^T + b, da = dz W
    and dW = dz^T a (oneDNN's copied into the gradient's place, as the flat buffer would need)."""
    onednn = fused_ops.onednn_linear()
    a, dz = torch.randn(batch, width), torch.randn(batch, width)
    weight, bias, weight_grad = torch.randn(width, width), torch.randn(width), torch.empty(width, width)
    calls = max(100, int(1e8 / (batch * width * width)))
    pairs = [
        (lambda: F.linear(a, weight, bias), lambda: onednn(a, weight, bias, "none", [], "")),
        (lambda: dz.mm(weight), lambda: onednn(dz, weight.t(), None, "none", [], "")),
        (
            lambda: torch.mm(dz.t(), a, out=weight_grad),
            lambda: weight_grad.copy_(onednn(dz.t(), a.t(), None, "none", [], "")),
        ),
    ]
    medians = [timed({"MKL": mkl, "oneDNN": dnn}, calls, rounds) for mkl, dnn in pairs]
    return [found["MKL"] / found["oneDNN"] for found in medians]


def products(rounds: int) -> None:
    line = f"ONEDNN_FROM = {fused_ops.ONEDNN_FROM:,} multiply-adds"
    print(f"{line}; MKL's median time / oneDNN's over {rounds} rounds")
    columns = f"{'z = a W^T + b':>13s}  {'da = dz W':>9s}  {'dW = dz^T a':>11s}"
    print(f"{'threads':>7s} {'batch':>5s} {'width':>5s} {'products':>9s}  {columns}  picked for z, da")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (32, 64, 128):
            for width in (100, 160, 256, 512):
                forward, backward, weight = product_ratios(batch, width, rounds)
                work = batch * width * width
                picked = "oneDNN" if work >= fused_ops.ONEDNN_FROM else "MKL"
                shape = f"{threads:7d} {batch:5d} {width:5d} {work / 1e6:8.2f}M"
                print(f"{shape}  {forward:12.2f}x  {backward:8.2f}x  {weight:10.2f}x  {picked}", flush=True)


def step_rates(
    network: Network, steps: int, rounds: int, settings: dict[str, float]
) -> dict[str, list[float]]:
    """Steps/s of the network's fused step per setting of ONEDNN_FROM, the settings in rotating order."""
    model = gradwell_model(network, torch.device("cpu"))
    name, options = network.optimizer
    step = FusedStep(
        model,
        F.cross_entropy,
        optim.create(name, model.parameters(), **options),
        Metrics(torch.device("cpu")),
    )
    x, y = torch.randn(network.batch, network.inputs), torch.randint(0, network.classes, (network.batch,))
    kept = fused_ops.ONEDNN_FROM
    rates: dict[str, list[float]] = {setting: [] for setting in settings}
    try:
        for r in range(rounds):
            names = list(settings)
            for setting in names[r % len(names) :] + names[: r % len(names)]:
                fused_ops.ONEDNN_FROM = settings[setting]
                rates[setting].append(1e6 / timed({setting: lambda: step(x, y)}, steps, 1)[setting])
    finally:
        fused_ops.ONEDNN_FROM = kept
    return rates


def networks(steps: int, rounds: int, onednn_from: float) -> None:
    settings = {"oneDNN": onednn_from, "MKL only": math.inf}
    where = f"oneDNN from {onednn_from:,.0f} multiply-adds"
    print(f"\nfused steps, {where}, {rounds} rounds of {steps} steps; steps/s")
    print(f"{'network':10s} {'oneDNN':>8s} {'MKL only':>9s}   oneDNN / MKL only, per round")
    for name, network in NETWORKS.items():
        rates = step_rates(network, steps, rounds, settings)
        medians = "  ".join(f"{statistics.median(rates[setting]):8.1f}" for setting in settings)
        print(f"{name:10s} {medians}   {within_rounds(rates['oneDNN'], rates['MKL only'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--onednn-from", type=float, default=fused_ops.ONEDNN_FROM)
    args = parser.parse_args()
    if fused_ops.onednn_linear() is None:
        raise SystemExit("this build of torch has no oneDNN: the fused step uses MKL's products only")
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    products(args.rounds)
    torch.set_num_threads(2)
    networks(args.steps, args.rounds, args.onednn_from)


if __name__ == "__main__":
    main()
