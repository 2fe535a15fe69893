"""Run configuration: a TOML file of sections, checked before anything trains.

A config has the sections ``data``, ``model``, ``optimizer``, ``schedule``, ``train`` and
``output``. The keys of ``train`` and ``output`` are fixed (see TrainConfig and OutputConfig); the
other sections name a thing and pass their remaining keys to it, checked against the signature of
the function they reach, so a builder's new option needs no change here:

    [data]        name = "mnist1d", then options of gradwell.data.load
    [model]       kind = "mlp" or "cnn", then options of gradwell.models.mlp / cnn
    [optimizer]   name = "nadam", then options of that optimizer class
    [schedule]    name = "onecycle", then options of gradwell.optim.schedule (or name = "none")

An override ``--set data.name=digits`` (or of model.kind, optimizer.name, schedule.name) starts
that section afresh: the old dataset's options do not carry over to the new one. An override of
model.hidden replaces the config's depth and width, and one of depth or width its hidden.

Every mistake is reported by key, with the value, what is valid and the closest valid name.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradwell.errors import ConfigError, closest
from gradwell.train.callbacks import EarlyStopping
from gradwell.train.options import TrainOptions


@dataclass(frozen=True)
class TrainConfig(TrainOptions):
    """The [train] section: `fit`'s options (gradwell.train.TrainOptions) with the job's defaults,
    plus where to train and when to stop early. Checked when made, as every TrainOptions is."""

    epochs: int = 15
    batch_size: int = 64  # small enough for many updates per epoch, large enough to keep BN statistics stable
    loss: str = "cross_entropy"  # a name: a config cannot hold a function
    early_stopping: int | None = None  # patience in epochs on val_loss; None trains every epoch
    device: str = "auto"  # "auto" picks CUDA when available

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.early_stopping is not None:
            EarlyStopping(patience=self.early_stopping)  # its own check of the patience

    def callbacks(self) -> list[EarlyStopping]:
        """The section's early stopping, as a callback list (empty without early_stopping)."""
        return [EarlyStopping(patience=self.early_stopping)] if self.early_stopping is not None else []


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: str = ""  # the run folder's name; empty: a timestamp
    progress: bool = True
    tensorboard: bool = False  # the doctor's per-layer curves and histograms, and the epoch metrics

    def __post_init__(self) -> None:
        for key in ("dir", "name"):
            value = getattr(self, key)
            if isinstance(value, str) and "\0" in value:  # a ValueError from the first mkdir otherwise
                raise ConfigError(f"output.{key} = {value!r} holds a NUL character, which no path can hold")


@dataclass
class Config:
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (None values dropped, as TOML has no null)."""
        return drop_none(dataclasses.asdict(self))


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
NAME_KEYS = ("data.name", "model.kind", "optimizer.name", "schedule.name")
# keys that say one thing two ways: an override of one drops the other from the config it changes,
# so the default's depth and width do not contradict a `--set model.hidden=[16]`
REPLACES = {"model.hidden": ("depth", "width"), "model.depth": ("hidden",), "model.width": ("hidden",)}

# The default run: the chapter's toolbox on MNIST-1D. A deep batch-normalized MLP with Swish and
# automatic (He) initialization, Nadam with a 1cycle schedule. 40,000 generated samples, since an
# MLP on MNIST-1D's default 4,000 training samples stalls near 70% (Greydanus, 2020).
DEFAULT: dict[str, dict[str, Any]] = {
    "data": {"name": "mnist1d", "num_samples": 40000},
    "model": {"kind": "mlp", "depth": 6, "width": 256, "activation": "swish", "batchnorm": "before"},
    "optimizer": {"name": "nadam", "lr": 0.002},
    "schedule": {"name": "onecycle", "max_lr": 0.004},
}


def drop_none(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: drop_none(v) for k, v in tree.items() if v is not None}
    return tree


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a config file (or the default run when `path` is None) and apply ``key=value`` overrides."""
    if path is None:
        raw: dict[str, Any] = {section: dict(values) for section, values in DEFAULT.items()}
    else:
        raw = read_toml(Path(path))
    # a new name or kind starts its section afresh, so apply those first
    for override in sorted(overrides, key=lambda o: not names_a_section(o)):
        apply_override(raw, override)
    return from_dict(raw, source=str(path or "the default config"))


def names_a_section(override: str) -> bool:
    key = override.partition("=")[0].strip()
    return key in NAME_KEYS


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give the path of a .toml file") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); "
            "TOML files are UTF-8: save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def parse_value(text: str) -> Any:
    """A TOML literal (number, bool, string, array, inline table), or the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``section.key=value`` override to the raw config."""
    key, sep, text = override.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. train.epochs=5")
    if section not in SECTIONS:
        raise ConfigError(
            f"override {override!r}: unknown section {section!r}{closest(section, SECTIONS)}; "
            f"valid: {', '.join(SECTIONS)}"
        )
    assign(raw, key.strip(), parse_value(text.strip()), f"override {override!r}")


def assign(raw: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``section.name`` to `value` in the raw config as an override does: a new name or kind
    starts its section afresh, and a key that says the same as others (REPLACES) drops them."""
    section, _, name = key.partition(".")
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{what}: [{section}] in the config is {table!r}, not a table of keys")
    if key in NAME_KEYS and table.get(name) != value:
        # options of the old dataset / model / optimizer / schedule do not carry over
        table = raw[section] = {}
    for other in REPLACES.get(key, ()):
        table.pop(other, None)
    table[name] = value


def with_changes(config: Config, changes: Mapping[str, Any], what: str = "change") -> Config:
    """A copy of `config` with ``section.key -> value`` changes applied as overrides are (a fix's
    config change, a recommendation), checked as a loaded config is.

    >>> changed = with_changes(load(), {"model.init": "he_normal", "train.epochs": 3})
    >>> changed.model["init"], changed.train.epochs, load().model.get("init")
    ('he_normal', 3, None)
    """
    raw = config.to_dict()
    for key in sorted(changes, key=lambda k: k not in NAME_KEYS):  # a new name first, as in load
        section, dot, name = key.partition(".")
        if section not in SECTIONS or not dot or not name:
            raise ConfigError(f"{what} {key!r}: not a section.key of {', '.join(SECTIONS)}")
        assign(raw, key, changes[key], f"{what} {key!r}")
    return from_dict(raw, source=what)


def from_dict(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Check the sections and the fixed-key sections' types; the others are checked by `check_call`."""
    unknown = [s for s in raw if s not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"{source}: unknown section {unknown[0]!r}{closest(unknown[0], SECTIONS)}; "
            f"valid: {', '.join(SECTIONS)}"
        )
    for section in ("data", "model", "optimizer", "schedule"):
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys")
    return Config(
        data=dict(raw.get("data", {})),
        model=dict(raw.get("model", {})),
        optimizer=dict(raw.get("optimizer", {})),
        schedule=dict(raw.get("schedule", {})),
        train=fill(TrainConfig, raw.get("train", {}), "train"),
        output=fill(OutputConfig, raw.get("output", {}), "output"),
    )


def fill(cls: type, values: Any, section: str) -> Any:
    """An instance of dataclass `cls` from `values`, every key and type checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table of keys")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            raise unknown_key(section, key, hints)
        check_type(f"{section}.{key}", value, hints[key])
    return cls(**values)


def unknown_key(section: str, key: str, valid: Mapping[str, Any] | list[str]) -> ConfigError:
    valid = list(valid)
    return ConfigError(f"unknown key {section}.{key}{closest(key, valid)}; valid keys: {', '.join(valid)}")


def type_name(annotation: Any) -> str:
    """A type as a config user reads it: ``str | Module | callable | None``, not typing's repr."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arm) for arm in typing.get_args(annotation))
    if origin is collections.abc.Callable:
        return "callable"
    if origin in (list, tuple, collections.abc.Sequence) and typing.get_args(annotation):
        return f"list of {type_name(typing.get_args(annotation)[0])}"
    if origin is not None:
        return type_name(origin)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def matches(value: Any, annotation: Any) -> bool:
    """Whether `value` (parsed from TOML) fits `annotation`; ints count as floats, bools do not."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, Sequence):
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(matches(v, item) for v in value)
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    if origin is collections.abc.Callable:
        return callable(value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def check_type(key: str, value: Any, annotation: Any) -> None:
    if not matches(value, annotation):
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected {type_name(annotation)}")


def check_call(
    section: str, function: Callable[..., Any], options: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> None:
    """Check `options` against `function`'s keyword parameters and their type hints.

    A function taking ``**kwargs`` accepts any key; its callee checks them.
    """
    signature = inspect.signature(function)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    hints = type_hints(function)
    names = [
        n
        for n, p in signature.parameters.items()
        if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key, value in options.items():
        if key not in names:
            if accepts_any:
                continue
            raise unknown_key(section, key, names)
        check_type(f"{section}.{key}", value, hints.get(key, Any))


def type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' annotations of a function, a class (its __init__) or a partial of either."""
    while isinstance(function, functools.partial):
        function = function.func
    try:
        return typing.get_type_hints(function.__init__ if isinstance(function, type) else function)
    except (NameError, TypeError, AttributeError):
        return {}


def check_types(section: str, function: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Check the types of the `options` that `function` annotates; names are the function's to check.

    >>> def power(optimizer, s: float = 1000.0): ...
    >>> check_types("schedule", power, {"s": True})
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: schedule.s = True has the wrong type: expected float
    """
    hints = type_hints(function)
    for key, value in options.items():
        if key in hints:
            check_type(f"{section}.{key}", value, hints[key])
