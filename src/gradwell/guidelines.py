"""The chapter's practical guidelines as data: each choice, the config change that makes it, and why.

Géron's chapter 11 ends with two default configurations ("Summary and Practical Guidelines"): one
for deep networks in general, and a self-normalizing one for a plain stack of dense layers:

| choice          | default                                  | self-normalizing              |
|-----------------|------------------------------------------|-------------------------------|
| initialization  | He                                       | LeCun                         |
| activation      | ELU if shallow, Swish if deep            | SELU                          |
| normalization   | none if shallow, batch norm if deep      | none (self-normalization)     |
| regularization  | early stopping, weight decay             | early stopping, alpha dropout |
| optimizer       | AdamW (or Nadam, Nesterov momentum)      | Nesterov momentum             |
| schedule        | 1cycle (or performance scheduling)       | 1cycle                        |

``GUIDELINES`` declares each choice once, as a config change with its reason; ``recommend`` puts
them together for a depth and `gradwell init-config` writes the result as a commented TOML file.
The stability doctor's fixes take their config changes from the same records
(gradwell.diagnose.rules), so what the doctor prescribes and what the guidelines recommend cannot
drift apart.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from gradwell.build import DEFAULT_OPTIMIZER
from gradwell.config import DEFAULT, Config, with_changes
from gradwell.errors import unknown_name
from gradwell.optim import OPTIMIZERS, SCHEDULES
from gradwell.train.options import positive_count


@dataclass(frozen=True)
class Scaled:
    """A change relative to the config's own value (or the default it stands for): times `factor`."""

    factor: float


@dataclass(frozen=True)
class Guideline:
    """One choice of the chapter: the config keys it sets (``section.key -> value``) and why.

    >>> GUIDELINES["he_init"].changes
    {'model.init': 'he_normal'}
    """

    changes: Mapping[str, Any]
    reason: str


GUIDELINES: dict[str, Guideline] = {
    "he_init": Guideline(
        {"model.init": "he_normal"},
        "He initialization keeps the signal's variance through ReLU-like layers (He et al., 2015)",
    ),
    "lecun_init": Guideline(
        {"model.init": "lecun_normal"},
        "under LeCun initialization SELU layers self-normalize (Klambauer et al., 2017)",
    ),
    "glorot_init": Guideline(
        {"model.init": "glorot_uniform"},
        "Glorot initialization balances the forward and backward variances (Glorot and Bengio, 2010)",
    ),
    "elu": Guideline(
        {"model.activation": "elu"},
        "ELU for a shallow net: no dead units, and it converges faster than ReLU (Clevert et al., 2016; "
        "gradwell claim 3)",
    ),
    "swish": Guideline(
        {"model.activation": "swish"},
        "Swish for a deep net: smooth, and it passes a gradient for negative inputs "
        "(Ramachandran et al., 2017)",
    ),
    "selu": Guideline(
        {"model.activation": "selu"},
        "SELU: a plain stack of dense SELU layers keeps mean 0 and variance 1 by itself "
        "(Klambauer et al., 2017)",
    ),
    "leaky_relu": Guideline(
        {"model.activation": "leaky_relu", "model.activation_options": {"alpha": 0.2}},
        "leaky ReLU (alpha 0.2) passes a gradient for negative inputs, so no unit dies for good "
        "(Xu et al., 2015)",
    ),
    "batchnorm": Guideline(
        {"model.batchnorm": "before"},
        "batch normalization before each activation keeps every layer's inputs at one scale, so a deep net "
        "trains at higher learning rates (Ioffe and Szegedy, 2015)",
    ),
    "no_batchnorm": Guideline(
        {"model.batchnorm": "none"},
        "no batch normalization: a shallow net with He initialization trains without it",
    ),
    "no_batchnorm_selu": Guideline(
        {"model.batchnorm": "none"},
        "no batch normalization: SELU layers normalize themselves, and batch normalization breaks it",
    ),
    "alpha_dropout": Guideline(
        {"model.alpha_dropout": True},
        "AlphaDropout keeps SELU's mean and variance, which regular dropout breaks; raise model.dropout "
        "(e.g. to 0.1) if the net overfits",
    ),
    "standardize": Guideline(
        {"data.standardize": True},
        "standardized inputs (fitted on the training split): the initializations assume inputs of mean 0 "
        "and variance 1, and SELU needs them",
    ),
    "early_stopping": Guideline(
        {"train.early_stopping": 5},
        "early stopping: stop when the validation loss has not improved for 5 epochs and keep the best "
        "epoch's weights, the chapter's first regularizer",
    ),
    "adamw": Guideline(
        {"optimizer.name": "adamw", "optimizer.weight_decay": 0.004},
        "AdamW: Adam's speed with decoupled weight decay (Loshchilov and Hutter, 2019), which regularizes "
        "as an l2 penalty cannot under Adam; 0.004 is Keras's default",
    ),
    "nadam": Guideline(
        {"optimizer.name": "nadam"},
        "an adaptive optimizer (Nadam: Adam with Nesterov momentum, Dozat 2016) scales each parameter's "
        "step by its own gradients, so slow layers catch up",
    ),
    "nesterov": Guideline(
        {"optimizer.name": "nesterov"},
        "Nesterov momentum (0.9): often generalizes better than adaptive methods (Wilson et al., 2017)",
    ),
    "onecycle": Guideline(
        {"schedule.name": "onecycle"},
        "1cycle: the learning rate rises to max_lr and falls far below it, which trains fast and well "
        "(Smith, 2018); `gradwell lr-find` finds max_lr for your data",
    ),
    "performance": Guideline(
        {"schedule.name": "performance"},
        "performance scheduling: divide the learning rate when the validation loss stops improving",
    ),
    "lower_lr": Guideline(
        {"optimizer.lr": Scaled(0.1), "schedule.max_lr": Scaled(0.1)},
        "a learning rate ten times lower (and a 1cycle peak too): steps too large for the loss's curvature "
        "diverge, or push units into dead or saturated regions",
    ),
}
# the self-normalizing configuration's model choices besides SELU itself: each condition of
# self-normalization that gradwell.selfnorm checks is met once they are made
SELF_NORMALIZING = ("lecun_init", "no_batchnorm_selu", "alpha_dropout")

# the 1cycle peak for each optimizer, a starting point that `gradwell lr-find` refines: 0.004 is
# what the default job's Nadam uses on MNIST-1D; for Nesterov momentum, a 20 x 100 SELU net on
# 4,000 MNIST-1D samples trained at a 0.01 or 0.02 peak and diverged at 0.05 (checked 2026-12-01)
PEAK_LR = {"adamw": 0.004, "nadam": 0.004, "nesterov": 0.01}
OPTIMIZER_CHOICES = tuple(PEAK_LR)
SCHEDULE_CHOICES = ("onecycle", "performance")
KINDS = ("default", "self_normalizing")
# The chapter says "if deep" without a number; gradwell draws the line at its default job's 6 hidden
# layers, the shallowest net it trains with batch normalization and Swish
DEEP = 6


@dataclass(frozen=True)
class Recommendation:
    """The chapter's configuration for one network: config changes, each with the guideline that
    chose it (``to_toml`` writes the guideline's reason above the key).

    >>> rec = recommend(20)
    >>> rec.changes["model.activation"], rec.changes["model.batchnorm"], rec.changes["model.init"]
    ('swish', 'before', 'he_normal')
    >>> rec.config().model["depth"]
    20
    """

    kind: str
    depth: int
    changes: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)  # key -> why, for the first key of a guideline

    def config(self) -> Config:
        """The recommended config, checked as a loaded one is."""
        return with_changes(Config(), self.changes, f"the {self.kind} recommendation")

    def to_toml(self) -> str:
        """A TOML config for ``gradwell train``, each choice commented with its reason."""
        lines = [
            f"# gradwell init-config: the chapter's {self.kind.replace('_', '-')} configuration for "
            f"{self.depth} hidden layers.",
            "# Each choice says why; change any of them, then `gradwell train THIS_FILE`.",
        ]
        sections: dict[str, list[str]] = {}
        for key, value in self.changes.items():
            section, _, name = key.partition(".")
            entry = sections.setdefault(section, [])
            if key in self.reasons:
                entry += textwrap.wrap(self.reasons[key], 100, initial_indent="# ", subsequent_indent="# ")
            entry.append(tomli_w.dumps({name: value}).strip())
        for section, entry in sections.items():
            lines += ["", f"[{section}]", *entry]
        return "\n".join(lines) + "\n"


def recommend(
    depth: int,
    kind: str = "default",
    *,
    width: int = 100,
    optimizer: str | None = None,
    schedule: str = "onecycle",
    data: str = "mnist1d",
    epochs: int = 30,
) -> Recommendation:
    """The chapter's configuration for an MLP of `depth` hidden layers of `width` units.

    `kind` is "default" (He init, ELU below DEEP hidden layers and Swish from there on, batch
    normalization from DEEP on, early stopping, AdamW) or "self_normalizing" (LeCun init, SELU, no
    batch normalization, alpha dropout, early stopping, Nesterov momentum). `optimizer` (one of
    OPTIMIZER_CHOICES) and `schedule` ("onecycle" or "performance") replace the kind's choice.
    `data` names the data set (MNIST-1D with the default job's 40,000 samples by default).

    >>> shallow = recommend(3)
    >>> [shallow.changes[key] for key in ("model.activation", "model.batchnorm", "optimizer.name")]
    ['elu', 'none', 'adamw']
    >>> selu = recommend(100, "self_normalizing")
    >>> selu.changes["model.init"], selu.changes["model.activation"], selu.changes["optimizer.name"]
    ('lecun_normal', 'selu', 'nesterov')
    """
    check_choices(depth, kind, width, optimizer, schedule, epochs)
    deep = depth >= DEEP
    if kind == "default":
        model = ["he_init", "swish" if deep else "elu", "batchnorm" if deep else "no_batchnorm"]
        optimizer = optimizer or "adamw"
    else:
        model = ["selu", *SELF_NORMALIZING]
        optimizer = optimizer or "nesterov"
    data_options = dict(DEFAULT["data"]) if data == "mnist1d" else {"name": data}
    changes = {f"data.{key}": value for key, value in data_options.items()}
    changes |= {"model.kind": "mlp", "model.depth": depth, "model.width": width}
    reasons: dict[str, str] = {}
    for name in ["standardize", *model, optimizer, schedule]:
        guideline = GUIDELINES[name]
        reasons[next(iter(guideline.changes))] = guideline.reason
        changes |= guideline.changes
    if schedule == "onecycle":
        changes["schedule.max_lr"] = PEAK_LR[optimizer]
    changes |= {"train.epochs": epochs} | GUIDELINES["early_stopping"].changes
    reasons["train.early_stopping"] = GUIDELINES["early_stopping"].reason
    return Recommendation(kind, depth, changes, reasons)


def check_choices(
    depth: int, kind: str, width: int, optimizer: str | None, schedule: str, epochs: int
) -> None:
    for name, value in (("depth", depth), ("width", width), ("epochs", epochs)):
        positive_count(name, value)
    if kind not in KINDS:
        raise unknown_name("kind", kind, KINDS)
    if optimizer is not None and optimizer not in OPTIMIZER_CHOICES:
        raise unknown_name("optimizer", optimizer, OPTIMIZER_CHOICES)
    if schedule not in SCHEDULE_CHOICES:
        raise unknown_name("schedule", schedule, SCHEDULE_CHOICES)


def resolved(config: Config, changes: Mapping[str, Any]) -> dict[str, Any]:
    """`changes` with each Scaled value made a number from `config`: its value, or the default of the
    optimizer's or schedule's parameter; a key with neither (max_lr without a 1cycle) is left out.

    >>> from gradwell import config as configs
    >>> resolved(configs.load(), GUIDELINES["lower_lr"].changes)  # Nadam at 0.002, 1cycle up to 0.004
    {'optimizer.lr': 0.0002, 'schedule.max_lr': 0.0004}
    >>> resolved(configs.load(None, ["schedule.name=none"]), GUIDELINES["lower_lr"].changes)
    {'optimizer.lr': 0.0002}
    """
    found = {}
    for key, value in changes.items():
        if isinstance(value, Scaled):
            current = current_value(config, key)
            if not isinstance(current, (int, float)) or isinstance(current, bool):  # absent, or "find"
                continue
            value = float(f"{current * value.factor:.6g}")  # 0.1 * 0.002 is not 0.0002 in binary
        found[key] = value
    return found


def current_value(config: Config, key: str) -> Any:
    """The value `key` has in `config`, or the default of the optimizer's or schedule's parameter."""
    section, _, name = key.partition(".")
    table = getattr(config, section)
    if name in table:
        return table[name]
    factories = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}
    factory = factories.get(section, {}).get(
        table.get("name", DEFAULT_OPTIMIZER if section == "optimizer" else None)
    )
    parameter = inspect.signature(factory).parameters.get(name) if factory is not None else None
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def changed(config: Config, changes: Mapping[str, Any], what: str = "change") -> Config:
    """`config` with `changes` made (Scaled values resolved), checked as a loaded config is.

    >>> from gradwell import config as configs
    >>> changed(configs.load(), GUIDELINES["he_init"].changes).model["init"]
    'he_normal'
    """
    return with_changes(config, resolved(config, changes), what)
