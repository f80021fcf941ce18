"""Feature-shape penalties: BSP (singular values of the feature matrices) and AFN (feature norms).

* **BSP**, Batch Spectral Penalization (Chen, Wang, Long & Wang, "Transferability vs. Discriminability: Batch
  Spectral Penalization for Adversarial Domain Adaptation", ICML 2019)::

      L_bsp = sum_{i=1}^{k} (sigma_i(F_s)^2 + sigma_i(F_t)^2)

  with ``sigma_1 >= sigma_2 >= ...`` the singular values of the ``(n, d)`` source and target feature batches
  (``k = 1`` and trade-off ``1e-4`` in the paper). Penalising the largest singular values keeps a few dominant
  directions (which adversarial alignment inflates, hurting discriminability) from taking over. The paper
  adds it to an adversarial method (BSP+DANN, BSP+CDAN); ``configs/method/bsp.yaml`` is BSP+CDAN, as TLlib's.
* **AFN**, Adaptive Feature Norm (Xu, Li, Yang & Lin, "Larger Norm More Transferable: An Adaptive Feature Norm
  Approach for Unsupervised Domain Adaptation", ICCV 2019). Stepwise (SAFN, the paper's main method)::

      L_safn = 1/n_s sum_i (||f_i^s||_2 - (sg(||f_i^s||_2) + dr))^2 + 1/n_t sum_j (same on f^t)

  ``sg`` = stop-gradient: the value is always ``2 dr^2`` while the gradient, ``-2 dr f/||f||`` per sample, enlarges
  every feature's norm by a step ``dr`` per update (``dr = 1``, trade-off ``0.05`` in the paper). Hard (HAFN)
  pulls the mean norm of each domain to a fixed radius ``R``::

      L_hafn = (1/n_s sum_i ||f_i^s||_2 - R)^2 + (1/n_t sum_j ||f_j^t||_2 - R)^2

  (the batch-mean norm, as the authors' HAFN code; ``R = 25`` there).

Both act on ``ctx.f_s`` / ``ctx.f_t`` (the classifier's input, after the bottleneck when there is one).
Computations run in float32 for half-precision features (float64 stays float64), autocast off.
"""

from __future__ import annotations

from typing import Optional

import torch

from da.losses.base import AdaptationLoss, StepContext


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def top_singular_values(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest singular values of ``x (n, d)`` (fewer when ``min(n, d) < k``), descending."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.linalg.svdvals(_upcast(x))[:k]


def _features(term: AdaptationLoss, ctx: StepContext):
    if not ctx.has_target:
        raise ValueError(f"{type(term).__name__} needs a target batch (ctx.f_t), got none")
    return ctx.f_s, ctx.f_t


class BatchSpectralPenalty(AdaptationLoss):
    """BSP (Chen et al., ICML 2019): ``sum_{i<=k} sigma_i(f_s)^2 + sigma_i(f_t)^2``.

    Args:
        k: how many of the largest singular values of each batch are penalised (1 in the paper).
        weight: the trade-off (``1e-4`` in the paper and TLlib; the default here).
        schedule, name: see :class:`~da.losses.base.AdaptationLoss`.

    Logged: ``sigma_s``, ``sigma_t`` (the largest singular value of each batch).

    Shape:
        - ``ctx.f_s``: ``(n_s, d)``, ``ctx.f_t``: ``(n_t, d)``; output: scalar >= 0.
    """

    name = "bsp"

    def __init__(self, k: int = 1, weight: float = 1e-4, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if int(k) < 1:
            raise ValueError(f"BSP needs k >= 1 singular values to penalise, got k={k}; the paper uses k=1")
        self.k = int(k)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        f_s, f_t = _features(self, ctx)
        s_s, s_t = top_singular_values(f_s, self.k), top_singular_values(f_t, self.k)
        self.last_logs = {"sigma_s": s_s[0].detach(), "sigma_t": s_t[0].detach()}
        return s_s.pow(2).sum() + s_t.pow(2).sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


class AdaptiveFeatureNorm(AdaptationLoss):
    """AFN (Xu et al., ICCV 2019): stepwise (SAFN, default) or hard (HAFN) feature-norm enlargement.

    Args:
        mode: ``"stepwise"``: ``mean_i (||f_i|| - (sg(||f_i||) + delta_r))^2`` per domain, summed over source and
            target; ``"hard"``: ``(mean_i ||f_i|| - radius)^2`` per domain, summed.
        delta_r: the stepwise increment ``dr`` (1.0 in the paper).
        radius: the hard variant's ``R`` (25 in the authors' code).
        weight: the trade-off ``lambda`` (0.05 in the paper, for both variants; the default here).
        schedule, name: see :class:`~da.losses.base.AdaptationLoss`.

    Logged: ``norm_s``, ``norm_t`` (mean feature norm of each batch: it should grow under SAFN).

    Shape:
        - ``ctx.f_s``: ``(n_s, d)``, ``ctx.f_t``: ``(n_t, d)``; output: scalar (``2 delta_r^2`` for SAFN).
    """

    name = "afn"
    MODES = ("stepwise", "hard")

    def __init__(self, mode: str = "stepwise", delta_r: float = 1.0, radius: float = 25.0, weight: float = 0.05,
                 schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if mode not in self.MODES:
            from da.errors import unknown_name
            raise unknown_name("AFN mode", mode, self.MODES)
        if mode == "stepwise" and delta_r <= 0:
            raise ValueError(f"stepwise AFN needs delta_r > 0, got {delta_r}; the paper uses 1.0")
        if mode == "hard" and radius <= 0:
            raise ValueError(f"hard AFN needs radius > 0, got {radius}; the authors use 25")
        self.mode, self.delta_r, self.radius = mode, float(delta_r), float(radius)

    def _domain(self, f: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=f.device.type, enabled=False):
            norm = _upcast(f).norm(p=2, dim=1)
        if self.mode == "stepwise":
            return (norm - (norm.detach() + self.delta_r)).pow(2).mean()
        return (norm.mean() - self.radius).pow(2)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        f_s, f_t = _features(self, ctx)
        self.last_logs = {"norm_s": f_s.detach().float().norm(dim=1).mean(),
                          "norm_t": f_t.detach().float().norm(dim=1).mean()}
        return self._domain(f_s) + self._domain(f_t)

    def extra_repr(self) -> str:
        knob = f"delta_r={self.delta_r}" if self.mode == "stepwise" else f"radius={self.radius}"
        return f"{super().extra_repr()}, mode={self.mode!r}, {knob}"
