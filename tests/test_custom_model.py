"""``model.kind = "python:..."``: a user's own factory, built by every command that builds a model."""

import json
import os
import sys

import pytest
import torch
from torch import nn

from gradwell import build, experiment
from gradwell import config as configs
from gradwell.cli import main
from gradwell.errors import ConfigError
from gradwell.models import build_custom, import_factory
from gradwell.run_folder import load_run

FACTORIES = '''
import math

import torch
from torch import nn


def tiny(input_shape, num_classes, width: int = 8):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def normalized(input_shape, num_classes, width: int = 8):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )


class Net(nn.Module):
    """Not a Sequential: folding, the doctor and the run folder see it as it is."""

    def __init__(self, input_shape, num_classes, width=8):
        super().__init__()
        self.body = nn.Linear(math.prod(input_shape), width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x.flatten(1))))


def seeded(input_shape, num_classes, generator=None):
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
    with torch.no_grad():
        model[1].weight.normal_(generator=generator)
    return model


def boom(input_shape, num_classes):
    raise ValueError("width must be even\\nand a second line")


def not_a_module(input_shape, num_classes):
    return {"layers": 2}


def five_outputs(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 5))


def square_inputs(input_shape, num_classes):
    return nn.Linear(3, num_classes)


def one_logit(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 1))


def passes_on(input_shape, num_classes, **options):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, **options))


def needs_width(input_shape, num_classes, width: int):
    return tiny(input_shape, num_classes, width)


def no_arguments():
    return nn.Linear(2, 2)


NOT_CALLABLE = 3
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A package ``usernets`` on sys.path and a file ``nets.py`` in the working directory."""
    package = tmp_path / "pkg" / "usernets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(FACTORIES)
    (tmp_path / "nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [n for n in sys.modules if n.split(".")[0] == "usernets"]:
        del sys.modules[name]


def write_config(path, kind, **model):
    lines = [f"{k} = {json.dumps(v)}" for k, v in {"kind": kind, **model}.items()]
    path.write_text(
        '[data]\nname = "digits"\n[model]\n' + "\n".join(lines) + "\n[train]\nepochs = 1\n"
        'device = "cpu"\n[output]\ndir = "runs"\nprogress = false\n'
    )
    return str(path)


def config_of(kind, seed=0, **model):
    raw = {"data": {"name": "digits"}, "model": {"kind": kind, **model}, "train": {"seed": seed}}
    return configs.from_dict(raw)


def first_weight(model: nn.Module) -> torch.Tensor:
    return next(model.parameters()).detach().clone()


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("python:usernets.small:normalized", nn.Sequential), ("python:nets.py:Net", nn.Module)],
    ids=["module", "file"],
)
def test_train_then_diagnose_and_fold_the_run(user, capsys, kind, cls):
    config = write_config(user / "run.toml", kind, width=6)
    assert main(["train", config, "--set", "output.name=run", "--json"]) == 0
    run_dir = user / "runs" / "run"
    run = load_run(run_dir)  # rebuilt from config.toml, the trained weights loaded
    assert isinstance(run.model, cls)
    assert sum(p.numel() for p in run.model.parameters()) > 0
    capsys.readouterr()
    assert main(["diagnose", str(run_dir), "--json"]) == 0
    assert main(["fold", str(run_dir), "--json"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert (run_dir / "model_folded.safetensors").is_file()
    assert main(["diagnose", config, "--json"]) == 0  # diagnose CONFIG trains it afresh


def test_compare_two_seeds_in_process(user, capsys):
    a = write_config(user / "a.toml", "python:usernets.small:tiny")
    b = write_config(user / "b.toml", "python:nets.py:Net")
    assert main(["compare", a, b, "--seeds", "2", "--workers", "0", "--out", "cmp", "--json"]) == 0
    runs = json.loads((user / "cmp" / "results.json").read_text())["runs"]
    assert [(r["label"], r["seed"], r["status"]) for r in runs] == [
        ("a", 0, "ok"), ("a", 1, "ok"), ("b", 0, "ok"), ("b", 1, "ok")
    ]  # fmt: skip
    assert runs[0]["test"] != runs[1]["test"]  # the seeds differ


def test_worker_processes_import_a_module_factory_from_the_parents_sys_path(user):
    # "spawn"ed workers start with the parent's sys.path and working directory
    arms = {"module": build.with_train(config_of("python:usernets.small:tiny"), epochs=1)}
    results = experiment.run(arms, seeds=[0], workers=2)  # one task: one worker process started
    assert [r.status for r in results.records] == ["ok"], [r.error for r in results.records]


def test_transfer_reuses_a_sequential_factory(user, capsys):
    config = write_config(user / "t.toml", "python:usernets.small:tiny", width=6)
    with open(config, "a") as file:
        file.write("[transfer]\nclasses_a = [0, 1, 2, 3, 4, 5, 6, 7]\nclasses_b = [8, 9]\n")
        file.write("limit_train = 50\nfrozen_epochs = 1\nepochs = 1\n")
    assert main(["transfer", config, "--json"]) == 0
    assert "b_on_a" in capsys.readouterr().out


def test_seeds_make_runs_reproducible_and_different(user):
    dataset = build.load_data(config_of("python:usernets.small:tiny"))
    state = torch.get_rng_state()
    for kind in ("python:usernets.small:tiny", "python:nets.py:seeded"):
        one, again, other = (first_weight(build.build_model(config_of(kind, s), dataset)) for s in (1, 1, 2))
        assert torch.equal(one, again) and not torch.equal(one, other)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left as it was


def test_a_factory_with_a_generator_parameter_gets_a_seeded_one(user):
    expected = torch.randn(10, 64, generator=torch.Generator().manual_seed(3))
    model = build_custom("python:nets.py:seeded", (64,), 10, {}, seed=3)
    assert torch.equal(model[1].weight, expected)


def test_a_binary_loss_also_takes_one_logit_per_sample(user):
    assert build_custom("python:nets.py:one_logit", (64,), 2, {}, seed=0, binary=True)[1].out_features == 1
    with pytest.raises(ConfigError, match=r"the model gives \(2, 1\); expected \(2, 2\): logits"):
        build_custom("python:nets.py:one_logit", (64,), 2, {}, seed=0)


def test_check_sections_checks_the_options_against_the_factory_without_the_data(user):
    with pytest.raises(ConfigError, match=r"unknown key model.widht \(did you mean 'width'\?\)"):
        build.check_sections(config_of("python:usernets.small:tiny", widht=3))
    build.check_sections(config_of("python:usernets.small:passes_on", anything=3))  # **options: its own
    with pytest.raises(ConfigError, match=r"model\.width = 'wide' has the wrong type: expected int"):
        build.check_sections(config_of("python:nets.py:tiny", width="wide"))


def test_import_factory_caches_a_file_until_it_changes(user):
    first = import_factory("python:nets.py:tiny")
    assert import_factory("python:nets.py:tiny") is first  # a run's seeds share its classes
    stat = (user / "nets.py").stat()
    os.utime(user / "nets.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an edit
    assert import_factory("python:nets.py:tiny") is not first


SPEC = "give python:package.module:factory or python:path/to/file.py:factory"
ERRORS = [
    ("python:usernets.small", {},
     "model.kind = 'python:usernets.small' is not a factory spec: it needs a module or file, a colon and "
     f"the factory's name; {SPEC}"),
    ("python:not a module:f", {}, "'not a module' is neither a dotted module name nor a path to a .py file"),
    ("python:missing.py:tiny", {}, "the file missing.py does not exist (relative to the working directory"),
    ("python:nosuch.mod:tiny", {}, "module 'nosuch.mod' cannot be imported (No module named 'nosuch')"),
    ("python:usernets.small:tinny", {},
     "module 'usernets.small' has no attribute 'tinny' (did you mean 'tiny'?); "
     "its functions and classes: tiny, normalized, Net, seeded"),
    ("python:nets.py:NOT_CALLABLE", {}, "NOT_CALLABLE in nets.py is of type int, not callable"),
    ("python:nets.py:boom", {},
     "model.kind = 'python:nets.py:boom': the factory raised ValueError: width must be even"),
    ("python:nets.py:not_a_module", {}, "the factory returned a dict, not an nn.Module"),
    ("python:nets.py:five_outputs", {},
     "for 2 samples of shape (64,) the model gives (2, 5); expected (2, 10)"),
    ("python:nets.py:square_inputs", {},
     "the model cannot take inputs of shape (64,): RuntimeError: mat1 and mat2"),
    ("python:nets.py:passes_on", {"widht": 3},
     "model.widht is not an option of the factory of 'python:nets.py:passes_on' (TypeError: "),
    ("python:nets.py:tiny", {"widht": 3},
     "unknown key model.widht (did you mean 'width'?): the factory of 'python:nets.py:tiny' takes width"),
    ("python:nets.py:needs_width", {},
     "the factory of 'python:nets.py:needs_width' needs model.width (it has no default)"),
    ("python:nets.py:tiny", {"num_classes": 3}, "model.num_classes is given by gradwell, not by [model]"),
    ("python:nets.py:no_arguments", {}, "must take input_shape and num_classes as its first two arguments"),
    ("rnn", {}, "unknown model kind 'rnn' (did you mean 'cnn'?); valid: mlp, cnn, python:module:factory"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "model", "message"), ERRORS, ids=[f"{k}-{sorted(m)}" for k, m, _ in ERRORS])
def test_every_mistake_is_one_clean_error_before_anything_is_written(user, capsys, kind, model, message):
    config = write_config(user / "bad.toml", kind, **model)
    assert main(["train", config]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert "second line" not in err  # the factory's exception as one line
    assert not (user / "runs").exists()
