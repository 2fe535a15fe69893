"""The parts of the fused CPU step that issue 16's second round changed, each against what it replaced.

Each pair runs interleaved in one process (rounds in turn, median microseconds per call):

- weight gradients of same-shaped layers: one ``bmm`` over the stacked layers against one ``mm``
  per layer, for the chapter's 99 hidden 100 x 100 layers at batch 32, five 128 x 128 ones and the
  default job's five 256 x 256 ones at batch 64 (fused_ops.BATCHED_BELOW draws the line);
- cross-entropy and its gradient: by torch's kernels (fused_ops.cross_entropy_with_grad) against
  autograd, for a batch of 64 with 10 classes;
- one Nadam step on one flat tensor of the default network's size (406,282 values), as the fused
  step runs it: gradwell's (per-step coefficients in Python numbers when every tensor shares its
  step) against torch.optim.NAdam's multi-tensor implementation;
- a batch of 64 CIFAR-10-sized stored images (uint8, 3 x 32 x 32) gathered from 50,000:
  ``index_select`` (Split.rows) against advanced indexing.

    python benchmarks/bench_step_parts.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gradwell.optim import Nadam
from gradwell.train.fused_ops import cross_entropy_with_grad


def timed(pairs: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median microseconds per call of each function, the functions run in turn round after round."""
    for function in pairs.values():
        for _ in range(10):
            function()
    times: dict[str, list[float]] = {name: [] for name in pairs}
    for _ in range(rounds):
        for name, function in pairs.items():
            started = time.perf_counter()
            for _ in range(calls):
                function()
            times[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def weight_gradients(layers: int, batch: int, width: int) -> dict[str, Callable[[], object]]:
    # each layer's dz and input, separate tensors as the backward pass leaves them
    grads = [torch.randn(batch, width) for _ in range(layers)]
    inputs = [torch.randn(batch, width) for _ in range(layers)]
    out = torch.empty(layers, width, width)
    blocks = list(out.unbind())

    def per_layer() -> None:
        for grad, a, weight_grad in zip(grads, inputs, blocks, strict=True):
            torch.mm(grad.t(), a, out=weight_grad)

    def batched() -> None:
        torch.bmm(torch.stack(grads).transpose(1, 2), torch.stack(inputs), out=out)

    return {"one bmm (stacking included)": batched, "one mm per layer": per_layer}


def cross_entropy() -> dict[str, Callable[[], object]]:
    logits, labels = torch.randn(64, 10), torch.randint(0, 10, (64,))

    def autograd() -> None:
        leaf = logits.detach().requires_grad_()
        torch.autograd.grad(F.cross_entropy(leaf, labels), leaf)

    return {"by torch's kernels": lambda: cross_entropy_with_grad(logits, labels), "autograd": autograd}


def nadam() -> dict[str, Callable[[], object]]:
    optimizers = []
    for make in (
        lambda params: Nadam(params, lr=0.002, eps=1e-8),
        lambda params: torch.optim.NAdam(params, lr=0.002, eps=1e-8, foreach=True),
    ):
        weights = torch.nn.Parameter(torch.randn(406_282))
        weights.grad = torch.randn_like(weights)
        optimizers.append(make([weights]))
    return {"gradwell Nadam": optimizers[0].step, "torch.optim.NAdam, foreach": optimizers[1].step}


def gather() -> dict[str, Callable[[], object]]:
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    index = torch.randperm(50_000)[:64]
    return {"index_select": lambda: images.index_select(0, index), "advanced indexing": lambda: images[index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    cases = {
        "weight gradients, 99 x (100 x 100), batch 32": (weight_gradients(99, 32, 100), 20),
        "weight gradients, 5 x (128 x 128), batch 64": (weight_gradients(5, 64, 128), 50),
        "weight gradients, 5 x (256 x 256), batch 64": (weight_gradients(5, 64, 256), 50),
        "cross-entropy and its gradient, 64 x 10": (cross_entropy(), 500),
        "Nadam step, 406,282 values in one tensor": (nadam(), 50),
        "64 CIFAR-10 images gathered from 50,000": (gather(), 500),
    }
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.rounds} rounds; median us per call")
    for case, (pairs, calls) in cases.items():
        (new, new_time), (old, old_time) = timed(pairs, calls, args.rounds).items()
        print(f"{case}: {new} {new_time:.0f} us, {old} {old_time:.0f} us, {old_time / new_time:.2f}x")


if __name__ == "__main__":
    main()
