"""The conditions of SELU's self-normalization (gradwell.selfnorm), as the builders and fit warn of them."""

import warnings

import pytest
import torch

from gradwell.models import cnn, mlp
from gradwell.selfnorm import SelfNormalizationWarning, check_self_normalizing


def quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return mlp(**kwargs)


def test_selu_network_without_problems_does_not_warn():
    model = quiet(in_features=30, out_features=3, depth=5, width=16, activation="selu", dropout=0.1)
    assert check_self_normalizing(model) == []
    quiet(in_features=30, out_features=3, hidden=[8], activation="selu", init="lecun_uniform")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init": "he_normal"}, "LeCun"),
        ({"init": "torch"}, "LeCun"),
        ({"batchnorm": "before"}, "batch normalization"),
        ({"input_batchnorm": True}, "batch normalization"),
        ({"dropout": 0.2, "alpha_dropout": False}, "AlphaDropout"),
    ],
)
def test_selu_network_breaking_a_condition_warns(kwargs, match):
    with pytest.warns(SelfNormalizationWarning, match=match):
        mlp(30, 3, [16, 16], activation="selu", **kwargs)


def test_check_self_normalizing_lists_penalties_and_ignores_other_activations():
    model = quiet(in_features=30, out_features=3, hidden=[16], activation="selu")
    assert len(check_self_normalizing(model, l1=0.0, l2=1e-4)) == 1
    assert len(check_self_normalizing(model, init="he_uniform", l1=1e-3)) == 2
    assert check_self_normalizing(mlp(30, 3, [16], batchnorm="before", dropout=0.5), l2=0.1) == []
    with pytest.warns(SelfNormalizationWarning):
        cnn((40,), 3, [4], activation="selu", batchnorm="after")


def test_fit_warns_once_that_penalties_break_self_normalization():
    from gradwell import optim
    from gradwell.data import Dataset, Split
    from gradwell.train import fit

    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    data = Dataset(Split(x, y), Split(x[:8], y[:8]), Split(x[:8], y[:8]), 3, "random")
    model = mlp(6, 3, [8, 8], activation="selu", dropout=0.1)
    with pytest.warns(SelfNormalizationWarning) as caught:
        fit(model, data, optimizer=optim.create("sgd", model.parameters()), epochs=1, l2=1e-3, progress=False)
    messages = [str(w.message) for w in caught if w.category is SelfNormalizationWarning]
    assert len(messages) == 1 and messages[0].startswith("l1=0, l2=0.001: weight penalties break SELU's")
