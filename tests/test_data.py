"""gradwell.data: every source's shapes, values and splits, and every bad input as a DataError."""

import gzip
import pickle
import random

import numpy as np
import pytest
import torch
from conftest import rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwell.data import (
    DATASETS,
    Dataset,
    Split,
    describe,
    load,
    read_idx,
    split_by_classes,
    standardize,
)
from gradwell.errors import DataError

# ---------------------------------------------------------------- IDX files, written to the published format

IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """Two zero bytes, the type code, the number of dims, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.str.replace("|", "")] if code is None else code
    return bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def write(path, data: bytes, gz: bool = False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_like(rng, n):
    """Random uint8 images whose first pixel is the sample's id, and labels covering 0..9."""
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return images, labels


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {"train": mnist_like(rng, 60), "t10k": mnist_like(rng, 20)}

    def make(gz=False, skip=(), **replace):
        suffix = ".gz" if gz else ""
        for stem, (images, labels) in arrays.items():
            files = {
                f"{stem}-images-idx3-ubyte": idx_bytes(images),
                f"{stem}-labels-idx1-ubyte": idx_bytes(labels),
            }
            for name, data in {**files, **replace}.items():
                if name.startswith(stem) and name not in skip:
                    write(tmp_path / (name + suffix), data, gz)
        return tmp_path, arrays

    return make


def test_idx_writer_matches_the_published_mnist_header():
    # train-labels-idx1-ubyte as published starts 00 00 08 01 then 60000 big-endian
    assert idx_bytes(np.zeros(60000, np.uint8))[:8] == bytes.fromhex("00000801 0000ea60")
    images = bytes.fromhex("00000803 00000002 0000001c 0000001c")  # 2 images of 28 x 28
    assert idx_bytes(np.zeros((2, 28, 28), np.uint8))[:16] == images


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    array = (np.random.default_rng(1).normal(size=(3, 4, 5)) * 50).astype(dtype)
    assert np.array_equal(read_idx(write(tmp_path / "a", idx_bytes(array), gz)), array)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_as_published(idx_dir, gz):
    root, arrays = idx_dir(gz)
    data = load(f"idx:{root}", val_fraction=0.25, seed=3)
    assert data.feature_shape == (28, 28) and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 20)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    images, labels = arrays["t10k"]
    assert rel_error(data.test.x, images / 255.0) < 1e-7 and torch.equal(
        data.test.y, torch.from_numpy(labels).long()
    )
    images, labels = arrays["train"]
    ids = [torch.round(split.x[:, 0, 0] * 255).long() for split in (data.train, data.val)]
    assert sorted(torch.cat(ids).tolist()) == list(range(60))  # disjoint and covering
    for split, index in zip((data.train, data.val), ids, strict=True):
        assert rel_error(split.x, images[index.numpy()] / 255.0) < 1e-7
        assert torch.equal(split.y, torch.from_numpy(labels[index.numpy()]).long())


def test_idx_accepts_the_dotted_mirror_names(idx_dir):
    root, _ = idx_dir()
    for path in list(root.iterdir()):
        path.rename(root / path.name.replace("-idx", ".idx"))
    assert len(load(f"idx:{root}").test) == 20


def test_idx_missing_directory_and_file(tmp_path, idx_dir):
    with pytest.raises(DataError, match="not a directory"):
        load(f"idx:{tmp_path / 'nowhere'}")
    root, _ = idx_dir(skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[\.gz\].*as published"):
        load(f"idx:{root}")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_magic_type_code_and_truncation(tmp_path, gz):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    cases = {
        b"\x12\x34" + good[2:]: "bad IDX magic 0x1234",
        good[:2] + b"\x07" + good[3:]: "bad IDX magic 0x00000703",
        good[:-1]: r"39 bytes, but its header \(dimensions \(2, 3, 4\), type uint8\) needs 40",
        good + b"\0": "41 bytes",
        good[:9]: "truncated IDX header",
        b"\0": "bad IDX magic",
    }
    for data, message in cases.items():
        with pytest.raises(DataError, match=message):
            read_idx(write(tmp_path / "f", data, gz))


def test_idx_corrupt_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    with pytest.raises(DataError, match="gzip"):
        read_idx(write(tmp_path / "f.gz", data[: len(data) // 2]))


def test_idx_wrong_dims_and_count_mismatch(idx_dir):
    flat = idx_bytes(np.zeros((60, 784), np.uint8))
    root, _ = idx_dir(**{"train-images-idx3-ubyte": flat})
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has dimensions \(60, 784\).*3"):
        load(f"idx:{root}")
    root, _ = idx_dir(**{"train-labels-idx1-ubyte": idx_bytes(np.arange(59, dtype=np.uint8) % 10)})
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte has 60 samples but .*train-labels-idx1-ubyte has 59"
    ):
        load(f"idx:{root}")


def test_idx_label_out_of_range_names_file_and_index(idx_dir):
    labels = np.arange(60, dtype=np.uint8) % 10
    labels[7] = 12
    root, _ = idx_dir(**{"train-labels-idx1-ubyte": idx_bytes(labels)})
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\[7\] is 12; with num_classes=10"):
        load(f"idx:{root}", num_classes=10)
    with pytest.raises(DataError, match=r"classes \[10, 11\] never appear"):
        load(f"idx:{root}")


# ---------------------------------------------------------------- CSV


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, row)) for row in rows)]) + "\n")
    return path


@pytest.fixture
def table():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(50, 3))
    labels = rng.permutation(np.arange(50) % 4)
    return features, labels


def test_csv_values_match_numpy_loadtxt(tmp_path, table):
    features, labels = table
    rows = [[*f[:2], int(y), f[2]] for f, y in zip(features, labels, strict=True)]
    path = write_csv(tmp_path / "d.csv", ["a", "b", "label", "c"], rows)
    data = load(f"csv:{path}", val_fraction=0, test_fraction=0)
    reference = np.loadtxt(path, delimiter=",", skiprows=1)
    assert data.feature_shape == (3,) and data.num_classes == 4 and len(data.val) == len(data.test) == 0
    assert rel_error(data.train.x, reference[:, [0, 1, 3]]) < 1e-7
    assert torch.equal(data.train.y, torch.from_numpy(reference[:, 2]).long())
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64


def test_csv_splits_are_seeded_disjoint_and_covering(tmp_path, table):
    features, labels = table
    path = write_csv(
        tmp_path / "d.csv",
        ["id", "x", "target"],
        [[i, f[0], y] for i, (f, y) in enumerate(zip(features, labels, strict=True))],
    )
    data = load(f"csv:{path}", label="target", seed=4)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 10)  # 20% of 50, then 10% of 40
    ids = [split.x[:, 0].long() for split in (data.train, data.val, data.test)]
    assert sorted(torch.cat(ids).tolist()) == list(range(50))
    for split, index in zip((data.train, data.val, data.test), ids, strict=True):
        assert torch.equal(split.y, torch.from_numpy(labels[index.numpy()]))
        assert torch.all(index[1:] > index[:-1])  # carved parts keep the file's order
    again, other = load(f"csv:{path}", label="target", seed=4), load(f"csv:{path}", label="target", seed=5)
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.val.x, data.val.x)
    assert not torch.equal(other.test.x, data.test.x)


def test_csv_quotes_blank_lines_spaces_and_bom(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('\ufeff"a", b ,label\n\n" 1.5",2e3, 1\n-0.25,"7",0\n\n', encoding="utf-8")
    data = load(f"csv:{path}", val_fraction=0, test_fraction=0)
    assert torch.equal(data.train.x, torch.tensor([[1.5, 2000.0], [-0.25, 7.0]]))
    assert torch.equal(data.train.y, torch.tensor([1, 0]))


CSV_ERRORS = [
    ("a,label\n1,0\nabc,1\n", r"d\.csv, line 3, column 'a': 'abc' is not a number"),
    ("a,b,label\n1,2,0\n3,,1\n", r"d\.csv, line 3, column 'b': missing value"),
    ("a,label\n1,0\n\n2, \n", r"d\.csv, line 4, column 'label': missing value"),
    ("a,label\n1,0\n2,1,3\n", r"d\.csv, line 3: 3 fields, but the header has 2"),
    ("a,label\n1,0\nnan,1\n", r"d\.csv, line 3, column 'a' is nan; features must be finite"),
    ("a,b,label\n1,2,0\n3,-inf,1\n", r"d\.csv, line 3, column 'b' is -inf; features must be finite"),
    ("a,label\n1,0\n1e39,1\n", r"line 3, column 'a' is 1e\+39; beyond float32's range"),
    ("a,label\n1,0\n2,2.5\n", r"d\.csv, line 3, column 'label' is 2\.5; labels must be integers"),
    ("a,label\n1,0\n2,-1\n3,1\n", r"d\.csv, line 3, column 'label' is -1; labels must be integers"),
    ("a,label\n1,0\n2,inf\n", r"line 3, column 'label' is inf"),
    ("a,label\n1,1\n2,2\n", r"labels run 0\.\.2 but classes \[0\] never appear.*subtract 1"),
    ("a,label\n1,0\n2,0\n", "every label is 0"),
    ("a,lable\n1,0\n", r"no label column 'label' \(did you mean 'lable'\?\); columns: a, lable"),
    ("a,a,label\n1,2,0\n", "header names column 'a' twice"),
    ("a,,label\n1,2,0\n", "header column 2 has no name"),
    ("label\n0\n1\n", "only the label column"),
    ("a,label\n", "is empty: no samples"),
    ("", "is empty; expected a header row"),
]


@pytest.mark.parametrize(("text", "message"), CSV_ERRORS)
def test_csv_errors_name_file_line_and_column(tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load(f"csv:{tmp_path / 'd.csv'}")


def test_csv_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load(f"csv:{tmp_path / 'none.csv'}")
    (tmp_path / "d.csv").write_bytes(b"a,label\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="cannot be read as UTF-8 CSV"):
        load(f"csv:{tmp_path / 'd.csv'}")


def test_num_classes_beyond_torchs_sizes_is_a_data_error():
    # found by the config fuzzer: num_classes = 2**70 loaded, then the model's output layer was a
    # TypeError from torch.empty ("Overflow when unpacking long long")
    with pytest.raises(
        DataError, match=r"num_classes must be an integer below 2\*\*63 .*; got 1180591620717411303424"
    ):
        load("digits", num_classes=2**70)


def test_num_classes_allows_empty_classes(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[0.5, 1], [1.5, 3], [2.5, 1]])
    data = load(f"csv:{path}", num_classes=5, val_fraction=0, test_fraction=0)
    assert data.num_classes == 5 and torch.equal(data.train.y, torch.tensor([1, 3, 1]))


# ------------------------------------------------ hypothesis: loads or raises DataError, nothing else

PROPERTY = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CELLS = st.one_of(
    st.integers(-3, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "1e39", "2.5", "-0", '"1"', '"', "1,2", "x", "\r", "0x1", "1_0"]),
    st.text(max_size=4),
)


def load_or_data_error(path, **options):
    try:
        data = load(f"csv:{path}", **options)
    except DataError:
        return None
    assert (
        isinstance(data, Dataset)
        and data.train.x.dtype == torch.float32
        and data.train.y.dtype == torch.int64
    )
    assert torch.isfinite(data.train.x).all() and int(data.train.y.max()) < data.num_classes
    return data


@PROPERTY
@given(text=st.text(max_size=200))
def test_any_text_loads_or_raises_data_error(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    load_or_data_error(path)


@PROPERTY
@given(data=st.binary(max_size=200))
def test_any_bytes_load_or_raise_data_error(tmp_path, data):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,label\n" + data)
    load_or_data_error(path)


@st.composite
def tables(draw):
    """A header and rows that mostly load, then up to three cells replaced by anything."""
    names = st.sampled_from(["a", "b", "label", "", " c"])
    header = draw(st.one_of(st.just(["a", "label", "b"]), st.lists(names, min_size=1, max_size=4)))
    numbers = st.one_of(st.integers(-5, 5).map(str), st.floats(-1e6, 1e6).map(repr))
    rows = [
        [str(i % 3) if name == "label" else draw(numbers) for name in header]
        for i in range(draw(st.integers(0, 10)))
    ]
    for _ in range(draw(st.integers(0, 3)) if rows else 0):
        row = draw(st.sampled_from(rows))
        row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
    return [header, *rows]


@PROPERTY
@given(table=tables())
def test_any_table_loads_or_raises_data_error(tmp_path, table):
    path = tmp_path / "d.csv"
    path.write_text("\n".join(",".join(row) for row in table), encoding="utf-8", errors="surrogatepass")
    load_or_data_error(path, val_fraction=0.3)


@PROPERTY
@given(
    values=st.lists(
        st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=2, max_size=2),
        min_size=1,
        max_size=10,
    ),
    k=st.integers(2, 4),
)
def test_any_well_formed_table_loads_exactly(tmp_path, values, k):
    labels = [i % k for i in range(len(values) + k)]
    features = values + [[0.0, 0.0]] * k  # every class appears
    path = write_csv(
        tmp_path / "d.csv",
        ["a", "label", "b"],
        [[repr(f[0]), y, repr(f[1])] for f, y in zip(features, labels, strict=True)],
    )
    data = load_or_data_error(path, val_fraction=0, test_fraction=0)
    assert data is not None and data.num_classes == k
    assert torch.equal(data.train.x, torch.tensor(features, dtype=torch.float32))
    assert torch.equal(data.train.y, torch.tensor(labels))


# ---------------------------------------------------------------- NPZ


def arrays(rng, n, shape=(5,), k=3):
    return rng.normal(size=(n, *shape)), rng.permutation(np.arange(n) % k)


def test_npz_plain_layout(tmp_path):
    x, y = arrays(np.random.default_rng(0), 40, (2, 3))
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.float64))  # 3.0 is a fine label
    data = load(f"npz:{tmp_path / 'd.npz'}", val_fraction=0, test_fraction=0)
    assert data.feature_shape == (2, 3) and data.num_classes == 3
    assert rel_error(data.train.x, x) < 1e-7 and torch.equal(data.train.y, torch.from_numpy(y))


def test_npz_split_layout_keeps_the_stored_splits(tmp_path):
    rng = np.random.default_rng(1)
    (xt, yt), (xv, yv), (xs, ys) = arrays(rng, 30), arrays(rng, 6), arrays(rng, 9)
    np.savez_compressed(
        tmp_path / "d.npz", x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys, extra=xs
    )
    data = load(f"npz:{tmp_path / 'd.npz'}")
    for split, (x, y) in zip((data.train, data.val, data.test), ((xt, yt), (xv, yv), (xs, ys)), strict=True):
        assert rel_error(split.x, x) < 1e-7 and torch.equal(split.y, torch.from_numpy(y))
    np.savez(tmp_path / "e.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    data = load(f"npz:{tmp_path / 'e.npz'}", val_fraction=0.2)
    assert (len(data.train), len(data.val)) == (24, 6) and rel_error(data.test.x, xs) < 1e-7


def npz_error(tmp_path, message, **stored):
    np.savez(tmp_path / "d.npz", **stored)
    with pytest.raises(DataError, match=message):
        load(f"npz:{tmp_path / 'd.npz'}")


def test_npz_layout_errors(tmp_path):
    x, y = arrays(np.random.default_rng(2), 12)
    npz_error(tmp_path, "d.npz has x but no y", x=x)
    npz_error(tmp_path, "has x_test but no y_test", x_train=x, y_train=y, x_test=x)
    npz_error(tmp_path, "holds both", x=x, y=y, x_train=x, y_train=y)
    npz_error(tmp_path, r"holds no arrays; expected x and y, or x_train and y_train")
    npz_error(
        tmp_path,
        r"x_test has feature shape \(4,\) but .*x_train has \(5,\)",
        x_train=x,
        y_train=y,
        x_test=x[:, :4],
        y_test=y,
    )


def test_npz_value_errors_name_array_and_index(tmp_path):
    x, y = arrays(np.random.default_rng(3), 12)
    bad = x.copy()
    bad[4, 2] = np.nan
    npz_error(tmp_path, r"d\.npz: x\[4, 2\] is nan; features must be finite", x=bad, y=y)
    npz_error(tmp_path, r"x has 12 samples but .*y has 11 labels", x=x, y=y[:11])
    npz_error(tmp_path, r"y_train\[0\] is \d\.5; labels must be integers", x_train=x, y_train=y + 0.5)
    npz_error(tmp_path, r"y\[3\] is -2", x=x, y=np.where(np.arange(12) == 3, -2, y))
    npz_error(tmp_path, "x has dtype <U1; expected numbers", x=np.full((12, 2), "a"), y=y)
    npz_error(tmp_path, r"x has shape \(12,\); expected \(samples, features", x=x[:, 0], y=y)
    npz_error(tmp_path, r"y has shape \(12, 1\); expected \(samples,\)", x=x, y=y[:, None])
    npz_error(tmp_path, "x is empty", x=x[:0], y=y[:0])


def test_npz_refuses_pickles_and_non_archives(tmp_path):
    x, y = arrays(np.random.default_rng(4), 12)
    npz_error(tmp_path, "pickled object array, refused", x=x.astype(object), y=y)
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": x, "y": y}))
    with pytest.raises(DataError, match="numpy would read it as a pickle, refused"):
        load(f"npz:{tmp_path / 'p.npz'}")
    np.save(tmp_path / "a.npy", x)
    with pytest.raises(DataError, match=r"single array \(\.npy\)"):
        load(f"npz:{tmp_path / 'a.npy'}")
    np.savez(tmp_path / "z.npz", x=x, y=y)
    (tmp_path / "t.npz").write_bytes((tmp_path / "z.npz").read_bytes()[:-30])
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load(f"npz:{tmp_path / 't.npz'}")
    with pytest.raises(DataError, match="not found"):
        load(f"npz:{tmp_path / 'none.npz'}")


# ---------------------------------------------------------------- built-in sources


def test_mnist1d_is_generated_like_the_package_and_leaves_global_rngs_alone():
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(11)
    random.seed(11)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(11)
    random.seed(11)
    data = load("mnist1d", num_samples=200)
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    assert data.feature_shape == (40,) and data.num_classes == 10 and data.class_names == tuple("0123456789")
    assert (len(data.train) + len(data.val), len(data.test)) == (160, 40)
    args = get_dataset_args()
    args.num_samples = 200
    reference = make_dataset(args)
    assert rel_error(data.test.x, reference["x_test"]) < 1e-6
    assert torch.equal(data.test.y, torch.from_numpy(reference["y_test"]))
    other = load("mnist1d", num_samples=200, data_seed=1)
    assert not torch.equal(other.test.x, data.test.x)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_digits_matches_scikit_learn(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = load("digits", val_fraction=0, test_fraction=0)
    assert rel_error(data.train.x, bunch.data / 16) < 1e-7 and torch.equal(
        data.train.y, torch.from_numpy(bunch.target)
    )
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359) and len(digits) == 1797
    image = load("digits", image=True)
    assert image.feature_shape == (8, 8) and torch.equal(image.test.x.reshape(-1, 64), digits.test.x)


def test_split_works_with_a_data_loader(digits):
    batches = list(torch.utils.data.DataLoader(digits.test, batch_size=100))
    assert torch.equal(torch.cat([x for x, _ in batches]), digits.test.x)
    assert isinstance(digits.to("cpu").train, Split) and digits.to("cpu").num_classes == 10


# ---------------------------------------------------------------- names and options


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "mnst1d",
            {},
            r"unknown dataset 'mnst1d' \(did you mean 'mnist1d'\?\); valid: mnist1d, digits, idx:DIR",
        ),
        ("cvs:a.csv", {}, r"did you mean 'csv'"),
        ("csv", {}, "write it as 'csv:PATH'"),
        ("csv:", {}, "names no path"),
        ("digits:x", {}, "write it as 'digits'"),
        ("digits", {"imag": True}, r"takes no option 'imag' \(did you mean 'image'\?\); its options: image"),
        ("digits", {"val_fraction": 1.0}, r"val_fraction must be a finite number in \[0, 1\)"),
        ("digits", {"test_fraction": float("nan")}, "test_fraction"),
        ("digits", {"seed": -1}, "seed must be an integer >= 0"),
        ("digits", {"num_classes": 1}, "num_classes must be an integer >= 2"),
        ("digits", {"num_classes": 8}, r"digits y\[\d+\] is \d; with num_classes=8"),
        ("mnist1d", {"num_samples": 5}, "num_samples must be an integer >= 10"),
        ("mnist1d", {"data_seed": 2**32}, "data_seed must be below 2\\*\\*32"),
        (3, {}, "must be a string"),
    ],
)
def test_bad_names_and_options(name, options, message):
    with pytest.raises(DataError, match=message):
        load(name, **options)


def test_describe_lists_every_source():
    assert (
        [name for name, _ in describe()]
        == list(DATASETS)
        == ["mnist1d", "digits", "idx:DIR", "csv:PATH", "npz:PATH", "mnist", "fashion_mnist", "cifar10"]
    )
    assert all(len(text) > 20 for _, text in describe())


def test_no_training_samples_left(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[1, 0], [2, 1]])
    with pytest.raises(DataError, match="no training samples left"):
        load(f"csv:{path}", test_fraction=0.5, val_fraction=0.9)


# ---------------------------------------------------------------- standardize


def synthetic(rng, shape=(4,), n=(80, 20, 30), k=3):
    def split(size):
        return Split(torch.from_numpy(rng.normal(3.0, 2.0, (size, *shape))).float(), torch.arange(size) % k)

    return Dataset(split(n[0]), split(n[1]), split(n[2]), k, "synthetic")


def test_standardize_matches_scikit_learn_fitted_on_train():
    from sklearn.preprocessing import StandardScaler

    data = synthetic(np.random.default_rng(8))
    train_x = data.train.x.clone()
    train_x[:, 1] = 5.0  # a constant feature keeps std 1
    data = Dataset(Split(train_x, data.train.y), data.val, data.test, 3, "synthetic")
    scaled, stats = standardize(data)
    scaler = StandardScaler().fit(train_x.double().numpy())
    for ours, original in ((scaled.train, data.train), (scaled.val, data.val), (scaled.test, data.test)):
        assert rel_error(ours.x, scaler.transform(original.x.double().numpy())) < 1e-5
        assert ours.y is original.y
    assert rel_error(stats.mean, scaler.mean_) < 1e-6 and rel_error(stats.std, scaler.scale_) < 1e-6
    assert stats.std[1] == 1 and torch.equal(stats(data.test.x), scaled.test.x)


def test_standardize_ignores_validation_and_test():
    data = synthetic(np.random.default_rng(9), shape=(2, 3))
    planted = data.test.x.clone()
    planted[0] = 1e6
    outlier = Dataset(
        data.train, Split(data.val.x * 100, data.val.y), Split(planted, data.test.y), 3, "synthetic"
    )
    (_, stats), (_, stats_outlier) = standardize(data), standardize(outlier)
    assert torch.equal(stats.mean, stats_outlier.mean) and torch.equal(stats.std, stats_outlier.std)
    assert stats.mean.shape == (2, 3)
    assert rel_error(stats.mean, data.train.x.double().mean(0)) < 1e-6


def test_standardize_images_with_constant_pixels(digits):
    scaled, stats = standardize(load("digits", image=True))
    assert stats.std.shape == (8, 8) and stats.std[0, 0] == 1  # the corner pixel is always 0
    assert torch.isfinite(scaled.test.x).all()


# ---------------------------------------------------------------- images stored as their pixels


def pixel_dataset(shape, n=(200, 50), k=3, seed=0):
    """A dataset of uint8 images (channel c brighter by 60·c), as an image loader assembles it."""
    from gradwell.data.checks import Part
    from gradwell.data.splits import Source, assemble

    rng = np.random.default_rng(seed)

    def part(size, name):
        x = rng.integers(0, 120, (size, *shape), np.uint8)
        if len(shape) == 3:
            x += (60 * np.arange(shape[0], dtype=np.uint8)).reshape(-1, 1, 1)
        return Part(x, np.arange(size) % k, f"{name} x", f"{name} y", pixels=True)

    source = Source(train=part(n[0], "train"), test=part(n[1], "test"))
    return assemble("pixels", source, val_fraction=0.1, test_fraction=0.2, seed=0, num_classes=None)


def test_pixels_stay_bytes_and_decode_to_exactly_pixel_over_255():
    data = pixel_dataset((3, 4, 5))
    raw = data.train.stored
    assert raw.dtype == torch.uint8 and data.feature_shape == (3, 4, 5) and len(data.val) == 20
    assert torch.equal(data.train.x, raw.float() / 255) and data.train.x.dtype == torch.float32
    index = torch.tensor([4, 0, 7])
    x, y = data.train[index]  # only these are decoded
    assert torch.equal(x, data.train.x[index]) and torch.equal(y, data.train.y[index])
    assert data.train.select(index).stored.dtype == torch.uint8


@pytest.mark.parametrize("seed", range(4))
def test_rows_gathered_in_place_equal_a_copy(monkeypatch, seed):
    from gradwell.data import splits

    monkeypatch.setattr(splits, "BLOCK", 3)  # many blocks, and a short last one
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (40, 2, 2), np.uint8)
    rows = np.sort(rng.choice(40, size=int(rng.integers(1, 40)), replace=False))
    expected, owned = x[rows], x.copy()
    gathered = splits.gather_rows(owned, rows)
    assert np.array_equal(gathered, expected) and np.shares_memory(gathered, owned)
    read_only = x.copy()
    read_only.flags.writeable = False  # e.g. np.frombuffer of a file's bytes: copied, untouched
    assert np.array_equal(splits.gather_rows(read_only, rows), expected) and np.array_equal(read_only, x)


def float_copy(data):
    """The same dataset with its features decoded once, as float32 (the way they were held before)."""
    splits = {key: Split(getattr(data, key).x, getattr(data, key).y) for key in ("train", "val", "test")}
    return Dataset(**splits, num_classes=data.num_classes, name=data.name)


def test_per_channel_standardization_matches_float64_and_keeps_bytes():
    data = pixel_dataset((3, 4, 5))
    scaled, stats = standardize(data, per="channel")
    train = data.train.stored.double().numpy() / 255
    mean, std = train.mean((0, 2, 3), keepdims=True)[0], train.std((0, 2, 3), keepdims=True)[0]
    assert (
        stats.mean.shape == (3, 1, 1)
        and rel_error(stats.mean, mean) < 1e-6
        and rel_error(stats.std, std) < 1e-6
    )
    for key in ("train", "val", "test"):
        split = getattr(scaled, key)
        assert split.stored is getattr(data, key).stored  # folded into the decoding: no float copy
        reference = (getattr(data, key).stored.double().numpy() / 255 - mean) / std
        assert rel_error(split.x, reference) < 1e-5
    assert float(scaled.train.x.double().mean((0, 2, 3)).abs().max()) < 1e-5


def test_per_feature_standardization_of_pixels_equals_the_float_path():
    data = pixel_dataset((6, 6))
    (pixels, stats), (floats, float_stats) = standardize(data), standardize(float_copy(data))
    assert torch.equal(stats.mean, float_stats.mean) and torch.equal(stats.std, float_stats.std)
    for key in ("train", "val", "test"):
        assert torch.allclose(getattr(pixels, key).x, getattr(floats, key).x, rtol=1e-5, atol=1e-5)
    _, single = standardize(data, per="channel")  # one channel: one mean for every pixel
    assert single.mean.shape == (1, 1) and rel_error(single.mean, data.train.x.double().mean()) < 1e-6
    with pytest.raises(DataError, match="'pixel' is not known; valid: feature, channel"):
        standardize(data, per="pixel")


def test_standardization_statistics_do_not_depend_on_the_chunk(monkeypatch):
    from gradwell.data import scaling

    data = synthetic(np.random.default_rng(3), shape=(2, 3, 4), n=(101, 5, 5))  # float (C, H, W)
    whole = standardize(data, per="channel")[1]
    monkeypatch.setattr(scaling, "CHUNK", 7)
    chunked = standardize(data, per="channel")[1]
    assert rel_error(chunked.mean, whole.mean) < 1e-6 and rel_error(chunked.std, whole.std) < 1e-6
    reference = data.train.x.double().numpy().std(axis=(0, 2, 3), keepdims=True)[0]
    assert whole.std.shape == (2, 1, 1) and rel_error(whole.std, reference) < 1e-6


def test_training_on_pixels_equals_training_on_their_float_copy():
    from gradwell import models, optim
    from gradwell.train import fit
    from gradwell.train.loop import DeviceData

    data = standardize(pixel_dataset((1, 6, 6)), per="channel")[0]
    assert DeviceData.of(data, torch.device("cpu")).train.stored.dtype == torch.uint8
    histories, weights = [], []
    for dataset in (data, float_copy(data)):
        model = models.cnn((1, 6, 6), 3, [4], generator=torch.Generator().manual_seed(0))
        optimizer = optim.Nadam(model.parameters(), lr=0.01)
        history = fit(model, dataset, optimizer=optimizer, epochs=2, batch_size=32, progress=False)
        histories.append([{k: v for k, v in epoch.items() if k != "time"} for epoch in history.epochs])
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert histories[0] == histories[1] and torch.equal(*weights)  # the same floats, batch by batch


def test_config_standardizes_per_channel_for_a_cnn_and_per_feature_otherwise():
    from gradwell import build
    from gradwell import config as configs
    from gradwell.errors import ConfigError

    def loaded(model, **data):
        return build.load_data(
            configs.from_dict({"data": {"name": "digits", "image": True, **data}, "model": model})
        )

    cnn, mlp = loaded({"kind": "cnn"}), loaded({"kind": "mlp"})
    assert abs(float(cnn.train.x.mean())) < 1e-5 and float(cnn.train.x.mean(0).abs().max()) > 0.5
    assert float(mlp.train.x.mean(0).abs().max()) < 1e-5
    assert torch.equal(loaded({"kind": "mlp"}, standardize="channel").train.x, cnn.train.x)
    with pytest.raises(
        ConfigError, match=r"data\.standardize = 'pixel' is not valid; valid: true, false, 'feature'"
    ):
        loaded({"kind": "mlp"}, standardize="pixel")


# ---------------------------------------------------------------- split_by_classes


def test_split_by_classes_relabels_and_keeps_samples(digits):
    task_a, task_b = split_by_classes(digits, range(8))
    assert (task_a.num_classes, task_b.num_classes) == (8, 2) and task_b.class_names == ("8", "9")
    for key in ("train", "val", "test"):
        original, a, b = (getattr(d, key) for d in (digits, task_a, task_b))
        assert len(a) + len(b) == len(original)
        assert torch.equal(a.x, original.x[original.y < 8]) and torch.equal(a.y, original.y[original.y < 8])
        assert torch.equal(b.x[b.y == 0], original.x[original.y == 8])
        assert torch.equal(b.x[b.y == 1], original.x[original.y == 9])
    _, swapped = split_by_classes(digits, [0, 1], [9, 8])
    assert torch.equal(swapped.test.x[swapped.test.y == 0], digits.test.x[digits.test.y == 9])


def test_split_by_classes_limits_task_b_training(digits):
    _, small = split_by_classes(digits, range(8), limit_train=20, seed=1)
    _, again = split_by_classes(digits, range(8), limit_train=20, seed=1)
    _, other = split_by_classes(digits, range(8), limit_train=20, seed=2)
    _, full = split_by_classes(digits, range(8))
    assert len(small.train) == 20 and torch.equal(small.train.x, again.train.x)
    assert not torch.equal(small.train.x, other.train.x)
    assert len(small.test) == len(full.test)
    matches = (small.train.x[:, None] == full.train.x[None]).all(-1)
    assert (matches.sum(1) >= 1).all()  # a subset of B's training samples


@pytest.mark.parametrize(
    ("a", "b", "options", "message"),
    [
        ([0, 10], None, {}, r"classes_a has classes \[10\] that digits lacks; valid: 0\.\.9"),
        ([0, 1], [1, 2], {}, r"overlap on \[1\]"),
        ([0, 0], [1, 2], {}, "lists a class twice"),
        (range(9), None, {}, r"classes_b \[9\] must name at least 2 classes"),
        ([0, -1], None, {}, "classes_a entry must be an integer >= 0"),
        ([0, 1], [8, 9], {"limit_train": 10_000}, "limit_train=10000 exceeds the"),
        ([0, 1], [8, 9], {"limit_train": 0}, "limit_train must be an integer >= 1"),
    ],
)
def test_split_by_classes_errors(digits, a, b, options, message):
    with pytest.raises(DataError, match=message):
        split_by_classes(digits, a, b, **options)


def test_a_config_keeps_a_fixed_draw_of_its_training_and_validation_samples():
    from gradwell import build
    from gradwell import config as configs

    def loaded(**data):
        return build.load_data(configs.from_dict({"data": {"name": "digits", **data}}))

    whole, small = loaded(), loaded(train_samples=100, val_samples=10**6)
    assert (len(small.train), len(small.val), len(small.test)) == (100, len(whole.val), len(whole.test))
    kept = [int(i) for i in torch.cdist(small.train.x, whole.train.x).argmin(1)]
    assert kept == sorted(kept) and torch.equal(small.train.y, whole.train.y[kept])  # in their order
    assert torch.equal(loaded(train_samples=100).train.x, small.train.x)  # the same draw every time
    with pytest.raises(DataError, match="train_samples must be an integer >= 1; got 0"):
        loaded(train_samples=0)
