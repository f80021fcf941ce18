"""FixMatch self-training (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020), applied to the unlabelled target as in TLlib's self-training baselines.

With a labelled batch of ``B`` source samples and ``mu B`` unlabelled target samples, a weak view ``alpha(x)`` and a
strong view ``A(x)`` of each target sample (:mod:`da.methods.augment`)::

    q_i   = softmax(f(alpha(x_t_i)))            (no gradient)
    y^_i  = argmax q_i,        m_i = 1[max q_i >= tau]
    L     = CE(f(alpha(x_s)), y_s) + lambda_u * 1/(mu B) sum_i m_i CE(f(A(x_t_i)), y^_i)

so a target sample contributes only when the weak view's prediction is confident (``threshold`` tau, 0.95 in the
paper), and its pseudo-label then trains the strong view. The labelled, weak and strong batches go through **one**
forward (BatchNorm sees them together, as the paper's interleaving does). The ratio ``mu`` (7 in the paper) is the
data module's ``unlabeled_ratio`` (the target loader's batch is ``round(mu B)``), set in
``configs/method/fixmatch.yaml``.

A single optimiser over the whole model (the recipe's): FixMatch needs no update rule of its own, only its own
views of the batch, which a loss term cannot make (it sees features, not inputs), hence a ``TrainingMethod``.
Images use flip-and-shift / RandAugment + Cutout; feature vectors use Gaussian noise scaled by each feature's batch
std (weak) plus masking of a random 30 % of the dimensions (strong); see :mod:`da.methods.augment` for why. Text
(token ids) has no such pair here: a clear error.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from da.errors import UserError
from da.methods.augment import strong_features, strong_image, weak_features, weak_image
from da.methods.base import TrainingMethod


def fixmatch_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor,
                  threshold: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``1/n sum_i 1[max q_i >= threshold] CE(logits_strong_i, argmax q_i)``, ``q = softmax(logits_weak)`` detached.

    Returns ``(loss, mask, pseudo_labels)``; samples below the threshold contribute exactly 0 (and no gradient).
    """
    q = logits_weak.detach().float().softmax(-1)
    conf, pseudo = q.max(-1)
    mask = (conf >= threshold).to(logits_strong.dtype)
    ce = F.cross_entropy(logits_strong, pseudo, reduction="none")
    return (ce * mask).mean(), mask, pseudo


class FixMatch(TrainingMethod):
    """Confidence-thresholded pseudo-labels from a weak view, cross-entropy on a strong view (module docstring).

    Args:
        threshold: tau, the confidence a weak-view prediction needs to become a pseudo-label (0.95).
        weight: lambda_u, the weight of the unlabelled loss (1 in the paper).
        augment_labeled: the labelled batch gets the weak augmentation too (as in the paper).
        num_ops: RandAugment's N (2). ``flip``: horizontal flips in the weak view (images; off: digits).
        weak_noise, strong_noise, strong_mask: the feature-vector views (see :mod:`da.methods.augment`).
    Logged: ``loss``, ``cls``, ``unlabeled``, ``mask_rate`` (fraction of target samples above the threshold),
    ``pseudo_acc`` (accuracy of the retained pseudo-labels, from the target labels that travel with the batch for
    diagnostics only; never used for training).
    """

    name = "fixmatch"

    def __init__(self, threshold: float = 0.95, weight: float = 1.0, augment_labeled: bool = True, num_ops: int = 2,
                 flip: bool = False, weak_noise: float = 0.1, strong_noise: float = 0.3, strong_mask: float = 0.3):
        super().__init__()
        if not 0 <= threshold <= 1:
            raise ValueError(f"FixMatch threshold must be in [0, 1], got {threshold}")
        if weight < 0 or num_ops < 0 or not 0 <= strong_mask < 1:
            raise ValueError(f"FixMatch needs weight >= 0, num_ops >= 0 and strong_mask in [0, 1), got {weight}, "
                             f"{num_ops}, {strong_mask}")
        self.threshold, self.weight, self.augment_labeled = float(threshold), float(weight), bool(augment_labeled)
        self.num_ops, self.flip = int(num_ops), bool(flip)
        self.weak_noise, self.strong_noise = float(weak_noise), float(strong_noise)
        self.strong_mask = float(strong_mask)

    def weak(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return weak_image(x, flip=self.flip) if x.ndim == 4 else weak_features(x, self.weak_noise)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return strong_image(weak_image(x, flip=self.flip), self.num_ops) if x.ndim == 4 else \
            strong_features(x, self.strong_noise, self.strong_mask)

    @staticmethod
    def _check(x: Any) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (2, 4):
            kind = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise UserError(f"FixMatch augments images (n, C, H, W) or feature vectors (n, d); got a {kind} "
                            "(for text use pre-computed features, e.g. configs/data/amazon_minilm_features.yaml)")

    def training_step(self, module, batch: Dict[str, Any], optimizers: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        x_s, y_s, d_s = batch["source"]
        x_t, y_t = batch["target"][0], batch["target"][1]
        with torch.no_grad():
            xs = self.weak(x_s) if self.augment_labeled else x_s
            weak, strong = self.weak(x_t), self.strong(x_t)
        n_s, n_t = len(y_s), len(x_t)
        logits = module(torch.cat([xs, weak, strong]))
        logits_s, logits_w, logits_st = logits[:n_s], logits[n_s:n_s + n_t], logits[n_s + n_t:]
        cls = module.supervised_loss(logits_s, y_s, d_s)
        unl, mask, pseudo = fixmatch_loss(logits_w, logits_st, self.threshold)
        loss = cls + self.weight * unl
        self.update(module, optimizers["model"], loss)
        kept = mask.sum()
        pseudo_acc = ((pseudo == y_t).float() * mask).sum() / kept.clamp_min(1)
        return {"loss": loss.detach(), "cls": cls.detach(), "unlabeled": unl.detach(), "mask_rate": mask.mean(),
                "pseudo_acc": pseudo_acc}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, threshold={self.threshold}, weight={self.weight}, num_ops={self.num_ops}"
