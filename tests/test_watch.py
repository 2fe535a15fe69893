"""The doctor in any loop: gradwell.watch on hand-written models and plain PyTorch loops."""

import copy
import json
import logging
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_diagnose import Counting
from torch import nn

import gradwell
from gradwell.diagnose import Monitor, probe, watch
from gradwell.diagnose.record import MAX_CALLS
from gradwell.errors import ConfigError, GradwellError
from gradwell.train import fit


class Block(nn.Module):
    """A ResNet basic block in the torchvision manner: functional ReLU, an in-place residual add."""

    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = (
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.conv2, self.bn2 = (
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.blocks(F.relu(self.stem(x))).mean((2, 3)))


class Net(nn.Module):
    """Two Linear layers with a functional ReLU between them."""

    def __init__(self, width=16):
        super().__init__()
        self.a, self.b = nn.Linear(6, width), nn.Linear(width, 3)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def batches(steps, seed=0, shape=(32, 6)):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(*shape, generator=g)
        yield x, (x.flatten(1)[:, 0] > 0).long() + (x.flatten(1)[:, 1] > 0).long()


def train(model, optimizer, steps, doctor=None, clip=None, shape=(32, 6), spy=None):
    losses = []
    for x, y in batches(steps, shape=shape):
        if spy is not None:
            spy()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.detach())
        if doctor is not None:
            doctor.step(loss)
    return losses


def test_a_sampled_step_measures_what_a_probe_measures_and_the_update_exactly():
    torch.manual_seed(0)
    model = Net()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = watch(model, optimizer, every=3)
    x, y = next(batches(1))
    train(model, optimizer, 4)
    report = doctor.report()
    assert report.history.steps == [0, 3]
    expected = probe(reference, x, y)  # the same weights and batch as step 0
    assert [layer.name for layer in report.layers] == ["a", "relu", "b"]
    first = report.history.stats[0]
    for i, layer in enumerate(expected.layers):
        for stat in ("act_mean", "act_std", "dead", "out_grad_norm", "weight_grad_norm", "weight_norm"):
            if layer.stats[stat] is not None:
                assert first[i][gradwell.diagnose.STATS.index(stat)] == pytest.approx(
                    layer.stats[stat], rel=1e-5
                )
    # plain SGD: ||W_after - W_before|| = lr ||grad W||
    ratio, grad, weight = (
        first[0][gradwell.diagnose.STATS.index(s)]
        for s in ("update_ratio", "weight_grad_norm", "weight_norm")
    )
    assert ratio == pytest.approx(0.1 * grad / weight, rel=1e-4)
    assert report.history.grad_norm[0] == pytest.approx(expected.grad_norm, rel=1e-5)
    assert report.loss is None and report.history.loss == [None, None]  # hooks count: no loss handed over
    json.dumps(report.to_dict(), allow_nan=False)
    doctor.close()


def test_gradients_are_shown_before_the_loops_clipping_and_unscaled_with_a_scaler():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = watch(model, optimizer, every=10)
    x, y = next(batches(1))
    F.cross_entropy(copy.deepcopy(model)(x), y).backward()
    train(model, optimizer, 1, clip=1e-3)
    raw = doctor.history().grad_norm[0]
    assert raw > 1e-2  # clipped to 1e-3 after the doctor saw it
    assert "before any clipping" in doctor.report().gradients

    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled, unscaled = watch(model, every=10), watch(model, every=10, scaler=scaler)
    optimizer.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaler.step(optimizer)
    scaler.update()
    scaled.step(), unscaled.step()
    assert scaled.history().grad_norm[0] == pytest.approx(1024 * raw, rel=1e-4)
    assert unscaled.history().grad_norm[0] == pytest.approx(raw, rel=1e-4)
    assert "GradScaler" in unscaled.report().gradients


def test_only_sampled_steps_hook_into_the_model_and_the_others_cost_an_integer_test():
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hooked = []

    def spy():
        modules = any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        grads = any(getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())
        hooked.append(modules or grads)

    doctor = watch(model, optimizer, every=4)
    train(model, optimizer, 9, spy=spy)
    assert [i for i, h in enumerate(hooked) if h] == [0, 4, 8]
    doctor.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not optimizer._optimizer_step_post_hooks
    quiet = watch(Net(), every=4)
    quiet.recorder.__exit__()
    quiet.recorder = None
    with Counting() as mode:
        quiet.step()  # step 1 of 4: not due
    assert mode.ops == 0 and quiet.recorder is None


def test_a_resnet_and_a_transformer_are_seen_whole():
    torch.manual_seed(0)
    resnet = ResNet()
    optimizer = torch.optim.SGD(resnet.parameters(), lr=0.01)
    doctor = watch(resnet, optimizer, every=5)
    train(resnet, optimizer, 1, shape=(8, 3, 6, 6))
    kinds = {layer.name: layer.kind for layer in doctor.report().layers}
    assert kinds["stem"] == "conv" and kinds["relu"] == "relu" and kinds["blocks.0.bn1"] == "batchnorm"
    assert kinds["blocks.0.relu"] == "relu" and kinds["blocks.0.add"] == "residual"
    assert kinds["blocks.1.relu#2"] == "relu" and kinds["head"] == "linear"
    assert doctor.report().unseen == [] and doctor.facts.residual

    encoder = nn.Sequential(
        nn.Embedding(20, 8),
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 1),
        nn.GroupNorm(1, 5),
        nn.Flatten(),
        nn.Linear(40, 20),
    )
    optimizer = torch.optim.Adam(encoder.parameters())
    doctor = watch(encoder, optimizer)
    tokens = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(encoder(tokens), tokens[:, 0]).backward()
    optimizer.step()
    report = doctor.report()
    kinds = {layer.name: layer.kind for layer in report.layers}
    assert kinds["0"] == "embedding" and kinds["1.layers.0.self_attn"] == "attention"
    assert kinds["1.layers.0.norm1"] == "layernorm" and kinds["1.layers.0.relu"] == "relu"
    assert kinds["2"] == "groupnorm" and kinds["1.layers.0.add"] == "residual"
    assert report.model.post_ln and report.unseen == []


def test_dead_units_lie_along_channels_for_a_convolution_and_features_for_a_sequence():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 5)
            with torch.no_grad():
                self.linear.bias[2] = -100.0  # feature 2 never fires

        def forward(self, x):  # (batch, positions, features)
            return torch.relu(self.linear(x)).mean(1)

    report = probe(Tokens(), torch.randn(8, 7, 4), torch.arange(8) % 5)
    assert report.layers[1].name == "relu" and report.layers[1].stats["dead"] == pytest.approx(1 / 5)


def test_a_layer_filter_keeps_what_it_names_and_a_filter_matching_nothing_says_so():
    model = ResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = watch(model, optimizer, layers="blocks.*.relu*")
    train(model, optimizer, 1, shape=(4, 3, 6, 6))
    names = [layer.name for layer in doctor.report().layers]
    assert names == ["blocks.0.relu", "blocks.0.relu#2", "blocks.1.relu", "blocks.1.relu#2"]
    doctor = watch(model, layers=re.compile(r"conv2$"))
    train(model, optimizer, 1, shape=(4, 3, 6, 6), doctor=doctor)
    assert [layer.name for layer in doctor.report().layers] == ["blocks.0.conv2", "blocks.1.conv2"]
    with pytest.raises(
        ConfigError, match=r"layers='blokcs\.\*' matches no layer of ResNet; closest: \['blocks"
    ):
        watch(model, layers="blokcs.*")
    with pytest.raises(ConfigError, match="a glob, a compiled regular expression"):
        watch(model, layers=3)


def test_bad_input_is_named_before_training_and_a_loop_that_never_reaches_the_hooks_is_told_why(tmp_path):
    with pytest.raises(GradwellError, match="no trainable parameters"):
        watch(nn.ReLU())
    with pytest.raises(GradwellError, match=r"torch\.optim\.Optimizer"):
        watch(Net(), optimizer=object())
    with pytest.raises(ConfigError, match="every must be a positive int; got 0"):
        watch(Net(), every=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GradwellError, match="is a file"):
        watch(Net(), tensorboard=tmp_path / "file")
    model = Net()
    doctor = watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(GradwellError, match=r"do not also call doctor\.step"):
        doctor.step()
    other = torch.optim.SGD(Net().parameters(), lr=0.1)  # the loop steps another optimizer
    with pytest.raises(GradwellError, match="the optimizer's step hooks never ran"):
        doctor.report()
    assert other.param_groups
    idle = watch(Net(), every=1)
    idle.step()  # a step counted, but no forward pass of the model
    with pytest.raises(GradwellError, match="saw no forward and backward pass"):
        idle.report()
    with pytest.raises(GradwellError, match=r"call doctor\.step\(\)"):
        watch(Net()).report()


def test_what_cannot_be_measured_is_listed_as_unseen():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(6, 3))  # used through a matmul: no layer of its own
            self.unused = nn.Linear(3, 3)
            self.loop = nn.Linear(6, 6)

        def forward(self, x):
            for _ in range(MAX_CALLS + 2):
                x = self.loop(x)
            return x @ self.scale

    report = probe(Odd(), torch.randn(8, 6), torch.arange(8) % 3)
    unseen = "\n".join(report.unseen)
    assert "loop: called 10 times in one pass; the first 8 are measured" in unseen
    assert "(the model) (Odd, 18 parameters): its output is of a kind the doctor does not measure" in unseen
    assert "unused (Linear, 12 parameters): not called in the sampled pass" in unseen
    assert "not measured:" in str(report)


def test_only_the_first_training_pass_of_a_step_is_measured():
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = watch(model, optimizer)
    reference = copy.deepcopy(model)
    first, second = (x for x, _ in batches(2))
    with torch.no_grad():
        model(first * 100)  # an evaluation pass: not measured
    y = torch.zeros(32, dtype=torch.long)
    F.cross_entropy(model(first), y).backward()
    F.cross_entropy(model(second * 5), y).backward()  # a second micro-batch
    optimizer.step()
    mean = doctor.report().layers[0].stats["act_mean"]
    with torch.no_grad():
        assert mean == pytest.approx(float(reference.a(first).mean()), rel=1e-5)


def test_watch_writes_tensorboard_and_survives_the_folder_vanishing(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = watch(model, optimizer, every=2, tensorboard=tmp_path / "tb")
    train(model, optimizer, 4)
    doctor.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("doctor/dead/relu")] == [0, 2]
    assert "activations/relu" in events.Tags()["histograms"]
    doctor = watch(model, optimizer, every=1, tensorboard=tmp_path / "gone")
    shutil.rmtree(tmp_path / "gone")
    with caplog.at_level(logging.WARNING):
        losses = train(model, optimizer, 3)
    assert len(losses) == 3 and math.isfinite(float(losses[-1]))
    assert any("gone" in r.getMessage() for r in caplog.records)
    doctor.close()


def test_the_monitor_traces_a_hand_written_model_in_gradwells_loop():
    from types import SimpleNamespace

    from gradwell.data import Split

    x, y = next(batches(1, shape=(64, 6)))
    monitor = Monitor(every=2)
    model = Net()
    fit(model, SimpleNamespace(train=Split(x, y)), optimizer=gradwell.optim.SGD(model.parameters(), lr=0.1),
        epochs=2, batch_size=16, callbacks=[monitor], progress=False)  # fmt: skip
    report = monitor.report()
    assert report.history.steps == [0, 2, 4, 6] and [layer.name for layer in report.layers] == [
        "a",
        "relu",
        "b",
    ]
    assert all(math.isfinite(v) for v in report.history.loss)


def test_gradwell_train_writes_the_doctor_and_the_epochs_to_tensorboard(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradwell.cli import main

    small = ["data.name=digits", "model.depth=2", "model.width=8", "train.epochs=2", "output.progress=false"]
    sets = [
        f"--set={s}" for s in [*small, f"output.dir={tmp_path}", "output.name=tb", "output.tensorboard=true"]
    ]
    assert main(["train", *sets]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2]
    assert events.Scalars("doctor/act_std/hidden1")[0].step == 0
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r'needs tensorboard: pip install "gradwell\[tensorboard\]"'):
        gradwell.job.run(
            gradwell.config.load(None, [*small, f"output.dir={tmp_path}", "output.tensorboard=true"])
        )


def test_an_error_of_the_doctors_own_never_breaks_the_training(monkeypatch, caplog):
    from gradwell.diagnose import record

    calls = []
    real = record.activation_stats

    def breaks_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("an output the doctor cannot measure")
        return real(*args, **kwargs)

    monkeypatch.setattr(record, "activation_stats", breaks_once)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = watch(model, optimizer, every=2)
    with caplog.at_level(logging.WARNING):
        losses = train(model, optimizer, 4)
    assert len(losses) == 4 and "stopped measuring this step" in caplog.text
    report = doctor.report()
    assert report.history.steps == [2]  # step 0 lost, step 2 measured
    assert any(
        "could not measure: RuntimeError: an output the doctor cannot measure" in n for n in report.unseen
    )


def test_the_loss_scale_is_the_one_the_backward_ran_under_and_a_skipped_overflow_is_no_verdict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", growth_interval=1)  # the scale doubles at this very update
    doctor = gradwell.diagnose.Doctor(model, driven=True, scaler=scaler)
    x = torch.randn(16, 4)
    reference = copy.deepcopy(model)
    reference(x).pow(2).mean().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()]).norm()
    doctor.begin()
    scaler.scale(model(x).pow(2).mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    doctor.end(0)
    assert doctor.history().grad_norm[0] == pytest.approx(float(expected), rel=1e-5)
    doctor.begin()
    optimizer.zero_grad()
    scaler.scale(model(x).pow(2).mean() * math.inf).backward()  # an overflow: the scaler skips it
    scaler.step(optimizer)
    scaler.update()
    doctor.end(1)
    report = doctor.report()
    assert report.history.steps == [0] and "step 1: the loss scaler found inf or NaN" in report.unseen[0]


def test_post_ln_is_recognized_from_the_data_flow_of_a_traced_pass():
    class PostLN(nn.Module):  # x <- LayerNorm(x + f(x)), twice: the second skip is a LayerNorm's output
        def __init__(self):
            super().__init__()
            self.f = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
            self.norm = nn.ModuleList([nn.LayerNorm(6), nn.LayerNorm(6)])
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            for f, norm in zip(self.f, self.norm, strict=True):
                x = norm(x + torch.tanh(f(x)))
            return self.head(x)

    class PreLN(PostLN):  # x <- x + f(LayerNorm(x)): each skip is the previous sum
        def forward(self, x):
            for f, norm in zip(self.f, self.norm, strict=True):
                x = x + torch.tanh(f(norm(x)))
            return self.head(x)

    x, y = torch.randn(8, 6, requires_grad=True), torch.arange(8) % 3
    assert probe(PostLN(), x, y).model.post_ln and not probe(PreLN(), x, y).model.post_ln
    assert probe(PostLN(), x, y).model.activation == "tanh"
    for norm_first in (False, True):
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
        stack = nn.Sequential(
            nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(24, 3)
        )
        assert probe(stack, torch.randn(4, 3, 8), torch.arange(4) % 3).model.post_ln is not norm_first
