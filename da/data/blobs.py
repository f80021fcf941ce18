"""``blobs``: a tiny synthetic domain-shift dataset (Gaussian classes), for smoke tests and quick experiments.

Domain ``blobs/<k>`` (k = 0..4): ``n_per_class`` samples of each of ``num_classes`` Gaussian classes in ``dim``
dimensions (identity covariance times ``noise``); class means are a fixed random draw (seed 1234) of norm 3, then the
whole domain is rotated by ``k * 20`` degrees in the first two coordinates and shifted by ``k * 0.75`` along the
first: domain 0 and 1 are close, domain 4 is far. Samples are drawn from a generator seeded by ``(seed, k)``.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from da.data.domain import Domain, register_dataset

BLOB_DOMAINS = ("0", "1", "2", "3", "4")


@register_dataset("blobs", domains=BLOB_DOMAINS, modality="features",
                  description="synthetic Gaussian classes; domain k is rotated by 20k degrees and shifted by 0.75k")
def load_blobs(domain: str, root=None, n_per_class: int = 100, num_classes: int = 3, dim: int = 8,
               noise: float = 1.0, blobs_seed: int = 0, **_) -> Dict[str, Domain]:
    k = int(domain)
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    means = 3.0 * means / means.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(blobs_seed * 101 + k)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = means[y] + noise * torch.randn(len(y), dim, generator=g)
    angle = math.radians(20.0 * k)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    x[:, :2] = x[:, :2] @ rot.T
    x[:, 0] += 0.75 * k
    classes = [f"class{c}" for c in range(num_classes)]
    return {"all": Domain(name=f"blobs/{domain}", classes=classes, x=x.float(), y=y, modality="features")}
