"""The claims' experiments: how big they are (scales), their data and the arms and trials they train.

Scales: "full" (10 seeds, every claim's own epochs, 5000 MNIST-1D samples: within 15 minutes
on 2 cores), "quick" (5 seeds, a quarter of the epochs, 3000 samples: within 2 minutes; weaker
evidence, more "inconclusive") and "smoke", a tiny scale for tests only (3 seeds, 1 epoch,
networks capped at depth 2 and width 16), whose verdicts mean nothing. The setups in
``gradwell.experiment.claims.catalogue`` are described at the full scale.

The data is MNIST-1D unless a scale names another data set (``Scale.data``, any name
``gradwell.data.load`` takes). MNIST-1D is generated, `samples` of it (72% train, 8% validation,
20% test), from mnist1d's data seed 42 unless a claim names its own (``Scale.seeded``). Another
data set is not made smaller by asking, so its training and validation splits are subsampled to
the sizes MNIST-1D's would have (``Scale.split_sizes``: 3600 and 400 at the full scale), drawn once
with a fixed seed, the same for every seed and arm, and its test split is kept whole: a bigger test
split only measures more precisely. A split smaller than that is kept whole. Standardization uses
the whole training split (inputs only, no labels).

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
from gradwell.data import Dataset
from gradwell.data.splits import SUBSAMPLE_SEED
from gradwell.experiment.execution import Evaluate, dataset_of
from gradwell.regularize import mc_dropout_predict

GENERATED = "mnist1d"  # the claims' own data: generated, so made at each scale's size
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1  # MNIST-1D's own test split; load's default validation


@dataclass(frozen=True)
class Scale:
    """How big the experiments are (seeds, samples, epochs and network size), and on which data.

    A claim states its setup at the full scale; the scale shrinks it:

    >>> quick, smoke = SCALES["quick"], SCALES["smoke"]
    >>> quick.seeds, quick.epochs(20), quick.depth(100), quick.width(100)
    (5, 5, 100, 100)
    >>> smoke.seeds, smoke.epochs(20), smoke.depth(100), smoke.width(100)
    (3, 1, 2, 16)
    >>> quick.split_sizes(), quick.on("digits").data
    ((2160, 240), 'digits')
    """

    name: str
    seeds: int
    samples: int  # MNIST-1D samples: 72% train, 8% validation, 20% test (other data: split_sizes)
    epoch_factor: float  # times each claim's full epochs (at least 1)
    max_depth: int | None = None
    max_width: int | None = None
    mc_samples: int = 100
    few_labels: int = 200  # the chapter's 200 labeled examples of task B
    data: str = GENERATED  # a name gradwell.data.load takes
    data_seed: int | None = None  # MNIST-1D generated from this seed; None: mnist1d's own, 42

    def on(self, data: str) -> Scale:
        """This scale on another data set."""
        return dataclasses.replace(self, data=data)

    def seeded(self, data_seed: int | None) -> Scale:
        """This scale with MNIST-1D generated from `data_seed`; unchanged for None, or for data that
        is not generated (another data set is what its files hold).

        >>> SCALES["smoke"].seeded(7).data_seed, SCALES["smoke"].on("digits").seeded(7).data_seed
        (7, None)
        """
        if data_seed is None or self.data != GENERATED or data_seed == self.data_seed:
            return self
        return dataclasses.replace(self, data_seed=data_seed)

    def split_sizes(self) -> tuple[int, int]:
        """The training and validation samples of MNIST-1D at this scale: another data set's
        splits are subsampled to these sizes."""
        train = round(self.samples * (1 - TEST_FRACTION) * (1 - VAL_FRACTION))
        return train, round(self.samples * (1 - TEST_FRACTION)) - train

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
    """The claims' [data] section at `scale`: MNIST-1D generated at its size, or another data set
    with its training and validation splits subsampled (``data.train_samples``, ``data.val_samples``),
    standardized.

    >>> data_section(SCALES["smoke"]), data_section(SCALES["smoke"].on("digits"))
    ({'name': 'mnist1d', 'num_samples': 600}, {'name': 'digits', 'train_samples': 432, 'val_samples': 48})
    >>> data_section(SCALES["smoke"].seeded(7))
    {'name': 'mnist1d', 'num_samples': 600, 'data_seed': 7}
    """
    if scale.data == GENERATED:
        seed = {} if scale.data_seed is None else {"data_seed": scale.data_seed}
        return {"name": GENERATED, "num_samples": scale.samples, **seed}
    train, val = scale.split_sizes()
    return {"name": scale.data, "train_samples": train, "val_samples": val}


def scale_dataset(scale: Scale) -> Dataset:
    """The claims' dataset at `scale`, as their runs get it (loaded once per process)."""
    return dataset_of(Config(data=data_section(scale)))


def data_record(scale: Scale) -> dict[str, Any]:
    """What the claims at `scale` ran on: the data set, its splits' sizes and how they were made.

    >>> record = data_record(SCALES["smoke"].on("digits"))
    >>> record["name"], record["train"], record["val"], record["test"], record["classes"]
    ('digits', 432, 48, 359, 10)
    >>> record["sampling"].split("; ")
    ['training split subsampled to 432 of 1294, validation subsampled to 48 of 144 (seed 0)',
     'test split whole (359)']
    """
    dataset = scale_dataset(scale)
    sizes = {split: len(getattr(dataset, split)) for split in ("train", "val", "test")}
    if scale.data == GENERATED:
        seeded = "" if scale.data_seed is None else f" from data seed {scale.data_seed}"
        sampling = f"{scale.samples} samples generated{seeded} (72% train, 8% validation, 20% test)"
    else:
        whole = dataset_of(Config(data={"name": scale.data}))
        parts = []
        for split, words in (("train", "training split"), ("val", "validation")):
            n, total = sizes[split], len(getattr(whole, split))
            parts.append(f"{words} subsampled to {n} of {total}" if n < total else f"{words} whole ({n})")
        sampling = f"{', '.join(parts)} (seed {SUBSAMPLE_SEED}); test split whole ({sizes['test']})"
    return {"name": scale.data, **sizes, "classes": dataset.num_classes, "sampling": sampling}


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
    """An MLP on the claims' data at `scale`, batch 32, no schedule: the claims' common ground."""
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


TASK_A_CLASSES = 8  # the case study's task A: classes 0-7; task B: the rest


def transfer_needs(dataset: Dataset, scale: Scale) -> str | None:
    """Why the case study cannot run on `dataset` at `scale`: A needs 8 classes and B 2 more, with
    `few_labels` training samples of B's classes."""
    k = dataset.num_classes
    if k < TASK_A_CLASSES + 2:
        return (
            f"needs at least {TASK_A_CLASSES + 2} classes (task A: classes 0-{TASK_A_CLASSES - 1}, task B "
            f"at least 2 others); {dataset.name} has {k}"
        )
    b = int((dataset.train.y >= TASK_A_CLASSES).sum())
    if b < scale.few_labels:
        return (
            f"needs {scale.few_labels} training samples of task B (classes {TASK_A_CLASSES}-{k - 1}); "
            f"the {len(dataset.train)} training samples of {dataset.name} have {b}"
        )
    return None


def pretraining_needs(dataset: Dataset, scale: Scale) -> str | None:
    """Why claim 10 cannot run on `dataset` at `scale`: it needs more training samples than the
    `few_labels` it labels, for the rest to be unlabeled."""
    n = len(dataset.train)
    if n <= scale.few_labels:
        return (
            f"labels {scale.few_labels} training samples of many; {dataset.name} has {n} in all, "
            "so none would be left unlabeled"
        )
    return None


def transfer_trial(seed: int, *, scale: Scale) -> dict[str, Any]:
    """One seed of the chapter's case study: A on 8 classes, B (2 classes, few labels) from
    scratch and B on A (reused, frozen, then fine-tuned), as ``transfer_study.study_run``."""
    from gradwell.experiment.transfer_study import TransferOptions, study_run

    config = mlp(scale, depth=3, epochs=20, optimizer="nadam", lr=0.002, activation="elu")
    config = build.with_train(config, seed=seed)
    options = TransferOptions(
        classes_a=list(range(TASK_A_CLASSES)),
        limit_train=scale.few_labels,
        frozen_epochs=scale.epochs(4),
        epochs=scale.epochs(16),
        lr=0.001,
        optimizer="nadam",
        batch_size=32,
    )
    result = study_run(config, options, dataset_of(config), None, torch.device("cpu"))
    return {"extra": {key: result[key] for key in ("a", "b_scratch", "b_on_a")}}


PRETRAININGS = ("autoencoder", "gan")  # the chapter's two ways to pretrain on unlabeled inputs


def pretrain(method: str, layers: nn.Module, dataset: Dataset, epochs: int, seed: int) -> None:
    """Pretrain `layers` in place on every training input of `dataset`: as an autoencoder's encoder,
    or as a GAN discriminator's lower layers (``gradwell.pretrain.gan``'s defaults: Adam lr 2e-4,
    beta1 0.5, batches of 64)."""
    from gradwell.pretrain import autoencoder, gan

    if method == "autoencoder":
        autoencoder(layers, dataset, epochs=epochs, seed=seed)
    else:
        gan(dataset, layers, epochs=epochs, seed=seed)


def pretraining_trial(seed: int, *, scale: Scale) -> dict[str, Any]:
    """One seed: the same MLP trained on a few labels from scratch, or from its hidden layers
    pretrained on every training input (``pretrain``: an autoencoder's encoder, a GAN
    discriminator's lower layers), then ``reuse``d with a new head and ``fine_tune``d (head alone,
    then everything) for as many epochs at the same rate. Every arm starts from the same weights."""
    from gradwell.train.losses import evaluate_split
    from gradwell.transfer import fine_tune, reuse

    config = mlp(scale, depth=3, epochs=30, optimizer="nadam", lr=0.001, activation="elu")
    config = build.with_train(config, seed=seed)
    dataset = dataset_of(config)
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))
    labeled = order[: scale.few_labels]
    few = dataclasses.replace(dataset, train=dataset.train.select(labeled))  # kept as stored
    epochs, frozen = config.train.epochs, scale.epochs(5)
    prepared = build.prepare(config, few)
    prepared.fit()
    accuracy = {"scratch": evaluate_split(prepared.model, dataset.test)["accuracy"]}
    for method in PRETRAININGS:
        encoder = build.build_model(config, few)  # the same initial weights as `scratch` had
        pretrain(method, encoder[:-1], dataset, scale.epochs(10), seed)
        head = torch.Generator().manual_seed(seed + 1)
        pretrained = reuse(encoder, drop_top=1, head=dataset.num_classes, generator=head)
        fine_tune(
            pretrained,
            few,
            frozen_epochs=frozen,
            epochs=max(1, epochs - frozen),
            lr=0.001,
            lr_after_unfreeze=0.001,
            optimizer="nadam",
            seed=seed,
        )
        accuracy[method] = evaluate_split(pretrained, dataset.test)["accuracy"]
    return {"extra": accuracy}
