"""Your own model from a config: ``model.kind = "python:package.module:factory"``.

The factory is any callable returning an ``nn.Module``; gradwell calls it as

    factory(input_shape, num_classes, **other_keys_of_[model])

with the data's feature shape (a tuple such as ``(64,)`` or ``(1, 8, 8)``) and class count, so
that ``train``, ``diagnose``, ``fold``, ``compare``, ``transfer`` and the experiment runner all
build it from a config. Two forms name it:

    python:package.module:factory     a module importable here (on sys.path)
    python:path/to/file.py:factory    a file, relative to the working directory or absolute

Seeding: gradwell seeds each run's model. The factory runs under ``torch.random.fork_rng`` with
the CPU generator seeded by train.seed, so layers initialized from torch's global RNG (every
``nn.Linear``, ``nn.Conv2d``...) are reproducible per seed and different across seeds, and the
caller's RNG is left as it was. Only the CPU generator is seeded (``torch.manual_seed`` would
also reseed CUDA outside the fork): the model is built on the CPU and moved afterwards. A factory
with a ``generator`` parameter also gets a ``torch.Generator`` seeded the same way.

Worker processes: the experiment runner's are "spawn"ed, and start with the parent's sys.path
and working directory (multiprocessing sends both), so a module importable in the parent and a
relative file path both work in them. A run folder's config.toml keeps the spec as given: rebuild
it (``diagnose RUN_DIR``, ``fold``) where the module is importable, or from the same working
directory for a relative file path. Ray workers share neither: install the module on each node.

The model is checked before any training: a forward pass of two zero samples, on the CPU, in eval
mode and without gradients, must give ``(2, num_classes)`` logits (or ``(2, 1)`` / ``(2,)`` for
a binary loss). Every mistake is a ConfigError naming the spec, in one line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from gradwell.errors import ConfigError, closest

PREFIX = "python:"
FORMS = "python:package.module:factory or python:path/to/file.py:factory"
GIVEN = ("input_shape", "num_classes", "generator")  # what gradwell passes, never a [model] key


def is_custom(kind: object) -> bool:
    """Whether a model.kind names a user factory (``python:...``)."""
    return isinstance(kind, str) and kind.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str]:
    """(module name or .py path, factory name) of a ``python:`` spec; ConfigError when malformed.

    >>> parse_spec("python:nets.small:make")
    ('nets.small', 'make')
    >>> parse_spec("python:make")
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: model.kind = 'python:make' is not a factory spec: ...
    """
    target, _, name = spec.removeprefix(PREFIX).rpartition(":")
    target = target.strip()
    problem = None
    if not target or not name:
        problem = "it needs a module or file, a colon and the factory's name"
    elif not all(part.isidentifier() for part in name.split(".")):
        problem = f"the factory name {name!r} is not a Python name"
    elif not is_file(target) and not all(part.isidentifier() for part in target.split(".")):
        problem = f"{target!r} is neither a dotted module name nor a path to a .py file"
    if problem:
        raise ConfigError(f"model.kind = {spec!r} is not a factory spec: {problem}; give {FORMS}")
    return target, name


def is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def import_factory(spec: str) -> Callable[..., Any]:
    """The callable a ``python:`` spec names, imported; ConfigError when it cannot be.

    A file is imported once per modification (a stable module name made from its path), so that
    a run's seeds share its classes and an edited file is read again.
    """
    target, name = parse_spec(spec)
    module = import_file(spec, target) if is_file(target) else import_module(spec, target)
    factory: Any = module
    for part in name.split("."):
        if not hasattr(factory, part):
            raise ConfigError(f"model.kind = {spec!r}: {missing_attribute(module, target, name)}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ConfigError(
            f"model.kind = {spec!r}: {name} in {target} is of type {type(factory).__name__}, not callable; "
            "name a function or class that returns an nn.Module"
        )
    return factory


def import_module(spec: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(
            f"model.kind = {spec!r}: module {name!r} cannot be imported ({error}); it must be on "
            "sys.path (PYTHONPATH, an installed package), or name a file: python:path/to/file.py:factory"
        ) from None
    except Exception as error:  # the module's own bug, shown as one line
        raise ConfigError(f"model.kind = {spec!r}: importing {name!r} raised {one_line(error)}") from None


def import_file(spec: str, target: str) -> ModuleType:
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        where = "" if Path(target).is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ConfigError(f"model.kind = {spec!r}: the file {target} does not exist{where}")
    stamp = path.stat().st_mtime_ns
    module_name = f"gradwell_model_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    cached = sys.modules.get(module_name)
    if cached is not None and getattr(cached, "__gradwell_mtime__", None) == stamp:
        return cached
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"model.kind = {spec!r}: {target} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a class's module up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(f"model.kind = {spec!r}: importing {target} raised {one_line(error)}") from None
    module.__gradwell_mtime__ = stamp  # type: ignore[attr-defined]
    return module


def missing_attribute(module: ModuleType, target: str, name: str) -> str:
    """What a module has instead of `name`: the closest name, and its functions and classes."""
    found = factories(module)
    listed = f"its functions and classes: {', '.join(found)}" if found else "it defines none"
    hint = closest(name, [n for n in vars(module) if not n.startswith("_")])
    where = target if is_file(target) else f"module {target!r}"
    return f"{where} has no attribute {name!r}{hint}; {listed}"


def factories(module: ModuleType) -> list[str]:
    """The public functions and classes `module` defines itself (not those it imports)."""
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and getattr(v, "__module__", None) == module.__name__
    ]


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: a user's exception as one line, not a traceback."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def parameters(spec: str, factory: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool] | None:
    """The factory's parameters after the two gradwell passes positionally, and whether it takes
    ``**kwargs``; None when Python cannot read its signature (a builtin)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ConfigError(
            f"model.kind = {spec!r}: the factory{signature} must take input_shape and num_classes as its "
            "first two arguments: gradwell calls factory(input_shape, num_classes, **[model] keys)"
        )
    passed = {p.name for p in positional[:2]}  # input_shape and num_classes, whatever their names
    keywords = [
        p for p in params if p.name not in passed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return keywords, any(p.kind is p.VAR_KEYWORD for p in params)


def check_options(spec: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """ConfigError when the [model] keys do not fit the factory's signature: a key it does not
    take (unless it takes ``**kwargs``), one gradwell passes itself, or a required one missing."""
    given = [key for key in options if key in GIVEN]
    if given:
        raise ConfigError(
            f"model.{given[0]} is given by gradwell, not by [model]: the factory of {spec!r} gets the "
            "data's input_shape and num_classes (and a seeded generator if it takes one)"
        )
    read = parameters(spec, factory)
    if read is None:
        return
    keywords, accepts_any = read
    names = [p.name for p in keywords if p.name != "generator"]
    unknown = [key for key in options if key not in names]
    if unknown and not accepts_any:
        key = unknown[0]
        raise ConfigError(
            f"unknown key model.{key}{closest(key, names)}: the factory of {spec!r} takes "
            f"{', '.join(names) or 'no options'}"
        )
    required = [p.name for p in keywords if p.default is p.empty and p.name not in [*options, "generator"]]
    if required:
        raise ConfigError(
            f"the factory of {spec!r} needs model.{required[0]} (it has no default); "
            f"its options: {', '.join(names)}"
        )


def takes_generator(spec: str, factory: Callable[..., Any]) -> bool:
    read = parameters(spec, factory)
    return read is not None and any(p.name == "generator" for p in read[0])


def build_custom(
    spec: str,
    input_shape: Sequence[int],
    num_classes: int,
    options: Mapping[str, Any],
    seed: int | None = None,
    binary: bool = False,
) -> nn.Module:
    """The model a ``python:`` spec's factory builds, checked to give logits for the data.

    `seed` seeds torch's CPU generator while the factory runs and its forward pass is checked (a
    lazy layer is initialized then), inside ``fork_rng``; None draws from the global RNG as it is.
    `binary` (a binary cross-entropy run) also accepts outputs of shape (2, 1) and (2,).

    >>> build_custom("python:builtins:slice", (3,), 2, {}, seed=0)
    Traceback (most recent call last):
    ...
    gradwell.errors.ConfigError: model.kind = 'python:builtins:slice': the factory returned a slice, ...
    """
    factory = import_factory(spec)
    check_options(spec, factory, options)
    shape = tuple(int(n) for n in input_shape)
    if seed is None:
        model = call(spec, factory, shape, num_classes, options, None)
        return checked(spec, model, shape, num_classes, binary)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = call(spec, factory, shape, num_classes, options, generator)
        return checked(spec, model, shape, num_classes, binary)


def call(
    spec: str,
    factory: Callable[..., Any],
    shape: tuple[int, ...],
    num_classes: int,
    options: Mapping[str, Any],
    generator: torch.Generator | None,
) -> Any:
    """The factory's return value; its exception as a one-line ConfigError."""
    extra = {"generator": generator} if generator is not None and takes_generator(spec, factory) else {}
    try:
        return factory(shape, num_classes, **options, **extra)
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected and unexpected[1] in options:
            raise ConfigError(
                f"model.{unexpected[1]} is not an option of the factory of {spec!r} ({one_line(error)}); "
                f"its parameters: {signature_text(spec, factory)}"
            ) from None
        raise ConfigError(f"model.kind = {spec!r}: the factory raised {one_line(error)}") from None
    except Exception as error:  # the user's bug, shown as one line
        raise ConfigError(f"model.kind = {spec!r}: the factory raised {one_line(error)}") from None


def signature_text(spec: str, factory: Callable[..., Any]) -> str:
    """The factory's options as a user gives them: ``width, depth, **options``."""
    read = parameters(spec, factory)
    if read is None:
        return "unknown (no signature)"
    keywords, accepts_any = read
    names = [p.name for p in keywords if p.name != "generator"] + (["**kwargs"] if accepts_any else [])
    return ", ".join(names) or "none"


def checked(spec: str, model: Any, shape: tuple[int, ...], num_classes: int, binary: bool) -> nn.Module:
    """`model` when it is an nn.Module with parameters whose output on two zero samples fits."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.kind = {spec!r}: the factory returned a {type(model).__name__}, not an nn.Module"
        )
    expected = [(2, num_classes), *([(2, 1), (2,)] if binary else [])]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *shape))
    except Exception as error:
        raise ConfigError(
            f"model.kind = {spec!r}: the model cannot take inputs of shape {shape}: {one_line(error)}"
        ) from None
    finally:
        model.train(was_training)
    got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if got not in expected:
        raise ConfigError(
            f"model.kind = {spec!r}: for 2 samples of shape {shape} the model gives {got}; expected "
            f"{' or '.join(map(str, expected))}: logits, one per class of the {num_classes}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.kind = {spec!r}: the model has no trainable parameters")
    return model
