"""Digit readers: IDX, USPS (h5 and LIBSVM bz2), JDA .mat, their errors; shared-data counts."""

import bz2
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from da.data.domain import load_domain
from da.data.readers.digits import read_idx

SHARED = Path(os.environ.get("DA_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not (DATA / "digits").is_dir(), reason=f"shared data not found at {DATA}")


def write_idx(path, arr, magic):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def make_mnist(root, n_train=6, n_test=4):
    folder = root / "digits" / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, n, (fi, fl) in (("train", n_train, ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")),
                               ("test", n_test, ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        write_idx(folder / fi, x, 2051)
        write_idx(folder / fl, y, 2049)
        out[split] = (x, y)
    return out


def test_read_idx_roundtrip_and_truncation(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", x, 2051)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), x)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 3, 4) + b"\0" * 10)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad.gz")


def test_mnist_from_idx_files(tmp_path):
    raw = make_mnist(tmp_path)
    d = load_domain("digits/mnist", root=str(tmp_path), image_size=28, whatever=3)
    assert set(d) == {"train", "test"}
    tr = d["train"]
    assert tr.x.shape == (6, 1, 28, 28) and tr.y.tolist() == [0, 1, 2, 3, 4, 5]
    want = (torch.from_numpy(raw["train"][0]).float() / 255 - 0.5) / 0.5
    assert torch.allclose(tr.x[:, 0], want)
    assert d["test"].x.shape == (4, 1, 28, 28)
    rgb = load_domain("digits/mnist", root=str(tmp_path), image_size=32, channels=3)["test"]
    assert rgb.x.shape == (4, 3, 32, 32)


def test_mnist_env_root(tmp_path, monkeypatch):
    make_mnist(tmp_path)
    monkeypatch.setenv("DA_DATA_ROOT", str(tmp_path))
    assert len(load_domain("digits/mnist")["train"]) == 6


def test_missing_mnist_says_what_where_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST \(train\) not found: looked in .*digits/mnist.*download=True"):
        load_domain("digits/mnist", root=str(tmp_path))


def test_usps_h5_and_default_size(tmp_path):
    import h5py

    folder = tmp_path / "digits" / "usps"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    data = {s: rng.random((n, 256), dtype=np.float32) for s, n in (("train", 5), ("test", 3))}
    with h5py.File(folder / "usps.h5", "w") as f:
        for s, x in data.items():
            f[f"{s}/data"] = x
            f[f"{s}/target"] = np.arange(len(x), dtype=np.int32) + 2
    d = load_domain("digits/usps", root=str(tmp_path), image_size=16)
    assert d["train"].y.tolist() == [2, 3, 4, 5, 6] and d["test"].y.tolist() == [2, 3, 4]
    assert torch.allclose(d["train"].x.view(5, 256), (torch.from_numpy(data["train"]) - 0.5) / 0.5)
    assert load_domain("digits/usps", root=str(tmp_path))["train"].x.shape == (5, 1, 28, 28)  # default 28


def test_usps_libsvm_bz2_labels_are_digit_plus_one(tmp_path):
    from da.data.readers.digits import _usps_libsvm

    lines = ["1 1:1 2:-1 256:0\n", "10 3:0.5\n"]
    path = tmp_path / "usps.t.bz2"
    with bz2.open(path, "wt") as f:
        f.writelines(lines)
    p, y = _usps_libsvm(path)
    assert y.tolist() == [0, 9]
    flat = p.view(2, 256)
    assert flat[0, 0] == 1.0 and flat[0, 1] == 0.0 and flat[0, 255] == 0.5 and flat[0, 2] == 0.5  # (v + 1) / 2
    assert flat[1, 2] == 0.75


def test_svhn_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SVHN \(train\).*download=True.*train_32x32.mat"):
        load_domain("digits/svhn", root=str(tmp_path))


def test_jda_mat_labels_minus_one(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "digits" / "mnist_usps_jda"
    folder.mkdir(parents=True)
    fts = np.linspace(0, 1, 3 * 256).reshape(3, 256)
    savemat(folder / "USPS.mat", {"fts": fts, "labels": np.array([[1], [10], [5]], dtype=np.uint8)})
    d = load_domain("jda/usps", root=str(tmp_path))
    assert set(d) == {"all"}
    a = d["all"]
    assert a.y.tolist() == [0, 9, 4] and a.x.shape == (3, 1, 16, 16) and a.name == "jda/usps"
    assert a.x[0, 0, 0, 1].item() == pytest.approx((fts[0, 1] - 0.5) / 0.5, abs=1e-6)  # row-major
    assert a.x[2, 0, 15, 15].item() == pytest.approx(1.0)
    savemat(folder / "MNIST.mat", {"X": fts, "labels": np.array([[1], [2], [3]])})
    with pytest.raises(ValueError, match="expected variables 'fts' and 'labels'"):
        load_domain("jda/mnist", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="JDA MNIST subset"):
        load_domain("jda/mnist", root=str(tmp_path / "nowhere"))


def test_unknown_digit_domain():
    with pytest.raises(ValueError, match="did you mean 'mnist'"):
        load_domain("digits/mnsit")


@pytest.mark.data
@needs_data
def test_shared_jda_counts():
    m = load_domain("jda/mnist", root=str(DATA))["all"]
    u = load_domain("jda/usps", root=str(DATA))["all"]
    assert m.class_counts().tolist() == [196, 227, 207, 202, 196, 179, 191, 206, 195, 201]
    assert u.class_counts().tolist() == [352, 241, 165, 166, 166, 126, 139, 172, 129, 144]
    assert m.x.shape == (2000, 1, 16, 16) and u.x.shape == (1800, 1, 16, 16)


@pytest.mark.data
@needs_data
def test_shared_usps_and_mnist_splits():
    u = load_domain("digits/usps", root=str(DATA))
    assert (len(u["train"]), len(u["test"])) == (7291, 2007)
    assert u["train"].class_counts().tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    m = load_domain("digits/mnist", root=str(DATA))
    assert (len(m["train"]), len(m["test"])) == (60000, 10000)
    assert m["test"].class_counts().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the README's training-pixel statistics: mean 0.1307 -> normalised (0.1307 - 0.5) / 0.5
    assert m["train"].x.mean().item() == pytest.approx((0.1307 - 0.5) / 0.5, abs=1e-3)
