"""The learning-rate finder: suggestions with known answers, a search that leaves no trace, and
schedule.max_lr = "find"."""

import json
import random
import re

import numpy as np
import pytest
import torch

from gradwell import models, optim
from gradwell.data import load, standardize
from gradwell.errors import ConfigError
from gradwell.train import fit
from gradwell.train.lr_find import lr_find, minimum_over_ten, spread, steepest, suggest, valley

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
    found, warnings, verdict = suggest(LRS, CURVE)
    assert found == pytest.approx({"minimum / 10": 1e-2, "steepest": 1e-3, "valley": 1e-3})
    assert warnings == [
        "the suggestions disagree by 10.0x (more than 3x): look at the curves before choosing"
    ]
    assert verdict == "disagree"
    flat, why, verdict = suggest(LRS, np.full(61, 2.3) + 0.01 * np.sin(U))
    assert flat == dict.fromkeys(found) and "too flat" in why[0] and verdict == "flat"


FALL = CURVE[6] - CURVE.min()  # from the first tenth of the curve (what `spread` skips) to its minimum


@pytest.mark.parametrize(("apart", "verdict"), [(0.3, "disagree"), (0.6, "noisy")])
def test_seeds_further_apart_than_half_the_fall_are_too_noisy_to_suggest(apart, verdict):
    seeds = np.array([CURVE, CURVE + apart, CURVE - apart])  # the median is CURVE itself
    noise = spread(seeds)
    assert noise == pytest.approx(2 * apart / FALL)  # 0.30 and 0.60 of the fall
    found, warnings, said = suggest(LRS, np.median(seeds, axis=0), noise)
    assert said == verdict
    if verdict == "noisy":
        assert found == dict.fromkeys(found) and "too noisy to suggest a rate" in warnings[0]
    else:  # the clean band leaves the known answers
        assert found == pytest.approx({"minimum / 10": 1e-2, "steepest": 1e-3, "valley": 1e-3})
    # the band counts only up to the minimum: curves that part where they shoot up are not noisy
    parting = np.array([CURVE, CURVE + 3 * np.maximum(0, U + 1), CURVE - 3 * np.maximum(0, U + 1)])
    assert spread(parting) == 0.0
    assert spread(seeds[:1]) is None  # one seed: nothing to compare


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
            assert found.noise is not None and found.verdict in ("ok", "disagree", "flat", "noisy")
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
    from gradwell import cli

    overrides = ["--set", "data.name=digits", "--set", "model.depth=2", "--set", "model.width=16"]
    out = str(tmp_path / "search")
    assert cli.main(["lr-find", *overrides, "--steps", "40", "--seeds", "2", "--out", out, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "search.json").read_text())
    assert set(printed["suggestions"]) == {"minimum / 10", "steepest", "valley"}
    assert printed["verdict"] in ("ok", "disagree", "flat", "noisy") and printed["noise"] >= 0
    assert [curve["seed"] for curve in printed["curves"]] == [0, 1]
    assert (tmp_path / "search.png").stat().st_size > 10_000
    assert cli.main(["lr-find", *overrides, "--seeds", "0"]) == 2
    assert "--seeds must be a positive int; got 0" in capsys.readouterr().err


def test_gradwell_lr_find_on_a_config_that_finds_its_max_lr_searches_once(tmp_path, monkeypatch, capsys):
    from gradwell import build, cli

    def searched_before(*args, **kwargs):
        raise AssertionError("the recipe searched before the command's own search")

    monkeypatch.setattr(build, "lr_find", searched_before)
    overrides = ["--set", "data.name=digits", "--set", "model.depth=1", "--set", "schedule.max_lr=find"]
    out = str(tmp_path / "once")
    assert cli.main(["lr-find", *overrides, "--steps", "30", "--seeds", "1", "--out", out, "--json"]) == 0
    assert [curve["seed"] for curve in json.loads(capsys.readouterr().out)["curves"]] == [0]


FOUND = {  # a tiny digits network whose 1cycle peak the learning-rate finder picks
    "data": {"name": "digits"},
    "model": {"depth": 1, "width": 16},
    "schedule": {"name": "onecycle", "max_lr": "find"},
    "train": {"epochs": 1, "batch_size": 128},
    "output": {"progress": False, "name": "found"},
}


def test_max_lr_find_trains_with_the_finders_minimum_over_ten(tmp_path, capsys):
    from gradwell import build, job
    from gradwell import config as configs
    from gradwell.commands.train import show

    config = configs.from_dict({**FOUND, "output": {**FOUND["output"], "dir": str(tmp_path)}})
    searched = build.recipe(configs.from_dict({**FOUND, "schedule": {"name": "onecycle"}}))
    net = searched.model()  # the run's model and optimizer, searched as lr_find does by default
    expected = lr_find(net, searched.dataset, searched.optimizer(net), batch_size=128).suggestions
    prepared = build.prepare(config)
    assert prepared.config.schedule["max_lr"] == expected["minimum / 10"]
    assert prepared.optimizer.param_groups[0]["max_lr"] == expected["minimum / 10"]  # the schedule's peak
    result = job.run(config)
    assert result.epochs and all(np.isfinite(e["loss"]) for e in result.epochs)
    written = (result.run_dir / "config.toml").read_text()
    assert f"max_lr = {expected['minimum / 10']!r}" in written  # the rate used, to rerun or resume
    recorded = json.loads((result.run_dir / "result.json").read_text())["lr_find"]
    assert recorded["max_lr"] == expected["minimum / 10"] and recorded["rule"] == "minimum / 10"
    show(result, as_json=False)  # what gradwell train prints
    printed = capsys.readouterr().out
    assert "max_lr found" in printed and f"{expected['minimum / 10']:.4g} (the learning-rate" in printed


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"name": "onecycle", "max_lr": "fnd"},
         "schedule.max_lr = 'fnd' is not valid (did you mean 'find'?); valid: a rate above 0, or 'find'"),
        ({"name": "power", "s": "find"},
         "schedule.s = 'find' (schedule 'power'): only max_lr of the onecycle schedule can be found"),
        ({"name": "onecycle", "max_lr": 0.01, "total_steps": "find"},
         "schedule.total_steps = 'find' (schedule 'onecycle'): only max_lr of the onecycle"),
    ],
)  # fmt: skip
def test_find_is_refused_anywhere_but_onecycles_max_lr(schedule, message):
    from gradwell import build
    from gradwell import config as configs

    with pytest.raises(ConfigError, match=re.escape(message)):
        build.check_sections(configs.from_dict({"schedule": schedule}))


def test_a_search_that_suggests_nothing_fails_before_training():
    from gradwell.build import found_rate
    from gradwell.train.lr_find import LRCurve, LRSearch

    noisy = suggest(LRS, CURVE, noise=0.9)
    found = LRSearch([LRCurve(0, list(LRS), list(CURVE), "reached end_lr 10")], *noisy)
    with pytest.raises(ConfigError, match=r"suggests no rate .*too noisy.*give schedule.max_lr a rate"):
        found_rate(found)
    assert found_rate(LRSearch(found.curves, *suggest(LRS, CURVE))) == pytest.approx(1e-2)
