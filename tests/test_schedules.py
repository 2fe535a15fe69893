"""gradwell.optim's learning-rate schedules: the chapter's formulas, Keras's plateau rule, 1cycle's shape."""

import io
import types

import numpy as np
import pytest
import reference
import torch
from conftest import rel_error
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from gradwell.errors import GradwellError
from gradwell.optim import SCHEDULES, SGD, AdaGrad, Adam, schedule


def parameters():
    return [torch.nn.Parameter(torch.ones(3))]


def rates(optimizer, scheduler, steps, key="lr"):
    """The value of param_groups[0][key] used by each of `steps` optimizer steps."""
    seen = []
    for _ in range(steps):
        value = optimizer.param_groups[0][key]
        seen.append(value.item() if isinstance(value, torch.Tensor) else value)
        optimizer.step()
        scheduler.step()
    return seen


def error(actual, expected):
    """rel_error of two sequences of Python floats, kept in float64."""
    return rel_error(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64))


@pytest.mark.parametrize("c", [1.0, 2.0, 0.5])
def test_power_follows_the_formula(c):
    optimizer = SGD(parameters(), lr=0.05)
    expected = [reference.power_lr(t, 0.05, s=20, c=c) for t in range(100)]
    assert error(rates(optimizer, schedule("power", optimizer, s=20, c=c), 100), expected) < 1e-14


def test_exponential_follows_the_formula_with_torch_optimizers_too():
    optimizer = torch.optim.Adam(parameters(), lr=0.01)
    expected = [reference.exponential_lr(t, 0.01, s=30) for t in range(100)]
    assert error(rates(optimizer, schedule("exponential", optimizer, s=30), 100), expected) < 1e-14


def test_piecewise_switches_at_the_boundaries():
    optimizer = Adam(parameters(), lr=0.1)
    boundaries, values = [5, 15], [0.01, 0.005, 0.001]
    expected = [reference.piecewise_lr(t, boundaries, values) for t in range(25)]
    assert (
        rates(optimizer, schedule("piecewise", optimizer, boundaries=boundaries, values=values), 25)
        == expected
    )


def test_a_tensor_learning_rate_is_filled_in_place():
    # a captured CUDA graph reads the lr tensor it was captured with
    lr = torch.tensor(0.05, dtype=torch.float64)
    optimizer = SGD(parameters(), lr=lr, momentum=0.9, capturable=True)
    scheduler = schedule("power", optimizer, s=10)
    seen = rates(optimizer, scheduler, 30)
    assert optimizer.param_groups[0]["lr"] is lr
    assert error(seen, [reference.power_lr(t, 0.05, s=10) for t in range(30)]) < 1e-14


def test_a_resumed_schedule_continues_the_sequence():
    optimizer = SGD(parameters(), lr=0.05)
    scheduler = schedule("piecewise", optimizer, boundaries=[3, 6], values=[0.3, 0.2, 0.1])
    rates(optimizer, scheduler, 4)
    saved = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved)
    resumed = SGD(parameters(), lr=0.05)
    resumed_scheduler = schedule("piecewise", resumed, boundaries=[3, 6], values=[0.3, 0.2, 0.1])
    resumed.load_state_dict(checkpoint["optimizer"])
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    assert rates(resumed, resumed_scheduler, 4) == rates(optimizer, scheduler, 4) == [0.2, 0.2, 0.1, 0.1]


def plateau_metrics(generator, epochs=80):
    """A validation loss that improves in bursts and stalls in between, sometimes by less than 1e-4."""
    loss, metrics = 1.0, []
    for u in torch.rand(epochs, 2, generator=generator, dtype=torch.float64).tolist():
        if u[0] < 0.25:
            loss -= 0.05 * u[1]
        elif u[0] < 0.35:
            loss -= 5e-5 * u[1]  # below min_delta: no improvement
        metrics.append(loss + (0.02 * u[1] if u[0] > 0.6 else 0.0))
    return metrics


@pytest.mark.parametrize("patience", [1, 3, 5])
def test_performance_drops_the_rate_like_keras(patience, generator):
    import keras

    metrics = plateau_metrics(generator)
    optimizer = SGD(parameters(), lr=0.1)
    scheduler = schedule("performance", optimizer, patience=patience)
    ours = []
    for metric in metrics:
        scheduler.step(metric)
        ours.append(optimizer.param_groups[0]["lr"])

    callback = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", mode="min", factor=0.5, patience=patience
    )
    callback.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=0.1)))
    callback.on_train_begin()
    expected = []
    for epoch, metric in enumerate(metrics):
        callback.on_epoch_end(epoch, {"val_loss": metric})
        expected.append(callback.model.optimizer.learning_rate)
    assert len(set(expected)) > 2  # the rate dropped more than once
    assert error(ours, expected) < 1e-6  # Keras reads the rate back in float32


def test_performance_counts_epochs_and_the_others_count_steps():
    optimizer = SGD(parameters(), lr=0.1, momentum=0.9)
    arguments = {
        "power": {"s": 10},
        "exponential": {"s": 10},
        "piecewise": {"boundaries": [10], "values": [0.1, 0.01]},
        "onecycle": {"max_lr": 0.1, "total_steps": 100},
        "performance": {},
    }
    assert set(arguments) == set(SCHEDULES)
    for name, kwargs in arguments.items():
        scheduler = schedule(name, optimizer, **kwargs)
        # torch's ReduceLROnPlateau is an LRScheduler too: a loop must test for it by name
        assert isinstance(scheduler, ReduceLROnPlateau) == (name == "performance")
        assert isinstance(scheduler, LRScheduler)


ONECYCLE = {"max_lr": 0.2, "total_steps": 200}
STEPS = np.arange(200)


def test_onecycle_rises_falls_and_anneals_linearly():
    optimizer = SGD(parameters(), lr=0.01, momentum=0.9)
    lrs = rates(optimizer, schedule("onecycle", optimizer, **ONECYCLE), 200)
    assert error(lrs, reference.onecycle_lr(STEPS, 0.2, 200, 0.45, 10.0, 1000.0)) < 1e-12
    assert lrs[0] == pytest.approx(0.02) and max(lrs) == pytest.approx(0.2) and lrs[-1] == pytest.approx(2e-5)


@pytest.mark.parametrize("total_steps", [20, 200])
@pytest.mark.parametrize("three_phase", [True, False])
def test_onecycle_holds_its_final_rate_after_the_last_step(total_steps, three_phase):
    optimizer = SGD(parameters(), lr=0.01, momentum=0.9)
    scheduler = schedule("onecycle", optimizer, max_lr=0.2, total_steps=total_steps, three_phase=three_phase)
    used = rates(optimizer, scheduler, total_steps)  # the documented use: step() after each step
    momentum = optimizer.param_groups[0]["momentum"]
    after = rates(optimizer, scheduler, 3)  # torch would extrapolate below 0, then raise
    assert after == [pytest.approx(used[-1], rel=1e-12)] * 3 == [pytest.approx(2e-5, rel=1e-12)] * 3
    assert optimizer.param_groups[0]["momentum"] == momentum == 0.95


def test_onecycle_rates_used_are_torchs():
    optimizer = SGD(parameters(), lr=0.01, momentum=0.9)
    ours = rates(optimizer, schedule("onecycle", optimizer, max_lr=0.2, total_steps=20), 20)
    optimizer = SGD(parameters(), lr=0.01, momentum=0.9)
    torchs = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        0.2,
        20,
        pct_start=0.45,
        anneal_strategy="linear",
        div_factor=10.0,
        final_div_factor=1000.0,
        three_phase=True,
    )
    assert rates(optimizer, torchs, 20) == ours


@pytest.mark.parametrize(
    ("make", "key"),
    [(lambda p: SGD(p, lr=0.01, momentum=0.9), "momentum"), (lambda p: Adam(p, lr=0.01), "betas")],
)
def test_onecycle_cycles_momentum_the_other_way(make, key):
    optimizer = make(parameters())
    scheduler = schedule("onecycle", optimizer, **ONECYCLE)
    seen = rates(optimizer, scheduler, 200, key=key)
    momenta = [value[0] if key == "betas" else value for value in seen]
    assert error(momenta, reference.onecycle_momentum(STEPS, 200, 0.45, 0.85, 0.95)) < 1e-12
    if key == "betas":
        assert {value[1] for value in seen} == {0.999}


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.01), lambda p: AdaGrad(p, lr=0.01)])
def test_onecycle_leaves_optimizers_without_momentum_alone(make):
    optimizer = make(parameters())
    rates(optimizer, schedule("onecycle", optimizer, **ONECYCLE), 50)
    assert optimizer.param_groups[0].get("momentum", 0.0) == 0.0


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("onecylce", {}, ["'onecylce'", "did you mean 'onecycle'", "performance"]),
        ("power", {}, ["power", "missing argument 's'", "valid arguments: s, c"]),
        ("power", {"s": -10}, ["s", "-10", "(0, inf)"]),
        ("exponential", {"s": 10, "rate": 0.1}, ["unknown argument 'rate'", "valid arguments: s"]),
        (
            "piecewise",
            {"boundaries": [5, 10], "values": [0.1, 0.01]},
            ["2 boundaries", "2 values", "one value more"],
        ),
        ("piecewise", {"boundaries": [10, 5], "values": [0.1, 0.01, 0.001]}, ["increasing", "[10, 5]"]),
        ("piecewise", {"boundaries": [5], "values": [0.1, -0.01]}, ["values[1]", "-0.01"]),
        ("performance", {"factor": 1.5}, ["factor", "1.5", "(0, 1)"]),
        ("performance", {"patience": 0}, ["patience", "0", ">= 1"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": 1}, ["total_steps", "1", ">= 2"]),
        ("onecycle", {"max_lr": float("nan"), "total_steps": 10}, ["max_lr", "nan"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "pct_start": 2.0}, ["onecycle", "2.0"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "div_factor": -1}, ["div_factor", "-1", "(0, inf)"]),
        (
            "onecycle",
            {"max_lr": 0.1, "total_steps": 10, "final_div_factor": 0},
            ["final_div_factor", "(0, inf)"],
        ),
        (
            "onecycle",
            {"max_lr": 0.1, "total_steps": 10, "max_momentum": 2.0},
            ["max_momentum", "2.0", "[0, 1)"],
        ),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "base_momentum": -0.1}, ["base_momentum", "-0.1"]),
        (
            "onecycle",
            {"max_lr": 0.1, "total_steps": 10, "base_momentum": 0.95, "max_momentum": 0.85},
            ["base_momentum <= max_momentum", "0.95", "0.85"],
        ),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "pct_start": 0.7}, ["pct_start", "0.7", "[0, 0.5]"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "pct_start": 0.1}, ["pct_start * total_steps", "1"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": True}, ["total_steps", "True"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "anneal_strategy": "cosine"}, ["'cosine'", "cos"]),
        ("piecewise", {"boundaries": [True], "values": [0.1, 0.01]}, ["increasing", "[True]"]),
        ("performance", {"patience": True}, ["patience", "True"]),
        ("performance", {"mode": "mni"}, ["'mni'", "did you mean 'min'", "max"]),
    ],
)
def test_bad_schedules_name_the_value_and_what_is_valid(name, kwargs, words):
    with pytest.raises(GradwellError) as error:
        schedule(name, SGD(parameters(), lr=0.01, momentum=0.9), **kwargs)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("onecycle", {"max_lr": 1e39, "total_steps": 10}, ["max_lr = 1e+39", "3.40282e+38"]),
        ("onecycle", {"max_lr": 0.1, "total_steps": 10, "div_factor": 1e-300}, ["max_lr / div_factor"]),
        (
            "onecycle",
            {"max_lr": 0.1, "total_steps": 10, "final_div_factor": 1e-300},
            ["max_lr / div_factor / final_div_factor", "final_div_factor=1e-300"],
        ),
        ("piecewise", {"boundaries": [5], "values": [0.1, 1e39]}, ["values[1] = 1e+39", "3.40282e+38"]),
        ("performance", {"min_lr": 1e39}, ["min_lr = 1e+39", "3.40282e+38"]),
    ],
)
def test_a_rate_beyond_float32_is_refused_before_the_kernels_overflow(name, kwargs, words):
    # found by the config fuzzer: a rate the float32 kernels cannot take was a RuntimeError from
    # inside torch mid-run (onecycle's max_lr = 1e39 or a tiny div_factor, a piecewise value, or a
    # min_lr that ReduceLROnPlateau raises the rate to)
    with pytest.raises(GradwellError) as error:
        schedule(name, SGD(parameters(), lr=0.01, momentum=0.9), **kwargs)
    for word in words:
        assert word in str(error.value)
