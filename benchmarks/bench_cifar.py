"""CIFAR-10 as bytes: memory held and peak while loading and training, and the cost of decoding per batch.

    python benchmarks/bench_cifar.py [--steps 60] [--batch-size 128]

Nothing is downloaded: a full-size archive in CIFAR-10's binary format (5 training batches of
10,000 records and a test batch, random bytes, gzipped) is written to a temporary cache and
REGISTRY is pointed at its size and SHA-256. Each measurement runs in a fresh process (this
script with ``--measure``), whose peak resident memory (VmHWM) is read after the work and
compared with its resident memory once torch and gradwell are imported:

- ``load``: ``gradwell.data.load("cifar10")`` standardized per channel, as ``gradwell train``
  does for a cnn: the tensors it holds and the process's peak;
- ``fit uint8`` and ``fit float32``: `steps` steps of ``gradwell.fit`` on a small cnn, on the
  data as loaded (pixels decoded per batch) and on a float32 copy of the same features made
  beforehand (what storing them as float would hold). The two trainings see the same features
  batch by batch, so their steps per second in the same run show what decoding per batch costs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32


def write_archive(folder: Path) -> dict[str, tuple[int, str]]:
    """A full-size cifar-10-binary.tar.gz of random records in `folder`, and its REGISTRY entry."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in names:
            records = rng.integers(0, 256, (10_000, RECORD), np.uint8)
            records[:, 0] = rng.integers(0, 10, 10_000)
            data = records.tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)
    folder.mkdir(parents=True)
    (folder / "cifar-10-binary.tar.gz").write_bytes(data)
    return {"cifar-10-binary.tar.gz": (len(data), hashlib.sha256(data).hexdigest())}


def resident_mb() -> float:
    """The process's resident memory now, from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries the parent's
    resident size at fork into a child's ru_maxrss, and the parent here held the archive."""
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1e3  # kB


def held_mb(dataset) -> float:
    splits = (dataset.train, dataset.val, dataset.test)
    return sum(s.stored.nbytes + s.y.nbytes for s in splits) / 1e6


def measure(what: str, steps: int, batch_size: int) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    import torch

    from gradwell import data, fit, models, optim
    from gradwell.data import Dataset, Split

    torch.set_num_threads(2)
    before = resident_mb()
    started = time.perf_counter()
    dataset = data.standardize(data.load("cifar10"), per="channel")[0]
    result = {"load s": time.perf_counter() - started, "held MB": held_mb(dataset)}
    if what == "fit float32":
        copies = {k: Split(getattr(dataset, k).x, getattr(dataset, k).y) for k in ("train", "val", "test")}
        dataset = Dataset(**copies, num_classes=10, name="cifar10 as float32")
        result["held MB"] = held_mb(dataset)
    if what != "load":
        subset = Dataset(dataset.train.select(slice(0, steps * batch_size)), dataset.val.select(slice(0, 0)),
                         dataset.test, 10, "steps")  # fmt: skip
        model = models.cnn((3, 32, 32), 10, [16, 32], generator=torch.Generator().manual_seed(0))
        optimizer = optim.Nadam(model.parameters(), lr=1e-3)
        fit(model, subset, optimizer=optimizer, epochs=1, batch_size=batch_size, progress=False)  # warm-up
        started = time.perf_counter()
        fit(model, subset, optimizer=optimizer, epochs=1, batch_size=batch_size, progress=False)
        result["steps/s"] = steps / (time.perf_counter() - started)
    result["peak over imports MB"] = peak_mb() - before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        from gradwell.data import download

        files = json.loads(os.environ["BENCH_CIFAR_FILES"])
        download.REGISTRY["cifar10"] = download.Published("https://unused.invalid/", files)
        print(json.dumps(measure(args.measure, args.steps, args.batch_size)))
        return
    with tempfile.TemporaryDirectory() as root:
        files = write_archive(Path(root) / "cifar10")
        env = {**os.environ, "GRADWELL_DATA": root, "BENCH_CIFAR_FILES": json.dumps(files)}
        size = files["cifar-10-binary.tar.gz"][0] / 1e6
        steps = f"{args.steps} steps of batch {args.batch_size}"
        print(f"CIFAR-10 binary format, random bytes: {size:.1f} MB archive; {steps}")
        print(f"{'measurement':14} {'load s':>7} {'held MB':>8} {'peak MB':>8} {'steps/s':>8}")
        rows = {}
        for what in ("load", "fit uint8", "fit float32"):
            command = [sys.executable, __file__, "--measure", what, "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size)]  # fmt: skip
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            rows[what] = row = json.loads(out.strip().splitlines()[-1])
            rate = f"{row['steps/s']:8.2f}" if "steps/s" in row else f"{'':8}"
            peak = row["peak over imports MB"]
            print(f"{what:14} {row['load s']:7.2f} {row['held MB']:8.1f} {peak:8.1f} {rate}")
        ratio = rows["fit uint8"]["steps/s"] / rows["fit float32"]["steps/s"]
        print(f"steps/s, uint8 decoded per batch / float32 stored: {ratio:.3f}")


if __name__ == "__main__":
    main()
