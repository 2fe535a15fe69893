"""The examples folder: every config loads, the transfer case study builds its tasks, and the
pretraining script runs end to end (in a tiny setting) and reports every method."""

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import torch

from gradwell import build
from gradwell import config as configs
from gradwell.data import split_by_classes
from gradwell.experiment import summarize
from gradwell.experiment.transfer_study import load_study_config
from gradwell.transfer import reuse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STUDY = EXAMPLES / "transfer_case_study.toml"


def load(path):
    """gradwell.config.load, or load_study_config for a config with a [transfer] section."""
    if "transfer" in tomllib.loads(path.read_text()):
        return load_study_config(path)[0]
    return configs.load(path)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda path: path.stem)
def test_every_example_config_loads_as_written(path):
    raw = tomllib.loads(path.read_text())
    config = load(path)
    for section in ("data", "model", "optimizer", "schedule"):
        assert getattr(config, section) == raw.get(section, {})
    assert all(getattr(config.train, key) == value for key, value in raw["train"].items())


def test_the_transfer_case_study_builds_task_a_on_eight_classes_and_task_b_on_two():
    config, options = load_study_config(STUDY, ["data.num_samples=2000"])  # 10,000 take seconds to make
    assert (options.classes_a, options.classes_b, options.limit_train) == (list(range(8)), [8, 9], 200)
    dataset = build.load_data(config)
    task_a, task_b = split_by_classes(
        dataset, options.classes_a, options.classes_b, limit_train=options.limit_train, seed=config.train.seed
    )
    for task, classes in ((task_a, range(8)), (task_b, [8, 9])):
        assert task.num_classes == len(classes)
        assert task.train.y.unique().tolist() == list(range(len(classes)))
        expected = sum(int((dataset.test.y == c).sum()) for c in classes)
        assert len(task.test) == expected  # every test sample of its classes, and no other
    assert len(task_b.train) == 200
    assert len(task_a.train) == sum(int((dataset.train.y == c).sum()) for c in range(8))
    model_a = build.build_model(config, task_a)
    assert model_a(task_a.test.x).shape == (len(task_a.test), 8)
    b_on_a = reuse(model_a, options.drop_top, task_b.num_classes, generator=torch.Generator().manual_seed(0))
    assert b_on_a(task_b.train.x).shape == (200, 2)


def pretraining_script():
    spec = importlib.util.spec_from_file_location("pretraining_example", EXAMPLES / "pretraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pretraining_example_reports_every_method_with_its_interval_and_paired_gap(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps a table to the terminal's width
    script = pretraining_script()
    tiny = [
        "--seeds",
        "2",
        "--labels",
        "20",
        "--pretrain-epochs",
        "1",
        "--frozen-epochs",
        "1",
        "--epochs",
        "1",
    ]
    results = script.main(tiny)
    output = capsys.readouterr().out
    assert list(results) == ["scratch", "autoencoder", "rbm", "masked", "pairs"]
    number, signed = r"(-?\d+\.\d\d)", r"([+-]\d+\.\d\d)"
    for method, accuracies in results.items():
        assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)
        stats = summarize(accuracies)
        row = re.search(rf"│ {method} +│ {number} +│ {number} +│ \[{number}, {number}\] +│ (.*?) *│", output)
        assert row, f"no row for {method} in\n{output}"
        shown = [float(v) / 100 for v in row.groups()[:4]]
        assert shown == pytest.approx([stats.mean, stats.std, *stats.ci], abs=5e-5)
        if method == "scratch":
            assert row[5] == ""
            continue
        gap = summarize([a - b for a, b in zip(accuracies, results["scratch"], strict=True)])
        difference = re.fullmatch(rf"{signed} \[{signed}, {signed}\]", row[5])
        assert difference, f"no paired difference for {method}: {row[5]!r}"
        shown = [float(v) / 100 for v in difference.groups()]
        assert shown == pytest.approx([gap.mean, *gap.ci], abs=5e-5)
