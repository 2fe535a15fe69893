"""How to train: one frozen value that checks itself, shared by `fit` and a config's [train].

`fit` takes these as keyword arguments (``fit(model, data, optimizer=..., epochs=5)``), a config's
``[train]`` section is a subclass with the job's defaults (gradwell.config.TrainConfig), and
everything inside gradwell passes the value whole: an option is checked once, when the value is
made, before any data is loaded or any folder written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from gradwell.errors import ConfigError, check_finite, unknown_name
from gradwell.train.losses import CLASSIFICATION, resolve_loss

PRECISIONS = ("fp32", "bf16")
SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
NONFINITE = ("stop", "skip")


def positive_count(name: str, value: Any) -> None:
    """A count that must be an int >= 1 (a bool is refused, though Python counts it as an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int; got {value!r}")


def check_step_options(precision: str, on_nonfinite: str) -> None:
    """The names a step takes, checked before any step runs."""
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    if on_nonfinite not in NONFINITE:
        raise unknown_name("on_nonfinite", on_nonfinite, NONFINITE)


@dataclass(frozen=True)
class TrainOptions:
    """The options of a training run, checked when made (ConfigError names the option).

    Defaults are Keras's where `fit` mirrors Keras (batch 32), torch's or the chapter's elsewhere.

    >>> options = TrainOptions(epochs=3, l2=1e-4)
    >>> options.batch_size, options.steps_per_epoch(100)
    (32, 4)
    >>> TrainOptions(epochs=0)
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: epochs must be a positive int; got 0
    """

    epochs: int
    batch_size: int = 32
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy"
    l1: float = 0.0  # penalties on Linear and Conv weights, added to the differentiated loss
    l2: float = 0.0
    max_norm: float | None = None  # after each step, each unit's incoming weights at most this norm
    seed: int = 0  # shuffling and every random op of the run
    on_nonfinite: str = "stop"  # or "skip" a non-finite step (reads the device every step)
    precision: str = "fp32"  # or "bf16" autocast of forward and loss
    fast: bool = True  # the fastest training path that applies (gradwell.train.paths)
    compile: bool = False  # torch.compile the forward pass
    sync_batchnorm: bool = False  # data-parallel runs: BatchNorm statistics over all processes

    def __post_init__(self) -> None:
        positive_count("epochs", self.epochs)
        positive_count("batch_size", self.batch_size)
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not SEEDS[0] <= self.seed <= SEEDS[1]
        ):
            raise ConfigError(
                f"seed must be an int in [{SEEDS[0]}, {SEEDS[1]}] (torch's generators); got {self.seed!r}"
            )
        resolve_loss(self.loss)
        check_finite("l1", self.l1, low=0.0)
        check_finite("l2", self.l2, low=0.0)
        if self.max_norm is not None:
            check_finite("max_norm", self.max_norm, low=0.0, low_open=True)
        check_step_options(self.precision, self.on_nonfinite)

    @property
    def classification(self) -> bool:
        """Whether the loss compares logits with class labels (so accuracy is measured)."""
        return self.loss in CLASSIFICATION

    @property
    def penalized(self) -> bool:
        return self.l1 > 0 or self.l2 > 0

    def steps_per_epoch(self, samples: int, drop_last: bool = False) -> int:
        """Optimizer steps in one epoch over `samples`; `drop_last` leaves out a partial batch."""
        return samples // self.batch_size if drop_last else -(-samples // self.batch_size)

    def steps(self, samples: int, drop_last: bool = False) -> int:
        """Optimizer steps in the whole run: what a schedule spanning the run is sized for."""
        return self.epochs * self.steps_per_epoch(samples, drop_last)

    def replace(self, **changes: Any) -> TrainOptions:
        """A copy with `changes`, checked; an unknown option names the valid ones.

        >>> TrainOptions(epochs=3).replace(epochs=5, seed=1).epochs
        5
        """
        check_names(type(self), changes)
        return dataclasses.replace(self, **changes)


def check_names(cls: type[TrainOptions], names: Any) -> None:
    """ConfigError naming the first of `names` that is no field of `cls`, with the valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ConfigError(str(unknown_name("training option", unknown[0], valid)))


def training_options(options: TrainOptions | None, changes: dict[str, Any]) -> TrainOptions:
    """`options` with `changes`, or TrainOptions made from `changes` (fit's keywords): what a
    function taking both ``options=`` and single options trains with."""
    if options is not None:
        return options.replace(**changes) if changes else options
    check_names(TrainOptions, changes)
    if "epochs" not in changes:
        raise ConfigError("fit needs epochs (or options=TrainOptions(epochs=...))")
    return TrainOptions(**changes)
