"""ADDA: Adversarial Discriminative Domain Adaptation (Tzeng, Hoffman, Saenko & Darrell, CVPR 2017).

Two stages. (1) Pre-training: a source encoder ``M_s`` and a classifier ``C`` trained with cross-entropy on the
labelled source (a source-only ``da fit`` run). (2) Adversarial adaptation, this method: a target encoder ``M_t``
initialised from ``M_s`` (``--model.init_from <source checkpoint>``) plays a GAN game against a domain discriminator
``D`` with the *inverted-label* GAN loss, while ``M_s`` and ``C`` stay fixed::

    min_D    L_adv_D = - E_{x_s} log D(M_s(x_s)) - E_{x_t} log(1 - D(M_t(x_t)))       (source = 1, target = 0)
    min_M_t  L_adv_M = - E_{x_t} log D(M_t(x_t))                                       (inverted labels: target = 1)

one ``D`` step then one ``M_t`` step per iteration. The target is classified by ``C(M_t(x))``; the source, by the
fixed source model ``C(M_s(x))`` (so ``val/source_acc`` is the source model's and stays constant).

In ``da``: the model's ``backbone`` + ``bottleneck`` *is* the target encoder (it is what ``forward``, ``da test``
and a later ``init_from`` use), ``method.source_encoder`` is a frozen copy of them made at set-up, ``classifier``
is frozen, and ``method.discriminator`` is the paper's 500-500-1 MLP (ReLU, no batch norm, no dropout). The two
optimisers (``discriminator``, ``target_encoder``) are the recipe's optimiser (the paper used Adam with lr 2e-4 and
beta1 0.5 for digits; a recipe can say so). The frozen parts are kept in eval mode (BatchNorm statistics fixed).
"""

from __future__ import annotations

import copy
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from da.losses.adversarial import DomainDiscriminator
from da.methods.base import NamedParameters, TrainingMethod, freeze, trainable


class ADDA(TrainingMethod):
    """ADDA's adaptation stage (see the module docstring): inverted-label GAN loss, source encoder and head fixed.

    Args:
        hidden: width of the discriminator's hidden layers (the paper: 500).
        num_layers: hidden layers of the discriminator (the paper: 2).
    Logged: ``loss`` (= ``d_loss + g_loss``), ``d_loss``, ``g_loss``, ``disc_acc``.
    """

    name = "adda"
    needs_init_from = True

    def __init__(self, hidden: int = 500, num_layers: int = 2):
        super().__init__()
        self.hidden, self.num_layers = int(hidden), int(num_layers)
        self.discriminator: nn.Module = nn.Identity()
        self.source_encoder: nn.Module = nn.Identity()

    def setup(self, module) -> None:
        self.source_encoder = copy.deepcopy(nn.Sequential(module.backbone, module.bottleneck))
        freeze(self.source_encoder)
        freeze(module.classifier)
        self.discriminator = DomainDiscriminator(module.classifier.in_features, self.hidden, 2, batch_norm=False,
                                                 dropout=0.0, num_layers=self.num_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        self.source_encoder.eval()  # the fixed source model keeps its BatchNorm statistics and has no dropout
        return self

    def parameter_sets(self, module) -> Dict[str, NamedParameters]:
        named = list(module.named_parameters())
        return {"discriminator": trainable(named, ("method.discriminator.",)),
                "target_encoder": trainable(named, ("backbone.", "bottleneck."))}

    def target_features(self, module, x: Any) -> torch.Tensor:
        return module.bottleneck(module.backbone(x))

    def discriminator_loss(self, f_s: torch.Tensor, f_t: torch.Tensor):
        """``L_adv_D``: BCE with source = 1, target = 0 (each domain averaged); and the discriminator accuracy."""
        d_s, d_t = self.discriminator(f_s).squeeze(-1), self.discriminator(f_t).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s)) + \
            F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))
        acc = 0.5 * ((d_s > 0).float().mean() + (d_t <= 0).float().mean())
        return loss, acc

    def generator_loss(self, f_t: torch.Tensor) -> torch.Tensor:
        """``L_adv_M``: BCE of the target features against the *inverted* label 1 ("source")."""
        d_t = self.discriminator(f_t).squeeze(-1)
        return F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))

    def training_step(self, module, batch: Dict[str, Any], optimizers: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        x_s, x_t = batch["source"][0], batch["target"][0]
        with torch.no_grad():
            f_s = self.source_encoder(x_s)
        f_t = self.target_features(module, x_t)
        d_loss, acc = self.discriminator_loss(f_s, f_t.detach())
        self.update(module, optimizers["discriminator"], d_loss)
        g_loss = self.generator_loss(f_t)
        self.update(module, optimizers["target_encoder"], g_loss)
        return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "disc_acc": acc}

    def eval_logits(self, module, x: Any, domain: str) -> torch.Tensor:
        if domain == "source":
            return module.classifier(self.source_encoder(x))
        return module(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, hidden={self.hidden}, num_layers={self.num_layers}"
