"""MCD: Maximum Classifier Discrepancy (Saito, Watanabe, Ushiku & Harada, CVPR 2018).

A feature generator ``G`` (``backbone`` + ``bottleneck``) and two classifiers ``F1`` (the model's ``classifier``) and
``F2`` (``method.classifier2``, same shape, its own initialisation). With ``p_j = softmax(F_j(G(x)))`` and the
discrepancy ``d(p1, p2) = 1/K sum_k |p1_k - p2_k|`` (mean over the batch), one iteration is three steps::

    A:  min_{G, F1, F2}  CE(F1(G(x_s)), y_s) + CE(F2(G(x_s)), y_s)
    B:  min_{F1, F2}     CE(F1(G(x_s)), y_s) + CE(F2(G(x_s)), y_s) - d(p1(x_t), p2(x_t))      (G fixed)
    C:  min_G            d(p1(x_t), p2(x_t))          repeated n times (num_generator_steps, 4 in the paper)   (F fixed)

B makes the classifiers disagree on target samples outside the source support; C moves the target features to
where they agree. Two optimisers, ``generator`` and ``classifiers`` (the recipe's optimiser for both): A steps both, B
the classifiers, C the generator. Evaluation uses the ensemble ``(p1 + p2) / 2`` (``eval_head: ensemble``; the
paper reports it next to ``F1`` and ``F2``), or one head (``f1`` / ``f2``).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from da.errors import unknown_name
from da.methods.base import NamedParameters, TrainingMethod, trainable

EVAL_HEADS = ("ensemble", "f1", "f2")


def classifier_discrepancy(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """``d(p1, p2) = mean_i 1/K sum_k |softmax(logits1)_ik - softmax(logits2)_ik|`` (MCD's L1 discrepancy)."""
    return (logits1.softmax(-1) - logits2.softmax(-1)).abs().mean()


class MCD(TrainingMethod):
    """MCD's three-step update (see the module docstring).

    Args:
        num_generator_steps: n, the repetitions of step C per iteration (the paper: 4 for digits).
        eval_head: ``ensemble`` (mean of the two heads' probabilities), ``f1`` or ``f2``.
    Logged: ``loss`` (step A's cross-entropy), ``cls_a``, ``discrepancy_b`` (after A, what B maximises),
    ``discrepancy_c`` (the last C step's value).
    """

    name = "mcd"

    def __init__(self, num_generator_steps: int = 4, eval_head: str = "ensemble"):
        super().__init__()
        if num_generator_steps < 1:
            raise ValueError(f"num_generator_steps must be >= 1, got {num_generator_steps}")
        if eval_head not in EVAL_HEADS:
            raise unknown_name("MCD eval_head", eval_head, EVAL_HEADS)
        self.num_generator_steps, self.eval_head = int(num_generator_steps), eval_head
        self.classifier2: nn.Module = nn.Identity()

    def setup(self, module) -> None:
        clf = module.classifier
        self.classifier2 = nn.Linear(clf.in_features, clf.out_features)  # its own random initialisation

    def parameter_sets(self, module) -> Dict[str, NamedParameters]:
        named = list(module.named_parameters())
        return {"generator": trainable(named, ("backbone.", "bottleneck.")),
                "classifiers": trainable(named, ("classifier.", "method.classifier2."))}

    def _heads(self, module, f: torch.Tensor):
        return module.classifier(f), self.classifier2(f)

    def _features(self, module, x: Any) -> torch.Tensor:
        return module.bottleneck(module.backbone(x))

    def training_step(self, module, batch: Dict[str, Any], optimizers: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        x_s, y_s, d_s = batch["source"]
        x_t = batch["target"][0]
        opt_g, opt_c = optimizers["generator"], optimizers["classifiers"]
        n_s = len(y_s)

        # A: source cross-entropy on both heads, generator and classifiers
        l1, l2 = self._heads(module, self._features(module, x_s))
        cls_a = module.supervised_loss(l1, y_s, d_s) + module.supervised_loss(l2, y_s, d_s)
        opt_g.zero_grad(set_to_none=True)
        opt_c.zero_grad(set_to_none=True)
        module.manual_backward(cls_a)
        opt_g.step()
        opt_c.step()

        # B: classifiers maximise the target discrepancy (minus source CE), generator fixed
        with torch.no_grad():
            f = self._features(module, torch.cat([x_s, x_t]) if isinstance(x_s, torch.Tensor) else x_s)
            f_s, f_t = (f[:n_s], f[n_s:]) if isinstance(x_s, torch.Tensor) else (f, self._features(module, x_t))
        l1, l2 = self._heads(module, f_s)
        t1, t2 = self._heads(module, f_t)
        disc_b = classifier_discrepancy(t1, t2)
        loss_b = module.supervised_loss(l1, y_s, d_s) + module.supervised_loss(l2, y_s, d_s) - disc_b
        self.update(module, opt_c, loss_b)

        # C: the generator minimises the discrepancy, n times, classifiers fixed
        for _ in range(self.num_generator_steps):
            t1, t2 = self._heads(module, self._features(module, x_t))
            disc_c = classifier_discrepancy(t1, t2)
            self.update(module, opt_g, disc_c)
        return {"loss": cls_a.detach(), "cls_a": cls_a.detach(), "discrepancy_b": disc_b.detach(),
                "discrepancy_c": disc_c.detach()}

    def eval_logits(self, module, x: Any, domain: str) -> torch.Tensor:
        l1, l2 = self._heads(module, self._features(module, x))
        if self.eval_head == "f1":
            return l1
        if self.eval_head == "f2":
            return l2
        return (0.5 * (l1.float().softmax(-1) + l2.float().softmax(-1))).clamp_min(1e-12).log()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_generator_steps={self.num_generator_steps}, eval_head={self.eval_head!r}"
