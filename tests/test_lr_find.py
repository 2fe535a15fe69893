"""The learning-rate finder: suggestions with known answers, and a search that leaves no trace."""

import random

import numpy as np
import pytest
import torch

from gradwell import models, optim
from gradwell.data import load, standardize
from gradwell.errors import ConfigError
from gradwell.train import fit
from gradwell.train.lr_find import lr_find, minimum_over_ten, steepest, suggest, valley

LRS = np.logspace(-5, 1, 61)  # ten points a decade
U = np.log10(LRS)
# falls fastest at 1e-3, flattens by 1e-1, then shoots back up
CURVE = 2 - np.tanh(2 * (U + 3)) + 5 * np.maximum(0, U + 1) ** 2


def test_each_suggestion_on_a_curve_with_known_answers():
    assert minimum_over_ten(LRS, CURVE) == pytest.approx(1e-2)
    assert steepest(LRS, CURVE) == pytest.approx(1e-3)
    startup = CURVE.copy()
    startup[:3] += [0.9, 0.5, 0.2]  # the smoothing's first steps: a fall that says nothing of the rate
    assert steepest(LRS, startup) == pytest.approx(1e-3)
    assert valley(LRS, CURVE) == pytest.approx(1e-3)  # halfway along the fall from 1e-5 to 1e-1
    found, warnings = suggest(LRS, CURVE)
    assert found == pytest.approx({"minimum / 10": 1e-2, "steepest": 1e-3, "valley": 1e-3})
    assert warnings == [
        "the suggestions disagree by 10.0x (more than 3x): look at the curves before choosing"
    ]
    flat, why = suggest(LRS, np.full(61, 2.3) + 0.01 * np.sin(U))
    assert flat == dict.fromkeys(found) and "too flat" in why[0]


def setup(seed=0):
    net = models.mlp(64, 10, hidden=[32, 16], batchnorm="before", dropout=0.2,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return net, optim.create("nadam", net.parameters(), lr=0.002)


def test_the_next_fit_is_bitwise_what_it_would_have_been_without_the_search():
    digits = standardize(load("digits"))[0]
    runs = []
    for search in (False, True):
        net, optimizer = setup()
        if search:
            rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
            found = lr_find(net, digits, optimizer, steps=40, seeds=(0, 1), batch_size=64)
            assert [len(c.lrs) for c in found.curves] and all(c.lrs[0] == 1e-5 for c in found.curves)
            assert torch.equal(torch.get_rng_state(), rng[0]) and np.array_equal(
                np.random.get_state()[1], rng[1]
            )
            assert random.getstate() == rng[2] and optimizer.param_groups[0]["lr"] == 0.002
        history = fit(net, digits, optimizer=optimizer, epochs=2, batch_size=64, seed=3, progress=False)
        runs.append(([{k: v for k, v in e.items() if k != "time"} for e in history.epochs], net.state_dict()))
    (first, weights), (second, weights_after) = runs
    assert first == second
    for key, value in weights.items():  # BatchNorm's moving statistics included
        assert torch.equal(value, weights_after[key]), key


def test_the_search_range_is_checked():
    net, optimizer = setup()
    data = standardize(load("digits"))[0]
    with pytest.raises(ConfigError, match="0 < start_lr < end_lr"):
        lr_find(net, data, optimizer, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError, match="steps must be an integer >= 3; got 2"):
        lr_find(net, data, optimizer, steps=2)


def test_gradwell_lr_find_writes_the_curves_and_suggests(tmp_path, capsys):
    import json

    from gradwell import cli

    overrides = ["--set", "data.name=digits", "--set", "model.depth=2", "--set", "model.width=16"]
    out = str(tmp_path / "search")
    assert cli.main(["lr-find", *overrides, "--steps", "40", "--seeds", "2", "--out", out, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "search.json").read_text())
    assert set(printed["suggestions"]) == {"minimum / 10", "steepest", "valley"}
    assert [curve["seed"] for curve in printed["curves"]] == [0, 1]
    assert (tmp_path / "search.png").stat().st_size > 10_000
    assert cli.main(["lr-find", *overrides, "--seeds", "0"]) == 2
    assert "--seeds must be a positive int; got 0" in capsys.readouterr().err
