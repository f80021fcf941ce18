"""A cache of decoded, resized images for small image-folder domains (``cache_decoded: true``).

JPEG decoding and resizing dominate an image-folder loader's time, and a small dataset (Office-31: 4,110 images)
is decoded again on every epoch. With the cache each image is decoded once, resized so its shorter side is ``S`` and
centre-cropped to ``S x S`` (``S = round(image_size * 256 / 224)``, the eval transform's resize: 256 for 224), and kept
as one ``uint8`` tensor ``(n, C, S, S)``: in memory (DataLoader workers share it; a disk hit is memory-mapped) and on
disk at ``<cache root>/images/<key>.pt`` (``<cache root>`` = ``$DA_CACHE_DIR`` or ``~/.cache/da``).

``key = sha256(version, channels, S, [(path, size, mtime_ns) of every image file])``: adding, removing, replacing or
touching a file, or changing ``image_size`` / ``channels``, is a miss (a new file; the old one is left alone).

The augmentation then runs on the tensors (:class:`TensorTransform`): train = ``RandomResizedCrop(image_size,
scale=(0.5, 1))`` + ``RandomHorizontalFlip()``; eval = ``CenterCrop(image_size)``; then ``/255`` and the same
normalisation as the PIL pipeline. Eval inputs are the PIL pipeline's up to resampling (``Resize(S)`` then
``CenterCrop(image_size)`` either way); training crops are drawn from the ``S x S`` centre square (non-square photos
lose their borders) at ``S`` resolution, not from the full-resolution file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

CACHE_VERSION = "decoded-v1"


def cache_side(image_size: int) -> int:
    """``S``: the side of the cached squares (the eval transform's resize of ``image_size``)."""
    return round(int(image_size) * 256 / 224)


def cache_key(files: Sequence[str], channels: int, side: int) -> str:
    """sha256 over the version, ``channels``, ``side`` and every file's path, size and modification time."""
    h = hashlib.sha256(f"{CACHE_VERSION}\x00{int(channels)}\x00{int(side)}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"\x1e{f}\x1f{st.st_size}\x1f{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cache_path(key: str, cache_dir: Optional[str] = None) -> Path:
    from da.data.tokenize import cache_root

    root = Path(os.path.expanduser(cache_dir)) if cache_dir else cache_root()
    return root / "images" / f"{key}.pt"


def decode_resized(path: str, channels: int, side: int) -> torch.Tensor:
    """One file as a ``uint8`` tensor ``(C, side, side)``: shorter side resized to ``side`` (bilinear, antialiased,
    as ``transforms.Resize``), then centre-cropped."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
    except Exception as err:
        raise RuntimeError(f"cannot decode image '{path}' ({type(err).__name__}: {err}) while building the decoded "
                           f"image cache: remove or replace the file") from err
    im = TF.center_crop(TF.resize(im, side), [side, side])
    return TF.pil_to_tensor(im)


def load_or_build(files: Sequence[str], channels: int, image_size: int,
                  cache_dir: Optional[str] = None) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The ``(n, C, S, S)`` uint8 images of ``files`` from the disk cache, or decoded now and saved there.

    Returns ``(images, info)``; ``info`` has ``cache_hit``, ``cache_path``, ``cache_side`` (worth keeping in
    ``meta``). A truncated or foreign cache file is rebuilt.
    """
    side = cache_side(image_size)
    path = cache_path(cache_key(files, channels, side), cache_dir)
    info = {"cache_hit": False, "cache_path": str(path), "cache_side": side}
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            images = blob["images"]
            if blob.get("files") == list(files) and tuple(images.shape) == (len(files), channels, side, side):
                info["cache_hit"] = True
                return images, info
        except Exception:  # noqa: BLE001 - an unreadable cache file is rebuilt below
            pass
    images = torch.empty((len(files), channels, side, side), dtype=torch.uint8)
    for i, f in enumerate(files):
        images[i] = decode_resized(f, channels, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"images": images, "files": list(files)}, tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    return images, info


class TensorTransform:
    """The augmentation on one cached ``uint8`` image ``(C, S, S)``, in a few tensor operations.

    ``train``: a ``RandomResizedCrop(image_size, scale=(0.5, 1), ratio=(3/4, 4/3))`` box (torchvision's sampler),
    resized with bilinear antialiased interpolation on the ``uint8`` pixels (rounded, as ``v2`` does), flipped with probability 1/2; ``eval``: the central
    ``image_size`` square. Then ``(x / 255 - mean) / std``, as ``ToTensor`` + ``Normalize``. (torchvision's ``v2``
    transforms compute the same but cost several times more Python per image.)
    """

    def __init__(self, kind: str, image_size: int, mean: Sequence[float], std: Sequence[float]):
        if kind not in ("train", "eval"):
            raise ValueError(f"transform kind '{kind}' must be one of ('train', 'eval')")
        self.kind, self.size = kind, int(image_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F
        from torchvision.transforms import RandomResizedCrop

        n = self.size
        if self.kind == "eval":
            h, w = img.shape[-2:]
            top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
            x = img[:, top: top + n, left: left + n].float()
        else:
            top, left, h, w = RandomResizedCrop.get_params(img, scale=[0.5, 1.0], ratio=[3.0 / 4.0, 4.0 / 3.0])
            x = img[None, :, top: top + h, left: left + w]
            if (h, w) != (n, n):  # on uint8 in channels_last: torch's fast path, as transforms.v2 does (2.4x float's)
                x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(n, n), mode="bilinear",
                                  align_corners=False, antialias=True)
            x = x[0].float()
            if torch.rand(1).item() < 0.5:
                x = x.flip(-1)
        return x.div_(255.0).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"TensorTransform(kind={self.kind!r}, image_size={self.size})"


def build_tensor_transform(kind: str, image_size: int, mean: Sequence[float], std: Sequence[float]):
    """The transform on cached ``uint8`` tensors for ``kind`` in ``("train", "eval")`` (:class:`TensorTransform`)."""
    return TensorTransform(kind, image_size, mean, std)
