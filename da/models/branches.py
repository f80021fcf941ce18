"""D source-pretrained backbones combined by a mixture: the "branches" reading of multi-source L2-SP.

``f(x) = sum_d pi_d g_d(x)``, ``pi = softmax(m)`` with ``m`` learned (or fixed), each branch ``g_d`` starting
from the model trained on source ``d`` and pulled back toward it by
:class:`~da.losses.multisource.BranchL2SP`. The learned ``pi`` shows which source the target trusts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Mapping, Sequence, Union

import torch
from torch import nn

Mixture = Union[str, Sequence[float]]


class BranchesBackbone(nn.Module):
    """D backbones with a common feature size, outputs averaged with softmax mixture weights.

    Args:
        branches: D modules, each with an int ``out_features`` and ``forward(x) -> (n, out_features)``.
        mixture: ``"learned"`` (trainable logits, initialised uniform), ``"uniform"`` (fixed 1/D) or a list of
            D non-negative weights (fixed, normalised to sum 1).

    Attributes:
        out_features: the branches' common feature size.
    """

    def __init__(self, branches: Sequence[nn.Module], mixture: Mixture = "learned"):
        super().__init__()
        branches = list(branches)
        if not branches:
            raise ValueError("BranchesBackbone needs at least one branch")
        dims = [getattr(b, "out_features", None) for b in branches]
        if any(not isinstance(d, int) for d in dims) or len(set(dims)) != 1:
            raise ValueError(f"all branches need the same int `out_features`, got {dims}; add a projection "
                             "layer to the branches whose sizes differ")
        self.branches = nn.ModuleList(branches)
        self.out_features = dims[0]
        num = len(branches)
        if isinstance(mixture, str):
            if mixture not in ("learned", "uniform"):
                from da.errors import unknown_name
                raise unknown_name("mixture", mixture, ["learned", "uniform"])
            logits = torch.zeros(num)
            if mixture == "learned":
                self.mixture_logits = nn.Parameter(logits)
            else:
                self.register_buffer("mixture_logits", logits)
        else:
            w = torch.tensor([float(v) for v in mixture])
            if w.numel() != num or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"mixture must be 'learned', 'uniform' or {num} non-negative weights with a "
                                 f"positive sum, got {list(mixture)}")
            self.register_buffer("mixture_logits", torch.log(w / w.sum()))
        self.mixture = mixture if isinstance(mixture, str) else "fixed"

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def mixture_weights(self) -> torch.Tensor:
        """``(D,)`` softmax of the mixture logits (sums to 1); log these to see which source is trusted."""
        return torch.softmax(self.mixture_logits, dim=0)

    def forward(self, x):
        feats = torch.stack([b(x) for b in self.branches], dim=0)  # (D, n, d)
        w = self.mixture_weights().to(feats.dtype)
        return torch.einsum("d,dnf->nf", w, feats)

    @classmethod
    def from_checkpoints(cls, factory: Callable[[], nn.Module],
                         checkpoints: Sequence[Union[str, Path, Mapping[str, torch.Tensor]]],
                         mixture: Mixture = "learned", prefix: str = "backbone.") -> "BranchesBackbone":
        """One branch per checkpoint: ``factory()`` builds a fresh backbone, loaded (strictly) from the
        checkpoint's ``prefix``-ed tensors (a ``TransferModule`` checkpoint) or from a plain backbone state dict.
        """
        from da.checkpoints import read_state_dict

        branches: List[nn.Module] = []
        for ckpt in checkpoints:
            state = read_state_dict(ckpt)
            sub = {k[len(prefix):]: v for k, v in state.items() if prefix and k.startswith(prefix)}
            branch = factory()
            try:
                branch.load_state_dict(sub or state, strict=True)
            except RuntimeError as err:
                name = ckpt if isinstance(ckpt, (str, Path)) else "state dict"
                raise RuntimeError(f"checkpoint {name} does not fit the backbone built by the factory "
                                   f"(looked for keys under '{prefix}'): {err}") from err
            branches.append(branch)
        return cls(branches, mixture=mixture)
