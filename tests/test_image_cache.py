"""The decoded-image cache of image folders: hit, miss, invalidation, and the same eval inputs as decoding."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from da.data.domain import load_domain
from da.data.readers.folders import with_transform
from da.data.readers.image_cache import cache_side


def _tree(root, n_per_class=3, size=(40, 30)):
    """imagefolder root/dom/<class>/<i>.png: smooth colour gradients (crops and resizes change the pixels)."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(n_per_class):
            h, w = size[1], size[0]
            base = rng.integers(0, 255, 3)
            ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
            arr = (base[None, None, :] * ramp + 40 * rng.random((h, w, 3))).clip(0, 255).astype(np.uint8)
            path = root / "dom" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


def _load(root, cache, **kw):
    opts = {"image_size": 16, "cache_decoded": cache, "cache_dir": str(root / "cache"), **kw}
    return load_domain("imagefolder/dom", root=str(root), **opts)["all"]


def test_miss_then_hit_and_same_eval_inputs(tmp_path):
    _tree(tmp_path)
    first = _load(tmp_path, True)
    info = first.meta["image_cache"]
    assert info["cache_hit"] is False and os.path.isfile(info["cache_path"]) and info["cache_side"] == 18
    assert first.dataset.images.shape == (6, 3, 18, 18) and first.dataset.images.dtype == torch.uint8
    second = _load(tmp_path, True)
    assert second.meta["image_cache"]["cache_hit"] is True
    assert second.meta["image_cache"]["cache_path"] == info["cache_path"]
    assert torch.equal(second.dataset.images, first.dataset.images)
    plain = _load(tmp_path, False)
    assert "image_cache" not in plain.meta and plain.dataset.images is None
    for i in range(len(plain)):  # eval: Resize(18) + CenterCrop(16) either way, so the same tensor
        x_cached, y_cached = second.dataset[i]
        x_plain, y_plain = plain.dataset[i]
        assert y_cached == y_plain and x_cached.shape == x_plain.shape == (3, 16, 16)
        assert torch.allclose(x_cached, x_plain, atol=1e-5)


def test_train_transform_runs_on_the_tensors(tmp_path):
    _tree(tmp_path)
    d = _load(tmp_path, True)
    train = with_transform(d.dataset, "train")
    assert train.images is d.dataset.images  # a copy of the dataset shares the cache
    torch.manual_seed(0)
    a = train[0][0]
    torch.manual_seed(0)
    b = train[0][0]
    torch.manual_seed(1)
    c = train[0][0]
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)  # random crops from the seed
    assert -2.2 < float(a.min()) and float(a.max()) < 2.7  # ImageNet-normalised [0, 1] values


def test_changed_folder_or_size_is_a_miss(tmp_path):
    _tree(tmp_path)
    path0 = _load(tmp_path, True).meta["image_cache"]["cache_path"]
    f = tmp_path / "dom" / "cat" / "0.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: maybe a new image under the same name
    touched = _load(tmp_path, True)
    assert touched.meta["image_cache"]["cache_hit"] is False
    assert touched.meta["image_cache"]["cache_path"] != path0
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "dom" / "dog" / "9.png")  # a new file
    grown = _load(tmp_path, True)
    assert grown.meta["image_cache"]["cache_hit"] is False and len(grown) == 7
    assert grown.dataset.images.shape[0] == 7
    assert _load(tmp_path, True).meta["image_cache"]["cache_hit"] is True
    resized = _load(tmp_path, True, image_size=24)
    assert resized.meta["image_cache"]["cache_hit"] is False
    assert resized.dataset.images.shape == (7, 3, cache_side(24), cache_side(24))
    grey = _load(tmp_path, True, channels=1)
    assert grey.meta["image_cache"]["cache_hit"] is False and grey.dataset[0][0].shape == (1, 16, 16)


def test_env_cache_dir_and_a_corrupt_file_is_rebuilt(tmp_path, monkeypatch):
    _tree(tmp_path, n_per_class=1)
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "envcache"))
    d = load_domain("imagefolder/dom", root=str(tmp_path), image_size=16, cache_decoded=True)["all"]
    path = d.meta["image_cache"]["cache_path"]
    assert path.startswith(str(tmp_path / "envcache" / "images"))
    with open(path, "wb") as fh:
        fh.write(b"truncated")
    again = load_domain("imagefolder/dom", root=str(tmp_path), image_size=16, cache_decoded=True)["all"]
    assert again.meta["image_cache"]["cache_hit"] is False and torch.equal(again.dataset.images, d.dataset.images)
    with pytest.raises(ValueError, match="uint8"):
        type(d.dataset)(d.dataset.files, d.dataset.labels, d.dataset.classes, images=d.dataset.images.float())
