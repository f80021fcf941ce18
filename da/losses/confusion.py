"""Prediction-shaped target terms: entropy minimisation, information maximisation, BNM and MCC.

All four look only at the classifier's outputs on the unlabelled target batch (``ctx.logits_t``); none needs a
discriminator or the features. With ``p_i = softmax(z_i)`` for target logits ``z (n, C)`` and
``H(q) = -sum_c q_c log q_c``:

* **Entropy minimisation** (Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NIPS 2004):
  ``L_ent = 1/n sum_i H(p_i)``.
* **Information maximisation** (the IM loss of SHOT: Liang, Hu & Feng, "Do We Really Need to Access the Source
  Data?", ICML 2020; after Krause, Perona & Gomes, NIPS 2010): ``L_im = 1/n sum_i H(p_i) - lambda_div H(p_bar)``,
  ``p_bar = 1/n sum_i p_i``: confident per sample, diverse over the batch. Its minimum is ``-lambda_div log C``.
* **BNM** (Cui et al., "Towards Discriminability and Diversity: Batch Nuclear-norm Maximization under Label
  Insufficient Situations", CVPR 2020): ``L_bnm = -||P||_* / n``, the nuclear norm (sum of singular values) of the
  ``(n, C)`` prediction matrix. The same number, with the opposite sign, is the ``bnm`` validator of
  :mod:`da.validators` (:func:`batch_nuclear_norm` lives here and is imported there).
* **MCC** (Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020): with
  temperature-scaled ``p_i = softmax(z_i / T)``, sample weights ``w_i = n (1 + e^{-H(p_i)}) / sum_j (1 + e^{-H(p_j)})``
  (detached), the class correlation ``C = P^T diag(w) P`` (``C x C``), row-normalised ``C~_jk = C_jk / sum_k' C_jk'``::

      L_mcc = (sum_jk C~_jk - sum_j C~_jj) / C

  the mean confusion of each class with the others (0 when no two classes are ever predicted together).

Entropies use ``log_softmax`` (exact, no ``+eps`` inside the log); computations run in float32 for half-precision
logits (float64 stays float64).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from da.losses.base import AdaptationLoss, StepContext


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def prediction_entropies(logits: torch.Tensor, eps: Optional[float] = None):
    """``(1/n sum_i H(p_i), H(p_bar))`` of ``p = softmax(logits)``: the two terms of information maximisation.

    The one home of these terms (the ``ent`` / ``im`` losses here, SHOT's objective in :mod:`da.methods.shot`).
    ``eps=None`` is exact (``log_softmax``; ``0 log 0 = 0`` for ``p_bar``); a float ``eps`` computes
    ``-sum p log(p + eps)`` as SHOT's authors' code does (1e-5 there).
    """
    logits = _upcast(logits)
    if eps is None:
        logp = F.log_softmax(logits, dim=-1)
        p = logp.exp()
        ent = -(p * logp).sum(-1).mean()
        p_bar = p.mean(0)
        div = -(p_bar * p_bar.clamp_min(torch.finfo(p_bar.dtype).tiny).log()).sum()
        return ent, div
    p = logits.softmax(-1)
    ent = -(p * (p + eps).log()).sum(-1).mean()
    p_bar = p.mean(0)
    return ent, -(p_bar * (p_bar + eps).log()).sum()


def prediction_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy ``-1/n sum_i sum_c p_ic log p_ic`` of probability rows ``probs (n, C)``."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy ``H(softmax(z_i))`` of logits ``(n, C)``, shape ``(n,)``, via ``log_softmax`` (exact)."""
    logp = F.log_softmax(_upcast(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def batch_nuclear_norm(probs: torch.Tensor) -> torch.Tensor:
    """``||P||_* / n``: the sum of the singular values of ``probs (n, C)`` divided by ``n`` (BNM, Cui et al. 2020).

    At most ``sqrt(min(n, C) / n)`` (one-hot predictions spread evenly over ``min(n, C)`` classes); ``1/sqrt(n C)``
    for uniform predictions, ``1/sqrt(n)`` for one class predicted everywhere.
    """
    return torch.linalg.svdvals(_upcast(probs)).sum() / probs.shape[0]


def class_confusion(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MCC's ``(sum C~ - trace C~) / C`` for probability rows ``probs (n, C)`` and sample weights ``weights (n,)``.

    ``C = probs^T diag(weights) probs``, ``C~`` = ``C`` with each row divided by its sum.
    """
    corr = (probs * weights.unsqueeze(1)).T @ probs
    corr = corr / corr.sum(dim=1, keepdim=True)
    return (corr.sum() - corr.diagonal().sum()) / probs.shape[1]


def _target_logits(term: AdaptationLoss, ctx: StepContext) -> torch.Tensor:
    if not ctx.has_target or ctx.logits_t is None:
        raise ValueError(f"{type(term).__name__} needs a target batch (ctx.logits_t), got none; it is an "
                         "unsupervised target term, so train with an unlabelled target (the default data set-up)")
    return ctx.logits_t


class EntropyMinimization(AdaptationLoss):
    """Target entropy minimisation, ``1/n sum_i H(softmax(z_i))`` (Grandvalet & Bengio, NIPS 2004).

    Shape:
        - ``ctx.logits_t``: ``(n, C)``; output: scalar, in ``[0, log C]``.
    """

    name = "ent"

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return entropy_from_logits(_target_logits(self, ctx)).mean()


class InformationMaximization(AdaptationLoss):
    """Information maximisation (SHOT, Liang et al. ICML 2020): ``1/n sum_i H(p_i) - diversity * H(p_bar)``.

    ``p_i = softmax(z_i)``, ``p_bar = 1/n sum_i p_i``. ``diversity`` (SHOT's default 1) weighs the batch-diversity
    term; 0 gives plain entropy minimisation. Logged: ``ent`` (the first term) and ``div`` (``H(p_bar)``).

    Shape:
        - ``ctx.logits_t``: ``(n, C)``; output: scalar, in ``[-diversity log C, log C]``.
    """

    name = "im"

    def __init__(self, diversity: float = 1.0, weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if diversity < 0:
            raise ValueError(f"InformationMaximization needs diversity >= 0, got {diversity}")
        self.diversity = float(diversity)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        ent, div = prediction_entropies(_target_logits(self, ctx))
        self.last_logs = {"ent": ent.detach(), "div": div.detach()}
        return ent - self.diversity * div

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, diversity={self.diversity}"


class BatchNuclearNorm(AdaptationLoss):
    """BNM (Cui et al., CVPR 2020): ``-||softmax(z_t)||_* / n``, maximising the target predictions' nuclear norm.

    The authors' code divides by ``min(n, C)`` (the mean singular value) instead of ``n``; the two agree when
    ``C >= n`` and this follows the paper (Eq. 7). Gradients go through the SVD (``torch.linalg.svdvals``).

    Shape:
        - ``ctx.logits_t``: ``(n, C)``; output: scalar, in ``[-sqrt(min(n, C)/n), 0)``.
    """

    name = "bnm"

    def forward(self, ctx: StepContext) -> torch.Tensor:
        return -batch_nuclear_norm(_upcast(_target_logits(self, ctx)).softmax(-1))


class MinimumClassConfusion(AdaptationLoss):
    """MCC (Jin et al., ECCV 2020): the class confusion of the temperature-scaled target predictions.

    ``p_i = softmax(z_i / T)``; ``w_i = n (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j)))``, detached (confident
    samples count more); ``C = P^T diag(w) P``, rows normalised to sum to 1; loss ``(sum C~ - trace C~) / C``
    (see :func:`class_confusion`). ``temperature`` 2.5 is the paper's (and TLlib's) default; the paper's
    trade-off is ``weight = 1``. Logged: ``ent`` (mean entropy of the scaled predictions).

    Shape:
        - ``ctx.logits_t``: ``(n, C)``; output: scalar, in ``[0, (C - 1)/C]``.
    """

    name = "mcc"

    def __init__(self, temperature: float = 2.5, weight: float = 1.0, schedule="constant",
                 name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if temperature <= 0:
            raise ValueError(f"MCC needs temperature > 0, got {temperature}; the paper uses 2.5")
        self.temperature = float(temperature)

    def sample_weights(self, probs: torch.Tensor) -> torch.Tensor:
        """``n (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j)))`` from probability rows (detached)."""
        probs = probs.detach()
        h = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        e = 1.0 + torch.exp(-h)
        self.last_logs = {"ent": h.mean()}
        return probs.shape[0] * e / e.sum()

    def forward(self, ctx: StepContext) -> torch.Tensor:
        probs = (_upcast(_target_logits(self, ctx)) / self.temperature).softmax(-1)
        return class_confusion(probs, self.sample_weights(probs))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"
