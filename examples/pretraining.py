"""Unsupervised pretraining when labels are scarce: 100 labeled digits, every training image unlabeled.

scikit-learn's 8x8 digits (pixels in [0, 1]): each seed draws 100 labeled training examples; the
1,294 training images serve as unlabeled data. Five ways to get a 64-128-64-10 classifier:

    scratch      an ELU network trained on the 100 labels alone
    autoencoder  its hidden layers pretrained to reconstruct the images, then fine-tuned
    rbm          a stack of two RBMs (CD-1, sigmoid units), greedy layer-wise, then fine-tuned
    masked       hidden layers pretrained to predict masked pixels, then fine-tuned
    pairs        hidden layers pretrained to tell two noisy views of one image from views of two

Every network gets the same labeled budget: 100 epochs of Nadam on the 100 examples. The
pretrained ones spend the first 10 training only the new head (lr 0.01, the encoder frozen), then
90 with everything at 0.003; the scratch network trains everything at 0.003 for all 100. The test
accuracy of each, over many seeds, with mean, std, a 95% confidence interval and the paired
difference against scratch:

    python examples/pretraining.py --seeds 10

The epoch counts are options too (--pretrain-epochs, --frozen-epochs, --epochs), so that a test can
run the whole script in seconds; their defaults are the experiment above.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from rich.console import Console
from rich.table import Table

from gradwell import data, models
from gradwell.data import Split
from gradwell.experiment import Summary, summarize
from gradwell.pretrain import autoencoder, auxiliary, greedy_layerwise
from gradwell.train import evaluate
from gradwell.transfer import fine_tune, reuse

HIDDEN = [128, 64]
METHODS = ["scratch", "autoencoder", "rbm", "masked", "pairs"]


def encoder(seed: int) -> torch.nn.Sequential:
    """The hidden layers of the ELU network (its output layer dropped)."""
    return models.mlp(64, 10, HIDDEN, activation="elu", generator=torch.Generator().manual_seed(seed))[:-1]


def pretrained(method: str, unlabeled: torch.Tensor, seed: int, epochs: int) -> torch.nn.Sequential:
    if method == "scratch":
        return encoder(seed)
    if method == "autoencoder":
        return autoencoder(encoder(seed), unlabeled, epochs=epochs, seed=seed)
    if method == "rbm":
        return greedy_layerwise(HIDDEN, unlabeled, kind="rbm", epochs_per_layer=epochs, seed=seed)
    return auxiliary(encoder(seed), unlabeled, task=method, epochs=epochs, seed=seed)


def accuracy(
    method: str, dataset: data.Dataset, labeled: data.Dataset, seed: int, args: argparse.Namespace
) -> float:
    model = reuse(pretrained(method, dataset.train.x, seed, args.pretrain_epochs), drop_top=0, head=10)
    if method == "scratch":  # the same epochs, every one training everything
        frozen, epochs, lr = 0, args.frozen_epochs + args.epochs, args.lr
    else:
        frozen, epochs, lr = args.frozen_epochs, args.epochs, args.head_lr
    fine_tune(
        model, labeled, frozen_epochs=frozen, epochs=epochs, lr=lr, lr_after_unfreeze=args.lr, seed=seed
    )
    return evaluate(model, dataset.test.x, dataset.test.y)["accuracy"]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--labels", type=int, default=100, help="labeled training examples per seed")
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="per method (per layer for rbm)")
    parser.add_argument("--frozen-epochs", type=int, default=10, help="the new head alone, at --head-lr")
    parser.add_argument("--epochs", type=int, default=90, help="everything trained, at --lr")
    parser.add_argument("--head-lr", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.003)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Run the experiment, print its table and return each method's test accuracy, seed by seed."""
    args = parse(argv)
    torch.set_num_threads(1)  # networks this small run fastest on one thread, and leave the other cores free
    console = Console()
    dataset = data.load("digits")
    results: dict[str, list[float]] = {method: [] for method in METHODS}
    started = time.perf_counter()
    for seed in range(args.seeds):
        chosen = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))[
            : args.labels
        ]
        labeled = replace(dataset, train=Split(*dataset.train[chosen]))
        for method in METHODS:
            results[method].append(accuracy(method, dataset, labeled, seed, args))
        console.print(f"seed {seed}: " + ", ".join(f"{m} {100 * results[m][-1]:.1f}" for m in METHODS))
    table = Table(
        "method", "mean", "std", "95% CI", "vs scratch (paired)",
        title=f"digits, {args.labels} labels, {args.seeds} seeds: test accuracy (%)",
        caption=f"{time.perf_counter() - started:.0f} s",
    )  # fmt: skip
    for method in METHODS:
        stats = summarize(results[method])
        gap = summarize([a - b for a, b in zip(results[method], results["scratch"], strict=True)])
        table.add_row(
            method, f"{100 * stats.mean:.2f}", *spread(stats), "" if method == "scratch" else show(gap)
        )
    console.print(table)
    return results


def spread(stats: Summary) -> tuple[str, str]:
    if stats.ci is None:
        return "", ""
    return f"{100 * stats.std:.2f}", f"[{100 * stats.ci[0]:.2f}, {100 * stats.ci[1]:.2f}]"


def show(gap: Summary) -> str:
    interval = "" if gap.ci is None else f" [{100 * gap.ci[0]:+.2f}, {100 * gap.ci[1]:+.2f}]"
    return f"{100 * gap.mean:+.2f}{interval}"


if __name__ == "__main__":
    main()
