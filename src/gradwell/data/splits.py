"""From a source's arrays to a checked Dataset, and the chapter's split into task A and task B.

Splits that a source lacks are carved from its training part by one seeded permutation
(numpy's ``default_rng(seed)``), so a seed always gives the same split and the carved parts
keep the source's order. The split is not stratified: with the fractions used here every
class of the chapter's datasets is large enough to appear in each part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from gradwell.data.checks import Part, check_classes, check_feature_shapes, check_part, count
from gradwell.data.dataset import Affine, Dataset, Split
from gradwell.errors import DataError


@dataclass
class Source:
    """What a loader read: its own splits (validation and test may be absent) and class names."""

    train: Part
    val: Part | None = None
    test: Part | None = None
    class_names: tuple[str, ...] | None = None


Arrays = tuple[np.ndarray, np.ndarray]


BLOCK = 4096  # rows moved at a time when rows are gathered in place


def gather_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] for increasing `rows`. When `x` owns its writable memory (a loader's fresh array) the
    rows are moved to its front in place and a view returned, so CIFAR-10's training images are
    not held twice while the validation split is carved: each destination block lies before
    every row a later block reads (rows[j] >= j), and each block is gathered before it is written."""
    if not (x.flags.owndata and x.flags.writeable):
        return x[rows]
    for start in range(0, len(rows), BLOCK):
        block = rows[start : start + BLOCK]
        x[start : start + len(block)] = x[block]
    return x[: len(rows)]


def carve(arrays: Arrays, fraction: float, rng: np.random.Generator) -> tuple[Arrays, Arrays]:
    """(rest, carved): round(n * fraction) samples drawn at random, both parts in their original
    order; `arrays` are consumed (the rest may reuse their memory)."""
    x, y = arrays
    order = rng.permutation(len(y))
    taken = round(len(y) * fraction)
    carved, rest = np.sort(order[:taken]), np.sort(order[taken:])
    carved_part = (x[carved], y[carved])
    return (gather_rows(x, rest), y[rest]), carved_part


def to_split(arrays: Arrays, pixels: bool) -> Split:
    """Tensors of checked arrays: float32 features, or uint8 pixels decoded per batch."""
    x, y = arrays
    labels = torch.from_numpy(y.astype(np.int64))
    if pixels:
        return Split(torch.from_numpy(np.require(x, np.uint8, ["C", "W"])), labels, Affine.pixels())
    return Split(torch.from_numpy(np.require(x, np.float32, ["C", "W"])), labels)


def assemble(
    name: str,
    source: Source,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    num_classes: int | None,
) -> Dataset:
    """Check every part, infer the classes, carve the missing splits (test first, then validation)."""
    parts = {key: part for key, part in vars(source).items() if isinstance(part, Part)}
    arrays = {key: check_part(part) for key, part in parts.items()}
    check_feature_shapes(list(parts.values()))
    k = check_classes(name, [(parts[key], arrays[key][1]) for key in parts], num_classes)
    rng = np.random.default_rng(seed)
    if "test" not in arrays:
        arrays["train"], arrays["test"] = carve(arrays["train"], test_fraction, rng)
    if "val" not in arrays:
        arrays["train"], arrays["val"] = carve(arrays["train"], val_fraction, rng)
    if len(arrays["train"][1]) == 0:
        raise DataError(
            f"{name}: no training samples left after carving validation and test; lower the fractions"
        )
    names = source.class_names if source.class_names is not None and len(source.class_names) == k else None
    pixels = {key: parts.get(key, parts["train"]).pixels for key in ("train", "val", "test")}
    splits = {key: to_split(arrays[key], pixels[key]) for key in ("train", "val", "test")}
    return Dataset(**splits, num_classes=k, name=name, class_names=names)


SUBSAMPLE_SEED = 0  # fixed: every seed and arm of an experiment sees the same samples


def subsample(dataset: Dataset, train: int | None = None, val: int | None = None) -> Dataset:
    """`dataset` with at most `train` training and `val` validation samples (None: all), drawn
    without replacement (``SUBSAMPLE_SEED``, not stratified), kept in their order and as stored.

    >>> split = Split(torch.arange(10.0)[:, None], torch.arange(10) % 2)
    >>> small = subsample(Dataset(split, split, split, 2, "toy"), train=4, val=20)
    >>> len(small.train), len(small.val), small.train.x.flatten().tolist()
    (4, 10, [1.0, 4.0, 5.0, 7.0])
    """
    splits = {}
    for key, limit in (("train", train), ("val", val)):
        if limit is None:
            continue
        whole = getattr(dataset, key)
        if count(f"{key}_samples", limit, 1) < len(whole):
            generator = torch.Generator().manual_seed(SUBSAMPLE_SEED)
            splits[key] = whole.select(torch.randperm(len(whole), generator=generator)[:limit].sort().values)
    return replace(dataset, **splits)


def class_list(dataset: Dataset, name: str, classes: Sequence[int]) -> list[int]:
    chosen = [count(f"{name} entry", c, 0) for c in classes]
    unknown = [c for c in chosen if c >= dataset.num_classes]
    if unknown:
        raise DataError(
            f"{name} has classes {unknown} that {dataset.name} lacks; valid: 0..{dataset.num_classes - 1}"
        )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"{name} {chosen} lists a class twice")
    if len(chosen) < 2:
        raise DataError(f"{name} {chosen} must name at least 2 classes for a classification task")
    return chosen


def subset(dataset: Dataset, classes: list[int], task: str) -> Dataset:
    """The samples of `classes`, relabelled by their position in `classes`."""
    relabel = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    relabel[classes] = torch.arange(len(classes))

    def keep(split: Split) -> Split:
        kept = split.select(torch.isin(split.y, torch.tensor(classes, device=split.y.device)))
        return replace(kept, y=relabel.to(split.y.device)[kept.y])

    names = None if dataset.class_names is None else tuple(dataset.class_names[c] for c in classes)
    name = f"{dataset.name} task {task} (classes {', '.join(map(str, classes))})"
    splits = {key: keep(getattr(dataset, key)) for key in ("train", "val", "test")}
    result = Dataset(**splits, num_classes=len(classes), name=name, class_names=names)
    if len(result.train) == 0:
        raise DataError(f"{result.name} has no training samples")
    return result


def split_by_classes(
    dataset: Dataset,
    classes_a: Sequence[int],
    classes_b: Sequence[int] | None = None,
    *,
    limit_train: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """The chapter's transfer-learning setup: task A on `classes_a`, task B on `classes_b`.

    `classes_b` defaults to the classes A leaves out (the chapter's 8 + 2). Labels are
    re-indexed by position, so ``classes_b=[5, 6]`` makes class 5 label 0 and class 6 label 1.
    `limit_train` keeps that many of B's training samples, drawn with `seed`, for the
    chapter's "few labels" task B; validation and test keep every sample of B's classes.

    >>> from gradwell.data import load
    >>> task_a, task_b = split_by_classes(load("digits"), classes_a=range(8), limit_train=20)
    >>> task_a.num_classes, task_b.num_classes, len(task_b.train)
    (8, 2, 20)
    >>> task_b.name, task_b.train.y.unique().tolist()  # classes 8 and 9 become labels 0 and 1
    ('digits task B (classes 8, 9)', [0, 1])
    """
    a = class_list(dataset, "classes_a", classes_a)
    if classes_b is None:
        classes_b = [c for c in range(dataset.num_classes) if c not in a]
    b = class_list(dataset, "classes_b", classes_b)
    shared = sorted(set(a) & set(b))
    if shared:
        raise DataError(
            f"classes_a {a} and classes_b {b} overlap on {shared}; the two tasks must be disjoint"
        )
    task_a, task_b = subset(dataset, a, "A"), subset(dataset, b, "B")
    if limit_train is not None:
        limit = count("limit_train", limit_train, 1)
        if limit > len(task_b.train):
            raise DataError(
                f"limit_train={limit} exceeds the {len(task_b.train)} training samples of {task_b.name}"
            )
        chosen = np.sort(np.random.default_rng(count("seed", seed, 0)).permutation(len(task_b.train))[:limit])
        index = torch.from_numpy(chosen).to(task_b.train.y.device)
        task_b = replace(task_b, train=task_b.train.select(index))
    return task_a, task_b
