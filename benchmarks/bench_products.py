"""Whose matrix product: oneDNN's against MKL's, for the fused step's Linear layers on a CPU.

torch's matmul calls MKL on a CPU. On this project's AMD EPYC machines MKL does not take its
AVX-512 code, and oneDNN's kernel (the one torch.compile's CPU code calls for a Linear layer) is
up to twice as fast for all but small products. The fused step takes oneDNN's for its z = a W^T + b
and da = dz W from fused_ops.ONEDNN_FROM multiply-adds (float32 only). This benchmark draws that
line:

- products: for batches of 32 to 128 and square layers 100 to 512 wide, on 1 and 2 threads, the
  median over rounds of MKL's time / oneDNN's for each of the two products (above 1: oneDNN faster),
  and the kernel the rule picks;
- networks: bench_loop.py's networks trained by gradwell ``fit`` with oneDNN's products where the
  rule picks them and with MKL's everywhere, interleaved; steps/s and the ratio within rounds.

    python benchmarks/bench_products.py [--rounds 5] [--steps 100]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_loop import NETWORKS, within_rounds
from bench_serial_layers import measure

from gradwell.train import fused_ops


def seconds(work: Callable[[], object], calls: int) -> float:
    for _ in range(10):
        work()
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - started) / calls


def product_ratios(batch: int, width: int, rounds: int) -> tuple[float, float]:
    """The median over rounds of MKL's time / oneDNN's, for z = a W^T + b and for da = dz W."""
    onednn = fused_ops.onednn_linear()
    a, dz = torch.randn(batch, width), torch.randn(batch, width)
    weight, bias = torch.randn(width, width), torch.randn(width)
    calls = max(100, int(1e8 / (batch * width * width)))
    forward, backward = [], []
    for _ in range(rounds):
        mkl = seconds(lambda: F.linear(a, weight, bias), calls)
        forward.append(mkl / seconds(lambda: onednn(a, weight, bias, "none", [], ""), calls))
        mkl = seconds(lambda: dz.mm(weight), calls)
        backward.append(mkl / seconds(lambda: onednn(dz, weight.t(), None, "none", [], ""), calls))
    return statistics.median(forward), statistics.median(backward)


def products(rounds: int) -> None:
    print(f"ONEDNN_FROM = {fused_ops.ONEDNN_FROM:,} multiply-adds; MKL's time / oneDNN's, median of {rounds}")
    columns = f"{'z = a W^T + b':>13s}  {'da = dz W':>9s}"
    print(f"{'threads':>7s} {'batch':>5s} {'width':>5s} {'products':>9s}  {columns}  picked")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (32, 64, 128):
            for width in (100, 160, 256, 512):
                forward, backward = product_ratios(batch, width, rounds)
                work = batch * width * width
                picked = "oneDNN" if work >= fused_ops.ONEDNN_FROM else "MKL"
                shape = f"{threads:7d} {batch:5d} {width:5d} {work / 1e6:8.2f}M"
                print(f"{shape}  {forward:12.2f}x  {backward:8.2f}x  {picked}", flush=True)


def networks(steps: int, rounds: int) -> None:
    settings = {"rule": fused_ops.ONEDNN_FROM, "MKL only": math.inf}
    print(f"\nnetworks, gradwell fit, {rounds} rounds of {steps} steps; steps/s")
    print(f"{'network':10s} {'rule':>8s} {'MKL only':>9s}   rule / MKL only, per round")
    for name, network in NETWORKS.items():
        rates = measure(network, steps, rounds, "ONEDNN_FROM", settings)
        medians = "  ".join(f"{statistics.median(rates[setting]):8.1f}" for setting in settings)
        print(f"{name:10s} {medians}   {within_rounds(rates['rule'], rates['MKL only'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if fused_ops.onednn_linear() is None:
        raise SystemExit("this build of torch has no oneDNN: the fused step uses MKL's products only")
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    products(args.rounds)
    torch.set_num_threads(2)
    networks(args.steps, args.rounds)


if __name__ == "__main__":
    main()
