"""Shared test set-up: Keras on its torch backend, deterministic small thread pools."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

# The suite is a gate, so its property tests draw the same examples on every run; a failure in CI
# is then a bug anyone can reproduce. `HYPOTHESIS_PROFILE=explore` draws fresh ones, to hunt for
# new bugs (add --hypothesis-seed=N to replay a hunt).
settings.register_profile("gate", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))


def as_float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def rel_error(actual, expected) -> float:
    """max |actual - expected| / max(|expected|, tiny), in float64."""
    actual = as_float64(actual)
    expected = as_float64(expected)
    scale = expected.abs().max().clamp(min=1e-30)
    return float((actual - expected).abs().max() / scale)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
