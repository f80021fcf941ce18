"""Digit images held as tensors: datasets ``digits`` (MNIST, USPS, SVHN) and ``jda`` (JDA MNIST/USPS subsets),
and the formatting shared with ``builtin``.

Every digit image is first brought to ``[0, 1]`` (ink = 1, background = 0), resized to ``image_size`` and
converted to ``channels``, then normalised with ``DIGIT_MEAN = 0.5`` and ``DIGIT_STD = 0.5`` per channel::

    x = (p - 0.5) / 0.5          # p in [0, 1]  ->  x in [-1, 1]

(one fixed pair for every digit dataset, so that a source and a target that share a size also share the
input scale; the per-dataset MNIST constants 0.1307 / 0.3081 would make MNIST and USPS differ in scale).
"""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from da.data.domain import Domain, register_dataset
from da.data.roots import missing_data_error, resolve_root
from da.errors import unknown_name

DIGIT_MEAN = 0.5
DIGIT_STD = 0.5


def format_images(p: torch.Tensor, image_size: Optional[int] = None, channels: Optional[int] = None) -> torch.Tensor:
    """``(n, C, H, W)`` pixels in ``[0, 1]`` -> resized, channel-converted, normalised float32.

    Args:
        p: pixels in ``[0, 1]`` (any float or uint8 dtype; uint8 is divided by 255).
        image_size: square output size (bilinear, ``antialias=True`` when shrinking); ``None`` keeps the size.
        channels: 1 (RGB -> luma ``0.299 R + 0.587 G + 0.114 B``) or 3 (grey repeated); ``None`` keeps it.
    """
    if p.dtype == torch.uint8:
        p = p.float() / 255.0
    p = p.float()
    if p.dim() != 4:
        raise ValueError(f"expected images of shape (n, C, H, W), got {tuple(p.shape)}")
    if image_size is not None:
        image_size = int(image_size)
        if image_size < 1:
            raise ValueError(f"image_size={image_size} must be a positive int (e.g. 16 or 28) or None")
        if tuple(p.shape[-2:]) != (image_size, image_size):
            shrink = image_size < max(p.shape[-2:])
            p = F.interpolate(p, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=shrink).clamp_(0.0, 1.0)
    if channels is not None:
        channels = int(channels)
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 (greyscale), 3 (RGB) or None (keep)")
        c = p.shape[1]
        if c != channels:
            if c == 1:
                p = p.repeat(1, 3, 1, 1)
            elif c == 3:
                w = torch.tensor([0.299, 0.587, 0.114], dtype=p.dtype).view(1, 3, 1, 1)
                p = (p * w).sum(1, keepdim=True)
            else:
                raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return ((p - DIGIT_MEAN) / DIGIT_STD).contiguous()


DIGIT_CLASSES = [str(i) for i in range(10)]


# --------------------------------------------------------------------------------------------------- readers

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/ (or torchvision download=True)"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd if it ends in ``.gz``): big-endian header ``0 0 dtype ndim`` + ``ndim`` int32 sizes.

    MNIST images have magic 2051 (uint8, 3 dims), labels 2049 (uint8, 1 dim).
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex() if raw else 'empty'})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    want = int(np.prod(dims))
    if len(raw) - offset != want:
        raise ValueError(f"{path}: header says {tuple(dims.tolist())} = {want} bytes, file holds {len(raw) - offset} "
                         f"(truncated or corrupt download: delete it and fetch it again)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(tuple(dims.tolist()))


def _torchvision_split(cls_name: str, root: Path, download: bool, **kw: Any):
    """``torchvision.datasets.<cls_name>(root, download=download, **kw)``."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    return cls(str(root), download=download, **kw)


def _mnist_pixels(root: Path, split: str, download: bool) -> tuple:
    folder = root / "digits" / "mnist"
    img_f, lab_f = (folder / f for f in MNIST_FILES[split])
    if img_f.exists() and lab_f.exists():
        x, y = read_idx(img_f), read_idx(lab_f)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"MNIST files in {folder} disagree: images {x.shape}, labels {y.shape}")
        return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))
    tv_root = root / "digits"
    if download or (tv_root / "MNIST" / "raw").is_dir():
        ds = _torchvision_split("MNIST", tv_root, download, train=(split == "train"))
        return ds.data.unsqueeze(1).to(torch.uint8), ds.targets.to(torch.long)
    raise missing_data_error(
        f"MNIST ({split})", folder,
        f"put the four official files {MNIST_FILES['train'] + MNIST_FILES['test']} there (from {MNIST_URL}), "
        f"or set the option download=True (torchvision downloads to {tv_root / 'MNIST'}), "
        f"or point --data.root at a folder that has digits/mnist/ (e.g. ../shared/data)")


def _usps_pixels(root: Path, split: str, download: bool) -> tuple:
    folder = root / "digits" / "usps"
    h5 = folder / "usps.h5"
    if h5.exists():
        import h5py

        with h5py.File(h5, "r") as f:
            x = np.asarray(f[split]["data"], dtype=np.float32)
            y = np.asarray(f[split]["target"]).astype(np.int64)
        p = torch.from_numpy(x).view(-1, 1, 16, 16).clamp_(0.0, 1.0)  # [0, 1], labels 0..9 (= digit)
        return p, torch.from_numpy(y)
    tv_file = folder / ("usps.bz2" if split == "train" else "usps.t.bz2")
    if tv_file.exists() and not download:
        return _usps_libsvm(tv_file)
    if download:
        ds = _torchvision_split("USPS", folder, True, train=(split == "train"))
        return torch.from_numpy(np.asarray(ds.data)).unsqueeze(1).to(torch.uint8), torch.as_tensor(ds.targets)
    raise missing_data_error(
        f"USPS ({split})", folder,
        "put usps.h5 (train/test, e.g. from the 'Learning From Data' course repository) or torchvision's "
        "usps.bz2 / usps.t.bz2 (https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps) there, "
        "or set the option download=True, or point --data.root at a folder that has digits/usps/ (e.g. ../shared/data)")


def _usps_libsvm(path: Path) -> tuple:
    """torchvision's USPS file: bzip2'd LIBSVM lines ``label 1:v ... 256:v``, v in [-1, 1], label = digit + 1."""
    with bz2.open(path, "rt") as fh:
        rows = [line.split() for line in fh if line.strip()]
    y = np.array([int(float(r[0])) - 1 for r in rows], dtype=np.int64)
    x = np.zeros((len(rows), 256), dtype=np.float32)
    for i, r in enumerate(rows):
        for item in r[1:]:
            k, v = item.split(":")
            x[i, int(k) - 1] = float(v)
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"{path}: labels must be 1..10 (digit + 1), found {y.min() + 1}..{y.max() + 1}")
    p = torch.from_numpy((x + 1.0) / 2.0).view(-1, 1, 16, 16).clamp_(0.0, 1.0)
    return p, torch.from_numpy(y)


def _svhn_pixels(root: Path, split: str, download: bool) -> tuple:
    folder = root / "digits" / "svhn"
    f = folder / f"{split}_32x32.mat"
    if not f.exists() and not download:
        raise missing_data_error(
            f"SVHN ({split})", folder,
            f"set the option download=True (torchvision fetches {f.name} from http://ufldl.stanford.edu/housenumbers/ "
            f"into {folder}), or copy {f.name} there, or point --data.root at a folder that has digits/svhn/")
    ds = _torchvision_split("SVHN", folder, download, split=split)
    return torch.from_numpy(np.asarray(ds.data)).to(torch.uint8), torch.from_numpy(np.asarray(ds.labels, np.int64))


_DIGIT_READERS = {"mnist": _mnist_pixels, "usps": _usps_pixels, "svhn": _svhn_pixels}


@register_dataset("digits", domains=("mnist", "usps", "svhn"), modality="image",
                  description="MNIST, USPS and SVHN with their official train/test splits",
                  download_hint="local files under <root>/digits/, or download=True (torchvision)")
def load_mnist_usps_svhn(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = 28,
                channels: Optional[int] = None, download: bool = False, **_: Any) -> Dict[str, Domain]:
    """MNIST / USPS / SVHN as ``{"train", "test"}`` tensors, resized to ``image_size`` (default 28).

    Pixels in ``[0, 1]`` then ``(p - 0.5) / 0.5``. Channels stay native (MNIST/USPS 1, SVHN 3) unless
    ``channels`` is given (SVHN -> 1 by luma, MNIST/USPS -> 3 by repetition).
    """
    if domain not in _DIGIT_READERS:
        raise unknown_name("domain of dataset 'digits'", domain, _DIGIT_READERS)
    base = resolve_root(root)
    size = 28 if image_size is None else int(image_size)
    out = {}
    for split in ("train", "test"):
        p, y = _DIGIT_READERS[domain](base, split, bool(download))
        if y.min() < 0 or y.max() > 9:
            raise ValueError(f"digits/{domain} ({split}): labels must be 0..9, found {int(y.min())}..{int(y.max())}")
        out[split] = Domain(f"digits/{domain}", list(DIGIT_CLASSES), y, x=format_images(p, size, channels),
                            modality="image",
                            meta={"root": str(base), "normalization": {"mean": DIGIT_MEAN, "std": DIGIT_STD}})
    return out


JDA_FILES = {"mnist": "MNIST.mat", "usps": "USPS.mat"}


def read_jda_mat(path: Path) -> tuple:
    """A JDA ``.mat``: ``fts`` ``(n, 256)`` in [0, 1] (16x16 row-major), ``labels`` ``(n, 1)`` = digit + 1."""
    from scipy.io import loadmat

    m = loadmat(str(path))
    if "fts" not in m or "labels" not in m:
        keys = sorted(k for k in m if not k.startswith("__"))
        raise ValueError(f"{path}: expected variables 'fts' and 'labels' (JDA format), found {keys}")
    x = np.asarray(m["fts"], dtype=np.float32)
    y = np.asarray(m["labels"]).reshape(-1).astype(np.int64) - 1
    if x.shape[1] != 256 or len(x) != len(y):
        raise ValueError(f"{path}: fts must be (n, 256) with one label each, got fts {x.shape}, labels {len(y)}")
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"{path}: labels must be 1..10 (digit + 1), found {y.min() + 1}..{y.max() + 1}")
    return torch.from_numpy(x).view(-1, 1, 16, 16).clamp_(0.0, 1.0), torch.from_numpy(y)


@register_dataset("jda", domains=("mnist", "usps"), modality="image",
                  description="JDA-protocol MNIST (2000) / USPS (1800) 16x16 subsets (Long et al., ICCV 2013)",
                  download_hint="<root>/digits/mnist_usps_jda/{MNIST,USPS}.mat")
def load_jda(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = None,
             channels: Optional[int] = None, **_: Any) -> Dict[str, Domain]:
    """The JDA MNIST/USPS subsets as ``{"all": Domain}`` (16x16 unless ``image_size``; labels = file label - 1)."""
    if domain not in JDA_FILES:
        raise unknown_name("domain of dataset 'jda'", domain, JDA_FILES)
    folder = resolve_root(root) / "digits" / "mnist_usps_jda"
    path = folder / JDA_FILES[domain]
    if not path.exists():
        raise missing_data_error(
            f"JDA {domain.upper()} subset ({path.name})", folder,
            "copy MNIST.mat / USPS.mat of the JDA code release (Long et al., ICCV 2013; e.g. github.com/quanxl97/MDTL "
            "data/MNIST_USPS/) there, or point --data.root at a folder that has digits/mnist_usps_jda/ "
            "(e.g. ../shared/data)")
    p, y = read_jda_mat(path)
    return {"all": Domain(f"jda/{domain}", list(DIGIT_CLASSES), y, x=format_images(p, image_size, channels),
                          modality="image",
                          meta={"file": str(path), "normalization": {"mean": DIGIT_MEAN, "std": DIGIT_STD}})}
