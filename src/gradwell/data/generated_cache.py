"""A disk cache of generated data sets: MNIST-1D's 40,000 samples take 21 s to make, a fraction to read.

A set is stored as ``<cache root>/<name>/<key>.npz`` (uncompressed NumPy arrays, read with
``allow_pickle=False``), where the key is the SHA-256 of every generation argument and the
generator's package version, so a change to either makes a new file rather than reusing a stale
one. Each file also holds that key's text and a SHA-256 of its arrays (names, dtypes, shapes and
bytes): a file that cannot be read, or whose arrays do not match, is regenerated with a logged
warning. A file is written to a temporary name in the same folder and moved into place with
``os.replace``, so concurrent workers and a crash never leave a half-written file under the real
name. A cache folder that cannot be written costs only the time: the set is generated as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradwell.data.cache import cache_root
from gradwell.files import write_atomically

log = logging.getLogger(__name__)
FORMAT = 1  # bumped when the file's layout changes, so older files are never misread
KEY, CHECKSUM = "__key__", "__sha256__"  # the file's own entries, beside the set's arrays


def cache_key(arguments: Mapping[str, Any]) -> tuple[str, str]:
    """(file stem, key text) for a set made with `arguments`: the text is their sorted JSON.

    >>> stem, text = cache_key({"num_samples": 100, "version": "0.0.2"})
    >>> len(stem), text
    (32, '{"format": 1, "num_samples": 100, "version": "0.0.2"}')
    """
    text = json.dumps({"format": FORMAT, **arguments}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32], text


def checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, dtypes, shapes and bytes, in name order.

    >>> checksum({"x": np.zeros(2)}) == checksum({"x": np.zeros(2)}) != checksum({"x": np.ones(2)})
    True
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read(path: Path, text: str) -> dict[str, np.ndarray] | None:
    """The arrays stored in `path`, or None (with a warning) when it is unreadable or does not match."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        log.warning("cached data set %s cannot be read (%s); making it again", path, error)
        return None
    key, stored_sum = arrays.pop(KEY, None), arrays.pop(CHECKSUM, None)
    if key is None or str(key) != text or stored_sum is None or str(stored_sum) != checksum(arrays):
        log.warning("cached data set %s does not match its key or checksum; making it again", path)
        return None
    return arrays


def write(path: Path, text: str, arrays: Mapping[str, np.ndarray]) -> None:
    """`arrays` into `path` atomically (gradwell.files.write_atomically), with the key and checksum."""
    entries = {**arrays, KEY: np.array(text), CHECKSUM: np.array(checksum(arrays))}
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    write_atomically(path, buffer.getvalue())


def cached(
    name: str, arguments: Mapping[str, Any], make: Callable[[], Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays `make()` returns for `arguments`, read from the cache when a good file is there,
    else made and stored.

    >>> import tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as root, mock.patch.dict("os.environ", GRADWELL_DATA=root):
    ...     made = cached("squares", {"n": 3}, lambda: {"x": np.arange(3) ** 2})
    ...     again = cached("squares", {"n": 3}, lambda: {"x": np.zeros(3)})  # read, not made
    >>> again["x"].tolist()
    [0, 1, 4]
    """
    stem, text = cache_key(arguments)
    path = cache_root() / name / f"{stem}.npz"
    if path.is_file():
        arrays = read(path, text)
        if arrays is not None:
            return arrays
    arrays = {key: np.asarray(value) for key, value in make().items()}
    try:
        write(path, text, arrays)
    except OSError as error:  # a read-only or full cache folder: the set is still good to use
        log.warning("data set cache %s cannot be written (%s); it will be made again next time", path, error)
    return arrays


def status(name: str) -> str:
    """What the cache holds of the generated set `name`: how many variants and their size on disk.

    >>> import tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as root, mock.patch.dict("os.environ", GRADWELL_DATA=root):
    ...     before = status("squares")
    ...     _ = cached("squares", {"n": 3}, lambda: {"x": np.arange(3) ** 2})
    ...     before, status("squares").split(" (")[0]
    ('generated on use, then cached', '1 set cached')
    """
    files = sorted((cache_root() / name).glob("*.npz"))
    if not files:
        return "generated on use, then cached"
    size = sum(f.stat().st_size for f in files) / 1e6
    return f"{len(files)} set{'s' if len(files) > 1 else ''} cached ({size:.1f} MB)"
