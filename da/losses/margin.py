"""MDD, Margin Disparity Discrepancy (Zhang, Liu, Long & Jordan, "Bridging Theory and Algorithm for Domain
Adaptation", ICML 2019).

An auxiliary (adversarial) classifier ``f'`` looks at the features through a gradient-reversal layer. With the main
classifier's predicted labels ``y^s_i = argmax f(z^s_i)`` and ``y^t_j = argmax f(z^t_j)`` (no gradient) and the
margin factor ``gamma``::

    L_mdd = gamma * 1/n_s sum_i CE(f'(z^s_i), y^s_i)  -  1/n_t sum_j log(1 - softmax(f'(z^t_j))[y^t_j])

``f'`` minimises ``L_mdd``: it agrees with ``f`` on the source and disagrees on the target, i.e. it maximises the
(surrogate) disparity discrepancy ``D = disp_T - gamma disp_S = -L_mdd``. The features get the reversed gradient
and so minimise the discrepancy. This is the paper's Eq. 29-30 and TLlib's ``ClassificationMarginDisparityDiscrepancy``
(whose value is ``-L_mdd``; it is minimised with a minus sign there); ``log(1 - p_y)`` is computed exactly as
``logsumexp_{c != y} z'_c - logsumexp_c z'_c`` instead of TLlib's ``log(clamp(1 - p_y + 1e-6, max=1))``.

The GRL coefficient and the weights follow :class:`~da.losses.adversarial.DomainAdversarialLoss` (the same
``grad_reverse`` and schedules): ``schedule`` is the GRL coefficient's shape over progress, scaled by ``grl_max``, so
the features get ``-weight * grl_max * lambda_p`` times the gradient and the auxiliary head ``weight`` times it. The
authors' code (and TLlib) use ``grl_max = 0.1`` with the DANN-shaped ramp, ``gamma = 4`` (their default; the paper
studies gamma in 1..4 on Office-31) and trade-off 1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from da.losses.adversarial import _feature_dim, _num_classes, grad_reverse
from da.losses.base import AdaptationLoss, StepContext
from da.losses.schedules import Constant, make_schedule


def auxiliary_head(in_features: int, num_classes: int, hidden: int = 1024, num_layers: int = 1,
                   dropout: float = 0.5) -> nn.Sequential:
    """``[Linear -> ReLU -> (Dropout)] x num_layers -> Linear(num_classes)``: MDD's adversarial classifier ``f'``."""
    if in_features <= 0 or num_classes < 2 or hidden <= 0 or num_layers < 0 or not 0 <= dropout < 1:
        raise ValueError(f"the MDD head needs in_features > 0, num_classes >= 2, hidden > 0, num_layers >= 0 and "
                         f"0 <= dropout < 1, got {in_features}, {num_classes}, {hidden}, {num_layers}, {dropout}")
    layers, width = [], in_features
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def log_one_minus_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(logits)[i, labels_i])`` per row, exactly: ``logsumexp_{c != y} - logsumexp_c``."""
    mask = F.one_hot(labels, logits.shape[-1]).bool()
    return logits.masked_fill(mask, float("-inf")).logsumexp(-1) - logits.logsumexp(-1)


def margin_disparity(logits_s: torch.Tensor, adv_s: torch.Tensor, logits_t: torch.Tensor, adv_t: torch.Tensor,
                     margin: float) -> torch.Tensor:
    """``gamma CE(adv_s, argmax logits_s) - mean log(1 - softmax(adv_t)[argmax logits_t])`` (``L_mdd`` above)."""
    pred_s, pred_t = logits_s.detach().argmax(-1), logits_t.detach().argmax(-1)
    return margin * F.cross_entropy(adv_s, pred_s) - log_one_minus_softmax(adv_t, pred_t).mean()


class MarginDisparityDiscrepancy(AdaptationLoss):
    """MDD (Zhang et al., ICML 2019): an adversarial head ``f'`` behind a GRL, margin factor ``gamma``.

    Args:
        margin: ``gamma`` (4, the authors' and TLlib's default).
        in_features, num_classes: the head's input and output sizes; ``None``: taken from the model at
            :meth:`setup` (``classifier.in_features`` / ``classifier.out_features``).
        hidden, num_layers, dropout: the head's shape (:func:`auxiliary_head`); the authors' and TLlib's head is
            ``Linear(d, 1024) -> ReLU -> Dropout(0.5) -> Linear(1024, C)`` (``num_layers=1``); ``num_layers=0`` is a
            linear head, the same hypothesis class as ``da``'s linear classifier, but it diverged on the Amazon
            features (the reversed gradient scales the features up without bound; docs/methods.md).
        grl_max: the largest GRL coefficient (0.1 in the authors' code).
        weight: scales the whole term (both players); 1 in the paper.
        schedule: the shape of the GRL coefficient over progress (default ``"dann"``: ``2/(1+exp(-10p)) - 1``),
            multiplied by ``grl_max``.

    Logged: ``agree_s`` / ``agree_t`` (how often ``argmax f' = argmax f`` on each batch: high on the source, low on
    the target while the head wins), ``grl_coeff``.

    Shape:
        - ``ctx.f_s``: ``(n_s, d)``, ``ctx.f_t``: ``(n_t, d)``, ``ctx.logits_s``: ``(n_s, C)``,
          ``ctx.logits_t``: ``(n_t, C)``; output: scalar >= 0.
    """

    name = "mdd"

    def __init__(self, margin: float = 4.0, in_features: Optional[int] = None, num_classes: Optional[int] = None,
                 hidden: int = 1024, num_layers: int = 1, dropout: float = 0.5, grl_max: float = 0.1,
                 weight: float = 1.0, schedule="dann", name: Optional[str] = None):
        super().__init__(weight=weight, schedule="constant", name=name)
        if margin <= 0:
            raise ValueError(f"MDD needs margin (gamma) > 0, got {margin}; the paper uses 4")
        if grl_max <= 0:
            raise ValueError(f"MDD needs grl_max > 0, got {grl_max}; the authors use 0.1")
        self.grl_schedule = make_schedule(schedule)
        self.schedule = Constant()
        self.margin, self.grl_max = float(margin), float(grl_max)
        self.hidden, self.num_layers, self.dropout = int(hidden), int(num_layers), float(dropout)
        self.in_features, self.num_classes = in_features, num_classes
        self.head: Optional[nn.Sequential] = None
        if in_features is not None and num_classes is not None:
            self.build(in_features, num_classes)

    def build(self, in_features: int, num_classes: int) -> "MarginDisparityDiscrepancy":
        """Build the adversarial head without a model (plain PyTorch use); returns ``self``."""
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.head = auxiliary_head(self.in_features, self.num_classes, self.hidden, self.num_layers, self.dropout)
        return self

    def setup(self, module: nn.Module) -> None:
        """Build the head from the model's feature size and number of classes (unless given)."""
        if self.head is None:
            self.build(self.in_features if self.in_features is not None else _feature_dim(module),
                       self.num_classes if self.num_classes is not None else _num_classes(module))

    def grl_coeff(self, progress: float) -> float:
        """``grl_max * schedule(progress)``: the factor of the reversed gradient the features get."""
        return self.grl_max * self.grl_schedule(progress)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("MarginDisparityDiscrepancy has no head: call setup(model) or "
                               "build(in_features, num_classes) first, or pass in_features= and num_classes=")
        if not ctx.has_target:
            raise ValueError("MarginDisparityDiscrepancy needs a target batch (ctx.f_t, ctx.logits_t), got none")
        n_s = ctx.f_s.shape[0]
        coeff = self.grl_coeff(ctx.progress)
        adv = self.head(grad_reverse(torch.cat([ctx.f_s, ctx.f_t], dim=0), coeff))
        if adv.dtype in (torch.float16, torch.bfloat16):
            adv = adv.float()
        adv_s, adv_t = adv[:n_s], adv[n_s:]
        value = margin_disparity(ctx.logits_s, adv_s, ctx.logits_t, adv_t, self.margin)
        with torch.no_grad():
            agree_s = (adv_s.argmax(-1) == ctx.logits_s.argmax(-1)).float().mean()
            agree_t = (adv_t.argmax(-1) == ctx.logits_t.argmax(-1)).float().mean()
        self.last_logs = {"agree_s": agree_s, "agree_t": agree_t, "grl_coeff": torch.tensor(coeff)}
        return value

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, weight={self.weight}, margin={self.margin}, grl_max={self.grl_max}, "
                f"grl_schedule={self.grl_schedule}")
