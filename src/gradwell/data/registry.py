"""``load(name)``: every dataset by name, and the table ``gradwell datasets`` prints.

mnist1d is generated, digits ships with scikit-learn, idx, csv and npz read the user's files;
mnist, fashion_mnist and cifar10 are downloaded once into a cache and verified on every load
(gradwell.data.download).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from gradwell.data.builtin import digits, mnist1d
from gradwell.data.checks import count, fraction
from gradwell.data.dataset import Dataset
from gradwell.data.download import cifar10, fashion_mnist, mnist
from gradwell.data.idx import idx_dir
from gradwell.data.npz import read_npz
from gradwell.data.splits import Source, assemble
from gradwell.data.tabular import read_csv
from gradwell.errors import DataError, closest

SOURCES: dict[str, Callable[..., Source]] = {
    "mnist1d": mnist1d,
    "digits": digits,
    "idx": idx_dir,  # these three take a path after the colon
    "csv": read_csv,
    "npz": read_npz,
    "mnist": mnist,  # these three are downloaded once, then read from the cache
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
}
PATHS = ("idx", "csv", "npz")

DATASETS: dict[str, str] = {
    "mnist1d": "MNIST-1D generated offline: 10 classes, 40 features, 4000/1000 train/test "
    "(options num_samples=5000, data_seed=42)",
    "digits": "scikit-learn's 8x8 digits: 10 classes, 1797 samples, 64 features in [0, 1] "
    "(option image=True: 8x8)",
    "idx:DIR": "MNIST or Fashion-MNIST IDX files as published (train-*, t10k-*, raw or .gz), 28x28 in [0, 1]",
    "csv:PATH": "CSV with a header row: integer labels 0..K-1 in one column (option label='label'), "
    "numeric features",
    "npz:PATH": "NumPy archive with x, y or x_train, y_train (+ x_val, y_val, x_test, y_test); no pickles",
    "mnist": "MNIST, downloaded once (11.6 MB) and checked by SHA-256: 10 digits, 60000/10000 train/test, "
    "28x28 in [0, 1] (option mirror=URL)",
    "fashion_mnist": "Fashion-MNIST, downloaded once (30.9 MB): 10 kinds of clothes (T-shirt/top .. Ankle "
    "boot), 60000/10000 train/test, 28x28 in [0, 1] (option mirror=URL)",
    "cifar10": "CIFAR-10 binary version, downloaded once (170 MB): 10 classes (airplane .. truck), "
    "50000/10000 train/test, 3x32x32 in [0, 1] (option mirror=URL)",
}


def describe() -> list[tuple[str, str]]:
    """(name, description) for every dataset, in the order ``gradwell datasets`` lists them.

    >>> [name for name, _ in describe()]
    ['mnist1d', 'digits', 'idx:DIR', 'csv:PATH', 'npz:PATH', 'mnist', 'fashion_mnist', 'cifar10']
    """
    return list(DATASETS.items())


def resolve(name: str) -> tuple[Callable[..., Source], tuple[str, ...]]:
    """The loader for `name` and its positional argument (the path, for the sources that take one)."""
    kind, colon, path = name.partition(":")
    if kind not in SOURCES:
        raise DataError(f"unknown dataset {name!r}{closest(kind, SOURCES)}; valid: {', '.join(DATASETS)}")
    if (kind in PATHS) != bool(colon):
        usage = f"{kind}:PATH" if kind in PATHS else kind
        raise DataError(f"dataset {name!r}: write it as {usage!r}")
    if colon and not path:
        raise DataError(f"dataset {name!r} names no path; write it as '{kind}:PATH'")
    return SOURCES[kind], (path,) if colon else ()


def check_options(name: str, loader: Callable[..., Source], options: dict[str, object]) -> None:
    valid = [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if key not in valid:
            hint = closest(key, [*valid, "val_fraction", "test_fraction", "seed", "num_classes"])
            raise DataError(
                f"dataset {name!r} takes no option {key!r}{hint}; its options: {', '.join(valid) or 'none'}"
            )


def classes(num_classes: int) -> int:
    """`num_classes` checked: at least 2, and a size torch can hold (the model has as many outputs)."""
    k = count("num_classes", num_classes, 2)
    if k >= 2**63:
        raise DataError(f"num_classes must be an integer below 2**63 (torch's sizes); got {num_classes!r}")
    return k


def load(
    name: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    **options: object,
) -> Dataset:
    """Load dataset `name` (see DATASETS) as checked train / validation / test tensors.

    A source without a test split gives `test_fraction` of its samples to test; one without a
    validation split gives `val_fraction` of what remains to validation (0.1 and 0.2: the
    usual 70 / 10 / 20 with enough validation samples to stop early on). `seed` fixes that
    split. K is `num_classes`, or the largest label + 1 with every class present. Every
    problem with the name, the options or the data raises DataError before anything trains.

    >>> data = load("digits", seed=1)
    >>> data.train.x.shape, data.num_classes
    (torch.Size([1294, 64]), 10)
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string; got {name!r}")
    loader, path = resolve(name)
    check_options(name, loader, options)
    return assemble(
        name,
        loader(*path, **options),
        val_fraction=fraction("val_fraction", val_fraction),
        test_fraction=fraction("test_fraction", test_fraction),
        seed=count("seed", seed, 0),
        num_classes=None if num_classes is None else classes(num_classes),
    )
