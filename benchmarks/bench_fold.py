"""Batch-1 CPU latency of a deep MLP with BatchNorm, unfolded vs folded (run by hand, not a test).

    python benchmarks/bench_fold.py [--depth 20] [--width 256] [--samples 300] [--threads 1]

Each model is the chapter's Linear -> BN -> ReLU block repeated `depth` times, in eval mode with
random moving statistics, gamma and beta. Samples of `calls` forward passes each are interleaved
across the models (so drifts in machine load hit all of them alike) after a warm-up; the table
gives the median time per forward pass and the speed-up of folding. gradwell's BatchNorm and
torch's BatchNorm1d are measured side by side, since their eval paths differ in cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

from gradwell.fold import fold_batchnorm
from gradwell.norm import BatchNorm


def mlp(depth: int, width: int, norm: type[nn.Module], generator: torch.Generator) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), norm(width), nn.ReLU()]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for bn in model[1::3]:
            bn.running_mean.copy_(torch.randn(width, generator=generator))
            bn.running_var.copy_(torch.rand(width, generator=generator) + 0.5)
            bn.weight.copy_(torch.randn(width, generator=generator))
            bn.bias.copy_(torch.randn(width, generator=generator))
    return model


def time_models(models: dict[str, nn.Module], x: torch.Tensor, samples: int, calls: int) -> dict[str, float]:
    """Median seconds per forward pass of each model, samples interleaved in alternating order."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(50):
                model(x)
        order = list(models.items())
        for sample in range(samples):
            for name, model in order if sample % 2 else reversed(order):
                start = time.perf_counter()
                for _ in range(calls):
                    model(x)
                times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--calls", type=int, default=10, help="forward passes per timed sample")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, args.width, generator=generator)

    models = {}
    for label, norm in (("gradwell BatchNorm", BatchNorm), ("torch BatchNorm1d", nn.BatchNorm1d)):
        model = mlp(args.depth, args.width, norm, generator)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every BatchNorm of this model must fold
            folded = fold_batchnorm(model)
        with torch.inference_mode():
            expected, actual = model(x), folded(x)
        error = float((actual - expected).abs().max() / expected.abs().max())
        assert error < 1e-5, f"{label}: folded output differs, relative error {error:.2e}"
        models[f"{label}, unfolded"] = model
        models[f"{label}, folded"] = folded
    medians = time_models(models, x, args.samples, args.calls)

    print(
        f"{args.depth} x (Linear({args.width}) -> BN -> ReLU), batch 1, eval, CPU, "
        f"{args.threads} thread(s), torch {torch.__version__}, median of {args.samples} x {args.calls} calls"
    )
    print(f"{'model':<32}{'median us':>12}{'speed-up':>10}")
    for name, seconds in medians.items():
        unfolded = medians[name.rpartition(", ")[0] + ", unfolded"]
        print(f"{name:<32}{seconds * 1e6:>12.1f}{unfolded / seconds:>9.2f}x")


if __name__ == "__main__":
    main()
