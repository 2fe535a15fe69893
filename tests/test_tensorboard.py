"""TensorBoardLog: what it writes, read back with tensorboard's own reader; bad folders refused up
front; a failed write during training warns once and never raises."""

import logging
import os
import shutil
import sys
import threading

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradwell.diagnose.stats import STATS
from gradwell.diagnose.tensorboard import DOCTOR_STATS, TensorBoardLog
from gradwell.errors import GradwellError

LAYERS = ["blocks.0.act", "blocks.1.act", "output"]
KINDS = ["relu", "tanh", "linear"]


def step_stats(step: int) -> np.ndarray:
    """(layers, STATS) with distinct values, NaN where a statistic does not apply to the kind."""
    stats = np.arange(len(LAYERS) * len(STATS), dtype=np.float64).reshape(len(LAYERS), -1) / 7 + step
    for row, kind in zip(stats, KINDS, strict=True):
        if kind != "relu":
            row[STATS.index("dead")] = np.nan
        if kind not in ("sigmoid", "tanh"):
            row[STATS.index("saturated")] = np.nan
    return stats


def read(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "gradwell.diagnose.tensorboard" and r.levelno == logging.WARNING
    ]


def test_the_statistics_round_trip_with_their_steps_and_no_nan(tmp_path):
    steps = [0, 200, 400]
    with TensorBoardLog(tmp_path / "tb") as board:
        for step in steps:
            board.write(step, LAYERS, step_stats(step), loss=1.0 / (step + 1), lr=0.1, grad_norm=step + 0.5)
        board.scalars(1, {"train_loss": 0.25, "val_loss": float("nan")}, prefix="epoch/")
    events = read(tmp_path / "tb")
    expected = {
        f"doctor/{stat}/{layer}": [step_stats(s)[i, STATS.index(stat)] for s in steps]
        for stat in DOCTOR_STATS
        for i, layer in enumerate(LAYERS)
    }
    expected = {tag: values for tag, values in expected.items() if not np.isnan(values).any()}
    expected |= {
        "doctor/loss": [1.0, 1 / 201, 1 / 401],
        "doctor/lr": [0.1] * 3,
        "doctor/grad_norm": [0.5, 200.5, 400.5],
    }
    assert set(events.Tags()["scalars"]) == set(expected) | {"epoch/train_loss"}
    assert "doctor/saturated/blocks.1.act" in expected and "doctor/saturated/blocks.0.act" not in expected
    assert "doctor/dead/output" not in expected  # NaN: no curve
    for tag, values in expected.items():
        written = events.Scalars(tag)
        assert [e.step for e in written] == steps
        np.testing.assert_allclose([e.value for e in written], values, rtol=1e-6)  # float32
    assert [(e.step, e.value) for e in events.Scalars("epoch/train_loss")] == [(1, 0.25)]


def test_histograms_hold_the_finite_values_of_each_sample(tmp_path):
    rng = np.random.default_rng(0)
    act = rng.normal(size=500).astype(np.float32)
    grad = np.concatenate([rng.normal(scale=1e-3, size=300), [np.nan, np.inf, -np.inf]])
    dead = np.zeros(64)  # one value only: the histogram still holds it
    samples = {
        "activations": {"blocks.0.act": act, "blocks.1.act": dead, "output": np.array([])},
        "gradients": {"output": grad},
    }
    with TensorBoardLog(tmp_path) as board:
        board.write(0, LAYERS, step_stats(0), samples=samples)
        board.write(10, LAYERS, step_stats(10), samples={"activations": {"blocks.0.act": act + 1}})
    events = read(tmp_path)
    tags = ["activations/blocks.0.act", "activations/blocks.1.act", "gradients/output"]
    assert sorted(events.Tags()["histograms"]) == tags  # the empty one skipped
    finite = grad[np.isfinite(grad)]
    for tag, arrays in zip(tags, [[act, act + 1], [dead], [finite]], strict=True):
        written = events.Histograms(tag)
        assert [e.step for e in written] == [0, 10][: len(arrays)]
        for event, values in zip(written, arrays, strict=True):
            h = event.histogram_value
            assert h.num == values.size == sum(h.bucket)
            assert (h.min, h.max) == (values.astype(np.float64).min(), values.astype(np.float64).max())
            assert h.sum == pytest.approx(values.astype(np.float64).sum(), rel=1e-9, abs=1e-12)


def test_a_stats_table_of_the_wrong_shape_is_a_named_error(tmp_path):
    with TensorBoardLog(tmp_path) as board, pytest.raises(GradwellError, match=r"expected \(layers, STATS\)"):
        board.write(0, LAYERS[:2], step_stats(0))


def test_a_file_given_as_the_folder_is_refused_up_front(tmp_path):
    afile = tmp_path / "events.txt"
    afile.write_text("not a folder")
    with pytest.raises(GradwellError, match=r"events\.txt' is a file, not a folder"):
        TensorBoardLog(afile)
    with pytest.raises(GradwellError, match=r"cannot be made: .*events\.txt is a file"):
        TensorBoardLog(afile / "tb")
    assert afile.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot refuse it")
def test_a_folder_under_a_read_only_parent_is_refused_up_front(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    with pytest.raises(GradwellError, match=r"no permission to write in .*ro$"):
        TensorBoardLog(locked / "tb")


def test_without_tensorboard_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails
    with pytest.raises(GradwellError, match=r'pip install "gradwell\[tensorboard\]"'):
        TensorBoardLog(tmp_path)


def test_a_write_after_the_folder_vanished_warns_once_and_goes_on(tmp_path, caplog):
    board = TensorBoardLog(tmp_path / "tb")
    shutil.rmtree(tmp_path / "tb")
    with caplog.at_level(logging.WARNING):
        board.write(0, LAYERS, step_stats(0), loss=1.0)
        board.write(1, LAYERS, step_stats(1))
        board.scalars(1, {"train_loss": 0.5})
        board.close()
    (record,) = warnings_of(caplog)
    assert str(tmp_path / "tb") in record.getMessage() and "no longer exists" in record.getMessage()
    assert not (tmp_path / "tb").exists()  # nothing wrote it back


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill the disk")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_warns_once_even_when_the_writer_thread_finds_it(tmp_path, caplog):
    before = set(threading.enumerate())
    board = TensorBoardLog(tmp_path)
    (event_file,) = tmp_path.iterdir()
    event_file.unlink()
    event_file.symlink_to("/dev/full")  # every write to it fails with ENOSPC, in tensorboard's thread
    with caplog.at_level(logging.WARNING):
        for step in range(3):
            board.write(step, LAYERS, step_stats(step))
        board.close()
        board.write(3, LAYERS, step_stats(3))
    for thread in set(threading.enumerate()) - before:  # its traceback is reported inside this test
        thread.join(timeout=5)
    (record,) = warnings_of(caplog)
    assert str(tmp_path) in record.getMessage() and "No space left" in record.getMessage()
