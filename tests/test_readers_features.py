"""Feature-file readers: npz / mat / csv / svmlight, label mapping, standardisation numbers, errors."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from da.data.domain import load_domain
from da.data.readers.features import read_feature_file

SHARED = Path(os.environ.get("DA_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DATA = SHARED / "data"

X = np.array([[1.0, 2.0, 0.0], [3.0, 6.0, 0.0], [5.0, 10.0, 0.0], [3.0, 4.0, 0.0]], dtype=np.float32)
Y = np.array([1, 2, 1, 3])


def test_npz_keys_and_label_mapping(tmp_path):
    np.savez(tmp_path / "src.npz", X=X, labels=Y)
    d = load_domain("features/src", root=str(tmp_path), image_size=99)  # foreign options are ignored
    assert set(d) == {"all"}
    a = d["all"]
    assert a.classes == ["1", "2", "3"] and a.y.tolist() == [0, 1, 0, 2]
    assert a.x.dtype == torch.float32 and torch.equal(a.x, torch.from_numpy(X))
    assert a.modality == "features" and a.name == "features/src"


def test_mat_v5_and_v73(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "caltech.mat", {"feas": X.astype(np.float64), "label": Y.reshape(-1, 1)})
    a = load_domain("features/caltech", root=str(tmp_path))["all"]
    assert torch.allclose(a.x, torch.from_numpy(X)) and a.y.tolist() == [0, 1, 0, 2]
    import h5py

    with h5py.File(tmp_path / "big.mat", "w") as f:  # v7.3 .mat files are HDF5
        f["fts"] = X.T  # MATLAB stores column-major
        f["labels"] = Y.reshape(1, -1)
    x, y = read_feature_file(tmp_path / "big.mat")
    assert np.array_equal(x, X) and y.tolist() == Y.tolist()


def test_csv_header_label_column_and_last_column(tmp_path):
    (tmp_path / "a.csv").write_text("label,f1,f2\ncat,1,2\ndog,3,4\ncat,5,6\n")
    a = load_domain("features/a", root=str(tmp_path))["all"]
    assert a.classes == ["cat", "dog"] and a.y.tolist() == [0, 1, 0]
    assert a.x.tolist() == [[1, 2], [3, 4], [5, 6]]
    (tmp_path / "b.csv").write_text("0.5,1.5,7\n2.5,3.5,9\n")
    b = load_domain("features/b", root=str(tmp_path))["all"]
    assert b.classes == ["7", "9"] and b.x.tolist() == [[0.5, 1.5], [2.5, 3.5]]
    (tmp_path / "c.csv").write_text("f1,f2,label\n1,x,0\n")
    with pytest.raises(ValueError, match=r"c.csv, line 2: non-numeric feature"):
        load_domain("features/c", root=str(tmp_path))


def test_svmlight_train_test_split_and_labels(tmp_path):
    (tmp_path / "books_train.svmlight").write_text("1 0:1 2:3\n-1 1:2\n")
    (tmp_path / "books_test.svmlight").write_text("-1 3:1\n")
    d = load_domain("features/books", root=str(tmp_path), n_features=5)
    assert set(d) == {"train", "test"}
    assert d["train"].classes == ["-1", "1"] and d["train"].y.tolist() == [1, 0] and d["test"].y.tolist() == [0]
    assert d["train"].x.tolist() == [[1, 0, 3, 0, 0], [0, 2, 0, 0, 0]]
    # the index base is decided from both files: the test file alone (no index 0) would look 1-based
    assert d["test"].x.tolist() == [[0, 0, 0, 1, 0]]
    (tmp_path / "kit_train.svmlight").write_text("1 1:1 3:2\n")
    (tmp_path / "kit_test.svmlight").write_text("-1 2:1\n")
    auto = load_domain("features/kit", root=str(tmp_path))  # no index 0 anywhere: 1-based (LIBSVM's convention)
    assert auto["train"].x.tolist() == [[1, 0, 2]] and auto["test"].x.tolist() == [[0, 1, 0]]
    zero = load_domain("features/kit", root=str(tmp_path), zero_based=True)
    assert zero["train"].x.tolist() == [[0, 1, 0, 2]]
    np.savez(tmp_path / "dvd_train.npz", x=X, y=Y)
    np.savez(tmp_path / "dvd_test.npz", x=X[:, :2], y=Y)
    with pytest.raises(ValueError, match="different dimensions.*n_features"):
        load_domain("features/dvd", root=str(tmp_path))


def test_standardize_zscore_fit_on_train_and_l2(tmp_path):
    np.savez(tmp_path / "d_train.npz", x=X, y=Y)
    np.savez(tmp_path / "d_test.npz", x=X[:2] + 1.0, y=Y[:2])
    d = load_domain("features/d", root=str(tmp_path), standardize="zscore")
    tr, te = d["train"].x, d["test"].x
    # column 0 of train: 1,3,5,3 -> mean 3, population std sqrt(2); column 2 is constant -> std 1 -> zeros
    assert tr[:, 0].tolist() == pytest.approx([-2 / 2 ** 0.5, 0.0, 2 / 2 ** 0.5, 0.0], abs=1e-6)
    assert tr[:, 2].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert te[0, 0].item() == pytest.approx((2.0 - 3.0) / 2 ** 0.5, abs=1e-6)  # train statistics on test
    l2 = load_domain("features/d", root=str(tmp_path), standardize="l2")["train"].x
    assert l2[0].tolist() == pytest.approx([1 / 5 ** 0.5, 2 / 5 ** 0.5, 0.0], abs=1e-6)
    assert torch.allclose(l2.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="standardize='minmax' must be one of none, zscore, l2"):
        load_domain("features/d", root=str(tmp_path), standardize="minmax")


def test_errors_missing_ambiguous_badkeys(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"feature file for domain 'nope' not found.*nope\.\{npz\|mat\|csv"):
        load_domain("features/nope", root=str(tmp_path))
    np.savez(tmp_path / "two.npz", x=X, y=Y)
    (tmp_path / "two.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="ambiguous feature files for 'two'.*two.npz, two.csv"):
        load_domain("features/two", root=str(tmp_path))
    np.savez(tmp_path / "keys.npz", data=X, y=Y)
    with pytest.raises(KeyError, match="no feature array; expected one of x, X, features, found \\['data', 'y'\\]"):
        load_domain("features/keys", root=str(tmp_path))
    np.savez(tmp_path / "nan.npz", x=np.array([[np.nan]]), y=np.array([0]))
    with pytest.raises(ValueError, match="NaN"):
        load_domain("features/nan", root=str(tmp_path))


def test_amazon_dann_layout_and_missing(tmp_path):
    folder = tmp_path / "text" / "amazon_reviews" / "dann_svmlight"
    folder.mkdir(parents=True)
    (folder / "dvd_train.svmlight").write_text("1 4999:2\n-1 0:1\n")
    (folder / "dvd_test.svmlight").write_text("1 1:1\n")
    d = load_domain("amazon_dann/dvd", root=str(tmp_path))
    assert d["train"].classes == ["negative", "positive"] and d["train"].y.tolist() == [1, 0]
    assert d["train"].x.shape == (2, 5000) and d["train"].x[0, 4999] == 2.0
    with pytest.raises(FileNotFoundError, match=r"Amazon DANN features \['books_train.svmlight'.*GRAAL-Research"):
        load_domain("amazon_dann/books", root=str(tmp_path))
    with pytest.raises(ValueError, match="did you mean 'kitchen'"):
        load_domain("amazon_dann/kitchens", root=str(tmp_path))


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "text" / "amazon_reviews").is_dir(), reason=f"shared data not found at {DATA}")
def test_shared_amazon_dann_books():
    d = load_domain("amazon_dann/books", root=str(DATA))
    assert d["train"].x.shape == (2000, 5000) and d["train"].class_counts().tolist() == [1000, 1000]
    assert len(d["test"]) == 4465
