"""The claims' experiments: how big they are (scales) and the arms and trials they train.

Scales: "full" (10 seeds, every claim's own epochs, 5000 MNIST-1D samples: within 15 minutes
on 2 cores), "quick" (5 seeds, a quarter of the epochs, 3000 samples: within 2 minutes; weaker
evidence, more "inconclusive") and "smoke", a tiny scale for tests only (3 seeds, 1 epoch,
networks capped at depth 2 and width 16), whose verdicts mean nothing. The setups in
``gradwell.experiment.claims.catalogue`` are described at the full scale.

An arm is a Config (``mlp`` here builds the claims' common one) or a trial: a function of the
seed, for an experiment that is not one training run (the transfer case study, pretraining).
An ``evaluate`` function adds metrics measured on the trained model (MC dropout, SELU's
self-normalization).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradwell import build, models
from gradwell import config as configs
from gradwell.config import Config
from gradwell.data import Dataset, Split
from gradwell.experiment.execution import Evaluate, dataset_of
from gradwell.regularize import mc_dropout_predict


@dataclass(frozen=True)
class Scale:
    """How big the experiments are: seeds, MNIST-1D samples, epochs and network size.

    A claim states its setup at the full scale; the scale shrinks it:

    >>> quick, smoke = SCALES["quick"], SCALES["smoke"]
    >>> quick.seeds, quick.epochs(20), quick.depth(100), quick.width(100)
    (5, 5, 100, 100)
    >>> smoke.seeds, smoke.epochs(20), smoke.depth(100), smoke.width(100)
    (3, 1, 2, 16)
    """

    name: str
    seeds: int
    samples: int  # MNIST-1D samples: 72% train, 8% validation, 20% test
    epoch_factor: float  # times each claim's full epochs (at least 1)
    max_depth: int | None = None
    max_width: int | None = None
    mc_samples: int = 100
    few_labels: int = 200  # the chapter's 200 labeled examples of task B

    def epochs(self, full: int) -> int:
        return max(1, round(full * self.epoch_factor))

    def depth(self, full: int) -> int:
        return min(full, self.max_depth or full)

    def width(self, full: int) -> int:
        return min(full, self.max_width or full)


SCALES = {
    "full": Scale("full", seeds=10, samples=5000, epoch_factor=1.0),
    "quick": Scale("quick", seeds=5, samples=3000, epoch_factor=0.25, mc_samples=30),
    "smoke": Scale(
        "smoke",
        seeds=3,
        samples=600,
        epoch_factor=0.0,
        max_depth=2,
        max_width=16,
        mc_samples=4,
        few_labels=40,
    ),
}


def data_section(scale: Scale) -> dict[str, Any]:
    """Every claim's data: MNIST-1D, standardized (one dataset per scale, loaded once per process)."""
    return {"name": "mnist1d", "num_samples": scale.samples}


def mlp(
    scale: Scale,
    *,
    depth: int,
    epochs: int,
    optimizer: str = "momentum",
    lr: float = 0.01,
    width: int = 100,
    optimizer_options: dict[str, Any] | None = None,
    **model: Any,
) -> Config:
    """An MLP on MNIST-1D at `scale`, batch 32, no schedule: the claims' common ground."""
    return configs.from_dict(
        {
            "data": data_section(scale),
            "model": {"kind": "mlp", "depth": scale.depth(depth), "width": scale.width(width), **model},
            "optimizer": {"name": optimizer, "lr": lr, **(optimizer_options or {})},
            "schedule": {"name": "none"},
            "train": {"epochs": scale.epochs(epochs), "batch_size": 32, "device": "cpu"},
            "output": {"progress": False},
        }
    )


def mc_dropout_metrics(model: nn.Module, dataset: Dataset, samples: int) -> dict[str, float]:
    """Test accuracy and negative log-likelihood of MC dropout's averaged probabilities."""
    x, y = dataset.test.x, dataset.test.y
    mean, _ = mc_dropout_predict(model, x, samples, seed=0)
    nll = F.nll_loss(torch.log(mean.clamp_min(1e-12)), y)
    return {"mc_accuracy": float((mean.argmax(1) == y).float().mean()), "mc_nll": float(nll)}


def mc_evaluate(scale: Scale) -> Evaluate:
    return functools.partial(mc_dropout_metrics, samples=scale.mc_samples)


@torch.no_grad()
def normalization_error(model: nn.Module, dataset: Dataset) -> dict[str, float]:
    """How far the hidden layers' outputs on the test inputs are from mean 0 and std 1, averaged
    over the layers (|mean| + |std - 1|): 0 for a network that keeps them normalized."""
    blocks = {name for name, _ in models.hidden_blocks(model)}
    model.eval()
    h, errors = dataset.test.x, []
    for name, layer in model.named_children():
        h = layer(h)
        if name in blocks:
            errors.append(float(h.mean().abs() + (h.std() - 1).abs()))
    return {"normalization_error": sum(errors) / len(errors)}


def normalization_evaluate(scale: Scale) -> Evaluate:
    return normalization_error


def transfer_trial(seed: int, *, scale: Scale) -> dict[str, Any]:
    """One seed of the chapter's case study: A on 8 classes, B (2 classes, few labels) from
    scratch and B on A (reused, frozen, then fine-tuned), as ``transfer_study.study_run``."""
    from gradwell.experiment.transfer_study import TransferOptions, study_run

    config = mlp(scale, depth=3, epochs=20, optimizer="nadam", lr=0.002, activation="elu")
    config = build.with_train(config, seed=seed)
    options = TransferOptions(
        limit_train=scale.few_labels,
        frozen_epochs=scale.epochs(4),
        epochs=scale.epochs(16),
        lr=0.001,
        optimizer="nadam",
        batch_size=32,
    )
    result = study_run(config, options, dataset_of(config), None, torch.device("cpu"))
    return {"extra": {key: result[key] for key in ("a", "b_scratch", "b_on_a")}}


def pretraining_trial(seed: int, *, scale: Scale) -> dict[str, Any]:
    """One seed: the same MLP trained on a few labels from scratch, or from an autoencoder's encoder
    pretrained on every training input (``gradwell.pretrain.autoencoder``), then ``reuse``d with a
    new head and ``fine_tune``d (head alone, then everything) for as many epochs at the same rate."""
    from gradwell.pretrain import autoencoder
    from gradwell.train.losses import evaluate
    from gradwell.transfer import fine_tune, reuse

    config = mlp(scale, depth=3, epochs=30, optimizer="nadam", lr=0.001, activation="elu")
    config = build.with_train(config, seed=seed)
    dataset = dataset_of(config)
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))
    labeled = order[: scale.few_labels]
    few = dataclasses.replace(dataset, train=Split(dataset.train.x[labeled], dataset.train.y[labeled]))
    epochs, frozen = config.train.epochs, scale.epochs(5)
    prepared = build.prepare(config, few)
    prepared.fit()
    scratch = prepared.model
    encoder = build.build_model(config, few)  # the same initial weights as `scratch` had
    autoencoder(encoder[:-1], dataset, epochs=scale.epochs(10), seed=seed)
    pretrained = reuse(encoder, drop_top=1, head=10, generator=torch.Generator().manual_seed(seed + 1))
    rest = max(1, epochs - frozen)
    fine_tune(
        pretrained,
        few,
        frozen_epochs=frozen,
        epochs=rest,
        lr=0.001,
        lr_after_unfreeze=0.001,
        optimizer="nadam",
        seed=seed,
    )
    test = dataset.test
    return {
        "extra": {
            "pretrained": evaluate(pretrained, test.x, test.y)["accuracy"],
            "scratch": evaluate(scratch, test.x, test.y)["accuracy"],
        }
    }
