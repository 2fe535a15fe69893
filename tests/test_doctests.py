"""The docstrings' examples run, as optax's do: every module's ``>>>`` examples are executed here, and
every public function and class has one.

Public: the functions and classes named in the ``__all__`` of gradwell and of its subpackages below
(gradwell.transfer has no ``__all__``: its public functions are the ones gradwell re-exports).
Constants and tables are not functions or classes, and torch's own classes that gradwell re-exports
(ReLU, SELU, ...) are documented by torch: both are skipped.
"""

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest
import torch

import gradwell

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# optional extras (pyproject.toml): a module that cannot be imported without one is skipped
# (keyed by the missing package: gradwell.integrations.lightning needs lightning, .hf transformers)
EXTRAS = {"ray": "ray", "lightning": "lightning", "transformers": "hf"}
# modules whose import does something: `python -m gradwell` runs the command line
NOT_IMPORTED = {"gradwell.__main__"}
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(gradwell.__path__, "gradwell.") if m.name not in NOT_IMPORTED
)
PUBLIC_MODULES = (
    "gradwell",
    "gradwell.optim",
    "gradwell.train",
    "gradwell.diagnose",
    "gradwell.experiment",
    "gradwell.data",
    "gradwell.pretrain",
)
# public names that need no example, each with its reason (keep it small)
EXEMPT: dict[str, str] = {}


def import_or_skip(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        extra = EXTRAS.get((error.name or "").partition(".")[0])
        if extra is None:
            raise
        pytest.skip(f"{name} needs the optional extra {extra!r}: pip install 'gradwell[{extra}]'")


def docstring_tests(module: ModuleType) -> list[doctest.DocTest]:
    """The module's docstrings that hold examples (each object once, in the module defining it)."""
    return [test for test in doctest.DocTestFinder().find(module, module.__name__) if test.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    module = import_or_skip(name)
    tests = docstring_tests(module)
    if not tests:
        return
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    with torch.random.fork_rng(devices=[]):
        try:
            torch.set_printoptions(profile="default", sci_mode=False)  # 4 decimals, no 1.2e-05
            for test in tests:
                torch.manual_seed(0)  # a safety net: the examples seed what they draw themselves
                runner.run(test, out=report.append)
        finally:
            torch.set_printoptions(profile="default")
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed:\n" + "".join(report)


def public_objects() -> dict[str, object]:
    """Qualified name -> every public function and class defined in gradwell."""
    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__.startswith("gradwell"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_public_function_and_class_has_an_example():
    public = public_objects()
    assert len(public) > 50
    unknown = set(EXEMPT) - set(public)
    assert not unknown, f"EXEMPT names that are not public: {sorted(unknown)}"
    missing = sorted(
        name for name, obj in public.items() if name not in EXEMPT and ">>>" not in (obj.__doc__ or "")
    )
    assert not missing, (
        f"{len(missing)} public functions and classes have no >>> example in their docstring:\n  "
        + "\n  ".join(missing)
    )


def test_the_examples_of_public_names_are_the_ones_run():
    # the run above finds a docstring through the module that defines the object; an object whose
    # module cannot tell (a decorator that does not keep __module__) would have its example skipped
    public = {name: obj for name, obj in public_objects().items() if ">>>" in (obj.__doc__ or "")}
    run = {
        id(test.docstring)
        for module_name in {obj.__module__ for obj in public.values()}
        for test in docstring_tests(importlib.import_module(module_name))
    }
    skipped = sorted(name for name, obj in public.items() if id(obj.__doc__) not in run)
    assert not skipped, f"examples the doctest run does not find: {', '.join(skipped)}"
