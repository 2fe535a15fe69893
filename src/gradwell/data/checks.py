"""The checks every source's arrays pass before they become a Dataset.

Each failure is a DataError that names the file (or array), the sample and the feature, so a
bad value is found before any training starts rather than as a NaN loss an hour later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradwell.errors import DataError, GradwellError, check_finite


@dataclass
class Part:
    """One split as a source read it, before any check, and how to name a position in it.

    The default names are numpy indices, e.g. ``data.npz: x_train[17, 3]``; the CSV reader
    overrides them with line numbers and column names. `pixels` marks uint8 images whose
    features are pixel / 255: they are kept as bytes (a quarter of float32's memory).
    """

    x: np.ndarray
    y: np.ndarray
    x_name: str
    y_name: str
    pixels: bool = field(default=False, kw_only=True)

    def where_x(self, i: int, j: int) -> str:
        """Sample i, flat feature index j."""
        index = (i, *(int(k) for k in np.unravel_index(j, self.x.shape[1:])))
        return f"{self.x_name}[{', '.join(map(str, index))}]"

    def where_y(self, i: int) -> str:
        return f"{self.y_name}[{i}]"


def show(value: np.generic) -> str:
    """A numpy scalar as a user would write it: 2.5, -1 (not -1.0), nan, 1e+39."""
    value = value.item()
    return (
        str(int(value))
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53
        else str(value)
    )


def numeric(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {array.dtype}; expected numbers (bool, integer or float)")
    return array


def check_part(part: Part) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 (pixels as uint8) and labels as float64 non-negative integers, after
    every per-split check."""
    x, y = numeric(np.asarray(part.x), part.x_name), numeric(np.asarray(part.y), part.y_name)
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise DataError(f"{part.x_name} has shape {x.shape}; expected (samples, features...) with features")
    if y.ndim != 1:
        raise DataError(f"{part.y_name} has shape {y.shape}; expected (samples,) class indices")
    if len(x) != len(y):
        raise DataError(f"{part.x_name} has {len(x)} samples but {part.y_name} has {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{part.x_name} is empty: no samples")
    if part.pixels and x.dtype != np.uint8:
        raise DataError(f"{part.x_name} has dtype {x.dtype}; pixels are stored as uint8")
    return x if part.pixels else finite_features(part, x), integer_labels(part, y)


def first_bad(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(k) for k in np.argwhere(bad)[0])


def finite_features(part: Part, x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    reject(part, flat, ~np.isfinite(flat), "features must be finite (no NaN or Inf)")
    with np.errstate(over="ignore"):  # a value finite in float64 can overflow float32: reported next
        converted = flat.astype(np.float32, copy=False)
    reject(part, flat, np.isinf(converted), "beyond float32's range (about 3.4e38)")
    return converted.reshape(x.shape)


def reject(part: Part, flat: np.ndarray, bad: np.ndarray, why: str) -> None:
    if bad.any():
        i, j = first_bad(bad)
        raise DataError(f"{part.where_x(i, j)} is {show(flat[i, j])}; {why}")


def integer_labels(part: Part, y: np.ndarray) -> np.ndarray:
    labels = y.astype(np.float64)  # exact for every label below 2**53, far beyond any class count
    bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0)
    if bad.any():
        (i,) = first_bad(bad)
        raise DataError(f"{part.where_y(i)} is {show(y[i])}; labels must be integers 0..K-1")
    return labels


def check_feature_shapes(parts: list[Part]) -> None:
    first = parts[0]
    for part in parts[1:]:
        if part.x.shape[1:] != first.x.shape[1:]:
            shapes = f"feature shape {part.x.shape[1:]} but {first.x_name} has {first.x.shape[1:]}"
            raise DataError(f"{part.x_name} has {shapes}")


def check_classes(source: str, labelled: list[tuple[Part, np.ndarray]], num_classes: int | None) -> int:
    """K: `num_classes` when given (labels must be below it), else max label + 1 with every class present.

    Inferring K silently from labels 1..10 would train an 11-way model with a dead class 0, so a
    class that never appears is an error unless `num_classes` says the gap is intended.
    """
    if num_classes is not None:
        for part, y in labelled:
            bad = y >= num_classes
            if bad.any():
                (i,) = first_bad(bad)
                raise DataError(
                    f"{part.where_y(i)} is {show(y[i])}; with num_classes={num_classes} labels must be "
                    f"in 0..{num_classes - 1}"
                )
        return num_classes
    present = np.unique(np.concatenate([y for _, y in labelled]))
    k = int(present[-1]) + 1
    if present.size < k:
        missing = np.setdiff1d(np.arange(min(k, present.size + 5)), present)[:5].astype(int).tolist()
        raise DataError(
            f"{source}: labels run 0..{k - 1} but classes {missing} never appear; labels must be 0..K-1 with "
            "every class present (1-based labels? subtract 1), or pass num_classes=K to allow empty classes"
        )
    if k < 2:
        raise DataError(f"{source}: every label is 0; a classifier needs at least 2 classes")
    return k


def fraction(name: str, value: float) -> float:
    """A fraction in [0, 1), as a DataError so that everything gradwell.data raises is one type."""
    try:
        return check_finite(name, value, low=0.0, high=1.0, high_open=True)
    except GradwellError as error:
        raise DataError(str(error)) from None


def count(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise DataError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)
