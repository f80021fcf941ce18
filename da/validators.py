"""Unsupervised validators: scores of a model's target predictions that need no target label.

Used for model selection without target labels (see ``da table --selection``). Each takes the softmax outputs
``probs`` ``(n, C)`` on unlabelled target data.

* ``entropy``: mean prediction entropy ``-(1/n) sum_i sum_c p_ic log p_ic``; lower is better (Morerio et al. 2018).
* ``bnm``: nuclear norm of the prediction matrix divided by n (Cui et al., CVPR 2020, "Batch Nuclear-norm
  Maximization"); higher is better: confident *and* diverse predictions.
* ``snd``: soft neighbourhood density (Saito et al., ICCV 2021): with L2-normalised predictions, the similarity of
  every pair ``s_ij`` (i != j), a softmax over j of ``s_ij / tau`` (tau = 0.05) and the mean entropy of those rows;
  higher is better.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

# one home for these two: the ``ent`` and ``bnm`` training losses use the same functions
from da.losses.confusion import batch_nuclear_norm, prediction_entropy

__all__ = ["prediction_entropy", "batch_nuclear_norm", "soft_neighborhood_density", "unsupervised_scores"]


def soft_neighborhood_density(probs: torch.Tensor, tau: float = 0.05, max_samples: int = 2000) -> torch.Tensor:
    if probs.shape[0] > max_samples:  # deterministic subsample: O(n^2) memory
        idx = torch.linspace(0, probs.shape[0] - 1, max_samples, device=probs.device).long()
        probs = probs[idx]
    z = F.normalize(probs.float(), dim=1)
    sim = z @ z.T
    n = sim.shape[0]
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    q = (sim / tau).softmax(-1)
    return -(q * q.clamp_min(1e-12).log()).sum(-1).mean()


def unsupervised_scores(probs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``{"entropy": ..., "bnm": ..., "snd": ...}`` for softmax outputs ``probs``."""
    return {"entropy": prediction_entropy(probs), "bnm": batch_nuclear_norm(probs),
            "snd": soft_neighborhood_density(probs)}
