"""The stability doctor: statistics against plain references, verdicts on models built to show
them, the Monitor's sampling, the JSON schema and the command line."""

import json
import math
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import gradwell, rel_error
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradwell import config as configs
from gradwell import models, optim
from gradwell.commands.diagnose import plot_path
from gradwell.diagnose import (
    STATS,
    VERDICTS,
    Monitor,
    Thresholds,
    diagnose,
    find_layers,
    probe,
    run_scenario,
)
from gradwell.diagnose.rules import clip_fix
from gradwell.diagnose.scenarios import SCENARIOS, digits, twice_he_normal_
from gradwell.diagnose.stats import PERCENTILES, activation_stats, dead_fraction, saturated_fraction
from gradwell.errors import ConfigError, GradwellError, NonFiniteError
from gradwell.train import Callback, fit


def mlp(seed=0, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return models.mlp(64, 10, generator=torch.Generator().manual_seed(seed), **options)


@pytest.fixture(scope="module")
def batch():
    data = digits()
    pick = torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(7))[:256]
    return data.train.x[pick], data.train.y[pick]


def names(report):
    return [v.name for v in report.verdicts]


# statistics against plain references


def test_activation_statistics_match_numpy(generator):
    y = torch.randn(300, 50, generator=generator) * 3 + 1
    stats = dict(zip(STATS, activation_stats(y, "linear").tolist(), strict=False))
    values = y.double().numpy().ravel()
    assert rel_error(stats["act_mean"], values.mean()) < 1e-5
    assert rel_error(stats["act_std"], values.std()) < 1e-5
    expected = np.percentile(values, PERCENTILES)
    actual = [stats[f"act_p{p}"] for p in PERCENTILES]
    assert rel_error(actual, expected) < 1e-5
    assert math.isnan(stats["saturated"]) and math.isnan(stats["dead"]) and stats["act_nonfinite"] == 0


def test_saturated_fraction_uses_the_documented_bounds(generator):
    z = torch.randn(400, 30, generator=generator) * 4
    sig, tanh = torch.sigmoid(z), torch.tanh(z)
    s, t = sig.double().numpy(), tanh.double().numpy()
    assert float(saturated_fraction(sig, "sigmoid")) == pytest.approx(((s < 0.01) | (s > 0.99)).mean())
    assert float(saturated_fraction(tanh, "tanh")) == pytest.approx((np.abs(t) > 0.99).mean())
    assert math.isnan(float(saturated_fraction(torch.relu(z), "relu")))


def test_dead_units_counted_exactly_on_a_constructed_network(generator, batch):
    x, y = batch
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    dead = [1, 4, 6]
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(8, 64, generator=generator))
        model[0].bias.zero_()
        model[0].weight[dead] = 0.0
        model[0].bias[dead] = -1.0  # pre-activation -1 for every sample
    report = probe(model, x, y)
    assert [layer.name for layer in report.layers] == ["0", "1", "2"]
    assert report.layers[1].stats["dead"] == len(dead) / 8
    # a unit alive for one sample only is not dead
    h = torch.zeros(5, 3)
    h[2, 1] = 0.5
    assert float(dead_fraction(h, "relu")) == pytest.approx(2 / 3)
    # convolutions: a channel is dead when zero at every position of every sample
    c = torch.rand(4, 3, 7, generator=generator)
    c[:, 0] = 0.0
    c[1:, 2] = 0.0
    assert float(dead_fraction(c, "relu")) == pytest.approx(1 / 3)
    assert math.isnan(float(dead_fraction(c, "selu")))


def test_gradients_match_autograd_in_float64(batch):
    x, y = batch
    model = mlp(depth=3, width=32, activation="tanh")
    report = probe(model, x, y)
    # reference: the same network in float64, gradients by autograd
    ref = [
        m.double() for m in (model.hidden1.linear, model.hidden2.linear, model.hidden3.linear, model.output)
    ]
    h, outs = x.double(), []
    for linear in ref[:-1]:
        h = torch.tanh(linear(h))
        h.retain_grad()
        outs.append(h)
    logits = ref[-1](h)
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    for layer, out, linear in zip(report.layers, [*outs, logits], ref, strict=True):
        assert rel_error(layer.stats["out_grad_norm"], out.grad.norm()) < 1e-5
        assert rel_error(layer.stats["out_grad_std"], out.grad.std(correction=0)) < 1e-5
        assert rel_error(layer.stats["out_grad_scale"], out.grad.pow(2).mean().sqrt()) < 1e-5
        assert rel_error(layer.stats["weight_grad_norm"], linear.weight.grad.norm()) < 1e-5
        assert rel_error(layer.stats["weight_norm"], linear.weight.norm()) < 1e-5
    grads = [p.grad for m in ref for p in m.parameters()]
    assert rel_error(report.grad_norm, torch.sqrt(sum((g**2).sum() for g in grads))) < 1e-5


def test_probe_leaves_no_trace(batch):
    x, y = batch
    model = mlp(depth=3, width=32, activation="relu", batchnorm="before", dropout=0.2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    probe(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())
    assert not any(m._forward_hooks for m in model.modules())


def test_layers_of_builders_and_of_any_module():
    model = mlp(depth=3, width=16, activation="sigmoid")
    assert [(layer.name, layer.kind) for layer in find_layers(model)] == [
        ("hidden1", "sigmoid"),
        ("hidden2", "sigmoid"),
        ("hidden3", "sigmoid"),
        ("output", "linear"),
    ]
    generic = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    layers = find_layers(generic)
    kinds = ["linear", "tanh", "linear", "relu", "linear"]
    assert [(layer.name, layer.kind) for layer in layers] == [(str(i), k) for i, k in enumerate(kinds)]
    assert layers[2].weights == (generic[2].weight,) and layers[1].weights == ()

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    assert [layer.name for layer in find_layers(Functional())] == ["a", "b"]  # without a pass
    report = probe(Functional(), torch.randn(16, 4), torch.arange(16) % 2)  # traced: the relu too
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ("a", "linear"),
        ("relu", "relu"),
        ("b", "linear"),
    ]


def test_probe_measures_a_cnn_per_channel(batch):
    x, y = batch
    model = models.cnn((64,), 10, channels=(4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.conv1.conv.bias[2] = -100.0  # channel 2 dead everywhere
    report = probe(model, x, y)
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ("conv1", "relu"),
        ("conv2", "relu"),
        ("output", "linear"),
    ]
    # a channel is dead when zero at every position of every sample; measured before the pooling
    with torch.no_grad():
        h1 = torch.relu(model.conv1.conv(model.unflatten(x)))
        h2 = torch.relu(model.conv2.conv(model.conv1.pool(h1)))
    expected = [float((h == 0).all(dim=2).all(dim=0).double().mean()) for h in (h1, h2)]
    assert expected[0] == 0.25
    assert [layer.stats["dead"] for layer in report.layers[:2]] == pytest.approx(expected)
    assert rel_error(report.layers[1].stats["act_std"], h2.double().std(correction=0)) < 1e-5


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_probe_split_measures_a_2d_cnn_on_stored_pixels(shape):
    from gradwell.data import Affine, Split, standardize
    from gradwell.data.dataset import Dataset
    from gradwell.diagnose.checkup import probe_split

    pixels = torch.randint(
        0, 256, (24, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    split = Split(pixels, torch.arange(24) % 10, Affine.pixels())
    train = standardize(Dataset(split, split, split, 10, "images"), per="channel")[0].train
    model = models.cnn(shape, 10, channels=(4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.conv1.conv.bias[1] = -100.0  # channel 1 dead everywhere
    report = probe_split(model, train, size=16, seed=3)
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ("conv1", "relu"), ("conv2", "relu"), ("output", "linear"),
    ]  # fmt: skip
    pick = torch.randperm(24, generator=torch.Generator().manual_seed(3))[:16]
    with torch.no_grad():  # dead: zero at every position (H, W) of every sample
        h1 = torch.relu(model.conv1.conv(train[pick][0]))
    assert report.layers[0].stats["dead"] == pytest.approx(
        float((h1 == 0).all(3).all(2).all(0).double().mean())
    )
    assert report.layers[0].stats["dead"] == 0.25


# verdicts, each on a model built to show it, and not on a healthy one


@pytest.fixture(scope="module")
def reports(batch):
    x, y = batch
    built = {
        "healthy_relu": mlp(depth=30, width=100, activation="relu"),
        "healthy_selu": mlp(depth=30, width=100, activation="selu"),
        "vanishing": mlp(depth=30, width=100, activation="relu", init="glorot_normal"),
        "exploding": mlp(depth=30, width=100, activation="relu", init=twice_he_normal_),
        "saturation": mlp(depth=5, width=100, activation="sigmoid", init="standard_normal"),
        "dead": mlp(depth=3, width=50, activation="relu"),
        "selu_dropout": mlp(depth=100, width=100, activation="selu", dropout=0.2, alpha_dropout=False),
    }
    built["overflow"] = mlp(depth=4, width=32, activation="elu")
    with torch.no_grad():
        built["dead"].hidden2.linear.bias[:40] = -100.0
        built["overflow"].hidden2.linear.weight.mul_(1e38)  # infinite activations, NaN gradients
    return {name: probe(model, x, y) for name, model in built.items()}


@pytest.mark.parametrize(
    ("model", "verdict"),
    [
        ("vanishing", "vanishing_gradients"),
        ("exploding", "exploding_gradients"),
        ("saturation", "saturation"),
        ("saturation", "uneven_learning"),
        ("dead", "dead_units"),
    ],
)
def test_each_verdict_fires_on_its_model_and_not_on_healthy_ones(reports, model, verdict):
    assert verdict in names(reports[model])
    assert names(reports["healthy_relu"]) == ["healthy"]
    assert names(reports["healthy_selu"]) == ["healthy"]


def clipped_net(activation, generator, x, dead=(), scale=1.0):
    """Linear(64, 16) -> `activation` -> Linear(16, 10), N(0, scale^2) first weights; the `dead`
    units' pre-activations are -1 for every sample. Returns the model and its pre-activations."""
    model = nn.Sequential(nn.Linear(64, 16), activation, nn.Linear(16, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(16, 64, generator=generator) * scale)
        model[0].bias.copy_(torch.randn(16, generator=generator) * scale)
        model[0].weight[list(dead)] = 0.0
        model[0].bias[list(dead)] = -1.0
    w, b = (p.detach().double().numpy() for p in (model[0].weight, model[0].bias))
    z = x.double().numpy() @ w.T + b
    return model, z


def test_relu6_units_die_like_relu_units(generator, batch):
    x, y = batch
    dead = sorted(torch.randperm(16, generator=generator)[:12].tolist())
    model, z = clipped_net(nn.ReLU6(), generator, x, dead, scale=64**-0.5)
    report = probe(model, x, y)
    h = np.clip(z, 0, 6)  # the reference ReLU6
    expected = (h == 0).all(axis=0).mean()
    assert expected == 0.75
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ("0", "linear"),
        ("1", "relu"),
        ("2", "linear"),
    ]
    assert report.layers[1].stats["dead"] == expected
    (verdict,) = [v for v in report.verdicts if v.name == "dead_units"]
    assert verdict.layers == ["1"] and verdict.evidence["dead"] == {"1": expected}
    alive, _ = clipped_net(nn.ReLU6(), generator, x, scale=64**-0.5)
    assert "dead_units" not in names(probe(alive, x, y))


@pytest.mark.parametrize(
    ("activation", "kind", "reference", "bounds"),
    [
        (nn.Hardtanh(), "tanh", lambda z: np.clip(z, -1, 1), (-1, 1)),
        (nn.Hardsigmoid(), "sigmoid", lambda z: np.clip(z / 6 + 0.5, 0, 1), (0, 1)),
    ],
)
def test_hard_bounded_units_saturate_like_smooth_ones(generator, batch, activation, kind, reference, bounds):
    x, y = batch
    model, z = clipped_net(activation, generator, x)  # N(0, 1) weights: |z| ~ 7, mostly past the bounds
    report = probe(model, x, y)
    h = reference(z)
    expected = ((h < bounds[0] + 0.01) | (h > bounds[1] - 0.01)).mean()
    assert expected > 0.25
    assert report.layers[1].kind == kind
    assert report.layers[1].stats["saturated"] == pytest.approx(expected, abs=1e-3)
    (verdict,) = [v for v in report.verdicts if v.name == "saturation"]
    assert verdict.layers == ["1"] and verdict.evidence["saturated"]["1"] == pytest.approx(expected, abs=1e-3)
    calm, _ = clipped_net(activation, generator, x, scale=0.1 * 64**-0.5)
    control = probe(calm, x, y)
    assert control.layers[1].stats["saturated"] < Thresholds().saturated
    assert "saturation" not in names(control)


def test_a_hardtanh_is_measured_by_its_bounds():
    kinds = {
        nn.Hardtanh(0.0, 1.0): "sigmoid",
        nn.Hardtanh(0.0, 20.0): "relu",  # a clipped ReLU, as ReLU6 is
        nn.Hardtanh(-2.0, 2.0): "other",  # measured, but no statistic knows its bounds
    }
    for activation, kind in kinds.items():
        model = nn.Sequential(nn.Linear(4, 5), activation, nn.Linear(5, 2))
        assert [layer.kind for layer in find_layers(model)] == ["linear", kind, "linear"]
    built = models.mlp(64, 10, depth=2, width=8, activation=nn.ReLU6(), init="he_normal")
    assert [layer.kind for layer in find_layers(built)] == ["relu", "relu", "linear"]


def test_uneven_learning_on_a_rescaled_network_that_computes_the_same_function(batch):
    # ReLU is positively homogeneous: hidden2 scaled by c and hidden3 by 1/c compute the same
    # function, but ||grad W|| / ||W|| (plain SGD's update ratio) becomes s2 / c^2 and s3 c^2
    x, y = batch
    control, rescaled, c = mlp(depth=3, width=32), mlp(depth=3, width=32), 10.0
    with torch.no_grad():
        rescaled.hidden2.linear.weight.mul_(c)
        rescaled.hidden2.linear.bias.mul_(c)
        rescaled.hidden3.linear.weight.div_(c)
        assert rel_error(rescaled(x), control(x)) < 1e-5
    before, after = probe(control, x, y), probe(rescaled, x, y)
    assert names(before) == ["healthy"]
    assert names(after) == ["uneven_learning"]
    speeds = {
        layer.name: layer.stats["weight_grad_norm"] / layer.stats["weight_norm"] for layer in before.layers
    }
    expected = {**speeds, "hidden2": speeds["hidden2"] / c**2, "hidden3": speeds["hidden3"] * c**2}
    evidence = after.verdicts[0].evidence
    assert evidence["measure"] == "relative_gradient"
    assert evidence["per_layer"].keys() == expected.keys()
    assert rel_error(list(evidence["per_layer"].values()), list(expected.values())) < 1e-4
    assert (evidence["slowest"], evidence["fastest"]) == ("hidden2", "hidden3")
    assert rel_error(evidence["spread"], expected["hidden3"] / expected["hidden2"]) < 1e-4


def test_fixes_are_concrete_for_the_model(reports):
    (saturation,) = [v for v in reports["saturation"].verdicts if v.name == "saturation"]
    assert [(fix.text, fix.changes) for fix in saturation.fixes] == [
        (
            "sigmoid with N(0, 1) initialization: use He initialization with Swish (or ReLU)",
            {"model.init": "he_normal", "model.activation": "swish"},
        ),
        (
            'add batch normalization before each activation (batchnorm="before")',
            {"model.batchnorm": "before"},
        ),
    ]
    vanishing = reports["vanishing"].verdicts[0]
    assert vanishing.fix_texts[0].startswith(
        'ReLU with Glorot initialization: use He initialization (init="he_normal")'
    )
    assert vanishing.fixes[0].changes == {"model.init": "he_normal"}
    assert vanishing.evidence["gradient_ratio"] == pytest.approx(reports["vanishing"].gradient_ratio)
    exploding = reports["exploding"].verdicts[0]
    (clip,) = [f for f in exploding.fixes if f.text.startswith("clip with global_clipnorm=")]
    assert clip.text.startswith(
        f"clip with global_clipnorm={clip.changes['optimizer.global_clipnorm']:.3g} ("
    )
    dead = reports["dead"].verdicts[0]
    assert dead.layers == ["hidden2"] and dead.evidence["dead"]["hidden2"] == pytest.approx(0.8)
    assert dead.fixes[0].changes == {
        "model.activation": "leaky_relu",
        "model.activation_options": {"alpha": 0.2},
    }
    selu = [f for v in reports["selu_dropout"].verdicts for f in v.fixes]
    assert ("SELU network with dropout: use AlphaDropout", {"model.alpha_dropout": True}) in [
        (f.text, f.changes) for f in selu
    ]


@pytest.mark.parametrize(
    ("field", "measure", "verdict", "fires_above"),
    [
        ("vanishing_ratio", lambda r: r.gradient_ratio, "vanishing_gradients", False),
        ("exploding_ratio", lambda r: r.gradient_ratio, "exploding_gradients", True),
        ("saturated", lambda r: max(layer.stats["saturated"] or 0 for layer in r.layers), "saturation", True),
        ("dead", lambda r: max(layer.stats["dead"] or 0 for layer in r.layers), "dead_units", True),
        (
            "uneven_ratio",
            lambda r: (
                max(speeds := [l.stats["weight_grad_norm"] / l.stats["weight_norm"] for l in r.layers])
                / min(speeds)
            ),
            "uneven_learning",
            True,
        ),
    ],
)
def test_both_sides_of_each_threshold(reports, field, measure, verdict, fires_above):
    # a threshold just past the measured value flips the verdict
    report = reports["saturation" if field == "saturated" else "healthy_relu"]
    value = measure(report)
    just_inside, just_outside = (value * 1.01, value * 0.99) if fires_above else (value * 0.99, value * 1.01)
    assert verdict not in names_of(diagnose(report, Thresholds(**{field: just_inside})))
    assert verdict in names_of(diagnose(report, Thresholds(**{field: just_outside})))


def names_of(verdicts):
    return [v.name for v in verdicts]


def test_first_nonfinite_layer_is_named_when_a_nan_is_injected(batch):
    x, y = batch
    model = mlp(depth=5, width=32, activation="elu")
    with torch.no_grad():
        model.hidden3.linear.weight[3, 5] = math.nan
    report = probe(model, x, y)
    assert report.nonfinite_forward == "hidden3.linear"
    verdict = report.verdicts[0]
    assert verdict.name == "non_finite" and verdict.layers == ["hidden3", "hidden4", "hidden5", "output"]
    assert "hidden3.linear" in verdict.summary

    bad = x.clone()
    bad[0, 0] = math.inf
    assert probe(mlp(depth=2, width=8), bad, y).nonfinite_forward == "inputs"

    class PoisonGradient(nn.Module):  # finite forward, NaN backward
        def forward(self, h):
            h = h.clone()
            h.register_hook(lambda g: torch.full_like(g, math.nan))
            return h

    plain = mlp(depth=4, width=16, activation="relu")
    children = list(plain.named_children())
    poisoned = nn.Sequential(OrderedDict([*children[:2], ("poison", PoisonGradient()), *children[2:]]))
    report = probe(poisoned, x, y)
    assert report.nonfinite_forward is None and report.nonfinite_backward == "hidden2"
    assert names(report) == ["non_finite"]


def test_probe_rejects_a_model_without_trainable_parameters(batch):
    model = mlp(depth=1, width=4).requires_grad_(False)
    with pytest.raises(GradwellError, match="no trainable parameters"):
        probe(model, *batch)


# the Monitor


class Spy(Callback):
    """Placed after a Monitor: records at each step whether hooks are installed on the modules
    and on the parameters (their gradients)."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer, self.hooked = model, optimizer, []

    def on_step_begin(self, run):
        forward = any(m._forward_hooks for m in self.model.modules())
        grads = any(getattr(p, "_post_accumulate_grad_hooks", None) for p in self.model.parameters())
        self.hooked.append((run.step, forward, grads))


class Counting(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class CountingMonitor(Monitor):
    """A Monitor whose per-step work is counted in tensor operations."""

    ops: dict

    def on_step_begin(self, run):
        self.ops = getattr(self, "ops", {})
        with Counting() as mode:
            super().on_step_begin(run)
        self.ops[run.step] = mode.ops

    def on_step_end(self, run, loss):
        with Counting() as mode:
            super().on_step_end(run, loss)
        self.ops[run.step - 1] += mode.ops


def train_small(epochs, callbacks, seed=0, **kwargs):
    model = mlp(seed, depth=3, width=32, activation="relu")
    optimizer = optim.create("sgd", model.parameters(), lr=0.05)
    fit(
        model,
        digits(),
        optimizer=optimizer,
        epochs=epochs,
        batch_size=128,
        callbacks=callbacks(model, optimizer),
        progress=False,
        seed=seed,
        **kwargs,
    )
    return model, optimizer


def test_monitor_samples_only_on_its_steps():
    monitor, spies = CountingMonitor(every=4), []

    def callbacks(model, optimizer):
        spies.append(Spy(model, optimizer))
        return [monitor, spies[0]]

    train_small(2, callbacks)  # 11 steps per epoch
    sampled = [s for s in range(22) if s % 4 == 0]
    assert monitor.history().steps == sampled
    assert [step for step, forward, pre in spies[0].hooked if forward or pre] == sampled
    assert all(forward and pre for step, forward, pre in spies[0].hooked if step in sampled)
    assert all(monitor.ops[s] == 0 for s in range(22) if s not in sampled)
    assert all(monitor.ops[s] > 0 for s in sampled)


def test_monitor_update_ratio_and_gradient_norm_are_exact_for_sgd():
    monitor = Monitor(every=3)
    train_small(1, lambda model, optimizer: [monitor])
    history = monitor.history()
    grad, weight = history.series("weight_grad_norm"), history.series("weight_norm")
    # plain SGD: ||dW|| = lr ||grad W||
    assert rel_error(history.series("update_ratio"), 0.05 * grad / weight) < 1e-4
    assert history.lr == [0.05] * len(history.steps)
    assert np.all(np.asarray(history.grad_norm) >= np.sqrt((grad**2).sum(axis=1)) * (1 - 1e-6))

    seen = []

    class LastNorm(Callback):
        def on_step_end(self, run, loss):
            seen.append(float(run.optimizer.last_grad_norm))

    monitor = Monitor(every=1)
    model = mlp(depth=2, width=16)
    clipped = optim.create("sgd", model.parameters(), lr=0.05, global_clipnorm=1e-3)
    fit(
        model,
        digits(),
        optimizer=clipped,
        epochs=1,
        batch_size=256,
        callbacks=[monitor, LastNorm()],
        progress=False,
    )
    # the Monitor sees the gradient before the optimizer clips it
    assert rel_error(monitor.history().grad_norm, seen) < 1e-5


def test_monitor_records_survive_a_resume(tmp_path):
    whole = Monitor(every=5)
    train_small(3, lambda m, o: [whole])
    first = Monitor(every=5)
    train_small(2, lambda m, o: [first], checkpoint_dir=tmp_path)
    resumed = Monitor(every=5)
    train_small(3, lambda m, o: [resumed], checkpoint_dir=tmp_path, resume=True)
    a, b = whole.history(), resumed.history()
    assert a.steps == b.steps and len(a.steps) == 7
    assert np.array_equal(a.stats, b.stats, equal_nan=True)
    assert a.grad_norm == b.grad_norm and a.loss == b.loss


def test_monitor_report_and_clip_fix_from_the_norms_seen():
    monitor = Monitor(every=2)
    train_small(1, lambda m, o: [monitor])
    report = monitor.report()
    assert report.history is not None and report.verdicts
    assert all(v.name in VERDICTS for v in report.verdicts)
    expected = np.percentile(monitor.history().grad_norm, 90)
    assert clip_fix(report, Thresholds()).text.startswith(
        f"clip with global_clipnorm={expected:.3g} (the 90th"
    )
    with pytest.raises(ConfigError):
        Monitor(every=0)
    with pytest.raises(GradwellError, match="not sampled"):
        Monitor().report()


def test_monitor_diagnoses_a_diverging_run():
    monitor = Monitor(every=1)
    model = mlp(depth=8, width=64, activation="relu")
    with pytest.raises(NonFiniteError):
        fit(
            model,
            digits(),
            optimizer=optim.create("sgd", model.parameters(), lr=20.0),
            epochs=2,
            batch_size=32,
            callbacks=[monitor],
            progress=False,
        )
    report = monitor.report()
    (verdict,) = [v for v in report.verdicts if v.name == "non_finite"]
    first = verdict.evidence["first_step"]
    assert first is not None and not math.isfinite(report.history.loss[first])
    assert all(math.isfinite(v) for v in report.history.loss[:first])
    assert f"lower the learning rate (it was 20 at step {first})" in verdict.fix_texts


class LossSpike(Callback):
    """Multiplies the loss, and so every gradient, by `factor` on one step: a batch gone wrong."""

    def __init__(self, step, factor):
        self.step, self.factor, self.scale = step, factor, 1.0

    def on_step_begin(self, run):
        self.scale = self.factor if run.step == self.step else 1.0

    def on_step_end(self, run, loss):
        self.scale = 1.0

    def loss(self, logits, targets):
        return F.cross_entropy(logits, targets) * self.scale


def test_monitor_diagnoses_a_global_gradient_norm_spike():
    def run(factor):
        spike, monitor = LossSpike(6, factor), Monitor(every=1)
        model = mlp(depth=3, width=32, activation="relu")
        # clipped, so that the spike's update stays small; the Monitor sees the norm before clipping
        optimizer = optim.create("sgd", model.parameters(), lr=0.05, global_clipnorm=1.0)
        fit(
            model,
            digits(),
            optimizer=optimizer,
            epochs=1,
            batch_size=128,  # 11 steps
            loss=spike.loss,
            callbacks=[spike, monitor],
            progress=False,
        )
        return monitor.report()

    calm, spiked = run(1.0), run(1e3)
    norms, spiked_norms = calm.history.grad_norm, spiked.history.grad_norm
    assert spiked_norms[:6] == norms[:6] and rel_error(spiked_norms[6], 1e3 * norms[6]) < 1e-5
    assert names(calm) == ["healthy"] and max(norms) / np.median(norms) < Thresholds().spike_ratio
    assert names(spiked) == ["exploding_gradients"]
    verdict, ratio = spiked.verdicts[0], max(spiked_norms) / np.median(spiked_norms)
    assert ratio > Thresholds().spike_ratio
    assert verdict.evidence["spike_ratio"] == pytest.approx(ratio)
    assert verdict.evidence["gradient_ratio"] < Thresholds().exploding_ratio  # the spike alone fired
    assert verdict.summary == f"the global gradient norm spiked to {ratio:.3g}x its median during training"
    clip = np.percentile(spiked_norms, 90)
    assert f"clip with global_clipnorm={clip:.3g} (the 90th percentile of the 11 gradient norms seen)" in (
        verdict.fix_texts
    )


# JSON, plots, scenarios, command line

LAYER_KEYS = {"name", "kind", *STATS}
REPORT_KEYS = {
    "unseen",
    "gradients",
    "schema",
    "healthy",
    "verdicts",
    "model",
    "loss",
    "grad_norm",
    "gradient_ratio",
    "nonfinite",
    "layers",
    "history",
}
VERDICT_KEYS = {"name", "summary", "evidence", "fixes", "fix_changes", "layers"}
MODEL_KEYS = {
    "activation",
    "init",
    "fan_in_scale",
    "batchnorm",
    "dropout",
    "depth",
    "self_normalizing_problems",
    "residual",
    "post_ln",
}


def strict_json(text):
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def check_schema(data):
    assert set(data) == REPORT_KEYS and data["schema"] == "gradwell.diagnose/1"
    assert set(data["model"]) == MODEL_KEYS
    assert all(set(layer) == LAYER_KEYS for layer in data["layers"])
    assert all(set(v) == VERDICT_KEYS and v["name"] in VERDICTS for v in data["verdicts"])
    assert data["healthy"] == ([v["name"] for v in data["verdicts"]] == ["healthy"])


def test_json_schema_is_stable_and_strict(reports):
    overflow = reports["overflow"]
    assert "non_finite" in names(overflow) and overflow.nonfinite_forward == "hidden2.linear"
    for report in reports.values():
        data = report.to_dict()
        check_schema(data)
        assert strict_json(json.dumps(data)) == data


def test_sigmoid_bn_scenario_trains_and_plots(tmp_path):
    result = run_scenario("sigmoid-bn")
    assert result.matches and result.observed == ["healthy"]
    assert result.training["loss_after"] < 0.5 * result.training["loss_before"]
    data = result.report.to_dict()
    check_schema(data)
    assert data["history"]["steps"] == list(range(0, 210, 10))
    assert set(data["history"]["series"]) >= {"weight_grad_norm", "update_ratio", "dead", "saturated"}
    path = result.report.plot(tmp_path / "doctor.png")
    assert path.stat().st_size > 10_000
    assert "stability doctor" in str(result.report)


def test_cli_runs_every_scenario_with_json(tmp_path):
    done = gradwell("diagnose", "--scenario", "all", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = strict_json(done.stdout)
    assert [r["scenario"] for r in results] == list(SCENARIOS)
    for result in results:
        assert result["matches"], (result["scenario"], result["observed"])
        assert result["expected"] == SCENARIOS[result["scenario"]].expected
        check_schema(result["report"])


def test_several_scenarios_plot_one_file_each():
    # drawing all ten takes a dozen seconds: the naming is what --scenario all adds to a plot
    assert plot_path("doctor.png", "exploding", 10) == Path("doctor-exploding.png")
    assert plot_path("out/doctor", "selu-100", 10) == Path("out/doctor-selu-100.png")
    assert plot_path("doctor.png", "exploding", 1) == Path("doctor.png")


TINY = """
[data]
name = "digits"
[model]
kind = "mlp"
hidden = [32, 32]
activation = "relu"
[optimizer]
name = "sgd"
lr = 0.05
[train]
epochs = 2
batch_size = 64
[output]
progress = false
"""


def test_cli_on_a_config_and_bad_input(tmp_path, capsys):
    from gradwell.cli import main

    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    assert main(["diagnose", str(path), "--epochs", "1", "--json", "--plot", str(tmp_path / "c.png")]) == 0
    data = strict_json(capsys.readouterr().out)
    check_schema(data)
    assert data["history"]["steps"] and (tmp_path / "c.png").exists()
    assert main(["diagnose", "--scenario", "relu-he-3"]) == 2
    assert "did you mean 'relu-he-30'" in capsys.readouterr().err
    assert main(["diagnose", str(path), "--scenario", "exploding"]) == 2


def test_train_prints_and_saves_the_doctors_summary(tmp_path, capsys):
    from gradwell.cli import main

    path = tmp_path / "tiny.toml"
    path.write_text(TINY + f'dir = "{tmp_path / "runs"}"\nname = "t"\n')
    assert main(["train", str(path)]) == 0
    assert "stability doctor" in capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "t" / "result.json").read_text())
    check_schema(result["doctor"])
    assert result["doctor"]["history"]["steps"] == [0]  # 42 steps, Monitor every 200


def test_diagnose_config_at_initialization():
    from gradwell.diagnose import diagnose_config

    config = configs.from_dict({"data": {"name": "digits"}, "model": {"depth": 3, "width": 16}})
    report = diagnose_config(config)
    assert report.history is None and [layer.name for layer in report.layers][-1] == "output"


def test_diagnose_epochs_trains_with_every_train_key_and_a_schedule_spanning_those_epochs(monkeypatch):
    import dataclasses

    from gradwell import build
    from gradwell.diagnose import diagnose_config
    from gradwell.train import EarlyStopping

    seen = {}
    real_fit = build.fit

    def spy(model, data, **kwargs):
        seen.update(kwargs)
        return real_fit(model, data, **kwargs)

    monkeypatch.setattr(build, "fit", spy)
    keys = ["train.epochs=7", "train.batch_size=128", "train.precision=bf16", "train.on_nonfinite=skip",
            "train.fast=false", "train.early_stopping=3", "train.l2=0.001", "train.max_norm=3.0"]  # fmt: skip
    config = configs.load(None, ["data.name=digits", "model.depth=2", "model.width=16", *keys])
    config = dataclasses.replace(config, output=dataclasses.replace(config.output, progress=False))
    report = diagnose_config(config, epochs=2)
    assert seen["options"] == dataclasses.replace(config.train, epochs=2)  # every [train] key but epochs
    samples = len(build.load_data(config).train)
    assert seen["scheduler"].total_steps == 2 * -(-samples // 128)  # 1cycle over the 2 epochs trained
    assert any(isinstance(callback, EarlyStopping) for callback in seen["callbacks"])
    assert report.history is not None


def test_the_layer_table_fits_the_terminal_with_whole_names_and_says_what_it_left_out():
    import io

    from rich.console import Console

    report = run_scenario("relu-he-30").report
    for width in (60, 80, 140):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        console.print(report.layer_table(width))
        text = console.file.getvalue()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        assert "every 2nd layer of 31" in text and "hidden29" in text
    narrow = report.layer_table(60)
    wide = report.layer_table(140)
    assert len(narrow.columns) < len(wide.columns) and "left out for width: " in narrow.caption
    assert "dead" in [c.header for c in narrow.columns]  # the most telling columns stay
    assert "saturated" not in [c.header for c in wide.columns]  # no value in a ReLU net: no column
