"""Built-in scenarios: the literature's experiments on unstable gradients, each with its verdict.

Every scenario is an MLP of width 100 on scikit-learn's 8x8 digits (standardized, bundled, so
nothing is generated or downloaded), probed on a batch of 256 training samples:

| name           | network                                  | expected   | source |
|----------------|------------------------------------------|------------|--------|
| sigmoid-normal | 20 sigmoid layers, N(0, 1) init          | saturation | the chapter |
| relu-glorot-30 | 30 ReLU layers, Glorot init              | vanishing  | He et al. (2015) |
| relu-he-30     | 30 ReLU layers, He init                  | healthy    | He et al. (2015) |
| selu-100       | 100 SELU layers, LeCun init              | healthy    | Klambauer et al. (2017) |
| sigmoid-bn     | 20 sigmoid layers, BN before each, SGD   | healthy    | Ioffe and Szegedy (2015) |
| exploding      | 30 ReLU layers, Var[w] = 4/fan_in        | exploding  | twice He's variance |

With Glorot init a ReLU layer halves the signal's variance (He et al., 2015), so 30 of them shrink
it 2^30-fold; twice He's variance doubles it per layer instead.

`sigmoid-bn` also trains for 10 epochs (210 SGD steps, learning rate 0.05) with a Monitor, and
matches only if its loss on the probed batch (in training mode, as the probe measures) falls to
half its initial value or less; it falls about tenfold, while the same 20 sigmoid layers without
batch normalization (Glorot init) lose their gradient 1e12-fold and stay at the loss of chance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradwell import data as datasets
from gradwell import models, optim
from gradwell.diagnose.monitor import Monitor
from gradwell.diagnose.probe import probe
from gradwell.diagnose.report import Report
from gradwell.errors import unknown_name
from gradwell.init import variance_scaling_
from gradwell.train.loop import fit

BATCH = 256  # probed samples
TRAIN_BATCH = 64


def twice_he_normal_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 4/fan_in): twice He's variance, so each ReLU layer doubles the signal's variance."""
    return variance_scaling_(tensor, 4.0, "fan_in", "normal", generator)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    expected: str  # a verdict name (rules.VERDICTS)
    model: dict[str, Any]  # options of gradwell.models.mlp
    train_epochs: int = 0  # > 0: train with SGD and a Monitor, and require the loss to halve
    lr: float = 0.05


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "sigmoid-normal",
            "20 sigmoid layers with N(0, 1) weights: outputs pile up at 0 and 1 (the chapter)",
            "saturation",
            {"depth": 20, "width": 100, "activation": "sigmoid", "init": "standard_normal"},
        ),
        Scenario(
            "relu-glorot-30",
            "30 ReLU layers with Glorot init: activations shrink layer after layer (He et al., 2015)",
            "vanishing_gradients",
            {"depth": 30, "width": 100, "activation": "relu", "init": "glorot_normal"},
        ),
        Scenario(
            "relu-he-30",
            "30 ReLU layers with He init: the signal keeps its scale (He et al., 2015)",
            "healthy",
            {"depth": 30, "width": 100, "activation": "relu", "init": "he_normal"},
        ),
        Scenario(
            "selu-100",
            "100 SELU layers with LeCun init: self-normalizing (Klambauer et al., 2017)",
            "healthy",
            {"depth": 100, "width": 100, "activation": "selu", "init": "lecun_normal"},
        ),
        Scenario(
            "sigmoid-bn",
            "20 sigmoid layers with batch normalization before each: trains (Ioffe and Szegedy, 2015)",
            "healthy",
            {"depth": 20, "width": 100, "activation": "sigmoid", "batchnorm": "before"},
            train_epochs=10,
        ),
        Scenario(
            "exploding",
            "30 ReLU layers with Var[w] = 4/fan_in: the gradient doubles in variance per layer",
            "exploding_gradients",
            {"depth": 30, "width": 100, "activation": "relu", "init": twice_he_normal_},
        ),
    )
}


@dataclass
class ScenarioResult:
    """A scenario's report, with the verdicts observed and whether they are the expected ones.

    >>> from gradwell.models import mlp
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    >>> result = ScenarioResult(SCENARIOS["relu-he-30"], probe(mlp(8, 3, hidden=[16, 16], generator=g), x, y))
    >>> result.scenario.expected, result.observed, result.matches
    ('healthy', ['healthy'], True)
    """

    scenario: Scenario
    report: Report
    training: dict[str, float] = field(default_factory=dict)  # loss before / after, steps

    @property
    def observed(self) -> list[str]:
        return [v.name for v in self.report.verdicts]

    @property
    def matches(self) -> bool:
        """The expected verdict is found (alone, for "healthy"), and a trained scenario trained."""
        expected = self.scenario.expected
        found = self.observed == ["healthy"] if expected == "healthy" else expected in self.observed
        if self.training:
            found = found and self.training["loss_after"] <= 0.5 * self.training["loss_before"]
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "expected": self.scenario.expected,
            "observed": self.observed,
            "matches": self.matches,
            "training": self.training or None,
            "report": self.report.to_dict(),
        }


@functools.cache
def digits() -> datasets.Dataset:
    return datasets.standardize(datasets.load("digits"))[0]


def run_scenario(name: str, seed: int = 0) -> ScenarioResult:
    """Build the scenario's network (weights seeded by `seed`), train it if it says so, probe it.

    >>> result = run_scenario("sigmoid-normal")
    >>> result.scenario.expected, result.matches
    ('saturation', True)
    """
    if name not in SCENARIOS:
        raise unknown_name("scenario", name, SCENARIOS)
    scenario = SCENARIOS[name]
    dataset = digits()
    generator = torch.Generator().manual_seed(seed)
    model = models.mlp(dataset.feature_shape, dataset.num_classes, **scenario.model, generator=generator)
    pick = torch.randperm(len(dataset.train.y), generator=generator)[:BATCH]
    x, y = dataset.train.x[pick], dataset.train.y[pick]
    training, monitor = {}, None
    if scenario.train_epochs:
        monitor = Monitor(every=10)
        before = probe(model, x, y, seed=seed).loss
        optimizer = optim.create("sgd", model.parameters(), lr=scenario.lr)
        batches = -(-len(dataset.train.y) // TRAIN_BATCH)
        fit(
            model,
            dataset,
            optimizer=optimizer,
            epochs=scenario.train_epochs,
            batch_size=TRAIN_BATCH,
            callbacks=[monitor],
            progress=False,
            seed=seed,
        )
        training = {"loss_before": before, "steps": scenario.train_epochs * batches}
    report = probe(model, x, y, monitor=monitor, seed=seed)
    if training:
        training["loss_after"] = report.loss
    return ScenarioResult(scenario, report, training)
