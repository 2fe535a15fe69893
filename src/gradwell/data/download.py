"""The downloadable data sets (MNIST, Fashion-MNIST, CIFAR-10): fetched once, verified on every load.

Each file is downloaded over https into a cache folder (``GRADWELL_DATA``, else the user cache
folder of platformdirs, ``.../gradwell/data``), one subfolder per data set. A download goes to a
temporary file moved into place only once its size and SHA-256 match REGISTRY, so a broken
transfer never leaves a file behind. Next to each file a ``<file>.verified`` marker records the
size, mtime and hash that were checked: a load whose file still has that size and mtime skips
the hash (a full hash of CIFAR-10 takes a second), any other file is hashed again and refused
on a mismatch. A mirror (``data.mirror`` or ``GRADWELL_DATA_MIRROR``) serves
``<mirror>/<data set>/<file>``; the hashes, not the host, decide what is accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np

from gradwell.data.builtin import DIGITS
from gradwell.data.cache import cache_root
from gradwell.data.checks import Part
from gradwell.data.idx import idx_dir
from gradwell.data.splits import Source
from gradwell.errors import DataError

TIMEOUT = 30.0  # seconds without a byte before a download is given up (the tests lower it)
CHUNK = 1 << 20  # bytes read and hashed at a time: 1 MiB keeps memory flat and Python overhead low


@dataclass(frozen=True)
class Published:
    """Where a data set's files are published (an https folder) and each file's size and SHA-256."""

    base: str
    files: dict[str, tuple[int, str]]


def table(text: str) -> dict[str, tuple[int, str]]:
    """``file bytes sha256`` lines, as datasets.md lists them, to {file: (bytes, sha256)}."""
    rows = [line.split() for line in text.strip().splitlines()]
    return {file: (int(size), sha256) for file, size, sha256 in rows}


IDX = """
train-images-idx3-ubyte.gz {} {}
train-labels-idx1-ubyte.gz {} {}
t10k-images-idx3-ubyte.gz {} {}
t10k-labels-idx1-ubyte.gz {} {}
"""
# Sizes and SHA-256 of the files as downloaded, from /work/shared/datasets.md, whose source is
# TensorFlow Datasets' url_checksums/ (mnist.txt, fashion_mnist.txt, cifar10.txt).
REGISTRY: dict[str, Published] = {
    "mnist": Published(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        table(
            IDX.format(
                9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            )
        ),
    ),
    # the original host serves plain http only; Keras's https copies are checked by the same hashes
    "fashion_mnist": Published(
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        table(
            IDX.format(
                26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            )
        ),
    ),
    "cifar10": Published(
        "https://www.cs.toronto.edu/~kriz/",  # the binary version: the python one holds pickles
        table("cifar-10-binary.tar.gz 170052171 "
              "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
    ),
}  # fmt: skip
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")  # fmt: skip
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes, row-major


def base_url(name: str, mirror: str | None) -> str:
    """The folder `name`'s files come from: `mirror`, else ``GRADWELL_DATA_MIRROR``, else REGISTRY.

    A mirror serves ``<mirror>/<name>/<file>``, over https, or over http with a warning when a file
    is fetched (the SHA-256 check still decides what is kept). Any other scheme is a DataError.

    >>> base_url("mnist", "https://example.org/data")
    'https://example.org/data/mnist/'
    """
    if mirror is None:
        mirror = os.environ.get("GRADWELL_DATA_MIRROR") or None
    if mirror is None:
        return REGISTRY[name].base
    if not isinstance(mirror, str):
        raise DataError(f"data.mirror must be a URL string such as 'https://host/path'; got {mirror!r}")
    if urlsplit(mirror).scheme.lower() not in ("https", "http"):
        raise DataError(f"data mirror {mirror!r}: the scheme must be https (or http, with a warning)")
    return f"{mirror.rstrip('/')}/{name}/"


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read a CHUNK at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def stamp(path: Path, sha256: str) -> dict[str, Any]:
    """What a marker records: the file's size and mtime as they are now, and its hash."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def marked(path: Path, sha256: str) -> bool:
    """True when `path`'s marker records its current size and mtime and the expected hash."""
    try:
        return json.loads(marker(path).read_text()) == stamp(path, sha256)
    except (OSError, ValueError):
        return False


def write_marker(path: Path, sha256: str) -> None:
    record = stamp(path, sha256)
    try:
        marker(path).write_text(json.dumps(record))
    except OSError as error:
        raise DataError(f"cache folder {path.parent} is not writable ({error})") from None


def verify(path: Path, size: int, sha256: str) -> None:
    """Refuse a cached file whose size or SHA-256 is not the published one (the marker spares the hash)."""
    if marked(path, sha256):
        return
    got_size = path.stat().st_size
    got = sha256_of(path) if got_size == size else None
    if got != sha256:
        what = f"sha256 {got}, expected {sha256}" if got else f"{got_size} bytes, expected {size}"
        raise DataError(
            f"{path}: {what}; the file is corrupted or not the published one. Delete it to download it again"
        )
    write_marker(path, sha256)


def folder(name: str) -> Path:
    """The data set's cache subfolder, created if need be."""
    path = cache_root() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cache folder {path} cannot be created ({error}); set GRADWELL_DATA to a writable folder"
        ) from None
    return path


def progress_bar(label: str) -> Any:
    """A rich progress bar on stderr with the bytes done, the total and the speed (rich imported late:
    ``import gradwell`` should not pay for it)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True)


def copy_checked(response: BinaryIO, out: BinaryIO, url: str, size: int, progress: bool) -> str:
    """Copy `response` to `out`, at most `size` bytes, and return its SHA-256; a short or long
    transfer is a DataError with the bytes received."""
    digest, received = hashlib.sha256(), 0
    bar = progress_bar(url.rsplit("/", 1)[-1]) if progress else None
    task = bar.add_task("", total=size) if bar else None
    with bar or nullcontext():
        while block := response.read(min(CHUNK, size + 1 - received)):
            received += len(block)
            if received > size:
                raise DataError(f"{url}: the server sent over the {size} bytes expected; nothing was kept")
            digest.update(block)
            out.write(block)
            if bar:
                bar.update(task, completed=received)
    if received != size:
        raise DataError(f"{url}: received {received} bytes, expected {size}: truncated; nothing was kept")
    return digest.hexdigest()


def offline(url: str, error: object, name: str, path: Path) -> DataError:
    """The error for a download that could not start: what failed, and how to do without it."""
    files = ", ".join(REGISTRY[name].files)
    idx = "; or use data.name = 'idx:DIR' with the IDX files in DIR" if name != "cifar10" else ""
    return DataError(
        f"cannot download {url} ({error}); cache folder {path} lacks it. Without a network, put "
        f"{files} (the published files, checked by SHA-256) in {path}{idx}"
    )


def download(name: str, file: str, url: str, progress: bool) -> None:
    """Fetch `url` into the cache as `file`, kept only when size and SHA-256 match REGISTRY."""
    import http.client
    import urllib.error
    import urllib.request

    path = folder(name)
    size, sha256 = REGISTRY[name].files[file]
    try:
        handle, temporary = tempfile.mkstemp(dir=path, prefix=f".{file}.", suffix=".part")
    except OSError as error:
        raise DataError(f"cache folder {path} is not writable ({error})") from None
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                    got = copy_checked(response, out, url, size, progress)
            except urllib.error.HTTPError as error:
                raise DataError(f"{url}: HTTP {error.code} {error.reason}; the file is not there") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                raise offline(url, getattr(error, "reason", error), name, path) from None
            except (http.client.HTTPException, OSError) as error:
                raise DataError(f"{url}: the transfer failed ({error!r}); nothing was kept") from None
        if got != sha256:
            raise DataError(f"{url}: sha256 {got}, expected {sha256}; the file was not kept")
        os.replace(temporary, path / file)
    finally:
        Path(temporary).unlink(missing_ok=True)
    write_marker(path / file, sha256)


def ensure(name: str, *, mirror: str | None = None, progress: bool | None = None) -> Path:
    """The cache folder of data set `name` with every file present and verified, fetching those missing.

    `progress` shows a bar on stderr; by default only when stderr is a terminal.
    """
    base, path = base_url(name, mirror), folder(name)
    missing = [f for f in REGISTRY[name].files if not (path / f).is_file()]
    for file, (size, sha256) in REGISTRY[name].files.items():
        if file not in missing:
            verify(path / file, size, sha256)
    if missing and urlsplit(base).scheme.lower() == "http":
        warnings.warn(
            f"data mirror {base.removesuffix(f'{name}/').rstrip('/')} uses plain http: the files are "
            "still checked by SHA-256, but the transfer is not encrypted",
            stacklevel=2,
        )
    for file in missing:
        download(name, file, base + file, sys.stderr.isatty() if progress is None else progress)
    return path


def status(name: str) -> str:
    """Whether data set `name` is in the cache, without hashing (what ``gradwell datasets`` shows).

    >>> from unittest import mock
    >>> with mock.patch.dict("os.environ", GRADWELL_DATA="empty-cache"):
    ...     status("mnist"), status("cifar10")
    ('not cached (11.6 MB on first use)', 'not cached (170.1 MB on first use)')
    """
    path, files = cache_root() / name, REGISTRY[name].files
    present = [f for f in files if (path / f).is_file()]
    if not present:
        return f"not cached ({sum(s for s, _ in files.values()) / 1e6:.1f} MB on first use)"
    if len(present) < len(files):
        return f"partly cached ({len(present)} of {len(files)} files)"
    if all(marked(path / f, files[f][1]) for f in files):
        return "cached, verified"
    return "cached, verified on the next load"


def mnist(*, mirror: str | None = None) -> Source:
    """MNIST (LeCun et al., 1998), downloaded once: 60,000 train / 10,000 test, (28, 28) in [0, 1].

    The validation split is carved from the training files; the test split is the published one.
    """
    return replace(idx_dir(str(ensure("mnist", mirror=mirror))), class_names=DIGITS)


def fashion_mnist(*, mirror: str | None = None) -> Source:
    """Fashion-MNIST (Xiao et al., 2017), downloaded once: MNIST's format, clothes for digits."""
    return replace(idx_dir(str(ensure("fashion_mnist", mirror=mirror))), class_names=FASHION)


def cifar_part(archive: tarfile.TarFile, members: list[str], path: Path) -> Part:
    """The records of `members` as uint8 images (n, 3, 32, 32) and labels (n,).

    Each member is copied into arrays sized from the archive's index as soon as it is read, so
    the peak memory is the images plus one member (30 MB), not twice the images.
    """
    infos = []
    for member in members:
        try:
            infos.append(archive.getmember(f"cifar-10-batches-bin/{member}"))
        except KeyError:
            raise DataError(
                f"{path} lacks cifar-10-batches-bin/{member}: not CIFAR-10's binary version"
            ) from None
    for member, info in zip(members, infos, strict=True):
        if not info.size or info.size % CIFAR_RECORD:
            raise DataError(f"{path}: {member} has {info.size} bytes, not whole 3073-byte records")
    count = sum(info.size for info in infos) // CIFAR_RECORD
    x, y, done = np.empty((count, 3, 32, 32), np.uint8), np.empty(count, np.uint8), 0
    for info in infos:
        file = archive.extractfile(info)
        data = file.read() if file else b""
        if len(data) != info.size:
            raise DataError(f"{path}: {info.name} holds {len(data)} of its {info.size} bytes: truncated")
        records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
        # channels first, as torch; kept as bytes and decoded a batch at a time
        x[done : done + len(records)] = records[:, 1:].reshape(-1, 3, 32, 32)
        y[done : done + len(records)] = records[:, 0]
        done += len(records)
    return Part(x, y, f"{path} {members[0]} x", f"{path} {members[0]} y", pixels=True)


def cifar10(*, mirror: str | None = None) -> Source:
    """CIFAR-10 (Krizhevsky, 2009), binary version, downloaded once: 50,000 / 10,000, (3, 32, 32).

    The archive is read with tarfile member by member, never extracted, never unpickled.
    """
    path = ensure("cifar10", mirror=mirror) / "cifar-10-binary.tar.gz"
    try:
        with tarfile.open(path, "r:gz") as archive:
            train = cifar_part(archive, [f"data_batch_{i}.bin" for i in range(1, 6)], path)
            test = cifar_part(archive, ["test_batch.bin"], path)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .tar.gz ({error}); delete it to download it again") from None
    return Source(train=train, test=test, class_names=CIFAR10)
