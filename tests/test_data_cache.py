"""The cache of generated data sets: what is read back is what was made, to the bit; a bad file is
made again; a failed write leaves nothing behind. Every test caches under its own tmp_path."""

import logging
import os

import numpy as np
import pytest

from gradwell import files
from gradwell.data import builtin, generated_cache
from gradwell.data.generated_cache import cached


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADWELL_DATA", str(tmp_path))
    return tmp_path


def made_by_mnist1d(num_samples: int, seed: int = 42) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    return make_dataset(args)


def arrays_of(source) -> dict[str, np.ndarray]:
    return {"x": source.train.x, "y": source.train.y, "x_test": source.test.x, "y_test": source.test.y}


def test_a_cached_mnist1d_is_the_generated_one_to_the_bit(root):
    first = builtin.mnist1d(num_samples=100)  # made, then written
    (path,) = (root / "mnist1d").iterdir()
    written = path.stat().st_mtime_ns
    again = builtin.mnist1d(num_samples=100)  # read
    assert path.stat().st_mtime_ns == written and not list((root / "mnist1d").glob("*.tmp"))
    reference = made_by_mnist1d(100)
    for name, array in arrays_of(again).items():
        assert array.dtype == reference[name].dtype and np.array_equal(array, reference[name]), name
        assert np.array_equal(arrays_of(first)[name], array), name
    builtin.mnist1d(num_samples=100, data_seed=1)  # another argument, another file
    assert len(list((root / "mnist1d").iterdir())) == 2


def count_calls(value):
    calls = []

    def make():
        calls.append(1)
        return {"x": value}

    return make, calls


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not a zip", "another array"])
def test_a_damaged_file_is_made_again_with_a_warning(root, caplog, damage):
    x = np.random.default_rng(0).normal(size=(50, 4))
    make, calls = count_calls(x)
    cached("set", {"n": 50}, make)
    (path,) = (root / "set").iterdir()
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        data[len(data) // 3] ^= 0xFF  # inside x's bytes, which the zip's own CRC is not checked for
    elif damage == "not a zip":
        data = bytearray(b"garbage")
    if damage == "another array":  # a good zip with the key and checksum, but not the arrays they were for
        with np.load(path) as stored:
            entries = {name: stored[name] for name in stored.files}
        with path.open("wb") as file:
            np.savez(file, **{**entries, "x": x + 1})
    else:
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="gradwell.data.generated_cache"):
        again = cached("set", {"n": 50}, make)
    assert np.array_equal(again["x"], x) and len(calls) == 2  # made again, not read
    assert "making it again" in caplog.text
    assert np.array_equal(cached("set", {"n": 50}, make)["x"], x) and len(calls) == 2  # rewritten good


def test_a_file_made_for_other_arguments_is_not_taken(root, monkeypatch):
    make, calls = count_calls(np.arange(3))
    cached("set", {"n": 3}, make)
    (path,) = (root / "set").iterdir()
    # a file under this key's name but holding another key (a hash collision, a copied file)
    stem, _ = generated_cache.cache_key({"n": 4})
    os.replace(path, path.with_name(f"{stem}.npz"))
    cached("set", {"n": 4}, make)
    assert len(calls) == 2


def test_a_failed_write_leaves_no_file_and_the_set_is_still_returned(root, monkeypatch, caplog):
    def full_disk(_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    make, _ = count_calls(np.arange(5))
    with caplog.at_level(logging.WARNING, logger="gradwell.data.generated_cache"):
        assert np.array_equal(cached("set", {"n": 5}, make)["x"], np.arange(5))
    assert list((root / "set").iterdir()) == [] and "cannot be written" in caplog.text
