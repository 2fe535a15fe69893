"""K seeds trained as one seed-batched network vs one after another (run by hand, not a test).

    python benchmarks/bench_seeds.py [--seeds 10] [--epochs 2] [--device cpu] [--threads 1]

Each row trains the same K models (one per seed, MNIST-1D, 5000 samples, Adam, batch 32) for the
same number of epochs, hence the same number of optimizer steps per seed, twice: one after
another with ``gradwell.train.fit`` (the runner's "single" path; on CUDA it captures each step
in a CUDA graph), and all at once with ``gradwell.experiment.fit_seeds`` (the "batched" path).
The two are timed alternately, `repeats` times, after a warm-up run of each, and the table gives
the median wall times and the speed-up. The first row is the issue's small MLP
(40 -> 100 -> 100 -> 10); the others show where the gain shrinks as arithmetic takes over.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from gradwell import data as datasets
from gradwell import models, optim
from gradwell.experiment import fit_seeds
from gradwell.train import fit

NETWORKS = {
    "2x100 ReLU": {"hidden": [100, 100]},
    "2x100 ReLU, BN, dropout 0.2": {"hidden": [100, 100], "batchnorm": "before", "dropout": 0.2},
    "10x100 ReLU": {"hidden": [100] * 10},
    "10x100 ReLU, BN, dropout 0.2": {"hidden": [100] * 10, "batchnorm": "before", "dropout": 0.2},
    "30x100 ReLU": {"hidden": [100] * 30},
    "30x100 ReLU, BN, dropout 0.2": {"hidden": [100] * 30, "batchnorm": "before", "dropout": 0.2},
    "3x512 ReLU": {"hidden": [512] * 3},
}


def build(seed: int, options: dict, device: torch.device) -> torch.nn.Module:
    return models.mlp(40, 10, generator=torch.Generator().manual_seed(seed), **options).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_by_one(seeds: list[int], options: dict, dataset, epochs: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for seed in seeds:
        model = build(seed, options, device)
        optimizer = optim.create("adam", model.parameters(), lr=1e-3, capturable=device.type == "cuda")
        fit(model, dataset, optimizer=optimizer, epochs=epochs, seed=seed, device=device, progress=False)
    sync(device)
    return time.perf_counter() - start


def batched(seeds: list[int], options: dict, dataset, epochs: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fit_seeds(
        [build(seed, options, device) for seed in seeds],
        dataset,
        seeds=seeds,
        optimizer=lambda net: optim.create("adam", net.parameters(), lr=1e-3),
        epochs=epochs,
        device=device,
    )
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="run only the networks whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dataset = datasets.standardize(datasets.load("mnist1d", num_samples=5000))[0]
    seeds = list(range(args.seeds))
    print(
        f"{args.seeds} seeds x {args.epochs} epochs, MNIST-1D 3600 training samples, batch 32, Adam; "
        f"{device}, {args.threads} thread(s), torch {torch.__version__}, Python {platform.python_version()}; "
        f"median of {args.repeats}"
    )
    print(f"{'network':30s} {'one by one s':>13s} {'batched s':>10s} {'speed-up':>9s}")
    for name, options in NETWORKS.items():
        if args.only and args.only not in name:
            continue
        runs = {"one": [], "batched": []}
        for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
            order = [("one", one_by_one), ("batched", batched)]
            for key, train in order if repeat % 2 else reversed(order):
                seconds = train(seeds, options, dataset, args.epochs, device)
                if repeat:
                    runs[key].append(seconds)
        one, together = statistics.median(runs["one"]), statistics.median(runs["batched"])
        print(f"{name:30s} {one:13.2f} {together:10.2f} {one / together:9.2f}", flush=True)


if __name__ == "__main__":
    main()
