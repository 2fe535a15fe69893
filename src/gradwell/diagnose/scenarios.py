"""Built-in scenarios: the literature's experiments on unstable gradients, each with its verdict.

Every scenario runs on scikit-learn's 8x8 digits (standardized, bundled, so nothing is generated
or downloaded) and is probed on a batch of 256 training samples. The first six are MLPs of width
100 (gradwell.models.mlp); the others are networks of their own, written as plain nn.Modules that
the doctor traces (functional ReLUs, residual additions, torch's Transformer layers):

| name                  | network                         | expected              | source |
|-----------------------|---------------------------------|-----------------------|--------|
| sigmoid-normal        | 20 sigmoid layers, N(0, 1) init | saturation            | the chapter |
| relu-glorot-30        | 30 ReLU layers, Glorot init     | vanishing             | He et al. (2015) |
| relu-he-30            | 30 ReLU layers, He init         | healthy               | He et al. (2015) |
| selu-100              | 100 SELU layers, LeCun init     | healthy               | Klambauer et al. (2017) |
| sigmoid-bn            | 20 sigmoid, BN before each, SGD | healthy               | Ioffe and Szegedy (2015) |
| exploding             | 30 ReLU, Var[w] = 4/fan_in      | exploding             | twice He's variance |
| resnet-no-norm        | 30 residual blocks, He, no norm | exploding_activations | Zhang et al. (2019) |
| resnet-fixup          | same, branch's last layer at 0  | healthy               | Zhang et al. (2019) |
| post-ln-high-lr       | 4 post-LN Transformer layers    | vanishing, fails      | Xiong et al. (2020) |
| relu-dying-functional | 2 F.relu layers, SGD at lr 1.5  | dead_units, fails     | the chapter |

With Glorot init a ReLU layer halves the signal's variance (He et al., 2015), so 30 of them shrink
it 2^30-fold; twice He's variance doubles it per layer instead.

`sigmoid-bn` also trains for 10 epochs (210 SGD steps, learning rate 0.05) with a Monitor, and
matches only if its loss on the probed batch (in training mode, as the probe measures) falls to
half its initial value or less; it falls about tenfold, while the same 20 sigmoid layers without
batch normalization (Glorot init) lose their gradient 1e12-fold and stay at the loss of chance.

`resnet-no-norm`: each block x + W2 relu(W1 x) under He init adds twice Var[x] to the signal, so
its variance triples per block and its std grows 3^15-fold over 30 blocks (measured: 6.5e6 from
the input layer to the last block; the gradient grows 5.6e6-fold on its way back too). Zeroing
each branch's last layer (Fixup's start, torchvision's zero_init_residual) makes every block the
identity at initialization: the same net is healthy, its std unchanged through the 30 blocks.

`post-ln-high-lr` reads each digit as a sequence of its 8 rows (Linear(8, 32) plus a learned
position, 4 nn.TransformerEncoderLayer of d_model 32, norm_first=False, the mean over rows, a
Linear head) and trains it 2 epochs (42 steps) with Adam at lr 0.05, no warm-up. The loss stays at
chance (2.39 -> 2.33; ln 10 = 2.30), and the gradient vanishes 7e8-fold from the head back to the
input: the attention and feed-forward outputs grow to stds of 14 to 65, and each of the 8
LayerNorms after a residual addition divides the gradient by 10 to 60. At the same rate pre-LN
(norm_first=True) keeps the gradient at one scale (first/last ratio 2.2) and trains (2.46 ->
0.43), as Xiong et al. (2020) found, though many of its feed-forward ReLUs die at this rate too.
Over seeds 0-5 post-LN vanishes 1e4- to 1e9-fold and pre-LN never does. It matches only if its
loss does not halve: a run that fails.

`relu-dying-functional` (F.relu in forward, so the doctor names the layers "relu", "relu#2") trains
one epoch of SGD at lr 1.5, batch 32 (41 steps): within 5 steps 72% of the second layer's units are
zero for every sample of the Monitor's batch, and they stay dead (93% at step 40; 76% on the probed
batch), the loss stuck near chance (3.09 -> 2.16): the chapter's dying ReLUs, which a large
learning rate makes worst. At lr 0.1 none die and the loss falls to 0.26. It too matches only if
its loss does not halve.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwell import config as configs
from gradwell import data as datasets
from gradwell import models, optim
from gradwell.config import Config
from gradwell.diagnose.monitor import Monitor
from gradwell.diagnose.probe import probe
from gradwell.diagnose.report import Report
from gradwell.errors import GradwellError, unknown_name
from gradwell.init import he_normal_, variance_scaling_
from gradwell.train.loop import fit
from gradwell.train.nonfinite import untouched

BATCH = 256  # probed samples
TRAIN_BATCH = 64
# a scenario that trains for none of its own is trained this long when its fixes are tried: on the
# digits' 1,294 training samples (21 steps an epoch) enough to tell a net that learns from one that does not
TRY_EPOCHS = 10
# a scenario's own network: (dataset, generator) -> model; torch's default inits inside it draw
# from the global RNG, seeded by the scenario's seed and restored afterwards
Builder = Callable[[datasets.Dataset, torch.Generator], nn.Module]


def twice_he_normal_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """N(0, 4/fan_in): twice He's variance, so each ReLU layer doubles the signal's variance."""
    return variance_scaling_(tensor, 4.0, "fan_in", "normal", generator)


def he_linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with N(0, 2/fan_in) weights (He et al., 2015) and zero biases."""
    layer = nn.Linear(fan_in, fan_out)
    he_normal_(layer.weight, generator)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    """x + W2 relu(W1 x), He init, no normalization; `zero_last`: W2 = 0, Fixup's (and torchvision's
    zero_init_residual) start, where the block is the identity.

    Under He init the branch adds twice Var[x] to the signal, so each block triples its variance
    (Zhang et al., 2019: without normalization the variance grows exponentially with depth).
    """

    def __init__(self, width: int, generator: torch.Generator, zero_last: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = he_linear(width, width, generator), he_linear(width, width, generator)
        if zero_last:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))  # traced as "blocks.N.relu", "blocks.N.add"


class ResidualMLP(nn.Module):
    """input Linear -> `depth` ResidualBlocks of `width` -> output Linear."""

    def __init__(
        self, features: int, classes: int, depth: int, width: int, generator: torch.Generator, zero_last: bool
    ) -> None:
        super().__init__()
        self.input = he_linear(features, width, generator)
        self.blocks = nn.ModuleList(ResidualBlock(width, generator, zero_last) for _ in range(depth))
        self.output = he_linear(width, classes, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input(x.flatten(1))  # (batch, width)
        for block in self.blocks:
            x = block(x)
        return self.output(x)


def residual_mlp(dataset: datasets.Dataset, generator: torch.Generator, zero_last: bool = False) -> nn.Module:
    """30 residual blocks of width 64: deep enough that tripling per block shows (3^15 in std),
    small enough to probe in a fraction of a second."""
    features = math.prod(dataset.feature_shape)
    return ResidualMLP(features, dataset.num_classes, 30, 64, generator, zero_last)


class RowTransformer(nn.Module):
    """An 8x8 digit as a sequence of its 8 rows: Linear(8, d_model) plus a learned position,
    `layers` nn.TransformerEncoderLayer (4 heads, feed-forward 2 d_model, ReLU, no dropout), the
    mean over rows, a Linear head. torch's default initialization throughout."""

    def __init__(self, classes: int, layers: int = 4, d_model: int = 32, norm_first: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.position = nn.Embedding(8, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, 4, 2 * d_model, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, 8, 8)  # (batch, rows, pixels)
        h = self.embed(rows) + self.position(torch.arange(8, device=x.device))  # (batch, rows, d_model)
        return self.head(self.encoder(h).mean(dim=1))


def row_transformer(
    dataset: datasets.Dataset, generator: torch.Generator, norm_first: bool = False
) -> nn.Module:
    """4 layers of d_model 32: post-LN, the original Transformer's (Vaswani et al., 2017) that Xiong
    et al. (2020) analyse, unless `norm_first`. With 4 layers the gradient vanishes at lr 0.05 for
    every seed tried (0-5), in about a second of training."""
    return RowTransformer(dataset.num_classes, norm_first=norm_first)


class FunctionalReLUMLP(nn.Module):
    """Linear layers of `width` with F.relu after each, called in forward (traced as "relu",
    "relu#2", ...), He init, then an output Linear."""

    def __init__(
        self, features: int, classes: int, depth: int, width: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        sizes = [features] + [width] * depth
        self.hidden = nn.ModuleList(he_linear(a, b, generator) for a, b in itertools.pairwise(sizes))
        self.output = he_linear(width, classes, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.output(x)


def functional_relu_mlp(dataset: datasets.Dataset, generator: torch.Generator) -> nn.Module:
    """2 ReLU layers of width 100: at lr 1.5 most of the second's units die for every seed tried
    (0-5), while the first, fed standardized pixels, keeps its units; a third layer diverges."""
    return FunctionalReLUMLP(math.prod(dataset.feature_shape), dataset.num_classes, 2, 100, generator)


@dataclass(frozen=True)
class Scenario:
    """A network from the literature, how it is trained (if at all), and the verdict it must get."""

    name: str
    description: str
    expected: str  # a verdict name (rules.VERDICTS)
    model: dict[str, Any] | Builder  # options of gradwell.models.mlp, or the scenario's own network
    # > 0: train with a Monitor, and require the loss on the probed batch to halve (trains=True) or
    # not to (trains=False: a run the literature shows failing)
    train_epochs: int = 0
    lr: float = 0.05
    optimizer: str = "sgd"  # a name of gradwell.optim.OPTIMIZERS, at `lr`, without any schedule
    batch_size: int = TRAIN_BATCH
    every: int = 10  # the Monitor samples every `every`th step
    trains: bool = True

    def config(self) -> Config:
        """The scenario as a gradwell config, to try its fixes on: its MLP on the digits (standardized
        per feature, as here), its optimizer at its lr without a schedule, its batch size, and its
        epochs or TRY_EPOCHS. A scenario with a network or an initializer of its own has none.

        >>> SCENARIOS["relu-glorot-30"].config().model
        {'kind': 'mlp', 'depth': 30, 'width': 100, 'activation': 'relu', 'init': 'glorot_normal'}
        """
        if not self.has_config:
            raise GradwellError(
                f"scenario {self.name!r} builds a network or initializer of its own, not one a config "
                f"describes: its fixes cannot be tried as config changes; scenarios that can: "
                f"{', '.join(n for n, s in SCENARIOS.items() if s.has_config)}"
            )
        return configs.from_dict(
            {
                "data": {"name": "digits", "standardize": "feature"},
                "model": {"kind": "mlp", **self.model},
                "optimizer": {"name": self.optimizer, "lr": self.lr},
                "schedule": {"name": "none"},
                "train": {"epochs": self.train_epochs or TRY_EPOCHS, "batch_size": self.batch_size},
            },
            source=f"scenario {self.name!r}",
        )

    @property
    def has_config(self) -> bool:
        return isinstance(self.model, dict) and all(isinstance(v, str | int) for v in self.model.values())


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
        Scenario(
            "resnet-no-norm",
            "30 residual blocks x + W2 relu(W1 x), He init, no normalization: each block triples the "
            "signal's variance (Zhang et al., 2019)",
            "exploding_activations",
            residual_mlp,
        ),
        Scenario(
            "resnet-fixup",
            "the same 30 blocks with each branch's last layer at zero (Fixup): each block starts as the "
            "identity (Zhang et al., 2019)",
            "healthy",
            functools.partial(residual_mlp, zero_last=True),
        ),
        Scenario(
            "post-ln-high-lr",
            "4 post-LN Transformer layers on the digits' rows, Adam at lr 0.05 without warm-up for 42 "
            "steps: the loss stays at chance and the gradient vanishes toward the input (Xiong et al., 2020)",
            "vanishing_gradients",
            row_transformer,
            train_epochs=2,
            lr=0.05,
            optimizer="adam",
            trains=False,
        ),
        Scenario(
            "relu-dying-functional",
            "2 ReLU layers (F.relu in forward) trained with SGD at lr 1.5 for 41 steps: most units of the "
            "second die and stay dead (the chapter)",
            "dead_units",
            functional_relu_mlp,
            train_epochs=1,
            lr=1.5,
            batch_size=32,
            every=5,
            trains=False,
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
        """The expected verdict is found (alone, for "healthy"), and a trained scenario's loss halved
        if it `trains`, or did not if it is a run that fails (a NaN loss did not halve)."""
        expected = self.scenario.expected
        found = self.observed == ["healthy"] if expected == "healthy" else expected in self.observed
        if self.training:
            halved = self.training["loss_after"] <= 0.5 * self.training["loss_before"]
            found = found and halved == self.scenario.trains
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
    model = build(scenario, dataset, generator, seed)
    pick = torch.randperm(len(dataset.train.y), generator=generator)[:BATCH]
    x, y = dataset.train[pick]
    training, monitor = {}, None
    if scenario.train_epochs:
        monitor = Monitor(every=scenario.every)
        training = {
            "loss_before": probed_loss(model, x, y, seed),
            "steps": train(scenario, model, monitor, seed),
        }
    report = probe(model, x, y, monitor=monitor, seed=seed)
    if training:
        training["loss_after"] = report.loss
    return ScenarioResult(scenario, report, training)


def probed_loss(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> float:
    """The cross-entropy `probe` reports for this batch (training mode, dropout seeded by `seed`),
    without measuring the layers: one forward pass, the model left as it was."""
    with untouched(model), torch.no_grad():
        torch.manual_seed(seed)
        return float(F.cross_entropy(model(x), y))


def build(scenario: Scenario, dataset: datasets.Dataset, generator: torch.Generator, seed: int) -> nn.Module:
    """The scenario's network, its weights drawn from `generator`, and any torch default init
    inside a Builder from the global RNG seeded with `seed` (left as it was afterwards)."""
    if isinstance(scenario.model, dict):
        return models.mlp(dataset.feature_shape, dataset.num_classes, **scenario.model, generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return scenario.model(dataset, generator)


def train(scenario: Scenario, model: nn.Module, monitor: Monitor, seed: int) -> int:
    """Train on the digits as the scenario says, with `monitor`; the number of steps taken."""
    dataset = digits()
    optimizer = optim.create(scenario.optimizer, model.parameters(), lr=scenario.lr)
    fit(
        model,
        dataset,
        optimizer=optimizer,
        epochs=scenario.train_epochs,
        batch_size=scenario.batch_size,
        callbacks=[monitor],
        progress=False,
        seed=seed,
    )
    return scenario.train_epochs * -(-len(dataset.train.y) // scenario.batch_size)
