"""Stand-ins for the downloadable data sets: tiny files in the published formats, and registry
entries whose sizes and SHA-256 match them, so the real verifying loader reads them unchanged.

A test writes the files into a cache folder (or serves them), sets ``GRADWELL_DATA`` and puts
``registry_entry(base, files)`` into ``gradwell.data.download.REGISTRY`` in place of the real entry.
"""

import gzip
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gradwell.data import download

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def idx(values: np.ndarray, level: int = 9) -> bytes:
    """`values` (unsigned bytes) as a gzipped IDX file, compressed at `level` (1 to 9)."""
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return gzip.compress(header + values.astype(np.uint8).tobytes(), compresslevel=level, mtime=0)


def idx_files(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, level: int = 9
) -> dict[str, bytes]:
    """The four files of an MNIST-like set, by their published names."""
    arrays = (train_x, train_y, test_x, test_y)
    return {name: idx(values, level) for name, values in zip(IDX_FILES, arrays, strict=True)}


def striped(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28) bytes a small network tells apart at once: faint noise, and a bright band two
    rows high whose place is the class (rows 4 + 2c and 5 + 2c for class c < 10)."""
    images = 20 * rng.integers(0, 4, (len(labels), 28, 28))  # 2 bits a pixel: the files stay small
    for image, label in zip(images, labels, strict=True):
        image[4 + 2 * label : 6 + 2 * label, 4:24] = 240
    return images


def mnist_like(
    train_per_class: Sequence[int], test_per_class: Sequence[int], seed: int = 0
) -> dict[str, bytes]:
    """The four IDX files with ``train_per_class[c]`` training and ``test_per_class[c]`` test
    images of class c, in a shuffled order, each class learnable (``striped``). Compressed at
    level 1: level 9 takes a third of a second over these few hundred images."""
    rng = np.random.default_rng(seed)
    parts = []
    for counts in (train_per_class, test_per_class):
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        parts += [striped(labels, rng), labels]
    return idx_files(*parts, level=1)


def registry_entry(base: str, files: dict[str, bytes]) -> download.Published:
    """A registry entry for `files` served under `base`, their sizes and SHA-256 those of the bytes."""
    return download.Published(base, {f: (len(b), hashlib.sha256(b).hexdigest()) for f, b in files.items()})


def write(folder: Path, files: dict[str, bytes]) -> Path:
    """`files` written into `folder` (made if need be), as a user puts them in the cache by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def stripe_class(x: torch.Tensor) -> torch.Tensor:
    """The class each (n, 28, 28) image of ``striped`` shows, read back from its pixels in [0, 1]:
    what a test checks a relabelled split against."""
    bright_rows = (x > 0.5).any(dim=-1)  # (n, 28): only the band is over 240 / 255 > 0.5
    return (bright_rows.int().argmax(dim=-1) - 4) // 2
