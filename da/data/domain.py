"""One domain's data, whatever its modality, and the registry of named datasets.

A dataset is registered once, by name, with the domains it has::

    @register_dataset("office31", domains=("amazon", "dslr", "webcam"), modality="image")
    def load_office31(domain: str, root: str | None, **opts) -> dict[str, Domain]: ...

The loader returns ``{"train": Domain, "test": Domain}`` when the data has an official split, or
``{"all": Domain}`` when it does not (the `DomainDataModule` then makes seeded, stratified splits).
A domain is referred to as ``"<dataset>/<domain>"`` everywhere (configs, records, tables), e.g.
``jda/mnist`` or ``office31/amazon``.

`Domain` holds either in-memory tensors (``x``: ``(n, C, H, W)`` images or ``(n, d)`` features; small data
lives on the training device) or a lazy ``torch.utils.data.Dataset`` returning ``(x, y)`` (image folders,
raw text), plus the labels ``y`` in both cases, so splits and class counts never touch the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset

from da.errors import UserError, unknown_name


@dataclass
class Domain:
    """The samples of one domain (or one split of it).

    Attributes:
        name: ``"<dataset>/<domain>"``.
        classes: class names, index = label.
        y: labels, ``(n,)`` int64 (always present, even for unlabelled use: the module decides what it sees).
        x: in-memory inputs, or ``None`` when ``dataset`` is given.
        dataset: a lazy dataset whose item ``i`` is ``(x_i, y_i)``; ``None`` for in-memory domains.
        modality: ``"image"``, ``"features"`` or ``"text"``.
        meta: free-form facts worth recording (file paths, preprocessing, counts of skipped files).
    """

    name: str
    classes: List[str]
    y: torch.Tensor
    x: Optional[torch.Tensor] = None
    dataset: Optional[Dataset] = None
    modality: str = "image"
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.x is None) == (self.dataset is None):
            raise ValueError(f"domain {self.name}: give exactly one of x (tensors) or dataset (lazy)")
        self.y = torch.as_tensor(self.y, dtype=torch.long)
        if self.x is not None and len(self.x) != len(self.y):
            raise ValueError(f"domain {self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if len(self.y) == 0:
            raise UserError(f"domain {self.name} is empty: no samples were found")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return self.x is not None

    def subset(self, index: torch.Tensor | Sequence[int], name: Optional[str] = None) -> "Domain":
        """The samples at ``index`` (a view for tensors, a ``Subset`` for lazy data)."""
        index = torch.as_tensor(index, dtype=torch.long)
        if self.x is not None:
            return replace(self, name=name or self.name, x=self.x[index], y=self.y[index])
        return replace(self, name=name or self.name, dataset=Subset(self.dataset, index.tolist()),
                       y=self.y[index])

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y, minlength=self.num_classes)


Loader = Callable[..., Dict[str, Domain]]


@dataclass
class DatasetInfo:
    name: str
    domains: tuple
    modality: str
    loader: Loader
    description: str = ""
    #: a function (domain, root, opts) -> a hint on where to get the data, used in "not found" errors.
    download_hint: str = ""


_DATASETS: Dict[str, DatasetInfo] = {}


def register_dataset(name: str, domains: Sequence[str], modality: str = "image", description: str = "",
                     download_hint: str = "") -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(domain, root=None, **opts) -> {"train"/"test"/"all": Domain}``."""

    def deco(fn: Loader) -> Loader:
        if name in _DATASETS and _DATASETS[name].loader is not fn:
            raise ValueError(f"dataset '{name}' is registered twice")
        _DATASETS[name] = DatasetInfo(name, tuple(domains), modality, fn, description or (fn.__doc__ or "").strip(),
                                      download_hint)
        return fn

    return deco


def _ensure_builtin_datasets() -> None:
    # importing the reader modules registers their datasets
    import da.data.blobs  # noqa: F401
    import da.data.readers  # noqa: F401


def dataset_names() -> List[str]:
    _ensure_builtin_datasets()
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetInfo:
    _ensure_builtin_datasets()
    if name not in _DATASETS:
        raise unknown_name("dataset", name, _DATASETS)
    return _DATASETS[name]


def parse_domain(spec: str) -> tuple:
    """``"office31/amazon"`` -> ``("office31", "amazon")`` with a helpful error for unknown names."""
    if "/" not in spec:
        _ensure_builtin_datasets()
        examples = ", ".join(f"{d.name}/{d.domains[0]}" for d in list(_DATASETS.values())[:4])
        raise UserError(f"domain '{spec}' must be written '<dataset>/<domain>', e.g. {examples}")
    ds, dom = spec.split("/", 1)
    info = get_dataset(ds)
    if info.domains and dom not in info.domains:
        raise unknown_name(f"domain of dataset '{ds}'", dom, info.domains)
    return ds, dom


def load_domain(spec: str, root: Optional[str] = None, **opts: Any) -> Dict[str, Domain]:
    """Load ``"<dataset>/<domain>"`` through its registered loader."""
    ds, dom = parse_domain(spec)
    return get_dataset(ds).loader(dom, root=root, **opts)


def sample_shape(dom: Domain) -> Optional[tuple]:
    """The shape of one input of ``dom`` (``None`` for inputs without a fixed shape, e.g. tokens)."""
    if dom.x is not None:
        return tuple(dom.x.shape[1:])
    if dom.modality == "text":
        return None
    for i in range(min(len(dom), 8)):  # the first readable sample (under on_bad_image=skip a file may be damaged)
        try:
            x = dom.dataset[i][0]
        except UserError as err:
            if getattr(err, "skippable", False):
                continue
            raise
        return tuple(x.shape) if isinstance(x, torch.Tensor) else None
    return None


def _describe_shape(shape: tuple) -> str:
    return f"{shape[0]}-d features" if len(shape) == 1 else "inputs of shape " + "x".join(map(str, shape))


def check_same_input_shape(sources: List[tuple], target: tuple) -> None:
    """Every source's inputs have the target's shape (feature dimension, image channels and size).

    Without this, a 17-d target with a 16-d source fails at the first step with ``mat1 and mat2 shapes cannot be
    multiplied``. ``sources`` and ``target`` are ``(spec, Domain)`` pairs.
    """
    t_spec, t_dom = target
    t_shape = sample_shape(t_dom)
    if t_shape is None:
        return
    for spec, dom in sources:
        shape = sample_shape(dom)
        if shape is not None and shape != t_shape:
            fix = ("use features from the same extractor for both domains (or --data.options.n_features for "
                   "svmlight files)" if len(shape) == len(t_shape) == 1 else
                   "give both domains the same --data.options.image_size and --data.options.channels")
            raise UserError(f"source {spec} has {_describe_shape(shape)} but target {t_spec} has "
                            f"{_describe_shape(t_shape)}: domains must have the same input shape; {fix}")

