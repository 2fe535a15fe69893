"""Files written whole or not at all: a crash, a full disk or a kill never leaves half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file (``.NAME.*.tmp`` in the same folder),
    fsync and rename, then fsync the folder so that the rename itself survives a crash.

    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "new" / "x.txt"
    ...     write_atomically(target, b"whole")
    ...     target.read_bytes(), [p.name for p in target.parent.iterdir()]  # no temporary file left
    (b'whole', ['x.txt'])
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
