"""The examples folder: every config loads, the transfer case study builds its tasks, the
pretraining script runs end to end (in a tiny setting) and reports every method, and the chapter's
Fashion-MNIST setups build and train on stand-in files read through the real verifying loader."""

import importlib.util
import json
import math
import re
import tomllib
import warnings
from pathlib import Path

import pytest
import standins
import torch
from torch import nn

from gradwell import build, cli
from gradwell import config as configs
from gradwell.data import download, split_by_classes
from gradwell.experiment import summarize
from gradwell.experiment.transfer_study import load_study_config
from gradwell.init import lecun_normal_, recommended_initializer
from gradwell.models.builders import hidden_blocks
from gradwell.norm import BatchNorm
from gradwell.selfnorm import SelfNormalizationWarning
from gradwell.train.losses import evaluate_split
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


# Stand-in Fashion-MNIST: every class present, 130 sandals and 130 shirts so that task B still has
# over 200 training images once the config's validation split is carved, 16 of each other class
SANDAL, SHIRT = download.FASHION.index("Sandal"), download.FASHION.index("Shirt")
TRAIN_PER_CLASS = [130 if c in (SANDAL, SHIRT) else 16 for c in range(10)]
TEST_PER_CLASS = [10] * 10


@pytest.fixture(scope="module")
def standin_cache(tmp_path_factory):
    """A cache folder holding the four stand-in files under fashion_mnist/, and their bytes."""
    files = standins.mnist_like(TRAIN_PER_CLASS, TEST_PER_CLASS)
    cache = tmp_path_factory.mktemp("cache")
    standins.write(cache / "fashion_mnist", files)
    return cache, files


@pytest.fixture
def fashion_mnist(standin_cache, monkeypatch):
    """``data.name = "fashion_mnist"`` loads the stand-ins: the cache is theirs and the registry
    pins their sizes and SHA-256, so the loader verifies them as it does the published files."""
    cache, files = standin_cache
    monkeypatch.setenv("GRADWELL_DATA", str(cache))
    base = download.REGISTRY["fashion_mnist"].base
    monkeypatch.setitem(download.REGISTRY, "fashion_mnist", standins.registry_entry(base, files))


def fashion_example(name):
    path = EXAMPLES / f"{name}.toml"
    assert tomllib.loads(path.read_text())["data"]["name"] == "fashion_mnist"
    return configs.load(path)


def check_split_sizes(dataset, val_fraction):
    """The stand-ins were verified and loaded as Fashion-MNIST, split as the config says."""
    assert download.status("fashion_mnist") == "cached, verified"
    assert dataset.name == "fashion_mnist" and dataset.class_names == download.FASHION
    assert len(dataset.val) == round(sum(TRAIN_PER_CLASS) * val_fraction)
    assert len(dataset.train) + len(dataset.val) == sum(TRAIN_PER_CLASS)
    assert dataset.test.y.bincount().tolist() == TEST_PER_CLASS


def test_the_fashion_selu_example_is_100_selu_layers_of_100_lecun_normal_on_standardized_pixels(
    fashion_mnist,
):
    config = fashion_example("fashion_selu_100")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfNormalizationWarning)  # the chapter's conditions all hold
        prepared = build.prepare(config, epochs=1)
    dataset, model = prepared.dataset, prepared.model
    check_split_sizes(dataset, config.data["val_fraction"])
    assert dataset.train.x.shape[1:] == (28, 28)
    assert dataset.train.x.mean(0).abs().max() < 1e-4  # each pixel standardized on the training split
    blocks = [block for _, block in hidden_blocks(model)]
    names = ["flatten", *(f"hidden{i}" for i in range(1, 101)), "output"]
    assert len(blocks) == 100 and list(dict(model.named_children())) == names
    for block in blocks:
        assert list(dict(block.named_children())) == ["linear", "activation"]  # no BN, no dropout
        assert isinstance(block.activation, nn.SELU) and block.linear.out_features == 100
    assert not any(isinstance(m, (BatchNorm, nn.Dropout, nn.AlphaDropout)) for m in model.modules())
    assert model.output.out_features == 10 and recommended_initializer("selu") is lecun_normal_
    # LeCun normal: Var[w] = 1 / fan_in (Glorot's would be 2 / (784 + 100) on the first layer, He's
    # twice LeCun's) and a normal's tails (a LeCun uniform's |w| stays under sqrt(3 / fan_in))
    weights = [block.linear.weight.detach() for block in blocks]
    assert float(weights[0].var() * 784) == pytest.approx(1, abs=0.03)
    assert float(torch.cat([w.flatten() for w in weights[1:]]).var() * 100) == pytest.approx(1, abs=0.03)
    assert float(weights[0].abs().max()) * math.sqrt(784) > 3.5
    assert type(prepared.optimizer).__name__ == "SGD" and prepared.optimizer.param_groups[0]["momentum"] == 0
    history = prepared.fit(progress=False)
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0]["loss"])


def test_the_fashion_batchnorm_example_normalizes_the_inputs_and_each_layer_before_its_relu(fashion_mnist):
    config = fashion_example("fashion_batchnorm")
    prepared = build.prepare(config, epochs=2)
    dataset, model = prepared.dataset, prepared.model
    check_split_sizes(dataset, config.data["val_fraction"])
    assert dataset.train.x.min() >= 0 and dataset.train.x.max() <= 1  # pixels / 255, not standardized
    assert list(dict(model.named_children())) == ["flatten", "input_norm", "hidden1", "hidden2", "output"]
    assert isinstance(model.input_norm, BatchNorm) and model.input_norm.running_mean.shape == (784,)
    for (_, block), (fan_in, units) in zip(hidden_blocks(model), [(784, 300), (300, 100)], strict=True):
        assert list(dict(block.named_children())) == ["linear", "norm", "activation"]
        linear = block.linear
        assert (linear.in_features, linear.out_features, linear.bias) == (fan_in, units, None)
        assert isinstance(block.activation, nn.ReLU) and block.norm.running_mean.shape == (units,)
    for norm in (model.input_norm, model.hidden1.norm, model.hidden2.norm):
        assert (norm.momentum, norm.eps) == (0.99, 1e-3)  # Keras's BatchNormalization
    assert (model.output.in_features, model.output.out_features) == (100, 10)
    assert prepared.optimizer.param_groups[0]["lr"] == 0.01
    prepared.fit(progress=False)
    assert evaluate_split(model, dataset.test)["accuracy"] > 0.5  # 5 times chance: it learns the stripes


def test_the_fashion_transfer_example_is_the_chapters_case_sandal_vs_shirt_on_200_images(
    fashion_mnist, capsys
):
    path = EXAMPLES / "fashion_transfer.toml"
    tiny = ["train.epochs=1", "transfer.frozen_epochs=1", "transfer.epochs=1"]
    config, options = load_study_config(path, tiny)
    assert (options.classes_a, options.classes_b) == ([0, 1, 2, 3, 4, 7, 8, 9], [SANDAL, SHIRT])
    assert (options.limit_train, options.frozen_epochs + options.epochs) == (200, 2)
    assert (options.optimizer, options.lr, options.lr_after_unfreeze) == ("sgd", 1e-3, 1e-3)
    dataset = build.load_data(config)
    check_split_sizes(dataset, config.data["val_fraction"])
    # the seed's draw, as the study makes it; every image shows its original class in its stripe
    task_a, task_b = split_by_classes(
        dataset, options.classes_a, options.classes_b, limit_train=options.limit_train, seed=config.train.seed
    )
    pool = int(torch.isin(dataset.train.y, torch.tensor([SANDAL, SHIRT])).sum())
    assert pool > 200 and len(task_b.train) == 200  # the limit, not the files, decides B's size
    assert torch.equal(standins.stripe_class(task_b.train.x), torch.tensor([SANDAL, SHIRT])[task_b.train.y])
    assert task_b.num_classes == 2 and sorted(task_b.train.y.unique().tolist()) == [0, 1]
    assert task_a.num_classes == 8 and len(task_a.train) == len(dataset.train) - pool
    assert torch.equal(standins.stripe_class(task_a.train.x), torch.tensor(options.classes_a)[task_a.train.y])
    model_a = build.build_model(config, task_a)  # the chapter's model A: 3 hidden layers of 100 ReLU
    widths = [(b.linear.out_features, type(b.activation)) for _, b in hidden_blocks(model_a)]
    assert widths == [(100, nn.ReLU)] * 3 and model_a.output.out_features == 8
    assert cli.main(["transfer", str(path), *[a for o in tiny for a in ("--set", o)], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task_a"] == "fashion_mnist task A (classes 0, 1, 2, 3, 4, 7, 8, 9)"
    assert report["task_b"] == "fashion_mnist task B (classes 5, 6)"
    (run,) = report["runs"]
    assert set(run) == {"seed", "a", "b_scratch", "b_on_a", "difference"}
    assert all(0 <= run[key] <= 1 for key in ("a", "b_scratch", "b_on_a"))
    assert run["difference"] == pytest.approx(run["b_on_a"] - run["b_scratch"])
    assert set(report["summary"]) == {"a", "b_scratch", "b_on_a", "difference"}
