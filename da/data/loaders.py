"""A fast loader for in-memory tensors: batches are index slices, no per-sample Python work.

Small domains (digits, feature vectors, cached text embeddings) live as tensors on the training device; drawing a batch
is one ``index_select``. Under DDP each rank takes a disjoint, equally sized share of every epoch's permutation (the
same permutation on all ranks, from the seed and the epoch), so the global batch is the same as in one process with
``batch_size * world_size``. Unshuffled (evaluation) loaders give each rank a contiguous block instead, so gathered
predictions come back in dataset order, followed by the wrapped padding when ``n`` is not a multiple of the world size.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import torch


class TensorBatches:
    """Iterate over ``tensors`` (all with the same first dimension) in batches.

    Args:
        tensors: the arrays to slice together, e.g. ``(x, y, d)``.
        batch_size: per-process batch size.
        shuffle: a new seeded permutation each epoch (``seed + epoch``).
        drop_last: drop the last incomplete batch (always on for training: cross-rank losses need equal batches).
        rank, world_size: this process's share under DDP.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("all tensors must have the same length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tuple(tensors)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self._skip = 0
        if drop_last and n < batch_size * world_size:
            raise ValueError(f"a domain with {n} samples cannot fill one batch of {batch_size} x {world_size} "
                             f"process(es); lower --data.batch_size")

    @property
    def num_samples(self) -> int:
        return len(self.tensors[0])

    def _per_rank(self) -> int:
        n = self.num_samples
        if self.world_size == 1:
            return n
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __len__(self) -> int:
        m = self._per_rank()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def _order(self) -> torch.Tensor:
        n = self.num_samples
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per = self._per_rank()
            if not self.drop_last and per * self.world_size > n:  # pad by wrapping, like DistributedSampler
                order = torch.cat([order, order[: per * self.world_size - n]])
            if self.shuffle:  # interleaved: the ranks' i-th batches together are one process's i-th global batch
                order = order[self.rank: per * self.world_size: self.world_size]
            else:  # contiguous: an all-gather of the ranks' outputs is in dataset order (then the padding)
                order = order[self.rank * per: (self.rank + 1) * per]
        return order

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, ...]]:
        order = self._order().to(self.tensors[0].device)
        self.epoch += 1
        skip, self._skip = self._skip, 0
        bs = self.batch_size
        for i in range(skip, len(self)):
            idx = order[i * bs: (i + 1) * bs]
            yield tuple(t.index_select(0, idx) if isinstance(t, torch.Tensor) else t for t in self.tensors)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, global_step: int, cycle_length: int) -> None:
        """Continue exactly where an uninterrupted run would be after ``global_step`` training batches.

        In a ``max_size_cycle`` ``CombinedLoader`` whose longest member has ``cycle_length`` batches, every epoch
        re-iterates every member, and a shorter member of length n is re-iterated every n batches; each iteration draws
        a new permutation. So after g steps (epoch ``e = g // L``, batch ``b = g % L``) this loader has started
        ``e * ceil(L / n) + b // n`` iterations and is ``b % n`` batches into the current one. Resumed runs therefore
        see the same batches as uninterrupted ones (the module restores the random-number state for dropout).
        """
        n, big = len(self), int(cycle_length)
        if n == 0 or big == 0:
            return
        e, b = divmod(int(global_step), big)
        self.epoch = e * -(-big // n) + b // n
        self._skip = b % n

    def to(self, device: torch.device) -> "TensorBatches":
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self


def stratified_split(y: torch.Tensor, fraction: float, seed: int,
                     per_class: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..n-1`` into (rest, picked), stratified by label, from ``seed``.

    ``picked`` holds ``round(fraction * n_c)`` samples of each class c (at least one when the class has two or more), or
    exactly ``per_class`` of each (all of a class that has fewer).
    """
    g = torch.Generator().manual_seed(int(seed))
    picked, rest = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if per_class is not None:
            k = min(per_class, len(idx))
        else:
            k = int(round(fraction * len(idx)))
            if len(idx) >= 2:
                k = min(max(k, 1), len(idx) - 1)
        picked.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(picked).sort().values
