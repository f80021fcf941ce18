"""`Tagged`: a lazy ``(x, y)`` dataset as ``(x, y, d)`` samples of domain ``d``, for the data module's loaders.

Its one extra duty: a *skippable* read error (an image-folder file that passes the header check but fails to decode,
under ``on_bad_image=skip``; see :mod:`da.data.readers.folders`) does not stop training. The sample is replaced by
the next readable sample of the same class in the same dataset (so the same split), the batch keeps its size and its
labels stay right, and a warning names the file; the data module counts the files at the end
(``split_info["undecodable_images"]``).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch.utils.data import Dataset

from da.errors import UserError, one_line


class Tagged(Dataset):
    """Wraps a lazy ``(x, y)`` dataset to return ``(x, y, d)`` with the domain index ``d`` (and optional new labels).

    A *skippable* read error (an image that fails to decode under ``on_bad_image=skip``) is replaced by the next
    readable sample of the same class ``y`` in this dataset (the same split), with a warning naming the file.
    """

    def __init__(self, dataset: Dataset, d: int, labels: Optional[torch.Tensor] = None,
                 y: Optional[torch.Tensor] = None):
        self.dataset, self.d, self.labels = dataset, int(d), labels
        self.y = None if y is None else y.cpu()

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, i: int):
        try:
            return self.dataset[i]
        except UserError as err:
            if not getattr(err, "skippable", False) or self.y is None:
                raise
            warnings.warn(f"{one_line(err)} [skipped: on_bad_image=skip uses another image of its class]")
            same = (self.y == self.y[i]).nonzero().flatten().tolist()
            k = same.index(i)
            for j in same[k + 1:] + same[:k]:
                try:
                    return self.dataset[j]
                except UserError as again:
                    if not getattr(again, "skippable", False):
                        raise
            raise UserError(f"no image of class {int(self.y[i])} in this split can be decoded ({one_line(err)}); "
                            f"replace the damaged files") from None

    def __getitem__(self, i: int):
        x, y = self._read(i)
        if self.labels is not None:
            y = int(self.labels[i])
        return x, y, self.d
