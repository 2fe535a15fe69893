"""Runs that go wrong: non-finite values, Ctrl-C, SIGKILL, bad data. Nothing is lost or corrupted."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import pytest
import torch
from conftest import quiet_env, wait_for_a_new_checkpoint
from test_train import blobs
from torch import nn

from gradwell import models, optim
from gradwell.data import Dataset, Split
from gradwell.errors import CheckpointError, DataError, NonFiniteError
from gradwell.train import Callback, fit
from gradwell.train import checkpoint as ckpt
from gradwell.train.guard import Interrupted


class Blowup(nn.Module):
    """Multiplies by infinity from its `at`-th training forward on: a deterministic overflow.

    Its counter is a buffer, so checkpoints and the loop's epoch snapshot restore it and a replay
    overflows at the same step.
    """

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if not self.training:
            return x
        self.calls += 1
        return x * float("inf") if int(self.calls) >= self.at else x


def model_with_blowup(at):
    model = models.mlp(8, 3, hidden=[16, 16], generator=torch.Generator().manual_seed(0))
    block = model.hidden1  # linear, blowup, then activation
    model.hidden1 = nn.Sequential(
        OrderedDict(linear=block.linear, blowup=Blowup(at), activation=block.activation)
    )
    return model


def test_a_non_finite_loss_names_the_step_and_the_first_layer_and_keeps_finite_weights(tmp_path):
    model = model_with_blowup(at=13)  # the 13th training forward: step 12, in epoch 2 (8 steps each)
    optimizer = optim.create("sgd", model.parameters(), lr=0.01)
    with pytest.raises(NonFiniteError) as caught:
        fit(
            model,
            blobs(),
            optimizer=optimizer,
            epochs=3,
            batch_size=32,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    message = str(caught.value)
    assert "at step 12 (epoch 2)" in message
    assert "appeared in the output of hidden1.blowup" in message
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert ckpt.saved_steps(tmp_path) == [8]  # epoch 1 only: nothing non-finite was saved
    assert torch.isfinite(ckpt.load(ckpt.checkpoint_path(tmp_path, 8))["model"]["output.weight"]).all()


def test_skip_mode_skips_and_counts_non_finite_steps():
    model = model_with_blowup(at=3)
    model.hidden1[1].register_forward_hook(
        lambda m, i, o: o if int(m.calls) != 3 else o.new_full(o.shape, float("nan"))
    )
    model.hidden1[1].at = 10**9  # overflow only through the hook, on the third forward
    optimizer = optim.create("adam", model.parameters(), lr=0.01)
    history = fit(
        model, blobs(), optimizer=optimizer, epochs=2, batch_size=32, on_nonfinite="skip", progress=False
    )
    assert history.epochs[0]["skipped"] == 1 and "skipped" not in history.epochs[1]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(torch.tensor(history.metric("loss"))).all()


class InterruptAt(Callback):
    """Behaves as the first Ctrl-C would, after step `at`."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, run, loss):
        if run.step == self.at:
            run.interrupted = True


def run_blobs(directory, callbacks=(), resume=False, epochs=4):
    model = models.mlp(8, 3, hidden=[16, 16], dropout=0.2, generator=torch.Generator().manual_seed(1))
    optimizer = optim.create("nadam", model.parameters(), lr=0.01)
    scheduler = optim.schedule("power", optimizer, s=5)
    history = fit(
        model,
        blobs(),
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        batch_size=32,
        seed=2,
        callbacks=callbacks,
        checkpoint_dir=directory,
        resume=resume,
        progress=False,
    )
    return model, history


def test_ctrl_c_saves_mid_epoch_and_resume_equals_an_uninterrupted_run(tmp_path):
    whole, whole_history = run_blobs(tmp_path / "whole")
    with pytest.raises(Interrupted, match=r"interrupted after step 11 \(epoch 2, batch 3\)") as caught:
        run_blobs(tmp_path / "cut", callbacks=[InterruptAt(11)])
    assert caught.value.checkpoint == ckpt.checkpoint_path(tmp_path / "cut", 11)
    resumed, history = run_blobs(tmp_path / "cut", resume=True)
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k]) for k in whole.state_dict())
    strip = lambda h: [{k: v for k, v in e.items() if k != "time"} for e in h.epochs]  # noqa: E731
    assert strip(history) == strip(whole_history)


def test_fit_refuses_data_the_model_cannot_take():
    data = blobs()
    model = models.mlp(5, 3, hidden=[4])
    optimizer = optim.create("sgd", model.parameters())
    with pytest.raises(DataError, match=r"cannot take inputs of shape \(8,\)"):
        fit(model, data, optimizer=optimizer, epochs=1, progress=False)
    small = models.mlp(8, 2, hidden=[4])
    with pytest.raises(DataError, match="labels go up to 2, but the model has 2 outputs"):
        fit(small, data, optimizer=optim.create("sgd", small.parameters()), epochs=1, progress=False)
    x = data.train.x.clone()
    x[7, 3] = float("nan")
    bad = Dataset(Split(x, data.train.y), data.val, data.test, 3, "nan")
    fine = models.mlp(8, 3, hidden=[4])
    with pytest.raises(DataError, match="training sample 7 holds a non-finite value"):
        fit(fine, bad, optimizer=optim.create("sgd", fine.parameters()), epochs=1, progress=False)
    with pytest.raises(DataError, match="0 samples"):
        empty = Dataset(Split(x[:0], data.train.y[:0]), data.val, data.test, 3, "empty")
        fit(fine, empty, optimizer=optim.create("sgd", fine.parameters()), epochs=1, progress=False)


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_fit_refuses_class_labels_for_an_elementwise_loss(loss):
    """(N, 3) outputs against (N,) integer labels would broadcast to nonsense inside torch."""
    data, model = blobs(), models.mlp(8, 3, hidden=[4])
    with pytest.raises(
        DataError, match=r"model gives \(3,\) per sample, the labels are torch.int64 of shape \(\)"
    ):
        fit(
            model,
            data,
            loss=loss,
            optimizer=optim.create("sgd", model.parameters()),
            epochs=1,
            progress=False,
        )
    one_hot = torch.nn.functional.one_hot(data.train.y, 3).float()
    val_one_hot = torch.nn.functional.one_hot(data.val.y, 3).float()
    targets = Dataset(Split(data.train.x, one_hot), Split(data.val.x, val_one_hot), data.test, 3, "one-hot")
    optimizer = optim.create("sgd", model.parameters())
    history = fit(model, targets, loss=loss, optimizer=optimizer, epochs=1, progress=False)
    assert len(history.epochs) == 1


# --- real signals, in a subprocess ------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from gradwell import models, optim
    from gradwell.data import Dataset, Split
    from gradwell.train import Callback, fit

    class Slow(Callback):  # slow enough for a signal to land anywhere in the run
        def on_step_end(self, run, loss):
            time.sleep(0.003)

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 20, generator=g), torch.randint(0, 4, (600,), generator=g)
    data = Dataset(Split(x[:500], y[:500]), Split(x[500:], y[500:]), Split(x[:0], y[:0]), 4, "random")
    model = models.mlp(20, 4, hidden=[32, 32], dropout=0.1, batchnorm="before",
                       generator=torch.Generator().manual_seed(0))
    optimizer = optim.create("nadam", model.parameters(), lr=0.005)
    fit(model, data, optimizer=optimizer, epochs=6, batch_size=25, seed=3, checkpoint_dir=sys.argv[1],
        resume=True, callbacks=[Slow()], progress=False)
    torch.save(model.state_dict(), sys.argv[2])
    """
)


def start(script, checkpoints, weights):
    return subprocess.Popen(
        [sys.executable, str(script), str(checkpoints), str(weights)],
        env=quiet_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(script, checkpoints, weights):
    done = start(script, checkpoints, weights)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    return torch.load(weights, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    script = folder / "train.py"
    script.write_text(SCRIPT)
    return script, finish(script, folder / "checkpoints", folder / "weights.pt")


def test_killed_with_sigkill_at_random_moments_then_resumed_gives_the_same_weights(tmp_path, uninterrupted):
    script, expected = uninterrupted
    checkpoints = tmp_path / "checkpoints"
    for delay in (0.0, 0.023, 0.051):  # right after a checkpoint is renamed into place, and mid-epoch
        process = start(script, checkpoints, tmp_path / "weights.pt")
        wait_for_a_new_checkpoint(process, checkpoints)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert ckpt.latest(checkpoints) is not None
    weights = finish(script, checkpoints, tmp_path / "weights.pt")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_sigint_stops_after_a_step_writes_a_checkpoint_and_resumes_to_the_same_weights(
    tmp_path, uninterrupted
):
    script, expected = uninterrupted
    checkpoints = tmp_path / "checkpoints"
    process = start(script, checkpoints, tmp_path / "weights.pt")
    wait_for_a_new_checkpoint(process, checkpoints)
    time.sleep(0.03)
    before = set(ckpt.saved_steps(checkpoints))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "Interrupted" in err and "resume to go on" in err
    assert set(ckpt.saved_steps(checkpoints)) - before  # a new, mid-epoch checkpoint
    weights = finish(script, checkpoints, tmp_path / "weights.pt")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


# --- loading never runs code from a file -----------------------------------------------------


class Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2), "evil": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*weights\.pt.*never code"):
        ckpt.read_weights(path)
    assert not marker.exists()


def test_foreign_torch_and_safetensors_weights_load(tmp_path):
    model = models.mlp(8, 3, hidden=[4])
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "lightning.ckpt")
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "w.safetensors")
    for name in ("plain.pt", "lightning.ckpt", "w.safetensors"):
        weights = ckpt.read_weights(tmp_path / name)
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        ckpt.read_weights(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.read_weights(tmp_path / "missing.pt")


def test_a_diverging_job_writes_the_doctors_reading_and_keeps_it_on_the_error(tmp_path):
    from gradwell import config as configs
    from gradwell import job

    config = configs.load(None, [
        "data.name=digits", "model.depth=3", "model.width=32", "model.batchnorm=none", "optimizer.name=sgd",
        "optimizer.lr=1000.0", "schedule.name=none", f"output.dir={tmp_path}", "output.name=run",
        "output.progress=false",
    ])  # fmt: skip
    with pytest.raises(NonFiniteError, match="non-finite at step") as caught:
        job.run(config)
    doctor = caught.value.doctor
    assert doctor is not None and "non_finite" in [v.name for v in doctor.verdicts]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["stop_reason"] == "non-finite" and result["error"] == str(caught.value)
    assert result["doctor"] == json.loads(json.dumps(doctor.to_dict()))


def test_resuming_with_a_config_that_does_not_fit_the_checkpoint_keeps_the_run_resumable(tmp_path):
    from gradwell import config as configs
    from gradwell import job

    base = ["data.name=digits", "model.depth=2", "model.width=16", "train.epochs=1", "output.progress=false"]
    first = job.run(configs.load(None, [*base, f"output.dir={tmp_path}", "output.name=run"]))
    saved = (first.run_dir / "config.toml").read_text()
    wider = configs.load(first.run_dir / "config.toml", ["model.width=32"])
    with pytest.raises(
        CheckpointError, match=r"does not match this model's architecture: hidden1\.linear\.weight"
    ):
        job.run(wider, run_dir=first.run_dir, resume=True)
    assert (first.run_dir / "config.toml").read_text() == saved
    more = job.run(
        configs.load(first.run_dir / "config.toml", ["train.epochs=2"]), first.run_dir, resume=True
    )
    assert len(more.epochs) == 2
