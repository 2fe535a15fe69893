"""The downloadable data sets, served by a local http server: no test here reaches the internet.

The server (127.0.0.1, a thread) serves tiny files in the real formats (gzipped IDX, CIFAR-10's
binary tar.gz), and REGISTRY is replaced by one whose sizes and SHA-256 match them.
"""

import hashlib
import http.server
import io
import json
import os
import re
import socket
import tarfile
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from standins import IDX_FILES, idx_files, registry_entry

from gradwell import cli
from gradwell.data import download, load
from gradwell.errors import DataError

# the test registry serves over http: the warning that gives is tested once, and silenced elsewhere
pytestmark = pytest.mark.filterwarnings("ignore:data mirror http:UserWarning")
PUBLISHED = dict(download.REGISTRY)  # the real registry, before any test replaces it


def idx_set(train: int = 60, test: int = 20) -> dict[str, bytes]:
    """Random pixels, labels 0, 1, ..., 9, 0, ... in order (the tests read them back)."""
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (train, 28, 28)), rng.integers(0, 256, (test, 28, 28))
    return idx_files(train_x, np.arange(train) % 10, test_x, np.arange(test) % 10)


def cifar_records(n: int, first: int) -> bytes:
    """n records: label (first + i) % 10, red plane all 200, green 100, blue the pixel index % 256."""
    planes = np.stack([np.full(1024, 200), np.full(1024, 100), np.arange(1024) % 256])
    records = [np.concatenate([[(first + i) % 10], planes.ravel()]) for i in range(n)]
    return np.array(records, np.uint8).tobytes()


CIFAR_MEMBERS = {f"data_batch_{i}.bin": cifar_records(4, 4 * (i - 1)) for i in range(1, 6)}
CIFAR_MEMBERS |= {"test_batch.bin": cifar_records(10, 0), "batches.meta.txt": b"airplane\n..."}


def cifar_archive(members: dict[str, bytes] = CIFAR_MEMBERS) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FILES = {
    "mnist": idx_set(),
    "fashion_mnist": idx_set(),
    "cifar10": {"cifar-10-binary.tar.gz": cifar_archive()},
}


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /<route>/<data set>/<file>: "ok" and "m" serve the file, "short" sends half of it under the
    full Content-Length, "hang" waits, anything else is a 404."""

    def do_GET(self) -> None:
        route, _, rest = self.path.lstrip("/").partition("/")
        name, _, file = rest.partition("/")
        body = FILES.get(name, {}).get(file)
        if route == "hang":
            self.server.release.wait(5)
            return
        if body is None or route not in ("ok", "m", "short"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if route == "short" else body)
        self.close_connection = True

    def log_message(self, *args) -> None:  # the test output stays quiet
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def stop(self) -> None:
        if not self.release.is_set():
            self.release.set()
            self.shutdown()
            self.server_close()


@pytest.fixture
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.stop()
    thread.join(5)


def registry(base: str) -> dict[str, download.Published]:
    """A registry of the test files, served under `base`/<data set>/."""
    return {name: registry_entry(f"{base}/{name}/", files) for name, files in FILES.items()}


@pytest.fixture
def cache(tmp_path, monkeypatch, server):
    """The cache folder, empty, and the test registry served by `server` (route "ok")."""
    monkeypatch.setenv("GRADWELL_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("GRADWELL_DATA_MIRROR", raising=False)
    monkeypatch.setattr(download, "REGISTRY", registry(f"{server.url}/ok"))
    monkeypatch.setattr(download, "TIMEOUT", 0.5)
    return tmp_path / "cache"


def served_from(monkeypatch, server, route: str) -> None:
    monkeypatch.setattr(download, "REGISTRY", registry(f"{server.url}/{route}"))


def contents(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_download_is_kept_with_its_marker_and_nothing_else(cache):
    folder = download.ensure("fashion_mnist", progress=False)
    assert folder == cache / "fashion_mnist"
    assert contents(folder) == sorted([*IDX_FILES, *(f + ".verified" for f in IDX_FILES)])
    for file in IDX_FILES:
        assert (folder / file).read_bytes() == FILES["fashion_mnist"][file]
        record = json.loads((folder / (file + ".verified")).read_text())
        data = FILES["fashion_mnist"][file]
        mtime = (folder / file).stat().st_mtime_ns
        assert record == {"size": len(data), "mtime_ns": mtime, "sha256": hashlib.sha256(data).hexdigest()}
    assert download.status("fashion_mnist") == "cached, verified"


def test_the_progress_bar_goes_to_stderr(cache, capsys):
    download.ensure("mnist", progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and len(contents(cache / "mnist")) == 8


def test_a_second_load_reads_the_cache_with_the_server_stopped(cache, server):
    first = load("mnist", seed=3)
    server.stop()
    second = load("mnist", seed=3)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)


def test_the_marker_spares_the_hash_while_size_and_mtime_match(cache, monkeypatch):
    download.ensure("mnist", progress=False)
    calls = []
    hashed = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda path: calls.append(path.name) or hashed(path))
    download.ensure("mnist", progress=False)
    assert calls == []
    file = cache / "mnist" / IDX_FILES[0]
    os.utime(file, ns=(time.time_ns(), time.time_ns() - 10**9))  # same bytes, another mtime: hashed again
    download.ensure("mnist", progress=False)
    download.ensure("mnist", progress=False)
    assert calls == [IDX_FILES[0]]


def test_a_corrupted_cache_file_is_refused_and_left_for_the_user(cache):
    download.ensure("mnist", progress=False)
    file = cache / "mnist" / IDX_FILES[1]
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    expected = hashlib.sha256(FILES["mnist"][IDX_FILES[1]]).hexdigest()
    message = rf"{re.escape(str(file))}: sha256 [0-9a-f]{{64}}, expected {expected}.*Delete it to download it"
    with pytest.raises(DataError, match=message):
        load("mnist")
    assert file.read_bytes() == bytes(data)
    file.write_bytes(b"short")
    with pytest.raises(DataError, match=r"5 bytes, expected \d+; the file is corrupted"):
        load("mnist")


def test_a_truncated_transfer_leaves_nothing_in_the_cache(cache, monkeypatch, server):
    served_from(monkeypatch, server, "short")
    size = len(FILES["mnist"][IDX_FILES[0]])
    message = rf"short/mnist/{IDX_FILES[0]}: received {size // 2} bytes, expected {size}: truncated"
    with pytest.raises(DataError, match=message):
        download.ensure("mnist", progress=False)
    assert contents(cache / "mnist") == []


def test_a_wrong_size_or_hash_leaves_nothing_in_the_cache(cache, monkeypatch):
    good = download.REGISTRY["cifar10"].files["cifar-10-binary.tar.gz"]
    url = re.escape(download.REGISTRY["cifar10"].base + "cifar-10-binary.tar.gz")
    for size, sha256, message in [
        (good[0] + 10, good[1], rf"{url}: received {good[0]} bytes, expected {good[0] + 10}: truncated"),
        (good[0] - 10, good[1], rf"{url}: the server sent over the {good[0] - 10} bytes expected"),
        (good[0], "0" * 64, rf"{url}: sha256 {good[1]}, expected {'0' * 64}; the file was not kept"),
    ]:
        download.REGISTRY["cifar10"].files["cifar-10-binary.tar.gz"] = (size, sha256)
        with pytest.raises(DataError, match=message):
            download.ensure("cifar10", progress=False)
        assert contents(cache / "cifar10") == []


def test_a_missing_file_is_a_404(cache, monkeypatch, server):
    served_from(monkeypatch, server, "nothing")
    with pytest.raises(DataError, match=r"nothing/mnist/train-images-idx3-ubyte.gz: HTTP 404"):
        download.ensure("mnist", progress=False)
    assert contents(cache / "mnist") == []


def test_a_server_that_hangs_times_out(cache, monkeypatch, server):
    served_from(monkeypatch, server, "hang")
    started = time.monotonic()
    with pytest.raises(
        DataError, match=r"cannot download .*hang/mnist/train-images-idx3-ubyte.gz \(.*timed out"
    ):
        download.ensure("mnist", progress=False)
    assert time.monotonic() - started < 3 and contents(cache / "mnist") == []


def test_the_mirror_serves_the_files_by_argument_or_environment(cache, monkeypatch, server):
    served_from(monkeypatch, server, "nothing")  # the registry's host has nothing: the mirror must serve
    with pytest.warns(UserWarning, match=r"data mirror http://127.0.0.1:\d+/m uses plain http"):
        download.ensure("mnist", mirror=f"{server.url}/m", progress=False)
    monkeypatch.setenv("GRADWELL_DATA_MIRROR", f"{server.url}/m/")
    with pytest.warns(UserWarning, match="plain http"):
        download.ensure("fashion_mnist", progress=False)
    assert download.status("mnist") == download.status("fashion_mnist") == "cached, verified"


def test_a_mirror_must_be_https_or_http():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert download.base_url("mnist", "https://example.org/data/") == "https://example.org/data/mnist/"
    for mirror in ("ftp://x", "file:///tmp", "example.org/data"):
        with pytest.raises(
            DataError, match=r"data mirror .*: the scheme must be https \(or http, with a warning\)"
        ):
            download.base_url("mnist", mirror)
    with pytest.raises(DataError, match=r"data\.mirror must be a URL string"):
        download.base_url("mnist", 3)


def test_the_published_files_are_fetched_over_https():
    assert set(PUBLISHED) == {"mnist", "fashion_mnist", "cifar10"}
    for name, published in PUBLISHED.items():
        assert published.base.startswith("https://") and published.base.endswith("/"), name
        for file, (size, sha256) in published.files.items():
            assert size > 1000 and re.fullmatch(r"[0-9a-f]{64}", sha256), file
    assert list(PUBLISHED["mnist"].files) == list(PUBLISHED["fashion_mnist"].files) == list(IDX_FILES)
    assert PUBLISHED["cifar10"].files["cifar-10-binary.tar.gz"][0] == 170052171


def test_offline_without_a_cache_says_how_to_do_without_the_network(cache, monkeypatch):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed once the block ends: connections are refused
    monkeypatch.setattr(download, "REGISTRY", registry(f"http://127.0.0.1:{port}"))
    with pytest.raises(DataError) as caught:
        load("fashion_mnist")
    message = str(caught.value)
    assert f"cannot download http://127.0.0.1:{port}/fashion_mnist/train-images-idx3-ubyte.gz" in message
    assert f"put {', '.join(IDX_FILES)}" in message and f"in {cache / 'fashion_mnist'}" in message
    assert "idx:DIR" in message
    with pytest.raises(DataError, match=r"put cifar-10-binary.tar.gz .* in \S+cifar10$"):
        load("cifar10")


def test_files_put_in_the_cache_by_hand_are_verified_and_used(cache, monkeypatch):
    folder = cache / "mnist"
    folder.mkdir(parents=True)
    for file, data in FILES["mnist"].items():
        (folder / file).write_bytes(data)
    monkeypatch.setattr(download, "REGISTRY", registry("http://127.0.0.1:9"))  # nothing there
    assert download.status("mnist") == "cached, verified on the next load"
    assert len(load("mnist").test) == 20 and download.status("mnist") == "cached, verified"


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GRADWELL_DATA", str(tmp_path / "file" / "cache"))
    with pytest.raises(
        DataError, match=rf"cache folder {re.escape(str(tmp_path))}/file/cache/mnist cannot be"
    ):
        download.ensure("mnist")


def test_the_idx_sets_load_as_idx_dir_does(cache, tmp_path):
    data = load("fashion_mnist", val_fraction=0.25, seed=1)
    assert data.feature_shape == (28, 28) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 20)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[-1] == "Ankle boot"
    assert data.test.y.tolist() == [i % 10 for i in range(20)]
    assert data.train.x.min() >= 0 and data.train.x.max() <= 1 and data.train.x.dtype == torch.float32
    same = load(f"idx:{cache / 'fashion_mnist'}", val_fraction=0.25, seed=1)
    assert torch.equal(same.train.x, data.train.x) and torch.equal(same.test.x, data.test.x)
    assert load("mnist").class_names == tuple("0123456789")


def test_cifar10_is_read_from_the_binary_archive_channels_first(cache):
    data = load("cifar10", val_fraction=0.1, seed=0)
    assert data.feature_shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 10)
    first = data.test.x[0]  # red, green, blue planes in that order
    assert torch.allclose(first[0], torch.tensor(200 / 255)) and torch.allclose(
        first[1], torch.tensor(100 / 255)
    )
    assert torch.equal(first[2].flatten(), torch.arange(1024).remainder(256).float() / 255)
    assert data.test.y.tolist() == list(range(10)) and data.class_names[-1] == "truck"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data_batch_3.bin": None}, "lacks cifar-10-batches-bin/data_batch_3.bin: not CIFAR-10's binary"),
        ({"test_batch.bin": bytes(3072)}, "test_batch.bin has 3072 bytes, not whole 3073-byte records"),
    ],
)
def test_an_archive_unlike_cifars_binary_version_is_refused(cache, monkeypatch, change, message):
    members = {name: data for name, data in {**CIFAR_MEMBERS, **change}.items() if data is not None}
    archive = cifar_archive(members)
    (cache / "cifar10").mkdir(parents=True)
    (cache / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(archive)
    entry = registry_entry("https://unused.invalid/", {"cifar-10-binary.tar.gz": archive})
    monkeypatch.setitem(download.REGISTRY, "cifar10", entry)
    with pytest.raises(DataError, match=re.escape(message)):
        load("cifar10")


def test_gradwell_trains_on_a_downloaded_set(cache, server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    served_from(monkeypatch, server, "nothing")
    mirror = f"data.mirror={server.url}/m"  # plain http: a warning on stderr
    overrides = ["data.name=fashion_mnist", mirror, "train.epochs=1", "train.batch_size=16",
                 "model.hidden=[8]", "output.name=fm", "output.progress=false"]  # fmt: skip
    assert cli.main(["train", *[a for o in overrides for a in ("--set", o)], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 1 and (tmp_path / "runs" / "fm").is_dir()
    assert cli.main(["datasets"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert "cached, verified" in listing and f"cache folder: {cache}" in listing


def test_gradwell_trains_a_cnn_on_cifar10_images(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = ["data.name=cifar10", "data.val_fraction=0.2", "model.kind=cnn", "model.channels=[4]",
                 "model.batchnorm=none", "train.epochs=1", "train.batch_size=8", "output.name=c",
                 "output.progress=false"]  # fmt: skip
    assert cli.main(["train", *[a for o in overrides for a in ("--set", o)], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 1 and 0 <= result["test"]["accuracy"] <= 1
    assert result["doctor"]["layers"][0]["name"] == "conv1"  # the doctor measured the convolution
