"""Runs that go wrong: non-finite values, Ctrl-C, SIGKILL, bad data. Nothing is lost or corrupted."""

import contextlib
import dataclasses
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections import Counter, OrderedDict
from pathlib import Path

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

log = logging.getLogger(__name__)


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


class BlowupOnce(nn.Module):
    """Multiplies by infinity on its `at`-th training forward only, counting in a plain attribute
    that no snapshot restores: a divergence that a replay of the epoch does not meet again."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        return x * float("inf") if self.training and self.calls == self.at else x


def test_a_divergence_the_replay_does_not_meet_says_so_and_keeps_the_epochs_starting_weights(tmp_path):
    model = model_with_blowup(at=10**9)
    model.hidden1.blowup = BlowupOnce(at=13)  # step 12, in epoch 2 (8 steps each)
    optimizer = optim.create("sgd", model.parameters(), lr=0.01)
    options = {"epochs": 3, "batch_size": 32, "checkpoint_dir": tmp_path, "progress": False}
    with pytest.raises(NonFiniteError) as caught:
        fit(model, blobs(), optimizer=optimizer, **options)
    message = str(caught.value)
    assert "non-finite at step 12 (epoch 2), but a replay of the epoch" in message
    assert "weights from before that epoch" in message and "Lower the learning rate" in message
    saved = ckpt.load(ckpt.checkpoint_path(tmp_path, 8))["model"]  # where epoch 2 began
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, saved[name]), name


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


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    """One warm interpreter (see ForkServer) for every process of this file's signal tests."""
    server = ForkServer(tmp_path_factory.mktemp("forks"))
    yield server
    server.close()


def start(server, script, checkpoints, weights):
    """`python SCRIPT CHECKPOINTS WEIGHTS`, forked from the server; its output to WEIGHTS.log."""
    return server.start([str(checkpoints), str(weights)], script=script, log=weights.with_suffix(".log"))


def finish(server, script, checkpoints, weights):
    done = start(server, script, checkpoints, weights)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    return torch.load(weights, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fork_server):
    folder = tmp_path_factory.mktemp("whole")
    script = folder / "train.py"
    script.write_text(SCRIPT)
    return script, finish(fork_server, script, folder / "checkpoints", folder / "weights.pt")


def test_killed_with_sigkill_at_random_moments_then_resumed_gives_the_same_weights(
    tmp_path, fork_server, uninterrupted
):
    script, expected = uninterrupted
    checkpoints = tmp_path / "checkpoints"
    for delay in (0.0, 0.023, 0.051):  # right after a checkpoint is renamed into place, and mid-epoch
        process = start(fork_server, script, checkpoints, tmp_path / "weights.pt")
        wait_for_a_new_checkpoint(process, checkpoints)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert ckpt.latest(checkpoints) is not None
    weights = finish(fork_server, script, checkpoints, tmp_path / "weights.pt")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_sigint_stops_after_a_step_writes_a_checkpoint_and_resumes_to_the_same_weights(
    tmp_path, fork_server, uninterrupted
):
    script, expected = uninterrupted
    checkpoints = tmp_path / "checkpoints"
    process = start(fork_server, script, checkpoints, tmp_path / "weights.pt")
    wait_for_a_new_checkpoint(process, checkpoints)
    time.sleep(0.03)
    before = set(ckpt.saved_steps(checkpoints))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "Interrupted" in err and "resume to go on" in err
    assert set(ckpt.saved_steps(checkpoints)) - before  # a new, mid-epoch checkpoint
    weights = finish(fork_server, script, checkpoints, tmp_path / "weights.pt")
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


# --- a fault campaign: SIGKILL at random moments, the resumes killed too ---------------------

CAMPAIGN = [
    "train", "--set", "data.name=digits", "--set", "model.depth=2", "--set", "model.width=32",
    "--set", "model.dropout=0.1", "--set", "train.epochs=8", "--set", "output.progress=false",
]  # fmt: skip

FORK_SERVER = textwrap.dedent(
    """
    import json, os, runpy, sys, traceback
    import matplotlib.pyplot, sklearn.datasets, torch._dynamo  # most of a run's start-up, paid once
    from gradwell import cli, job  # noqa: F401  (job: what `gradwell train` imports when it starts)

    # fork copies the calling thread alone: one more thread here (holding a lock) could hang a child
    assert len(os.listdir("/proc/self/task")) == 1, "the fork server must have a single thread"
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: `gradwell ARGS`, as `python -m gradwell ARGS` runs it
            code = 1
            try:
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                if "script" in request:  # `python SCRIPT ARGS`
                    sys.argv = [request["script"], *request["args"]]
                    runpy.run_path(request["script"], run_name="__main__")
                    code = 0
                else:
                    sys.argv = ["gradwell", *request["args"]]
                    code = cli.main(request["args"])
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        sys.stdout.write(f"{pid}\\n")
        sys.stdout.flush()
        sys.stdout.write(f"{os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}\\n")
        sys.stdout.flush()
    os._exit(0)  # stdin closed: done, without the interpreter's teardown (seconds, torch loaded)
    """
)


class ForkServer:
    """`gradwell` command lines (or Python scripts), each in a process forked from one warm
    interpreter.

    A fresh `python -m gradwell train` spends ~7 s of CPU importing torch, scikit-learn and
    matplotlib before it writes a byte; forked from an interpreter that has imported them, a run
    starts at once, so a kill costs the run's own work, not the imports. The child runs gradwell's
    command line (`cli.main`) as a user's process does, with its own pid, and dies of a real SIGKILL.
    """

    def __init__(self, cwd: Path) -> None:
        self.cwd, self.log = cwd, cwd / "last.log"  # the output of the latest command
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER], cwd=cwd, env=quiet_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0,
        )  # fmt: skip  # unbuffered: a line read leaves the next one in the pipe, where select sees it
        try:
            assert self.line() == "ready\n", "the fork server did not start"
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def line(self, timeout: float = 120) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"no answer from the fork server in {timeout} s"
        return self.process.stdout.readline().decode()

    def start(self, args: list[str], script: Path | None = None, log: Path | None = None) -> "Child":
        """`gradwell ARGS`, or `python SCRIPT ARGS`, started; its output goes to `log` (self.log)."""
        log = log or self.log
        request = {"args": args, "log": str(log)} | ({"script": str(script)} if script else {})
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        return Child(self, int(self.line()), log)

    def run(self, args: list[str], kill: "Kill | None" = None) -> int:
        """`gradwell ARGS`, killed as `kill` says; its exit code (-9 when killed)."""
        child = self.start(args)
        if (
            kill is not None
            and not child.ended(kill.delay)
            and (not kill.at_write or at_a_write(child.pidfd, self.cwd))
        ):
            child.send_signal(signal.SIGKILL)
        return child.wait()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Child:
    """A process the fork server started, with the part of subprocess.Popen's interface that the
    tests use (its stdout and stderr are its log file)."""

    def __init__(self, server: ForkServer, pid: int, log: Path) -> None:
        self.server, self.pid, self.log, self.returncode = server, pid, log, None
        try:
            self.pidfd = os.pidfd_open(pid)  # the process itself, never a later one given its pid
        except ProcessLookupError:  # it ended, and the server reaped it, first
            self.pidfd = None

    def ended(self, timeout: float) -> bool:
        return self.pidfd is None or ended(self.pidfd, timeout)

    def poll(self) -> int | None:
        return self.wait() if self.ended(0) else None

    def send_signal(self, signum: int) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # it ended and was reaped first
                signal.pidfd_send_signal(self.pidfd, signum)

    def wait(self, timeout: float = 120) -> int:
        """The exit code, as the server's waitpid gave it (-N when signal N ended the process)."""
        if self.returncode is None:
            self.returncode = int(self.server.line(timeout))
            if self.pidfd is not None:
                os.close(self.pidfd)
        return self.returncode

    def communicate(self, timeout: float = 120) -> tuple[None, str]:
        self.wait(timeout)
        return None, self.log.read_text()


def ended(pidfd: int, timeout: float) -> bool:
    """Whether the process ends within `timeout` seconds (a pidfd turns readable when it does)."""
    return bool(select.select([pidfd], [], [], timeout)[0])


def temporaries(cwd: Path) -> set[Path]:
    return set(cwd.glob("runs/*/checkpoints/.step-*.tmp"))


def at_a_write(pidfd: int, cwd: Path) -> bool:
    """Wait until a checkpoint write begins (a new temporary file); False if the process ends first."""
    before = temporaries(cwd)
    while not temporaries(cwd) - before:
        if ended(pidfd, 0.0005):  # a write, flushed and fsynced, lasts a few milliseconds
            return False
    return True


@dataclasses.dataclass(frozen=True)
class Kill:
    """A SIGKILL `delay` seconds into a run, or, `at_write`, at its first checkpoint write after that."""

    delay: float
    at_write: bool = False

    @classmethod
    def draw(cls, rng: random.Random, fresh: bool, first: float, window: float) -> "Kill":
        """A fresh start is killed, one time in two, before `first`, when the uninterrupted run wrote
        its first checkpoint: before its folder, its config.toml or any checkpoint exists, so the
        next try starts from scratch. Other kills come anywhere in (0, `window`), one in four of them
        at the next checkpoint write after that."""
        if fresh and rng.random() < 0.5:
            return cls(rng.uniform(0, first))
        return cls(rng.uniform(0, window), at_write=rng.random() < 0.25)

    def __str__(self) -> str:
        return f"{self.delay:.3f} s in" + ", then at the next checkpoint write" * self.at_write


def epochs(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def config_of(path: Path) -> dict | str:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        return f"not TOML ({error})"


class Campaign:
    """Kills at moments drawn from random.Random(seed), scaled to the uninterrupted run in `whole`;
    after each, the user's next step, until the run ends."""

    def __init__(self, server: ForkServer, whole: Path, started: float, seed: int, kills: int) -> None:
        self.server, self.runs, self.seed, self.kills = server, whole.parent, seed, kills
        self.rng = random.Random(seed)
        self.last = ckpt.saved_steps(whole / "checkpoints")[0]  # the final step
        # the moments: config.toml written (training begins), the first and the last checkpoint
        began = (whole / "config.toml").stat().st_mtime - started
        ended = ckpt.checkpoint_path(whole / "checkpoints", self.last).stat().st_mtime - started
        assert 0 < began < ended, f"file times too coarse to time the run: {began:.3f} s, {ended:.3f} s"
        self.first = began + (ended - began) / len(epochs(whole))
        self.window = 1.2 * ended  # past the last checkpoint, into the final writes
        self.config = config_of(whole / "config.toml")
        self.history: list[str] = []
        self.stages: Counter[str] = Counter()
        log.info("GRADWELL_FAULT_KILLS=%d GRADWELL_FAULT_SEED=%d: kills over (0, %.3f s), the "
                 "uninterrupted run's checkpoints from %.3f s to %.3f s", kills, seed, self.window,
                 self.first, ended)  # fmt: skip

    def story(self) -> str:
        return "\n".join(["the kills so far:", *self.history])

    def finish(self, name: str) -> Path:
        """The run `name` started, killed and resumed until a try ends it; its run folder."""
        run_dir = None
        while True:
            kill = None
            if len(self.history) < self.kills:
                fresh = run_dir is None or not (run_dir / "config.toml").is_file()
                kill = Kill.draw(self.rng, fresh, self.first, self.window)
            before = temporaries(self.server.cwd)
            run_dir, code, what = self.next_try(name, run_dir, kill)
            if code == 0:
                if kill is not None:
                    log.info("%s ended before its kill (%s)", what, kill)
                return run_dir
            assert code == -signal.SIGKILL and kill is not None, (
                f"{what} failed:\n{self.server.log.read_text()}\n{self.story()}"
            )
            self.record(kill, what, name, run_dir, wrote=bool(temporaries(self.server.cwd) - before))

    def next_try(self, name: str, run_dir: Path | None, kill: Kill | None) -> tuple[Path | None, int, str]:
        """What a user does after a kill: `--resume` the run folder; where there is none, or the kill
        came before config.toml (which --resume needs), the same command again, which makes a new
        folder (name-2, ...). The run folder, the exit code and what was tried."""
        if run_dir is not None and (run_dir / "config.toml").is_file():
            return (
                run_dir,
                self.server.run(["train", "--resume", str(run_dir)], kill),
                f"a resume of {run_dir.name}",
            )
        if run_dir is not None:
            assert self.server.run(["train", "--resume", str(run_dir)]) == 2
            assert "is not a run folder of gradwell train" in self.server.log.read_text()
        before = set(self.runs.glob("*"))
        code = self.server.run([*CAMPAIGN, "--set", f"output.name={name}"], kill)
        made = set(self.runs.glob("*")) - before
        assert len(made) <= 1, made
        return (made.pop() if made else None), code, f"a fresh start of {name}"

    def record(self, kill: Kill, what: str, name: str, run_dir: Path | None, wrote: bool) -> None:
        """Log the kill and what it left; config.toml, when there, must still be the run's config."""
        config = run_dir / "config.toml" if run_dir is not None else None
        steps = ckpt.saved_steps(run_dir / "checkpoints") if run_dir is not None else []
        if run_dir is None:
            stage = "before the run folder"
        elif not config.is_file():
            stage = "before config.toml"
        elif wrote:  # a temporary file left
            stage = "during a checkpoint write"
        else:
            stage = "before the first checkpoint" if not steps else "mid-training"
            stage = "after the last checkpoint" if steps and steps[0] == self.last else stage
        self.stages[stage] += 1
        left = f"{run_dir.name}, checkpoints at steps {steps}" if run_dir is not None else "no run folder"
        self.history.append(
            f"kill {len(self.history) + 1} (seed {self.seed}): {what}, {kill}: {stage}; left {left}"
        )
        log.info("%s", self.history[-1])
        if config is not None and config.is_file():
            expected = {
                **self.config,
                "output": {**self.config["output"], "name": name},
            }
            assert config_of(config) == expected, (
                f"after this kill {config} holds {config.stat().st_size} bytes, not the run's config: "
                f"each start rewrites it in place (gradwell.job.train_in), and --resume reads an empty "
                f"one as the default config\n{self.story()}"
            )

    def check_same_run(self, run_dir: Path, whole: Path) -> None:
        """`run_dir` ended as the uninterrupted run `whole` did, and left no temporary checkpoint."""
        from safetensors.torch import load_file

        story = f"{run_dir.name}, {self.story()}"
        weights, expected = load_file(run_dir / "model.safetensors"), load_file(whole / "model.safetensors")
        assert weights.keys() == expected.keys(), story
        assert [k for k in expected if not torch.equal(weights[k], expected[k])] == [], story
        assert [e["epoch"] for e in epochs(run_dir)] == [e["epoch"] for e in epochs(whole)], story
        assert epochs(run_dir) == epochs(whole), story
        assert list((run_dir / "checkpoints").glob(".step-*.tmp")) == [], story


def test_sigkill_at_random_moments_also_during_resumes_ends_bitwise_as_an_uninterrupted_run(
    fork_server, caplog
):
    """The fault campaign: `gradwell train` killed at random moments (before its folder exists,
    mid-epoch, during checkpoint writes, during its final writes), its resumes killed too, ends
    with the weights and metrics of a run never killed. GRADWELL_FAULT_KILLS sets the number of
    kills (default 10), GRADWELL_FAULT_SEED the seed of their moments (default 0); a failure
    lists each kill with both, to draw the same moments again."""
    caplog.set_level(logging.INFO, logger=__name__)
    kills = int(os.environ.get("GRADWELL_FAULT_KILLS", "10"))
    seed = int(os.environ.get("GRADWELL_FAULT_SEED", "0"))
    server = fork_server  # its folder holds the runs
    started = time.time()
    assert server.run([*CAMPAIGN, "--set", "output.name=whole"]) == 0, server.log.read_text()
    whole = server.cwd / "runs" / "whole"
    campaign = Campaign(server, whole, started, seed, kills)
    cycle = 0
    while len(campaign.history) < kills:
        campaign.check_same_run(campaign.finish(f"cut{cycle}"), whole)
        cycle += 1
    log.info("%d kills over %d runs, each resumed to its end: %s", kills, cycle, dict(campaign.stages))
