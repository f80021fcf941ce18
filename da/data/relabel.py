"""Relabelled views of a domain: class re-mapping onto the target's class order and label noise (used by
:class:`~da.data.datamodule.DomainDataModule`), for in-memory tensors and lazy datasets alike."""

from __future__ import annotations

from dataclasses import replace
from typing import List

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from da.data.domain import Domain
from da.errors import UserError


def align_classes(dom: Domain, ref: List[str], spec: str, target: str) -> Domain:
    """Map a source's labels onto the target's class order (classes matched by name)."""
    if list(dom.classes) == list(ref):
        return dom
    if set(dom.classes) != set(ref):
        only_s = sorted(set(dom.classes) - set(ref))[:10]
        only_t = sorted(set(ref) - set(dom.classes))[:10]
        raise UserError(f"source {spec} and target {target} have different class sets: only in the source: {only_s}; "
                        f"only in the target: {only_t}. Use domains with the same classes (matched by name).")
    mapping = torch.tensor([ref.index(c) for c in dom.classes], dtype=torch.long)
    if dom.x is not None:
        return replace(dom, y=mapping[dom.y], classes=list(ref))
    return replace(dom, dataset=WithLabels(dom.dataset, mapping[dom.y]), y=mapping[dom.y], classes=list(ref))


def with_label_noise(dom: Domain, p: float, num_classes: int, seed: int) -> Domain:
    """Replace a fraction ``p`` of the labels by a different, uniformly drawn class."""
    g = torch.Generator().manual_seed(seed)
    y = dom.y.clone()
    n_flip = int(round(p * len(y)))
    idx = torch.randperm(len(y), generator=g)[:n_flip]
    shift = torch.randint(1, num_classes, (n_flip,), generator=g)
    y[idx] = (y[idx] + shift) % num_classes
    meta = {**dom.meta, "label_noise": p, "flipped": n_flip}
    if dom.x is not None:
        return replace(dom, y=y, meta=meta)
    return replace(dom, dataset=WithLabels(dom.dataset, y), y=y, meta=meta)


class WithLabels(Dataset):
    """A lazy dataset whose label ``i`` is replaced by ``labels[i]`` (class re-mapping, label noise)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0], int(self.labels[i])

    def with_transform(self, kind: str) -> "WithLabels":
        return WithLabels(with_transform_ds(self.dataset, kind), self.labels)


def with_transform_ds(ds: Dataset, kind: str) -> Dataset:
    """Give a lazy dataset its train or eval transform, through ``Subset`` / ``ConcatDataset`` wrappers."""
    if hasattr(ds, "with_transform"):
        return ds.with_transform(kind)
    if isinstance(ds, Subset):
        return Subset(with_transform_ds(ds.dataset, kind), ds.indices)
    if isinstance(ds, ConcatDataset):
        return ConcatDataset([with_transform_ds(d, kind) for d in ds.datasets])
    return ds
