"""Bad input and hostile conditions found by the fault and bad-input campaign (issue 13), each as
the user meets it: a plain-text gradwell error, exit status 2, nothing written; or a run that ends
cleanly where it used to end in a traceback."""

import fcntl
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import GRADWELL, quiet_env, wait_for_a_new_checkpoint

from gradwell import build, job
from gradwell import config as configs
from gradwell.activations import Swish
from gradwell.cli import main
from gradwell.errors import CheckpointError, ConfigError, DataError, GradwellError
from gradwell.run_folder import LOCK_FILE, load_run
from gradwell.train import checkpoint

DIGITS = ["data.name=digits", "model.depth=1", "model.width=16", "train.epochs=1", "output.progress=false"]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """`gradwell ARGS` in this process: the exit status and stderr, with rich's wrapping undone."""
    status = main(list(args))
    return status, " ".join(capsys.readouterr().err.split())


def test_a_run_whose_relu_units_all_die_ends_with_the_doctors_verdict_not_a_traceback(tmp_path):
    raw = {
        "data": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [32, 32], "activation": "relu"},
        "optimizer": {"name": "sgd", "lr": 10.0},
        "schedule": {"name": "none"},
        "train": {"epochs": 2},
        "output": {"dir": str(tmp_path), "name": "dead", "progress": False},
    }
    result = job.run(configs.from_dict(raw))  # a ZeroDivisionError in the doctor before
    written = json.loads((tmp_path / "dead" / "result.json").read_text())
    verdicts = {v["name"]: v["summary"] for v in written["doctor"]["verdicts"]}
    assert "vanishes entirely" in verdicts["vanishing_gradients"] and "dead_units" in verdicts
    assert (tmp_path / "dead" / "model.safetensors").is_file() and result.doctor is not None


@pytest.mark.parametrize(
    "text", ["[/bold]", "exp[/old]", "[widths]", "[bold red]loud[/]"], ids=["close", "path", "word", "style"]
)
def test_error_messages_are_printed_as_written_never_as_markup(tmp_path, capsys, text):
    status, err = run_cli(capsys, "train", "--set", f"model.activation={json.dumps(text)}", "--set",
                          f"output.dir={tmp_path}")  # fmt: skip
    assert status == 2 and f"unknown activation {text!r}" in err
    assert not any(tmp_path.iterdir())


def test_a_csv_path_with_brackets_is_named_as_given(tmp_path, capsys):
    folder = tmp_path / "exp[v2]"
    folder.mkdir()
    status, err = run_cli(capsys, "train", "--set", f"data.name='csv:{folder}/train.csv'")
    assert status == 2 and f"csv: file '{folder}/train.csv' not found" in err
    status, err = run_cli(capsys, "train", "--set", f"data.name='csv:{folder}'")
    assert status == 2 and f"csv: '{folder}' is a folder" in err


def test_unreadable_configs_are_named_errors(tmp_path, capsys):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[model]\nactivation = "caf\xe9"\n'.encode("latin-1"))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    for path, message in (
        (latin, "is not UTF-8 text (byte 25 is 0xe9)"),
        (binary, "is not UTF-8 text"),
        (tmp_path, "is a folder; give the path of a .toml file"),
    ):
        status, err = run_cli(capsys, "train", str(path))
        assert status == 2 and message in err and "Traceback" not in err


def test_resume_of_a_file_and_an_output_dir_that_is_a_file_are_named_errors(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a run")
    status, err = run_cli(capsys, "train", "--resume", str(afile))
    assert status == 2 and "is not a run folder of gradwell train" in err
    status, err = run_cli(
        capsys, "train", "--set", f"output.dir={afile / 'runs'}", *[f"--set={o}" for o in DIGITS]
    )
    assert status == 2 and f"{afile} is a file, not a folder" in err
    assert afile.read_text() == "not a run"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot refuse it")
def test_an_output_dir_without_write_permission_is_a_named_error(tmp_path, capsys):
    locked_out = tmp_path / "ro"
    locked_out.mkdir(mode=0o500)
    status, err = run_cli(
        capsys, "train", "--set", f"output.dir={locked_out / 'runs'}", *[f"--set={o}" for o in DIGITS]
    )
    assert status == 2 and "no permission to write" in err


def test_an_output_name_that_is_a_path_is_refused_before_anything_is_written(tmp_path):
    for name in ("../../escaped", "a/b", ".."):
        with pytest.raises(ConfigError, match="must be a folder name, not a path"):
            job.run(configs.load(None, [*DIGITS, f"output.dir={tmp_path / 'runs'}", f"output.name={name}"]))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=true"], "optimizer.lr = True has the wrong type: expected float"),
        (["schedule.name=power", "schedule.s=true"], "schedule.s = True has the wrong type: expected float"),
        (["schedule.name=piecewise", "schedule.boundaries=[3]", "schedule.values=0.1"],
         "schedule.values = 0.1 has the wrong type: expected list of float"),
        (["train.seed=1180591620717411303424"], r"seed must be an int in \[-9223372036854775808, "),
        (["model.kind=cnn", "model.kind=mlp", "model.hidden=[1000000000]"], "tensors would need 256 GB"),
        (["data.num_classes=1000000000"], "for 1000000000 classes of inputs"),
        (["model.width=1000000000000000000"], "cannot be built: Storage size calculation overflowed"),
        (["model.activation=swsh"], r"model.activation: unknown activation 'swsh' \(did you mean 'swish'"),
    ],
)  # fmt: skip
def test_bad_values_and_impossible_sizes_are_config_errors_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build.prepare(configs.load(None, ["data.name=digits", "train.epochs=1", *overrides]))


def test_a_number_of_samples_beyond_the_machine_is_refused_at_once():
    with pytest.raises(ConfigError, match=r"data.num_samples = 1000000000000 would need .* of memory"):
        build.load_data(configs.load(None, ["data.num_samples=1000000000000"]))


def test_a_negative_swish_beta_is_refused():
    with pytest.raises(GradwellError, match=r"Swish beta must be a finite number in \[0, inf\)"):
        Swish(beta=-1.0)
    assert Swish(beta=0.0).beta == 0.0


def trained_run(tmp_path):
    return job.run(configs.load(None, [*DIGITS, f"output.dir={tmp_path}", "output.name=run"])).run_dir


def test_damaged_final_weights_are_refused_by_every_command_that_loads_them(tmp_path, capsys):
    run_dir = trained_run(tmp_path)
    weights = run_dir / "model.safetensors"
    payload = bytearray(weights.read_bytes())
    payload[-32:-16] = bytes(16)  # 16 bytes of the last tensor set to zero
    weights.write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match="is corrupted: its checksum does not match its data"):
        load_run(run_dir)
    for command in (["diagnose", str(run_dir)], ["fold", str(run_dir)]):
        status, err = run_cli(capsys, *command)
        assert status == 2 and "is corrupted" in err


def test_fold_into_a_missing_folder_is_a_named_error(tmp_path, capsys):
    run_dir = trained_run(tmp_path)
    status, err = run_cli(
        capsys, "fold", str(run_dir), "--out", str(tmp_path / "nowhere" / "folded.safetensors")
    )
    assert status == 2 and f"the folder {tmp_path / 'nowhere'} does not exist" in err


def test_a_run_folder_in_use_is_refused_naming_the_holder(tmp_path):
    run_dir = trained_run(tmp_path)
    with open(run_dir / LOCK_FILE, "r+") as held:  # another process's hold, as flock sees it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write("4242")
        held.flush()
        config = configs.load(run_dir / "config.toml")
        before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        with pytest.raises(GradwellError, match=r"in use by another gradwell process \(pid 4242\)"):
            job.run(config, run_dir=run_dir, resume=True)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    job.run(config, run_dir=run_dir, resume=True)  # free again once the holder lets go


def test_a_temporary_file_left_by_a_killed_checkpoint_write_is_removed_by_the_next_save(tmp_path):
    directory = tmp_path / "checkpoints"
    checkpoint.save(checkpoint.checkpoint_path(directory, 1), {"step": 1, "w": torch.ones(2)})
    orphan = directory / ".step-000000002.safetensors.k2j4.tmp"
    orphan.write_bytes(b"half a checkpoint")
    checkpoint.save(checkpoint.checkpoint_path(directory, 2), {"step": 2, "w": torch.ones(2)})
    checkpoint.prune(directory, keep=2)
    assert not orphan.exists() and checkpoint.saved_steps(directory) == [2, 1]


def test_sigterm_stops_train_like_ctrl_c_with_a_checkpoint_and_exit_143(tmp_path):
    command = [*GRADWELL, "train", *[f"--set={o}" for o in DIGITS], "--set", "train.epochs=1000",
               "--set", "output.name=cut"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=quiet_env(), stderr=subprocess.PIPE, text=True)
    wait_for_a_new_checkpoint(process, tmp_path / "runs" / "cut" / "checkpoints")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    err = " ".join(err.split())
    assert process.returncode == 143 and "interrupted after step" in err and "Traceback" not in err
    assert f"go on with: gradwell train --resume {Path('runs') / 'cut'}" in err


def test_the_help_of_claims_and_compare_reads_95_percent(capsys):
    for command in ("claims", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "95%" in out and "95%%" not in out


def test_a_number_of_samples_that_would_take_too_long_to_generate_is_refused_with_the_estimate():
    with pytest.raises(DataError, match=r"data.num_samples = 300000 would take about \d+ minutes"):
        build.load_data(configs.load(None, ["data.num_samples=300000", "data.max_minutes=0.001"]))


def test_an_emptied_config_is_refused_on_resume_and_a_temporary_file_in_the_run_folder_removed(
    tmp_path, capsys
):
    run_dir = trained_run(tmp_path)
    orphan = run_dir / ".model.safetensors.x1y2.tmp"  # a kill during the final weights' write
    orphan.write_bytes(b"half the weights")
    config = configs.load(run_dir / "config.toml")
    job.run(config, run_dir=run_dir, resume=True)
    assert not orphan.exists() and configs.load(run_dir / "config.toml") == config
    (run_dir / "config.toml").write_text("")  # what a kill inside a plain write_text left before
    status, err = run_cli(capsys, "train", "--resume", str(run_dir))
    assert status == 2 and "config.toml is empty: the write of the run's config was cut off" in err
