"""The command line, run as a user runs it: in a subprocess where the process is what is tested
(its stdout, exit status, signals, torchrun's processes), otherwise through `main` in this one."""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import GRADWELL, gradwell, quiet_env, wait_for_a_new_checkpoint

from gradwell.cli import main


def terminal_sigint() -> None:
    """SIGINT as a terminal leaves it (default), whatever the suite was started by: a background
    job or nohup ignores it, a child inherits that, and Python then installs no KeyboardInterrupt,
    so the launcher would miss the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


TINY = """
[data]
name = "digits"
[model]
kind = "mlp"
hidden = [32, 32]
activation = "elu"
batchnorm = "after"
[optimizer]
name = "adam"
lr = 0.01
[schedule]
name = "exponential"
s = 100
[train]
epochs = 2
batch_size = 64
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`gradwell train tiny.toml --json` in a subprocess, once: its folder and its JSON, which the
    tests below read (a start of the command line costs seconds of imports; the commands that
    follow it run in this process, through the same `main` that `python -m gradwell` calls)."""
    cwd = tmp_path_factory.mktemp("tiny")
    (cwd / "tiny.toml").write_text(TINY)
    done = gradwell("train", "tiny.toml", "--set", "output.name=tiny", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd, json.loads(done.stdout)


def test_train_writes_a_complete_run_folder_and_resumes(tiny_run, tmp_path, monkeypatch, capsys):
    cwd, result = tiny_run
    run_dir = cwd / "runs" / "tiny"
    assert result["run_dir"] == str(run_dir.relative_to(cwd)) and result["epochs"] == 2
    assert 0.5 < result["test"]["accuracy"] <= 1.0
    names = {p.name for p in run_dir.iterdir()}
    assert names >= {
        "config.toml",
        "metrics.jsonl",
        "checkpoints",
        "model.safetensors",
        "learning_curves.png",
        "result.json",
    }
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    copy = tmp_path / "runs" / "tiny"  # resumed in a copy: the other tests read the 2-epoch run
    shutil.copytree(run_dir, copy)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(copy), "--set", "train.epochs=3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 3


def test_config_errors_exit_2_with_the_message_and_write_nothing(tmp_path, tiny_config, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(tiny_config), "--set", "model.activation=rleu"]) == 2
    err = capsys.readouterr().err
    assert "unknown activation 'rleu' (did you mean 'relu'?)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_datasets_and_help(capsys):
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert "mnist1d" in listing and "csv:PATH" in listing
    for command in ([], ["train"], ["datasets"]):
        with pytest.raises(SystemExit) as shown:
            main([*command, "--help"])
        assert shown.value.code == 0 and "usage: gradwell" in capsys.readouterr().out


def test_train_data_parallel_in_two_processes(tmp_path, tiny_config):
    done = gradwell(
        "train",
        str(tiny_config),
        "--nproc",
        "2",
        "--set",
        "output.name=ddp",
        "--set",
        "train.epochs=1",
        "--set",
        "train.sync_batchnorm=true",  # the doctor's probe after training then runs on every process
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # printed once, by process 0
    assert result["epochs"] == 1 and result["test"]["accuracy"] > 0.3
    assert result["doctor"]["verdicts"]
    assert (tmp_path / "runs" / "ddp" / "model.safetensors").is_file()


def test_fold_a_trained_run_then_refuse_a_folder_that_is_not_one(tiny_run, tmp_path, capsys):
    cwd, _ = tiny_run
    run_dir = cwd / "runs" / "tiny"
    assert main(["fold", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["folded"] == ["hidden1.norm", "hidden2.norm"] and result["left"] == []
    assert result["test"][0]["accuracy"] == pytest.approx(result["test"][1]["accuracy"], abs=1e-3)
    assert (
        result["path"] == str(run_dir / "model_folded.safetensors")
        and (run_dir / "model_folded.safetensors").is_file()
    )
    assert main(["fold", str(run_dir), "--out", str(tmp_path / "f.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "BatchNorm layers folded" in shown and "hidden2.norm" in shown

    assert main(["fold", str(tmp_path)]) == 2  # rich wraps the message to the terminal's width
    err = capsys.readouterr().err
    assert "is not a run folder of gradwell train" in " ".join(err.split())
    assert "Traceback" not in err


def test_ctrl_c_stops_train_with_a_checkpoint_and_says_how_to_resume(tmp_path, tiny_config):
    command = [*GRADWELL, "train", str(tiny_config), "--set", "train.epochs=1000", "--set", "output.name=cut"]
    process = subprocess.Popen(command, cwd=tmp_path, env=quiet_env(), stderr=subprocess.PIPE, text=True)
    wait_for_a_new_checkpoint(process, tmp_path / "runs" / "cut" / "checkpoints")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    err = " ".join(err.split())  # rich wraps to the terminal's width
    assert process.returncode == 130 and "interrupted after step" in err
    assert f"go on with: gradwell train --resume {Path('runs') / 'cut'}" in err


def test_ctrl_c_stops_every_process_of_a_data_parallel_run_at_one_step_and_resume_ends_the_same(
    tmp_path, tiny_config
):
    from safetensors.torch import load_file

    env = quiet_env(COLUMNS="200")
    train = ["train", "--nproc", "2", "--set", "output.progress=false"]
    epochs = ["--set", "train.epochs=8"]
    whole = gradwell(*train, str(tiny_config), *epochs, "--set", "output.name=whole", cwd=tmp_path, env=env)
    assert whole.returncode == 0, whole.stderr
    # a terminal's Ctrl-C reaches gradwell and torchrun, which forwards it to the training processes
    process = subprocess.Popen(
        [*GRADWELL, *train, str(tiny_config), "--set", "train.epochs=1000", "--set", "output.name=cut"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        start_new_session=True, preexec_fn=terminal_sigint,
    )  # fmt: skip
    checkpoints = tmp_path / "runs" / "cut" / "checkpoints"
    wait_for_a_new_checkpoint(process, checkpoints)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=90)
    assert process.returncode == 130 and "Traceback" not in err, err  # torchrun's own stays out
    assert err.count("interrupted after step") == 1 and "go on with: gradwell train --resume" in err
    stopped = int(re.search(r"interrupted after step (\d+)", err)[1])
    steps = sorted(int(p.stem.removeprefix("step-")) for p in checkpoints.glob("*.safetensors"))
    assert steps[-1] == stopped  # written once, by process 0, where every process stopped
    assert stopped < 8 * 20  # before the uninterrupted run's end (digits: 20 steps an epoch)
    resumed = gradwell(*train, "--resume", str(tmp_path / "runs" / "cut"), *epochs, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    expected = load_file(tmp_path / "runs" / "whole" / "model.safetensors")
    weights = load_file(tmp_path / "runs" / "cut" / "model.safetensors")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

    # and the same epochs logged: every process's running sums of the cut epoch were checkpointed
    def logged(name):
        lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]

    assert logged("cut") == logged("whole")
    assert "no state for callback" not in resumed.stderr


def training_process(rank: int, marker: str) -> int:
    """The pid of the training process of `rank` whose command line holds `marker`."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (
            b"gradwell" in command
            and marker.encode() in b" ".join(command)
            and f"RANK={rank}".encode() in environment
        ):
            return int(entry.name)
    raise AssertionError(f"no training process of rank {rank}")


def test_a_data_parallel_process_killed_by_the_os_is_one_message_naming_it_and_how_to_resume(
    tmp_path, tiny_config
):
    env = quiet_env(COLUMNS="200")
    command = [*GRADWELL, "train", "--nproc", "2", str(tiny_config), "--set", "train.epochs=1000", "--set",
               "output.name=killed", "--set", "output.progress=false"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    wait_for_a_new_checkpoint(process, tmp_path / "runs" / "killed" / "checkpoints")
    os.kill(training_process(1, "output.name=killed"), signal.SIGKILL)
    _, err = process.communicate(timeout=90)
    assert process.returncode == 1 and "Traceback" not in err and "ChildFailedError" not in err, err
    assert err.count("error: ") == 1
    assert "training process 1 of 2 was stopped by SIGKILL" in err
    assert f"gradwell train --resume {Path('runs') / 'killed'}" in err
