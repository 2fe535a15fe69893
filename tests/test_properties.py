"""Property: whatever a config holds, gradwell trains or raises its own documented error.

Never a bare exception from inside torch, numpy or the standard library: a config either passes
every check and trains, or fails with a GradwellError (ConfigError, DataError, ...) that names
the problem, before anything is written. The library is fuzzed in-process, and so is the command
line (``gradwell train`` and ``gradwell diagnose``, with ``--set`` overrides): exit status 0, or 2
with a plain ``error:`` message and nothing written.

Every section is drawn, with every option of every builder, optimizer, schedule and data source
(test_the_fuzzer_draws_every_option keeps it so). Valid values are tiny (one epoch, a few samples,
a few units) so that each example is fast; the huge ones (2**40 units and up) are far beyond any
machine, so that they fail at once.
"""

import contextlib
import dataclasses
import gzip
import inspect
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gradwell import build, cli, optim
from gradwell import config as configs
from gradwell import data as datasets
from gradwell.errors import GradwellError

HUGE = [2**40, 2**63 - 1, 2**63, 2**64, 10**30]
something = st.one_of(  # junk but None, which TOML cannot write
    st.booleans(),
    st.integers(-3, 70),
    st.sampled_from([*HUGE, -(2**63) - 1, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([1e39, -1e39, 1e308, 5e-324, -0.0]),
    st.text(max_size=8),
    st.lists(st.integers(-2, 40), max_size=3),
    st.dictionaries(st.sampled_from(["a", "name"]), st.integers(0, 3), max_size=2),
)
junk = st.one_of(st.none(), something)


def rarely(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int) -> st.SearchStrategy:
    """`common`, or `rare` one time in `one_in` (shrinking towards `common`)."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == one_in else common)


def often(plausible: st.SearchStrategy, *rare: object) -> st.SearchStrategy:
    """Mostly `plausible`, sometimes one of the `rare` values (huge, negative, a wrong type...)."""
    return rarely(plausible, st.sampled_from(rare), 8)


def choose(*values: object) -> st.SearchStrategy:
    return st.sampled_from(values)


def keywords(function, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The keyword options of a builder, optimizer or schedule: what a config section may set."""
    parameters = list(inspect.signature(function).parameters.values())[1:]  # the input or the parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.name not in skip and p.kind in kinds)


def section(known: dict[str, st.SearchStrategy], fixed: dict[str, st.SearchStrategy] | None = None):
    """A config section: the `fixed` keys, then some `known` keys; mostly plausible values, sometimes
    junk, rarely an unknown key, so that most configs hold one mistake at most."""
    fixed = fixed or {}
    keys = st.sets(st.sampled_from(sorted(known))) if known else st.just(set())
    values = {k: rarely(v, junk, 30) for k, v in known.items()}
    plausible = keys.flatmap(
        lambda chosen: st.fixed_dictionaries({**fixed, **{k: values[k] for k in chosen}})
    )
    return rarely(plausible, st.fixed_dictionaries({**fixed, "unknwon": junk}), 40)


# [data]: every source; "@" stands for the folder that write_data_files filled
FILES = [
    "csv:@/good.csv", "csv:@/good.csv", "csv:@/text.csv", "csv:@/gap.csv", "csv:@/empty.csv",
    "csv:@/label_only.csv", "csv:@/ragged.csv", "csv:@/missing.csv", "csv:@", "csv:@/good.npz",
    "npz:@/good.npz", "npz:@/good.npz", "npz:@/split.npz", "npz:@/image.npz", "npz:@/pickled.npz",
    "npz:@/nan.npz", "npz:@/single.npy", "npz:@/good.csv", "npz:@", "idx:@/idx", "idx:@/idx",
    "idx:@/empty", "idx:@/good.csv", "idx:@/missing",
]  # fmt: skip


def splits() -> dict[str, st.SearchStrategy]:
    """The options gradwell.data.load gives every source."""
    return {
        "val_fraction": often(st.floats(0, 0.5), -0.1, 1.0, 1.2, math.nan),
        "test_fraction": often(st.floats(0, 0.5), -0.1, 0.99, 1.0),
        "seed": often(st.integers(0, 3), -1, 2**64, 10**30),
        "num_classes": often(st.none(), 1, 2, 3, 11, 2**40, 2**63, 10**30, 0),
        "standardize": often(st.booleans(), 1, "yes"),
    }


DATA = {
    "image": often(st.booleans(), 1, "true"),
    "num_samples": often(st.integers(10, 60), 9, 0, -5, 2**40, 10**30, 5.5),
    "data_seed": often(st.integers(0, 3), -1, 2**32, 2**64),
    "max_minutes": often(st.floats(0.5, 60), 0.0, -1.0, math.inf, math.nan, "5"),
    "label": often(st.just("label"), "y", "", "a"),
    "mirror": often(st.none(), "ftp://x", 3),  # the downloadable sets are never drawn: no test goes online
}


def data_section() -> st.SearchStrategy:
    shared = splits()
    return st.one_of(
        section({**shared, "image": DATA["image"]}, {"name": st.just("digits")}),
        section(
            {**shared, **{k: DATA[k] for k in ("num_samples", "data_seed", "max_minutes")}},
            {"name": st.just("mnist1d"), "num_samples": often(st.integers(10, 60), 2**40)},
        ),
        section({**shared, "label": DATA["label"]}, {"name": st.sampled_from(FILES)}),
        section(
            {**shared, **DATA},
            {"name": choose("digits", "mnist2", "csv", "npz:", "idx", "csv:@/good.csv:x", "", "DIGITS")},
        ),
    )


data = data_section()

# [model]: every option of gradwell.models.mlp and cnn, wrong types and sizes included
ACTIVATIONS = ["relu", "selu", "swish", "gelu_sigmoid", "leaky_relu", "tanh", "prelu", "rrelu", "gelu", "elu",
               "mish", "sigmoid", "linear", "none", "silu", "gelu_tanh"]  # fmt: skip
activation_options = st.dictionaries(
    choose(
        "alpha", "beta", "learnable", "num_parameters", "approximate", "inplace", "lower", "upper", "init"
    ),
    st.one_of(st.floats(-1, 2), st.booleans(), st.integers(0, 9), choose("tanh", "sigmoid", "none", "x")),
    max_size=2,
)
sizes = st.lists(often(st.integers(1, 12), 0, -1, *HUGE), max_size=3)
MODEL = {
    "hidden": often(sizes, 8, [], 2**40, [True]),
    "activation": often(st.sampled_from(ACTIVATIONS), "rleu", ""),
    "activation_options": often(activation_options, 0.2, "alpha"),
    "init": often(choose("auto", "he_normal", "lecun_uniform", "torch", "glorot_uniform"), "xavier", ""),
    "batchnorm": often(choose(None, "none", "before", "after"), "middle", ""),
    "input_batchnorm": often(st.booleans(), 1),
    "bn_momentum": often(st.floats(0, 1), -0.5, 1.5, 1e39),
    "bn_eps": often(st.floats(1e-6, 0.1), 0.0, -1e-3),
    "dropout": often(st.floats(0, 0.9), -0.5, 1.0, 1.5),
    "alpha_dropout": often(st.booleans(), "auto"),
    "depth": often(st.integers(0, 3), -1, *HUGE),
    "width": often(st.integers(1, 12), 0, *HUGE),
    "channels": often(sizes, 4, [], [2**40]),
    "kernel_size": often(st.integers(1, 4), 0, 2.0, *HUGE),
    "dims": often(choose(1, 2), 3, 0, "1"),
    "pool": often(choose("max", "avg", "none"), "min", ""),
    "pool_every": often(st.integers(1, 3), 0, *HUGE),
}
BUILT_FROM_THE_DATA = ("in_features", "in_shape", "out_features", "generator")  # build_model passes these
KINDS = {kind: keywords(builder, BUILT_FROM_THE_DATA) for kind, builder in build.BUILDERS.items()}
model = st.one_of(
    *[section({k: MODEL[k] for k in keys}, {"kind": st.just(kind)}) for kind, keys in KINDS.items()] * 2,
    section({**MODEL, "kind": choose("mlp", "cnn", "rnn", "MLP", 1)}),
)

# [optimizer]: every name of gradwell.optim.OPTIMIZERS with every option it takes
rate = often(st.floats(0, 0.1), -1.0, 0.0, 1e39, 1e308, math.inf, 10.0)
OPTIMIZER = {
    "lr": rate,
    "momentum": often(st.floats(0, 0.99), -1.0, 1.0, 2.0),
    "nesterov": often(st.booleans(), 1, "yes"),
    "rho": often(st.floats(0, 0.99), -1.0, 1.0),
    "betas": often(
        st.lists(st.floats(0, 0.999), min_size=2, max_size=2),
        [0.9], [0.9, 0.99, 0.5], [1.0, 0.9], [-0.1, 0.9], 0.9, ["a", "b"],
    ),
    "eps": often(st.floats(1e-10, 1e-3), 0.0, -1.0, 1e39),
    "weight_decay": often(st.floats(0, 0.1), -1.0, 1e39),
    "momentum_decay": often(st.floats(0, 0.01), -1.0, 1e39),
    "clipvalue": often(st.floats(0.01, 5), 0.0, -1.0, 1e39),
    "clipnorm": often(st.floats(0.01, 5), 0.0, 1e39),
    "global_clipnorm": often(st.floats(0.01, 5), 0.0, -1.0, 1e39),
    "foreach": often(st.booleans(), 1, "no"),
    "capturable": often(st.booleans(), 1),
}  # fmt: skip
OPTIMIZERS = {name: keywords(factory) + optim.OPTIONS for name, factory in optim.OPTIMIZERS.items()}
CLIPS = ("clipvalue", "clipnorm", "global_clipnorm")  # one at a time, but for the catch-all section


def optimizer_section(name: str, keys: tuple[str, ...]) -> st.SearchStrategy:
    options = lambda clip: {k: OPTIMIZER[k] for k in keys if k not in CLIPS or k == clip}  # noqa: E731
    return choose(*CLIPS).flatmap(lambda clip: section(options(clip), {"name": st.just(name)}))


optimizer = st.one_of(
    *[optimizer_section(name, keys) for name, keys in OPTIMIZERS.items()],
    section({**OPTIMIZER, "name": choose(*OPTIMIZERS, "lion", "Adam", "", 0)}),
)

# [schedule]: every name of gradwell.optim.SCHEDULES with the options of each (onecycle's
# total_steps and max_lr default to the run's and the optimizer's)
count = often(st.integers(1, 5), 0, -1, 2**63, 1.5)
SCHEDULE = {
    "s": often(st.floats(0.5, 50), 0, -1, 1e-300, 2**63),
    "c": often(st.floats(0, 2), -1.0),
    "boundaries": often(st.lists(st.integers(1, 30), max_size=3), 5, [0], [3, 2], [2**63]),
    "values": often(st.lists(st.floats(0, 0.1), max_size=4), 0.1, [-1.0, 0.1], [1e39]),
    "factor": often(st.floats(0.1, 0.9), 0.0, 1.0, 2.0),
    "patience": count,
    "cooldown": count,
    "min_delta": often(st.floats(0, 0.1), -1.0),
    "min_lr": often(st.floats(0, 1e-3), -1.0, 1e39),
    "mode": often(choose("min", "max"), "auto"),
    "max_lr": rate,
    "total_steps": count,
    "pct_start": often(st.floats(0, 0.5), 0.75, 1.5, -0.1),
    "div_factor": often(st.floats(1, 50), 0.0, 1e-300),
    "final_div_factor": often(st.floats(1, 1e4), 0.0, 1e-300),
    "anneal_strategy": often(choose("linear", "cos"), "cosine"),
    "three_phase": often(st.booleans(), 1),
    "cycle_momentum": often(st.booleans(), "yes"),
    "base_momentum": often(st.floats(0.5, 0.9), -0.1, 1.0),
    "max_momentum": often(st.floats(0.9, 0.99), 1.5),
}
SCHEDULES = {name: keywords(factory) for name, factory in optim.SCHEDULES.items()}
REQUIRED = {"power": ["s"], "exponential": ["s"], "piecewise": ["boundaries", "values"]}
schedule = st.one_of(
    *[
        section({k: SCHEDULE[k] for k in keys}, {"name": st.just(name), **{k: SCHEDULE[k] for k in needs}})
        for name, keys in SCHEDULES.items()
        for needs in [REQUIRED.get(name, ())]
    ],
    section({}, {"name": st.just("none")}),
    section({**SCHEDULE, "name": choose(*SCHEDULES, "none", "cosine", "", 3)}),
)  # fmt: skip

# [train]: every key of gradwell.config.TrainConfig. compile = true is valid but compiles for tens
# of seconds, and a valid huge epoch count would train for ever: neither is drawn.
TRAIN = {
    "epochs": often(st.just(1), 0, -1, 1.0, "1", True),
    "batch_size": often(st.integers(16, 300), 1, 0, -1, 2**63, 10**30),
    "loss": often(st.just("cross_entropy"), "mse", "hinge", "binary_cross_entropy", ""),
    "l1": often(st.floats(0, 1e-3), -1.0, 1e39),
    "l2": often(st.floats(0, 1e-3), -1.0, math.nan),
    "max_norm": often(st.floats(0.5, 3), 0.0, -1.0, 1e-30),
    "seed": often(st.integers(0, 3), -1, 2**64 - 1, -(2**63), 2**64, -(2**63) - 1),
    "on_nonfinite": often(choose("stop", "skip"), "ignore", ""),
    "precision": often(choose("fp32", "bf16"), "fp8", "fp16"),
    "fast": st.booleans(),
    "compile": often(st.just(False), 1, "no"),
    "sync_batchnorm": often(st.booleans(), 0),
    "early_stopping": often(st.integers(1, 3), 0, -1, 2**63),
    "device": often(choose("auto", "cpu", "cpu:0"), "cuda:7", "meta", "mps", "", "tpu", "cuda:-1"),
}
train = section(TRAIN)

# [output]: the command line puts the folder inside the example's own (see `inside`)
OUTPUT = {
    "dir": often(choose("out", "out/deeper", "a file", "out/../out2", "", "./out"), 3, True),
    "name": often(choose("", "run", "../x", "a/b", ".", "..", "/abs", "x\0y", " ", "-r"), 7, ["run"]),
    "progress": often(st.just(False), True, 1, "no"),
    "tensorboard": often(st.just(False), True, 1, "yes"),
}
output = section(OUTPUT)

# sometimes a section that is not a table, rarely an unknown one
SECTION_NAMES = ("data", "model", "optimizer", "schedule", "train", "output")
extra_sections = rarely(
    st.just({}),
    st.one_of(
        st.just({"trian": {"epochs": 1}}),
        st.fixed_dictionaries({"epochs": st.integers(1, 3)}),
        choose(*SECTION_NAMES).flatmap(lambda k: st.fixed_dictionaries({k: junk})),
    ),
    25,
)  # fmt: skip


def write_data_files(folder: Path) -> None:
    """The files the data names in FILES read: good ones and one of each kind of broken one."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)).round(3), np.arange(30) % 3
    rows = [",".join(map(str, [*row, label])) for row, label in zip(x, y, strict=True)]
    (folder / "good.csv").write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    (folder / "text.csv").write_text("a,b,c,d,label\n" + "\n".join(rows[:5]) + "\n1,2,x,4,0\n")
    (folder / "gap.csv").write_text("a,b,c,d,label\n" + "\n".join(r[:-1] + "3" for r in rows) + "\n")
    (folder / "empty.csv").write_text("")
    (folder / "label_only.csv").write_text("label\n0\n1\n")
    (folder / "ragged.csv").write_text("a,b,c,d,label\n" + "\n".join(rows[:4]) + "\n1,2,0\n")
    np.savez(folder / "good.npz", x=x, y=y)
    np.savez(folder / "split.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    np.savez(folder / "image.npz", x=rng.normal(size=(30, 4, 4)), y=y)
    np.savez(folder / "pickled.npz", x=np.array([{"a": 1}] * 30, dtype=object), y=y)
    np.savez(folder / "nan.npz", x=np.where(x > 1.5, np.nan, x), y=y)
    np.save(folder / "single.npy", x)
    (folder / "idx").mkdir()
    (folder / "empty").mkdir()
    for stem, n in (("train", 24), ("t10k", 9)):
        images = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
        path = folder / "idx" / f"{stem}-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(header + images.tobytes()))
        labels = (np.arange(n) % 3).astype(np.uint8)
        header = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big")
        (folder / "idx" / f"{stem}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_data_files(folder)
    return folder


def with_files(raw: dict, folder: Path) -> dict:
    """`raw` with the data name's "@" replaced by the folder holding the data files."""
    name = raw["data"].get("name") if isinstance(raw.get("data"), dict) else None
    if isinstance(name, str) and "@" in name:
        raw = {**raw, "data": {**raw["data"], "name": name.replace("@", str(folder))}}
    return raw


def test_the_fuzzer_draws_every_option():
    """A new option of a builder, optimizer, schedule, data source or [train] / [output] is fuzzed too."""
    assert {k for keys in KINDS.values() for k in keys} <= set(MODEL)
    assert {k for keys in OPTIMIZERS.values() for k in keys} <= set(OPTIMIZER)
    assert {k for keys in SCHEDULES.values() for k in keys} <= set(SCHEDULE)
    loaders = [*datasets.registry.SOURCES.values(), datasets.load]
    options = {
        p.name for f in loaders for p in inspect.signature(f).parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    assert options <= {*splits(), *DATA}
    assert {f.name for f in dataclasses.fields(configs.TrainConfig)} == set(TRAIN)
    assert {f.name for f in dataclasses.fields(configs.OutputConfig)} == set(OUTPUT)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=model, optimizer=optimizer, schedule=schedule, train=train, data=data, output=output,
       extra=extra_sections)  # fmt: skip
def test_a_config_trains_or_fails_with_a_gradwell_error(
    files, model, optimizer, schedule, train, data, output, extra
):
    sections = {"data": data, "model": model, "optimizer": optimizer, "train": train, "schedule": schedule}
    raw = with_files({**sections, "output": output, **extra}, files)
    try:
        config = configs.from_dict(raw)
        prepared = build.prepare(config, epochs=1)
        history = prepared.fit(progress=False)
    except GradwellError as error:
        event(f"refused: {type(error).__name__}")
        assert str(error)
        return
    event("trained")
    assert len(history.epochs) == prepared.config.train.epochs
    assert all(math.isfinite(v) or k == "loss" for k, v in history.epochs[-1].items())
    assert torch.is_tensor(next(prepared.model.parameters()))


# ------------------------------------------------------------------ the command line, in-process
# train.epochs is always drawn, and never junk: an int of junk would train up to 70 epochs
SECTIONS = {"data": data_section(), "model": model, "optimizer": optimizer, "schedule": schedule,
            "train": section({k: v for k, v in TRAIN.items() if k != "epochs"}, {"epochs": TRAIN["epochs"]}),
            "output": output}  # fmt: skip


def toml_ready(value):
    """`value` without its Nones: TOML has no null, so a drawn None leaves its key out."""
    if isinstance(value, dict):
        return {str(k): toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [toml_ready(v) for v in value if v is not None]
    return value


def literal(value) -> str:
    """`value` as the TOML literal of an override (``--set key=LITERAL``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {literal(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


# every key of every section, with its values and junk (but None)
KEYS = {
    "data": {**splits(), **DATA, "name": choose("digits", *FILES, "mnist2")},  # mnist1d: 5000
    "model": {**MODEL, "kind": choose("mlp", "cnn", "rnn")},
    "optimizer": {**OPTIMIZER, "name": choose(*OPTIMIZERS, "lion")},
    "schedule": {**SCHEDULE, "name": choose(*SCHEDULES, "none", "cosine")},
    "train": TRAIN,
    "output": OUTPUT,
}


def as_override(key: str, value) -> st.SearchStrategy:
    """``key=value`` with the value a TOML literal, or a bare word (read as the text itself)."""
    words = [f"{key}={value}"] if isinstance(value, str) else []
    return choose(f"{key}={literal(toml_ready(value))}", *words)


override = choose(*[(s, k) for s, keys in KEYS.items() for k in keys]).flatmap(
    lambda key: (
        st.one_of(KEYS[key[0]][key[1]], *[something] * (key != ("train", "epochs")))
        .filter(lambda v: v is not None)
        .flatmap(lambda value: as_override(".".join(key), value))
    )
)
overrides = st.lists(
    st.one_of(
        override, override, override,
        choose("epochs=3", "train.epochs", "trian.epochs=1", "model.=3", ".x=1", "train.epochs=", "=",
               "model.kind=cnn", "data.name=digits", "optimizer.name=sgd", "schedule.name=onecycle"),
    ),
    max_size=2,
)  # fmt: skip


def within(folder: Path, directory: str) -> str:
    """`directory` as a path inside `folder`: a drawn "/x" or "../.." must not escape it."""
    return f"{folder}/{directory if directory == 'out/../out2' else directory.replace('..', '__')}"


def inside(raw: dict, folder: Path) -> dict:
    """`raw` with output.dir inside `folder` (when it is a string: a wrong type is refused)."""
    out = raw.get("output", {})
    if not isinstance(out, dict):
        return raw
    directory = out.get("dir", "out")
    return {
        **raw,
        "output": {**out, "dir": within(folder, directory) if isinstance(directory, str) else directory},
    }


def overridden(setting: str, folder: Path, files: Path) -> str:
    """An override with its data files' "@" filled in and any output.dir moved inside `folder`."""
    setting = setting.replace("@", str(files)) if setting.startswith("data.name") else setting
    key, _, value = setting.partition("=")
    directory = configs.parse_value(value.strip())
    if key.strip() == "output.dir" and isinstance(directory, str):
        return f"output.dir={json.dumps(within(folder, directory))}"
    return setting


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time: what a run would change."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def run_cli(args: list[str]) -> tuple[int, str]:
    """`gradwell ARGS` in this process: the exit status and stderr (rich's error console writes to
    sys.stderr as it is when it prints, so redirecting it catches the messages)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = cli.main(args)
    return status, err.getvalue()


def cli_example(command: list[str], files: Path, sections: dict, extra: dict, sets: list[str]):
    """`gradwell COMMAND` on the drawn config and overrides, in a fresh folder that is the working
    directory and holds output.dir: (status, stderr, paths written, whether anything changed)."""
    with tempfile.TemporaryDirectory() as name, contextlib.chdir(name):
        folder = Path(name).resolve()
        (folder / "a file").write_text("not a folder\n")
        path = folder / "config.toml"
        path.write_text(tomli_w.dumps(toml_ready(inside(with_files({**sections, **extra}, files), folder))))
        sets = [overridden(s, folder, files) for s in sets]
        before = listing(folder)
        status, err = run_cli([command[0], str(path), *command[1:], *(f"--set={s}" for s in sets)])
        after = listing(folder)
    written = sorted(set(after) - set(before))
    assert "Traceback" not in err, err
    if status == 2:
        event("refused")
        assert err.startswith("error:"), err
        assert after == before, f"refused, yet wrote {written or 'over a file'}:\n{err}"
    return status, err, written, after != before


# most command lines are refused (an override is a key of any section), and a refusal takes 15 ms
cli_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cli_settings
@given(sections=st.fixed_dictionaries(SECTIONS), extra=extra_sections, sets=overrides)
def test_gradwell_train_trains_or_refuses_with_a_message_writing_nothing(files, sections, extra, sets):
    status, err, written, _ = cli_example(["train", "--json"], files, sections, extra, sets)
    assert status in (0, 1, 2), (status, err)
    if status == 1:  # the run diverged: exit 1 with the doctor's report, not a refusal
        event("diverged")
        assert err.startswith("error:") and "non-finite" in err, err
    if status == 0:
        event("trained")
        assert any(p.endswith("model.safetensors") for p in written), written


@cli_settings
@given(sections=st.fixed_dictionaries(SECTIONS), extra=extra_sections, sets=overrides)
def test_gradwell_diagnose_probes_or_refuses_with_a_message_writing_nothing(files, sections, extra, sets):
    status, err, _, changed = cli_example(
        ["diagnose", "--epochs", "1", "--json"], files, sections, extra, sets
    )
    assert status in (0, 2), (status, err)
    event("probed" if status == 0 else "refused")
    assert not changed  # the doctor only reads


def test_a_run_without_test_samples_trains_or_is_refused(tmp_path):
    # found by the command-line fuzzer: a ZeroDivisionError in the test metrics, after training
    out = {"dir": str(tmp_path / "out"), "progress": False}
    config = {"data": {"name": "digits", "test_fraction": 0.0}, "train": {"epochs": 1}, "output": out}
    (tmp_path / "run.toml").write_text(tomli_w.dumps(config))
    status, err = run_cli(["train", str(tmp_path / "run.toml")])
    assert status == 0 or (status == 2 and not (tmp_path / "out").exists()), err
