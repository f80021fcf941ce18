"""Image-folder domains: ``<root>/<dataset folder>/<domain>/<class>/*.jpg`` read lazily with PIL.

Datasets (folder names tried in order; a domain ``Real_World`` also matches a folder ``Real World``, and a
domain folder holding only ``images/`` is descended into, as in the original Office-31 archive):

=============  =========================================  ============================================
name           domains                                    folder under the data root
=============  =========================================  ============================================
office31       amazon, dslr, webcam                       office31, Office31, office-31, OFFICE31
officehome     Art, Clipart, Product, Real_World          officehome, OfficeHome, office_home, ...
officecaltech  amazon, caltech, dslr, webcam              officecaltech, office_caltech_10, ...
pacs           art_painting, cartoon, photo, sketch       pacs, PACS, PACS/kfold
domainnet      clipart, infograph, painting, quickdraw,   domainnet, DomainNet
               real, sketch
visda          train, validation                          visda, VisDA, visda2017, visda-2017
imagefolder    any sub-folder name                        the data root itself: ``<root>/<domain>/<class>``
=============  =========================================  ============================================

Classes are the sorted class-folder names (label = index), as torchvision's ``ImageFolder`` orders them.
Every loader returns ``{"all": Domain}`` whose ``dataset`` is an `ImageFolderDataset` with the *eval*
transform; the data module swaps in the training transform with `with_transform` (which sees through
``Subset`` chains), so splits share one file list.

Transforms (ImageNet statistics, mean ``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``; for
``channels=1`` the images are converted to luminance ``L`` and normalised with mean 0.449, std 0.226, the
averages of those):

* ``train``: ``RandomResizedCrop(image_size, scale=(0.5, 1))``, ``RandomHorizontalFlip()``, to tensor, normalise;
* ``eval``: ``Resize(round(image_size * 256 / 224))``, ``CenterCrop(image_size)``, to tensor, normalise.

Unreadable files: with ``on_bad_image="skip"`` (default) every file's header is opened at load time
(``PIL.Image.open``, no full decode), unreadable ones are dropped, counted in ``meta["skipped"]`` and reported in
one warning; with ``"error"`` the first one raises naming the file. A file that passes the header check but
fails to decode later (a truncated JPEG) raises :class:`UnreadableImageError` naming the file, in a DataLoader
worker too; it is marked in the dataset's ``undecodable`` flags (shared memory, so the main process sees what the
workers found, see :func:`undecodable_files`). Under ``skip`` the error is *skippable* and the data module uses
the next readable image of the same class and split in its place (the batch keeps its size, the label stays
right); under ``error`` ``da`` stops with one line naming the file. ``check_images=False`` skips the header scan
(for very large folders, e.g. DomainNet).

``cache_decoded=True`` (``--data.options '{cache_decoded: true}'``) decodes each image once into a ``uint8`` tensor
cache, in memory and on disk, and runs the augmentation on the tensors: see :mod:`da.data.readers.image_cache` (for
small datasets such as Office-31; ``cache_dir`` overrides ``$DA_CACHE_DIR``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from da.data.domain import Domain, register_dataset
from da.data.roots import missing_data_error, resolve_root
from da.errors import MissingFileError, UserError, unknown_name

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)
DEFAULT_IMAGE_SIZE = 224
TRANSFORM_KINDS = ("train", "eval")


def build_transform(kind: str, image_size: int = DEFAULT_IMAGE_SIZE, channels: int = 3):
    """The torchvision transform for ``kind`` in ``("train", "eval")`` (see the module docstring)."""
    from torchvision import transforms as T

    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"transform kind '{kind}' must be one of {TRANSFORM_KINDS}")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)
    if kind == "train":
        steps = [T.RandomResizedCrop(image_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


class UnreadableImageError(UserError):
    """An image file that cannot be decoded; ``skippable`` when ``on_bad_image="skip"`` (the data module then uses
    another image of the same class in its place). One message argument, so a DataLoader worker can re-raise it."""

    skippable = False


class ImageFolderDataset(Dataset):
    """Lazy ``(image tensor, label)`` items from a list of files; cheap to copy with another transform.

    ``images``: the decoded ``uint8`` cache ``(n, C, S, S)`` of ``files`` (:mod:`~da.data.readers.image_cache`);
    when given, items are cut from it by tensor transforms instead of decoding the files.
    """

    def __init__(self, files: Sequence[str], labels: Sequence[int], classes: Sequence[str], kind: str = "eval",
                 image_size: int = DEFAULT_IMAGE_SIZE, channels: int = 3,
                 images: Optional[torch.Tensor] = None, on_bad_image: str = "skip") -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 (greyscale) or 3 (RGB) for image folders")
        self.files = list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.kind = kind
        if images is not None and (images.dtype != torch.uint8 or tuple(images.shape[:2]) != (len(files), channels)):
            raise ValueError(f"images must be a uint8 tensor (n={len(files)}, C={channels}, S, S), got "
                             f"{images.dtype} {tuple(images.shape)}")
        self.images = images
        self.transform = self._transform(kind)
        self.on_bad_image = on_bad_image
        # files found undecodable, by index; in shared memory so that DataLoader workers report to the main process
        self.undecodable = torch.zeros(len(self.files), dtype=torch.bool).share_memory_()

    def _transform(self, kind: str):
        if self.images is None:
            return build_transform(kind, self.image_size, self.channels)
        from da.data.readers.image_cache import build_tensor_transform

        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.channels == 3 else (GREY_MEAN, GREY_STD)
        return build_tensor_transform(kind, self.image_size, mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int):
        from PIL import Image

        path = self.files[i]
        detail = "found undecodable before"
        if not self.undecodable[i]:
            try:
                with Image.open(path) as im:
                    return im.convert("RGB" if self.channels == 3 else "L")  # convert() decodes fully
            except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ... for bad data
                self.undecodable[i] = True
                detail = f"{type(err).__name__}: {err}"
        skip = self.on_bad_image == "skip"
        err = UnreadableImageError(
            f"cannot decode image '{path}' ({detail}); it passed the header check at load time, so the file is "
            f"damaged inside: remove or replace it" + ("" if skip else ", or set --data.options.on_bad_image skip"))
        err.skippable = skip
        raise err

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.transform(self.images[i]), int(self.labels[i])
        return self.transform(self.load_image(i)), int(self.labels[i])

    def with_transform(self, kind: str) -> "ImageFolderDataset":
        """A copy with the ``kind`` transform, sharing the file list and labels (no copy of them)."""
        new = copy.copy(self)
        new.kind = kind
        new.transform = new._transform(kind)
        return new


def undecodable_files(dataset: Optional[Dataset]) -> List[str]:
    """Files of the image-folder datasets inside ``dataset`` (through ``Subset``, ``ConcatDataset`` and other
    wrappers with a ``dataset`` attribute) found undecodable so far, in any process."""
    if dataset is None:
        return []
    if isinstance(dataset, ImageFolderDataset):
        return [dataset.files[i] for i in dataset.undecodable.nonzero().flatten().tolist()]
    inner = getattr(dataset, "datasets", None) or [getattr(dataset, "dataset", None)]
    return [f for d in inner for f in undecodable_files(d)]


def with_transform(dataset: Dataset, kind: str) -> Dataset:
    """``dataset`` with its image transform set to ``kind``, through ``Subset`` / ``ConcatDataset`` wrappers."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, kind), dataset.indices)
    if isinstance(dataset, ConcatDataset):
        return ConcatDataset([with_transform(d, kind) for d in dataset.datasets])
    if hasattr(dataset, "with_transform"):
        return dataset.with_transform(kind)
    raise TypeError(f"{type(dataset).__name__} has no with_transform(kind): only image-folder datasets "
                    f"(optionally inside Subset/ConcatDataset) have train/eval transforms")


def _header_ok(path: str) -> Optional[str]:
    """``None`` when PIL can identify the file from its header, else the error text."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header is parsed by open(); size proves it was understood
        return None
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def scan_image_folder(folder: Path) -> Tuple[List[str], List[int], List[str]]:
    """Files (sorted), labels, and sorted class names of ``folder/<class>/**/*.<image extension>``."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [p.name for p in class_dirs]
    files, labels = [], []
    for label, cdir in enumerate(class_dirs):
        found = sorted(str(p) for p in cdir.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(cdir).parts))
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def load_image_domain(name: str, folder: Path, *, image_size: Optional[int] = None, channels: Optional[int] = None,
                      on_bad_image: str = "skip", check_images: bool = True, cache_decoded: bool = False,
                      cache_dir: Optional[str] = None) -> Dict[str, Domain]:
    """One image-folder domain ``folder/<class>/*`` as ``{"all": Domain}`` (see the module docstring)."""
    if on_bad_image not in ("skip", "error"):
        raise UserError(f"on_bad_image='{on_bad_image}' must be 'skip' (drop and count unreadable images) "
                        f"or 'error' (stop at the first one)")
    files, labels, classes = scan_image_folder(folder)
    skipped: List[str] = []
    if check_images and files:
        keep = []
        for f, y in zip(files, labels):
            err = _header_ok(f)
            if err is None:
                keep.append((f, y))
            elif on_bad_image == "error":
                raise UserError(f"unreadable image '{f}' ({err}); remove it or set on_bad_image='skip' "
                                f"(--data.options.on_bad_image skip)")
            else:
                skipped.append(f)
        files, labels = [k[0] for k in keep], [k[1] for k in keep]
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} unreadable image(s) in {folder}, e.g. "
                      f"{', '.join(skipped[:3])}", stacklevel=2)
    if not files:
        extra = f" ({len(skipped)} unreadable file(s) skipped)" if skipped else ""
        raise MissingFileError(
            f"no images found in '{folder}'{extra}: expected {folder}/<class>/<image> with extensions "
            f"{', '.join(IMG_EXTENSIONS)}; found class folders: {classes or 'none'}")
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    chans = 3 if channels is None else int(channels)
    images, cache_info = None, None
    if cache_decoded:
        from da.data.readers.image_cache import load_or_build

        images, cache_info = load_or_build(files, chans, size, cache_dir)
    ds = ImageFolderDataset(files, labels, classes, kind="eval", image_size=size, channels=chans, images=images,
                              on_bad_image=on_bad_image)
    meta = {"folder": str(folder), "skipped": len(skipped), "skipped_files": skipped[:20], "image_size": size,
            "normalization": {"mean": list(IMAGENET_MEAN if ds.channels == 3 else GREY_MEAN),
                              "std": list(IMAGENET_STD if ds.channels == 3 else GREY_STD)}}
    if cache_info is not None:
        meta["image_cache"] = cache_info
    return {"all": Domain(name, classes, ds.labels, dataset=ds, modality="image", meta=meta)}


#: dataset name -> (domains, candidate folder names under the root, where to get it)
FOLDER_DATASETS: Dict[str, Tuple[tuple, tuple, str]] = {
    "office31": (("amazon", "dslr", "webcam"), ("office31", "Office31", "office-31", "OFFICE31", "office_31"),
                 "Office-31 (Saenko et al., ECCV 2010) from https://faculty.cc.gatech.edu/~judy/domainadapt/"),
    "officehome": (("Art", "Clipart", "Product", "Real_World"),
                   ("officehome", "OfficeHome", "office_home", "Office-Home", "OfficeHomeDataset_10072016"),
                   "Office-Home (Venkateswara et al., CVPR 2017) from https://www.hemanthdv.org/officeHomeDataset.html"),
    "officecaltech": (("amazon", "caltech", "dslr", "webcam"),
                      ("officecaltech", "OfficeCaltech", "office_caltech_10", "office_caltech", "office-caltech"),
                      "Office-Caltech-10 (Gong et al., CVPR 2012): the 10 shared classes of Office-31 and Caltech-256, "
                      "see https://github.com/jindongwang/transferlearning/blob/master/data/dataset.md"),
    "pacs": (("art_painting", "cartoon", "photo", "sketch"), ("pacs", "PACS", "PACS/kfold", "pacs/kfold"),
             "PACS (Li et al., ICCV 2017) from https://domaingeneralization.github.io/ (or DomainBed's download script)"),
    "domainnet": (("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), ("domainnet", "DomainNet"),
                  "DomainNet (Peng et al., ICCV 2019) from http://ai.bu.edu/M3SDA/"),
    "visda": (("train", "validation"), ("visda", "VisDA", "visda2017", "visda-2017", "VisDA-2017"),
              "VisDA-2017 classification (Peng et al., 2017) from https://github.com/VisionLearningGroup/taskcv-2017-public"),
}


def _find_dataset_folder(base: Path, dataset: str) -> Path:
    _, candidates, how = FOLDER_DATASETS[dataset]
    for c in candidates:
        if (base / c).is_dir():
            return base / c
    raise missing_data_error(f"dataset '{dataset}'", base / candidates[0],
                             f"download {how} and unpack it to {base / candidates[0]}/<domain>/<class>/<image> "
                             f"(also accepted: {', '.join(candidates[1:])}), or pass --data.root <folder that holds "
                             f"{candidates[0]}/> (e.g. ../shared/data, which has office31)")


def _find_domain_folder(parent: Path, domain: str, dataset: str) -> Path:
    for c in dict.fromkeys((domain, domain.replace("_", " "), domain.lower())):
        d = parent / c
        if d.is_dir():
            subdirs = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if len(subdirs) == 1 and subdirs[0].name == "images":
                return subdirs[0]
            return d
    found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    raise MissingFileError(f"domain folder '{parent / domain}' of dataset '{dataset}' not found; "
                           f"sub-folders there: {found or 'none'}. Put the images in {parent / domain}/<class>/")


def _make_folder_loader(dataset: str):
    domains = FOLDER_DATASETS[dataset][0]

    def loader(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = None,
               channels: Optional[int] = None, on_bad_image: str = "skip", check_images: bool = True,
               download: bool = False, cache_decoded: bool = False, cache_dir: Optional[str] = None,
               **_: Any) -> Dict[str, Domain]:
        if domain not in domains:
            raise unknown_name(f"domain of dataset '{dataset}'", domain, domains)
        if download:  # fetch, verify and extract it first when it is missing (da/data/download.py)
            from da.data.download import MIRRORS, download_dataset
            if dataset in MIRRORS:
                download_dataset(dataset, root)
        folder = _find_domain_folder(_find_dataset_folder(resolve_root(root), dataset), domain, dataset)
        return load_image_domain(f"{dataset}/{domain}", folder, image_size=image_size, channels=channels,
                                 on_bad_image=on_bad_image, check_images=check_images,
                                 cache_decoded=cache_decoded, cache_dir=cache_dir)

    loader.__name__ = f"load_{dataset}"
    loader.__doc__ = f"{FOLDER_DATASETS[dataset][2]}; domains {', '.join(domains)}; returns {{'all': Domain}}."
    return register_dataset(dataset, domains=domains, modality="image", description=loader.__doc__,
                            download_hint=FOLDER_DATASETS[dataset][2])(loader)


for _name in FOLDER_DATASETS:
    globals()[f"load_{_name}"] = _make_folder_loader(_name)


@register_dataset("imagefolder", domains=(), modality="image",
                  description="any <root>/<domain>/<class>/*.jpg tree; the domain is the sub-folder name")
def load_imagefolder(domain: str, root: Optional[str] = None, *, image_size: Optional[int] = None,
                     channels: Optional[int] = None, on_bad_image: str = "skip", check_images: bool = True,
                     cache_decoded: bool = False, cache_dir: Optional[str] = None, **_: Any) -> Dict[str, Domain]:
    """``<root>/<domain>/<class>/*`` as ``{"all": Domain}`` (``root``: --data.root, $DA_DATA_ROOT or ./data)."""
    base = resolve_root(root)
    if not base.is_dir():
        raise missing_data_error(f"image-folder root for domain '{domain}'", base,
                                 f"pass --data.root <folder> where <folder>/{domain}/<class>/<image> holds your images")
    folder = _find_domain_folder(base, domain, "imagefolder")
    return load_image_domain(f"imagefolder/{domain}", folder, image_size=image_size, channels=channels,
                             on_bad_image=on_bad_image, check_images=check_images, cache_decoded=cache_decoded,
                             cache_dir=cache_dir)
