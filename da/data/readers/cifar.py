"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) as in-memory tensors with the official train/test split.

Datasets ``cifar10`` (one domain, ``cifar10/cifar10``) and ``cifar100`` (``cifar100/cifar100``), read from the
"python version" archives unpacked under the data root::

    <root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}   50000 train / 10000 test
    <root>/cifar-100-python/{train, test, meta}                                         50000 train / 10000 test

Each batch file is a pickled dict: ``data`` ``(n, 3072)`` uint8, one row per 32x32 RGB image stored as the red, green
then blue planes, each row-major (so ``data.reshape(n, 3, 32, 32)`` is ``(n, C, H, W)``), and the labels (``labels``
for CIFAR-10; ``fine_labels`` (100 classes) and ``coarse_labels`` (20 superclasses) for CIFAR-100). The class names come
from ``batches.meta`` (``label_names``) / ``meta`` (``fine_label_names``, ``coarse_label_names``). The pickles are
read with a restricted unpickler that only rebuilds numpy arrays and plain containers, so a tampered file cannot run
code. With the option ``download=True`` a missing archive is fetched by ``torchvision.datasets.CIFAR10/CIFAR100(root,
download=True)`` (same files, then read as above).

Normalisation, per channel (R, G, B), with the usual statistics of each training set (pixels ``p`` in [0, 1])::

    x = (p - mean) / std
    CIFAR-10:  mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)
    CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762)

(``channels=1`` converts to luma ``0.299 R + 0.587 G + 0.114 B`` and uses the same weighted mean and std.) The tensors
are not augmented: in-memory data has no per-sample transform. The classic parameter-transfer fine-tune CIFAR-10 ->
CIFAR-100 is ``configs/data/cifar10.yaml`` then ``configs/data/cifar100_finetune.yaml`` with ``--model.init_from``.
"""

from __future__ import annotations

import io
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from da.data.domain import Domain, register_dataset
from da.data.roots import missing_data_error, resolve_root
from da.errors import unknown_name

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
LUMA = (0.299, 0.587, 0.114)
CIFAR100_LABELS = ("fine", "coarse")

#: dataset -> (folder under the root, train files, test file, meta file, stats, torchvision class)
CIFAR_LAYOUT: Dict[str, Tuple[str, Tuple[str, ...], str, str, Tuple[tuple, tuple], str]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                (CIFAR10_MEAN, CIFAR10_STD), "CIFAR10"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", (CIFAR100_MEAN, CIFAR100_STD), "CIFAR100"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# the only globals a CIFAR pickle needs: numpy's array reconstruction (numpy 1.x and 2.x module names) and the
# latin-1 codec that protocol-2 pickles written by Python 3 use for bytes
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, lists, dicts, strings and numbers, and refuses anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays, lists and strings "
                f"(is this file really from {CIFAR_URL}?)")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> Dict[str, Any]:
    """One CIFAR batch/meta pickle as a dict with ``str`` keys (``latin1`` decoding, as the files are Python 2 pickles).

    Byte-string keys and values (``b"data"``, class names) are decoded to ``str``; arrays and lists are returned as is.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError:  # a refused global: its message says which
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable CIFAR pickle ({type(err).__name__}: {err}); delete it and "
                         f"download the archive again ({CIFAR_URL})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(v: Any) -> Any:
    return v.decode("latin1") if isinstance(v, bytes) else v


def _cifar_folder(base: Path, dataset: str, download: bool) -> Path:
    folder_name, train_files, test_file, meta_file, _, tv_class = CIFAR_LAYOUT[dataset]
    folder = base / folder_name
    needed = list(train_files) + [test_file, meta_file]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        import torchvision.datasets as tvd

        base.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            getattr(tvd, tv_class)(str(base), train=train, download=True)
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise missing_data_error(
            f"{dataset.upper()} ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})", folder,
            f"download the 'python version' archive from {CIFAR_URL} and unpack it into {base} (it creates "
            f"{folder_name}/), or let torchvision fetch it: --data.options \"{{download: true}}\", or point "
            f"--data.root at the folder that holds {folder_name}/")
    return folder


def _read_split(folder: Path, files: Tuple[str, ...], label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        batch = read_cifar_pickle(folder / name)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{folder / name}: expected keys 'data' and '{label_key}', found {sorted(batch)}")
        x = np.asarray(batch["data"], dtype=np.uint8)
        y = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise ValueError(f"{folder / name}: 'data' must be (n, 3072) uint8 with one label each, got data "
                             f"{x.shape}, {len(y)} labels")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def format_cifar(pixels: torch.Tensor, mean: tuple, std: tuple, image_size: Optional[int] = None,
                 channels: Optional[int] = None, chunk: int = 5000) -> torch.Tensor:
    """``(n, 3, 32, 32)`` uint8 -> normalised float32 ``(n, C, S, S)`` (converted in chunks to bound memory).

    ``x = (p / 255 - mean_c) / std_c``; ``image_size`` resizes bilinearly (antialiased when shrinking); ``channels=1``
    takes the luma ``0.299 R + 0.587 G + 0.114 B`` and normalises with ``sum_c w_c mean_c`` and ``sum_c w_c std_c``.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels} must be 1 (greyscale), 3 (RGB) or None (keep RGB)")
    size = pixels.shape[-1] if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size={image_size} must be a positive int (e.g. 32) or None")
    c_out = 1 if channels == 1 else 3
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    w = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    if c_out == 1:
        m, s = (m * w).sum(1, keepdim=True), (s * w).sum(1, keepdim=True)
    out = torch.empty((len(pixels), c_out, size, size), dtype=torch.float32)
    for i in range(0, len(pixels), chunk):
        p = pixels[i:i + chunk].float().div_(255.0)
        if size != p.shape[-1]:
            p = F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < p.shape[-1]).clamp_(0.0, 1.0)
        if c_out == 1:
            p = (p * w).sum(1, keepdim=True)
        out[i:i + chunk] = (p - m) / s
    return out


@lru_cache(maxsize=2)
def _load_cached(dataset: str, folder: str, signature: tuple, image_size: Optional[int], channels: Optional[int],
                 label_key: str) -> Dict[str, Domain]:
    """Read and format one CIFAR dataset; cached on the files' sizes and mtimes (source = target reads it once)."""
    _, train_files, test_file, meta_file, (mean, std), _ = CIFAR_LAYOUT[dataset]
    path = Path(folder)
    meta = read_cifar_pickle(path / meta_file)
    names_key = {"labels": "label_names", "fine_labels": "fine_label_names",
                 "coarse_labels": "coarse_label_names"}[label_key]
    if names_key not in meta:
        raise ValueError(f"{path / meta_file}: expected key '{names_key}', found {sorted(meta)}")
    classes: List[str] = [str(_text(c)) for c in meta[names_key]]
    out = {}
    for split, files in (("train", train_files), ("test", (test_file,))):
        x, y = _read_split(path, files, label_key)
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{dataset} ({split}) in {path}: labels must be 0..{len(classes) - 1} "
                             f"({len(classes)} class names in {meta_file}), found {y.min()}..{y.max()}")
        pixels = torch.from_numpy(x).view(-1, 3, 32, 32)
        out[split] = Domain(f"{dataset}/{dataset}", list(classes), torch.from_numpy(y),
                            x=format_cifar(pixels, mean, std, image_size, channels), modality="image",
                            meta={"folder": folder, "labels": label_key,
                                  "normalization": {"mean": list(mean), "std": list(std)}})
    return out


def _load_cifar(dataset: str, root: Optional[str], image_size: Optional[int], channels: Optional[int],
                download: bool, label_key: str) -> Dict[str, Domain]:
    folder = _cifar_folder(resolve_root(root), dataset, bool(download))
    signature = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
                      if p.is_file())
    parts = _load_cached(dataset, str(folder.resolve()), signature,
                         None if image_size is None else int(image_size), None if channels is None else int(channels),
                         label_key)
    return dict(parts)  # a new dict: callers may replace entries without touching the cache


@register_dataset("cifar10", domains=("cifar10",), modality="image",
                  description="CIFAR-10 (Krizhevsky 2009), 10 classes, official 50000/10000 split, 32x32 RGB",
                  download_hint=f"<root>/cifar-10-batches-py/ from {CIFAR_URL}, or download=True (torchvision)")
def load_cifar10(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = None,
                 channels: Optional[int] = None, download: bool = False, **_: Any) -> Dict[str, Domain]:
    """CIFAR-10 as ``{"train", "test"}`` tensors normalised with the CIFAR-10 mean/std (see the module docstring)."""
    if domain != "cifar10":
        raise unknown_name("domain of dataset 'cifar10'", domain, ("cifar10",))
    return _load_cifar("cifar10", root, image_size, channels, download, "labels")


@register_dataset("cifar100", domains=("cifar100",), modality="image",
                  description="CIFAR-100 (Krizhevsky 2009), 100 fine classes (or 20 coarse), official 50000/10000 split",
                  download_hint=f"<root>/cifar-100-python/ from {CIFAR_URL}, or download=True (torchvision)")
def load_cifar100(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = None,
                  channels: Optional[int] = None, download: bool = False, cifar100_labels: str = "fine",
                  **_: Any) -> Dict[str, Domain]:
    """CIFAR-100 as ``{"train", "test"}`` tensors normalised with the CIFAR-100 mean/std.

    ``cifar100_labels``: ``fine`` (100 classes, default) or ``coarse`` (the 20 superclasses).
    """
    if domain != "cifar100":
        raise unknown_name("domain of dataset 'cifar100'", domain, ("cifar100",))
    if cifar100_labels not in CIFAR100_LABELS:
        raise unknown_name("cifar100_labels", cifar100_labels, CIFAR100_LABELS)
    return _load_cifar("cifar100", root, image_size, channels, download, f"{cifar100_labels}_labels")
