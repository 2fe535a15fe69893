"""A verified load of Fashion-MNIST from the cache, cold (hashed) and warm (marker), in seconds.

    python benchmarks/bench_data.py [--repeats 3]

Nothing is downloaded: full-size files in Fashion-MNIST's format (gzipped IDX, 60,000 train and
10,000 test images of random bytes) are written to a temporary cache folder, and REGISTRY is
pointed at their sizes and SHA-256. "cold" is a load with no marker (every file hashed, then
the markers written), "warm" a load whose markers match (no hash). Each row gives the median of
`repeats` runs of `gradwell.data.download.ensure` alone and of `gradwell.data.load` (ensure,
gunzip, parse, checks, the validation split). Random bytes barely compress: the images file is
47 MB here against 26 MB published, so hashing costs more and gunzipping less than on the real one.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradwell.data import download, load


def idx(values: np.ndarray) -> bytes:
    """`values` (unsigned bytes) as a gzipped IDX file, as published."""
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return gzip.compress(header + values.astype(np.uint8).tobytes(), compresslevel=6, mtime=0)


def write_fashion_mnist(folder: Path) -> dict[str, tuple[int, str]]:
    """The four files in `folder`, and their (size, sha256) for REGISTRY."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (60_000, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte.gz": idx(rng.integers(0, 10, 60_000, np.uint8)),
        "t10k-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (10_000, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx(rng.integers(0, 10, 10_000, np.uint8)),
    }
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()}


def median_time(run: Callable[[], object], before: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        os.environ["GRADWELL_DATA"] = root
        folder = Path(root) / "fashion_mnist"
        files = write_fashion_mnist(folder)
        download.REGISTRY["fashion_mnist"] = download.Published("https://unused.invalid/", files)
        megabytes = sum(size for size, _ in files.values()) / 1e6

        def unmark() -> None:
            for marker in folder.glob("*.verified"):
                marker.unlink()

        steps = {
            "ensure (size + sha256 check)": lambda: download.ensure("fashion_mnist", progress=False),
            'load("fashion_mnist")': lambda: load("fashion_mnist"),
        }
        print(f"Fashion-MNIST format, {megabytes:.1f} MB in 4 files; median of {args.repeats}")
        print(f"{'step':32} {'cold s':>8} {'warm s':>8}")
        for label, run in steps.items():
            cold = median_time(run, unmark, args.repeats)
            warm = median_time(run, lambda: None, args.repeats)
            print(f"{label:32} {cold:8.3f} {warm:8.3f}")


if __name__ == "__main__":
    main()
