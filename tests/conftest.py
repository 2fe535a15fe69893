"""Shared test set-up: Keras on its torch backend, deterministic small thread pools."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

torch.set_num_threads(1)


def rel_error(actual, expected) -> float:
    """max |actual - expected| / max(|expected|, tiny), in float64."""
    actual = torch.as_tensor(actual).detach().to(torch.float64)
    expected = torch.as_tensor(expected).detach().to(torch.float64)
    scale = expected.abs().max().clamp(min=1e-30)
    return float((actual - expected).abs().max() / scale)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
