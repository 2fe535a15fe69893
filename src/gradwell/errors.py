"""gradwell's own exceptions.

Every error a user can cause (a bad name, a bad value, a bad file) is raised as one of these
before any training starts, with a message that says what was given and what is valid. They
subclass ValueError so that code written against plain Python conventions still catches them.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


class GradwellError(ValueError):
    """Base class of every error gradwell raises on bad input.

    >>> from gradwell import optim
    >>> optim.create("adamm", [])
    Traceback (most recent call last):
        ...
    gradwell.errors.GradwellError: unknown optimizer 'adamm' (did you mean 'adam'?); valid: sgd, ...
    >>> issubclass(GradwellError, ValueError)
    True
    """


class ConfigError(GradwellError):
    """A configuration key, type or value is invalid.

    >>> from gradwell.train import EarlyStopping
    >>> EarlyStopping(patience=0)
    Traceback (most recent call last):
        ...
    gradwell.errors.ConfigError: EarlyStopping patience must be a positive int; got 0
    """


class DataError(GradwellError):
    """A dataset is missing, malformed or inconsistent (file, row and column named).

    >>> from gradwell.data import load
    >>> load("mnst1d")
    Traceback (most recent call last):
        ...
    gradwell.errors.DataError: unknown dataset 'mnst1d' (did you mean 'mnist1d'?); valid: mnist1d, ...
    """


class CheckpointError(GradwellError):
    """A checkpoint is missing, corrupted or belongs to a different architecture.

    >>> from gradwell.train import checkpoint
    >>> checkpoint.load("runs/missing.safetensors")
    Traceback (most recent call last):
        ...
    gradwell.errors.CheckpointError: checkpoint runs/missing.safetensors does not exist
    """


class ProcessLostError(GradwellError):
    """Another process of a data-parallel run ended (killed, crashed) while this one trained.

    >>> raise ProcessLostError("another training process ended at step 7")
    Traceback (most recent call last):
        ...
    gradwell.errors.ProcessLostError: another training process ended at step 7
    """


class NonFiniteError(GradwellError):
    """Training produced a non-finite loss or gradient.

    ``doctor``, when set (``gradwell.job.run`` sets it), is the stability doctor's report on the
    model as it stood before the step that went non-finite.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> from gradwell import data, optim, train
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(32, 4)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> too_high = optim.SGD(model.parameters(), lr=1e38)
    >>> train.fit(model, SimpleNamespace(train=data.Split(x, (x[:, 0] > 0).long())), optimizer=too_high,
    ...           epochs=3, progress=False)
    Traceback (most recent call last):
        ...
    gradwell.errors.NonFiniteError: training became non-finite at step 1 (epoch 2): ...
    """

    doctor: Any = None


def closest(name: str, valid: Iterable[str]) -> str:
    """A ' (did you mean ...?)' hint for `name` among `valid`, or '' when nothing is close."""
    by_lower = {str(v).lower(): v for v in valid}
    match = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[match[0]]!r}?)" if match else ""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> GradwellError:
    """The error for a name missing from one of gradwell's name tables."""
    valid = list(valid)
    return GradwellError(f"unknown {kind} {name!r}{closest(str(name), valid)}; valid: {', '.join(valid)}")


def check_finite(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return `value` as a float after checking it is finite and inside [low, high].

    `low_open` / `high_open` exclude the bound itself, e.g. momentum in [0, 1).
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise GradwellError(f"{name} must be a number, got {value!r}") from None
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise GradwellError(f"{name} must be a finite number in {lo}, {hi}; got {value!r}")
    return value
