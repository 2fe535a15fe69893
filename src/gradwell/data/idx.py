"""MNIST and Fashion-MNIST in LeCun's IDX format, as published: four files, gzipped or raw.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values, big-endian, in C order. Images are magic
0x00000803 (unsigned bytes, count x rows x cols), labels 0x00000801 (unsigned bytes, count).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from gradwell.data.checks import Part
from gradwell.data.splits import Source
from gradwell.errors import DataError

TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with gzip's magic (an IDX file starts with 0 0)."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except OSError as error:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({error})") from None
    except (EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file into an array of its header's type and dimensions.

    >>> header = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big")  # unsigned bytes, 1 dimension of 3
    >>> _ = Path("labels-idx1-ubyte").write_bytes(header + bytes([7, 2, 1]))
    >>> read_idx("labels-idx1-ubyte")
    array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in TYPES:
        raise DataError(
            f"{path}: bad IDX magic 0x{data[:4].hex()}; expected 0x0000, a type code "
            f"({', '.join(f'0x{code:02x}' for code in TYPES)}) and the number of dimensions"
        )
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header ({len(data)} bytes; {data[3]} dimensions need {header})"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", data[3], 4))
    dtype = np.dtype(TYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes, but its header (dimensions {dims}, type {dtype}) needs {expected}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def find(root: Path, stem: str, kind: str) -> Path:
    """``train-images-idx3-ubyte`` as published, or ``train-images.idx3-ubyte`` as some mirrors name it."""
    for name in (f"{stem}-{kind}", f"{stem}.{kind}"):
        for suffix in ("", ".gz"):
            if (root / (name + suffix)).is_file():
                return root / (name + suffix)
    raise DataError(
        f"{root} has no {stem}-{kind}[.gz]; expected the four files as published: {FILES} (raw or .gz)"
    )


def read_pair(root: Path, stem: str) -> Part:
    images_path, labels_path = (
        find(root, f"{stem}-images", "idx3-ubyte"),
        find(root, f"{stem}-labels", "idx1-ubyte"),
    )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path} has dimensions {images.shape}; an images file has 3 (count, rows, cols)"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path} has dimensions {labels.shape}; a labels file has 1 (count)")
    # bytes stay bytes, decoded to [0, 1] a batch at a time
    return Part(images, labels, str(images_path), str(labels_path), pixels=images.dtype == np.uint8)


def idx_dir(directory: str) -> Source:
    """The train and t10k (test) images and labels in `directory`.

    Unsigned-byte pixels (as published) are scaled to [0, 1]; other IDX types are kept as stored.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"idx: {directory!r} is not a directory; expected one holding {FILES} (raw or .gz)")
    return Source(train=read_pair(root, "train"), test=read_pair(root, "t10k"))
