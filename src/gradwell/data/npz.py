"""A NumPy .npz archive: arrays x and y, or x_train / y_train with optional x_val / y_val and x_test / y_test.

Loaded with ``allow_pickle=False``: an object array inside is refused, because unpickling
can run arbitrary code. Other arrays in the archive are ignored.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from gradwell.data.checks import Part
from gradwell.data.splits import Source
from gradwell.errors import DataError

LAYOUT = "x and y, or x_train and y_train (optionally x_val, y_val and x_test, y_test)"


def read_array(archive: np.lib.npyio.NpzFile, path: Path, name: str) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{path}: array {name!r} is a pickled object array, refused because unpickling can run "
                "arbitrary code; save numeric arrays"
            ) from None
        raise DataError(f"{path}: array {name!r} cannot be read ({error})") from None
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: array {name!r} is corrupt ({error})") from None


def read_part(archive: np.lib.npyio.NpzFile, path: Path, x_name: str, y_name: str) -> Part | None:
    """The split stored as `x_name` / `y_name`, None when neither is there."""
    present = [name in archive.files for name in (x_name, y_name)]
    if not any(present):
        return None
    if not all(present):
        missing = y_name if present[0] else x_name
        raise DataError(f"{path} has {x_name if present[0] else y_name} but no {missing}")
    x, y = read_array(archive, path, x_name), read_array(archive, path, y_name)
    return Part(x, y, f"{path}: {x_name}", f"{path}: {y_name}")


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{path} is not an .npz archive; numpy would read it as a pickle, refused because "
                "unpickling can run arbitrary code"
            ) from None
        raise DataError(f"{path}: not a readable .npz archive ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array (.npy); expected an .npz archive with {LAYOUT}")
    return archive


def read_npz(path: str) -> Source:
    file = Path(path)
    if file.is_dir():
        raise DataError(f"npz: {path!r} is a folder; give the path of a .npz file")
    if not file.is_file():
        raise DataError(f"npz: file {path!r} not found")
    with open_npz(file) as archive:
        plain, train = read_part(archive, file, "x", "y"), read_part(archive, file, "x_train", "y_train")
        val, test = read_part(archive, file, "x_val", "y_val"), read_part(archive, file, "x_test", "y_test")
        if plain is None and train is None:
            raise DataError(f"{file} holds {', '.join(archive.files) or 'no arrays'}; expected {LAYOUT}")
        if plain is not None and (train is not None or val is not None or test is not None):
            raise DataError(f"{file} holds both x / y and x_train / x_val / x_test arrays; expected {LAYOUT}")
    return Source(train=plain or train, val=val, test=test)
