"""Image-folder readers: scanning, classes, transforms and their numbers, bad/empty/missing folders."""

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from da.data.domain import load_domain
from da.errors import UserError
from da.data.readers.folders import IMAGENET_MEAN, IMAGENET_STD, undecodable_files, with_transform

SHARED = Path(os.environ.get("DA_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DATA = SHARED / "data"

COLORS = {"bike": (255, 0, 128), "mug": (0, 64, 255)}


def solid(path, rgb, size=(40, 30), fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, fmt)


def make_tree(root):
    """office31/amazon: bike x3 (png), mug x2 (png) + one garbage .jpg; office31/dslr: class folders, no images."""
    base = root / "office31"
    for cls, rgb in COLORS.items():
        for i in range(3 if cls == "bike" else 2):
            solid(base / "amazon" / cls / f"{i}.png", rgb)
    (base / "amazon" / "mug" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (base / "amazon" / "notes.txt").write_text("ignored")
    (base / "dslr" / "bike").mkdir(parents=True)
    (base / "dslr" / "mug").mkdir(parents=True)
    return base


def test_scan_classes_labels_and_skip(tmp_path):
    make_tree(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = load_domain("office31/amazon", root=str(tmp_path), image_size=32, unrelated_option=True)["all"]
    assert d.classes == ["bike", "mug"]
    assert d.y.tolist() == [0, 0, 0, 1, 1] and len(d) == 5
    assert d.meta["skipped"] == 1 and d.meta["skipped_files"][0].endswith("broken.jpg")
    msgs = [str(x.message) for x in w if "unreadable" in str(x.message)]
    assert len(msgs) == 1 and "skipped 1 unreadable" in msgs[0] and "broken.jpg" in msgs[0]
    assert d.dataset is not None and not d.in_memory


def test_bad_image_error_mode_names_the_file(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(UserError, match=r"unreadable image '.*broken\.jpg'.*on_bad_image='skip'"):
        load_domain("office31/amazon", root=str(tmp_path), on_bad_image="error")
    with pytest.raises(ValueError, match="on_bad_image='ignore'"):
        load_domain("office31/amazon", root=str(tmp_path), on_bad_image="ignore")


@pytest.mark.filterwarnings("ignore:office31/amazon. skipped 1 unreadable")
def test_eval_transform_numbers(tmp_path):
    make_tree(tmp_path)
    d = load_domain("office31/amazon", root=str(tmp_path), image_size=16)["all"]
    x, y = d.dataset[0]
    assert x.shape == (3, 16, 16) and y == 0
    want = [(c / 255 - m) / s for c, m, s in zip(COLORS["bike"], IMAGENET_MEAN, IMAGENET_STD)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((16, 16), want[c]), atol=1e-5)
    x4, y4 = d.dataset[4]
    assert y4 == 1 and x4[2, 0, 0].item() == pytest.approx((1.0 - 0.406) / 0.225, abs=1e-5)
    grey = load_domain("office31/amazon", root=str(tmp_path), image_size=16, channels=1)["all"]
    xg, _ = grey.dataset[0]
    luma = int(Image.new("RGB", (1, 1), COLORS["bike"]).convert("L").getpixel((0, 0)))
    assert xg.shape == (1, 16, 16) and xg[0, 0, 0].item() == pytest.approx((luma / 255 - 0.449) / 0.226, abs=1e-5)


def test_with_transform_through_subsets_shares_files(tmp_path):
    base = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(3):
            (base / "dom" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(base / "dom" / cls / f"{i}.png")
    d = load_domain("imagefolder/dom", root=str(base), image_size=24)["all"]
    sub = d.subset([5, 1, 3])
    sub2 = sub.subset([2, 0])  # Subset of a Subset
    tr = with_transform(sub2.dataset, "train")
    inner = tr.dataset.dataset
    assert inner.kind == "train" and sub.dataset.dataset.kind == "eval"
    assert inner.files is d.dataset.files
    assert [tr[i][1] for i in range(2)] == [1, 1]  # items 3 and 5 -> class b
    torch.manual_seed(0)
    a = tr[0][0]
    torch.manual_seed(0)
    b = tr[0][0]
    torch.manual_seed(1)
    c = tr[0][0]
    assert a.shape == (3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    ev = with_transform(tr, "eval")
    assert torch.equal(ev[0][0], sub2.dataset[0][0])
    with pytest.raises(ValueError, match="transform kind 'test'"):
        with_transform(sub.dataset, "test")
    with pytest.raises(TypeError, match="no with_transform"):
        with_transform(torch.utils.data.TensorDataset(torch.zeros(2)), "train")


def test_decode_failure_after_header_check_is_loud_in_workers(tmp_path):
    base = tmp_path / "imgs"
    (base / "dom" / "a").mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(buf, "JPEG")
    (base / "dom" / "a" / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    solid(base / "dom" / "a" / "ok.png", (1, 2, 3))
    d = load_domain("imagefolder/dom", root=str(base), image_size=8)["all"]
    assert len(d) == 2 and d.meta["skipped"] == 0  # the header is fine
    with pytest.raises(UserError, match=r"cannot decode image '.*trunc\.jpg'") as err:
        d.dataset[1]
    assert err.value.skippable  # on_bad_image=skip (the default): the data module uses another image instead
    with pytest.raises(UserError, match=r"trunc\.jpg"):
        list(DataLoader(d.dataset, batch_size=1, num_workers=1))
    assert [Path(f).name for f in undecodable_files(d.dataset)] == ["trunc.jpg"]  # marked in the worker, seen here


@pytest.mark.filterwarnings("ignore:office31/amazon. skipped 1 unreadable")
def test_empty_and_missing_folders(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no images found in '.*office31/dslr'"):
        load_domain("office31/dslr", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"domain folder '.*webcam' of dataset 'office31' not found"):
        load_domain("office31/webcam", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"dataset 'pacs' not found.*domaingeneralization.*--data.root"):
        load_domain("pacs/photo", root=str(tmp_path))
    with pytest.raises(ValueError, match="did you mean 'Real_World'"):
        load_domain("officehome/real_world", root=str(tmp_path))


def test_alternative_layouts(tmp_path):
    solid(tmp_path / "OfficeHome" / "Real World" / "Chair" / "0.jpg", (9, 9, 9), fmt="JPEG")
    d = load_domain("officehome/Real_World", root=str(tmp_path))["all"]
    assert d.classes == ["Chair"] and d.name == "officehome/Real_World"
    solid(tmp_path / "office31" / "webcam" / "images" / "mug" / "0.jpg", (9, 9, 9), fmt="JPEG")
    w = load_domain("office31/webcam", root=str(tmp_path))["all"]
    assert w.classes == ["mug"] and len(w) == 1


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "office31").is_dir(), reason=f"shared data not found at {DATA}")
def test_shared_office31_amazon_lazy():
    d = load_domain("office31/amazon", root=str(DATA))["all"]
    assert len(d) == 2817 and d.num_classes == 31 and d.meta["skipped"] == 0
    assert d.classes[:3] == ["back_pack", "bike", "bike_helmet"] and d.classes[-1] == "trash_can"
    assert d.class_counts()[:5].tolist() == [92, 82, 72, 82, 36]
    x, y = d.dataset[0]  # one decode only
    assert x.shape == (3, 224, 224) and y == 0
