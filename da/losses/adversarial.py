"""Adversarial domain alignment: gradient reversal, a domain discriminator, DANN and CDAN.

DANN (Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015; Ganin et al. JMLR
2016): a discriminator ``D`` learns to tell source features from target features while the feature extractor
``G`` learns to fool it, through a gradient-reversal layer (GRL) with coefficient ``lambda_p``::

    L_dom = 1/2 [ BCE(D(GRL(f_s)), 1) + BCE(D(GRL(f_t)), 0) ]
    dL/dtheta_D  = +weight            * dL_dom/dtheta_D      (the discriminator trains at full strength)
    dL/dtheta_G  = -weight * lambda_p * dL_dom/dtheta_G      (the features get the reversed, scheduled gradient)

How the numbers come out right here: ``TransferModule`` multiplies a term's value by
``weight * schedule(p)``. For this term ``schedule`` is **the GRL schedule** (``lambda_p``, default ``"dann"``:
``2 / (1 + exp(-10 p)) - 1``): it is stored as ``grl_schedule`` and applied inside, as the GRL coefficient,
while the outer ``self.schedule`` is constant 1. So ``weight`` scales both players (1 = the paper) and
``lambda_p`` only the reversed gradient, as in the paper. The logged ``<term>_weight`` is ``weight``; the GRL
coefficient is logged as ``grl_coeff``.

CDAN (Long, Cao, Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018) conditions the
discriminator on the classifier's prediction ``g = softmax(logits)`` through the multilinear map
``T(f, g) = vec(f g^T)`` (or the randomised ``(R_f f) * (R_g g) / sqrt(k)`` when ``d C`` is large) and, with
entropy conditioning (CDAN+E), weights each sample by ``1 + exp(-H(g))``, normalised within each domain.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from da.losses.base import AdaptationLoss, StepContext
from da.losses.schedules import Constant, make_schedule, schedule_value


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass."""
    return _ReverseGrad.apply(x, float(coeff))


class GradientReversal(nn.Module):
    """Gradient-reversal layer (Ganin & Lempitsky 2015): ``forward(x) = x``, ``backward(g) = -coeff * g``."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


def default_dropout(batch_norm: bool) -> float:
    """The discriminator dropout of the recipe that goes with ``batch_norm``: 0 with batch norm, 0.5 without."""
    return 0.0 if batch_norm else 0.5


class DomainDiscriminator(nn.Sequential):
    """MLP ``[Linear -> (BatchNorm) -> ReLU -> (Dropout)] x num_layers -> Linear`` returning domain logits.

    One logit (binary, for BCE) when ``num_domains == 2``, else ``num_domains`` logits (cross-entropy).
    ``num_layers=0`` is a linear (logistic-regression) domain classifier, the shallow DANN of Ganin et al. (JMLR 2016,
    Sec. 5.1).

    ``dropout=None`` (default) picks the recipe that matches ``batch_norm``:

    * ``batch_norm=True`` -> **no dropout**: TLlib's ``DomainDiscriminator`` (Linear-BN-ReLU x 2 -> Linear), the
      discriminator behind TLlib's published DANN / CDAN numbers on digits, Office-31 and Office-Home, which ``da``'s
      recipes follow (one forward on ``cat(x_s, x_t)``, BN in the discriminator). Dropout on top of BN there only
      adds noise and cost (two ``Dropout(0.5)`` on ``2n x 1024`` activations: +9.6% on a LeNet DANN step at
      batch 128 + 128 on a CPU, ``benchmarks/tllib_step.py``).
    * ``batch_norm=False`` -> **dropout 0.5** after each ReLU: the DANN paper's discriminator (Ganin & Lempitsky
      2015, Office experiments: ``x -> 1024 -> 1024 -> d``, in the authors' Caffe model with ``Dropout(0.5)``), also
      TLlib's ``batch_norm=False`` variant.

    An explicit ``dropout`` (e.g. ``0.5`` with batch norm, the default of earlier ``da`` versions) overrides this.
    """

    def __init__(self, in_features: int, hidden: int = 1024, num_domains: int = 2, batch_norm: bool = True,
                 dropout: Optional[float] = None, num_layers: int = 2):
        dropout = default_dropout(batch_norm) if dropout is None else float(dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"discriminator dropout must be in [0, 1), got {dropout}; use None for the recipe default "
                             f"(0 with batch_norm, 0.5 without)")
        if in_features <= 0 or hidden <= 0 or num_layers < 0:
            raise ValueError(f"DomainDiscriminator needs in_features, hidden > 0 and num_layers >= 0, got "
                             f"{in_features}, {hidden}, {num_layers}")
        if num_domains < 2:
            raise ValueError(f"a domain discriminator needs num_domains >= 2, got {num_domains}")
        layers = []
        width = in_features
        for _ in range(num_layers):
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1 if num_domains == 2 else num_domains))
        super().__init__(*layers)
        self.num_domains = num_domains


def _feature_dim(module: nn.Module) -> int:
    """The size of ``f`` (the classifier's input) of a TransferModule-like model."""
    clf = getattr(module, "classifier", None)
    if isinstance(clf, nn.Linear):
        return clf.in_features
    bb = getattr(module, "backbone", None)
    if isinstance(getattr(bb, "out_features", None), int):
        return bb.out_features
    raise TypeError(f"cannot tell the feature size of {type(module).__name__}; pass in_features=...")


def _num_classes(module: nn.Module) -> int:
    """The number of classes of a TransferModule-like model (``classifier.out_features`` or ``num_classes``)."""
    clf = getattr(module, "classifier", None)
    num_classes = clf.out_features if isinstance(clf, nn.Linear) else getattr(module, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"cannot tell the number of classes of {type(module).__name__}; pass num_classes=...")
    return int(num_classes)


class DomainAdversarialLoss(AdaptationLoss):
    """DANN: ``1/2 [BCE(D(GRL_lambda(f_s)), 1) + BCE(D(GRL_lambda(f_t)), 0)]``, discriminator accuracy logged.

    Args:
        in_features: feature size; ``None``: taken from the model at :meth:`setup` (``classifier.in_features``).
        hidden, batch_norm, dropout, num_layers: the discriminator's shape (:class:`DomainDiscriminator`);
            ``dropout=None``: 0 with ``batch_norm`` (TLlib's discriminator, the default), 0.5 without (the paper's).
        multi_source: a discriminator over ``num_sources + 1`` domains (cross-entropy; domain labels are
            ``ctx.d_s`` for the labelled batch and ``num_sources`` for the target batch).
        weight: scales the whole term (both players); 1 reproduces the paper.
        schedule: the **GRL coefficient** ``lambda_p`` over progress (default ``"dann"``), see the module doc.

    The two domains are averaged separately (each has weight 1/2) so unequal batch sizes do not tilt the
    loss. Labelled target samples in the source batch (``d_s == num_sources``) are labelled "target".
    Logged: ``disc_acc`` (mean of the per-domain accuracies), ``grl_coeff``.
    """

    name = "dann"

    def __init__(self, in_features: Optional[int] = None, hidden: int = 1024, batch_norm: bool = True,
                 dropout: Optional[float] = None, num_layers: int = 2, multi_source: bool = False, weight: float = 1.0,
                 schedule="dann", name: Optional[str] = None):
        super().__init__(weight=weight, schedule="constant", name=name)
        self.grl_schedule = make_schedule(schedule)
        self.schedule = Constant()
        self.hidden, self.batch_norm, self.dropout, self.num_layers = hidden, batch_norm, dropout, num_layers
        self.multi_source = bool(multi_source)
        self.in_features = in_features
        self.discriminator: Optional[DomainDiscriminator] = None
        if in_features is not None and not self.multi_source:
            self.discriminator = self._make(in_features, 2)

    def _make(self, in_features: int, num_domains: int) -> DomainDiscriminator:
        return DomainDiscriminator(in_features, self.hidden, num_domains, self.batch_norm, self.dropout,
                                   self.num_layers)

    def _input_dim(self, module: nn.Module) -> int:
        return self.in_features if self.in_features is not None else _feature_dim(module)

    def setup(self, module: nn.Module) -> None:
        """Build the discriminator from the model's feature size (and ``num_sources`` when multi-source)."""
        domains = int(getattr(module, "num_sources", 1)) + 1 if self.multi_source else 2
        if self.discriminator is None or self.discriminator.num_domains != domains:
            self.discriminator = self._make(self._input_dim(module), domains)

    def build(self, in_features: int, num_sources: int = 1) -> "DomainAdversarialLoss":
        """Build the discriminator without a model (plain PyTorch use); returns ``self``."""
        self.in_features = in_features
        self.discriminator = self._make(in_features, num_sources + 1 if self.multi_source else 2)
        return self

    def _disc_input(self, ctx: StepContext, coeff: float) -> torch.Tensor:
        return grad_reverse(torch.cat([ctx.f_s, ctx.f_t], dim=0), coeff)

    def _domain_labels(self, ctx: StepContext):
        n_s, n_t = ctx.f_s.shape[0], ctx.f_t.shape[0]
        dev = ctx.f_s.device
        d_s = ctx.d_s if ctx.d_s is not None else torch.zeros(n_s, dtype=torch.long, device=dev)
        if self.multi_source:
            return d_s.long(), torch.full((n_t,), ctx.num_sources, dtype=torch.long, device=dev)
        return (d_s < ctx.num_sources).float(), torch.zeros(n_t, device=dev)

    def _per_sample(self, logits: torch.Tensor, labels: torch.Tensor):
        """Per-sample domain loss and correctness (bf16/fp16 logits are upcast to float32)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.discriminator.num_domains == 2:
            logit = logits.squeeze(-1)
            labels = labels.to(logit.dtype)
            return (F.binary_cross_entropy_with_logits(logit, labels, reduction="none"),
                    ((logit > 0).float() == labels).float())
        if int(labels.max()) >= self.discriminator.num_domains:
            raise ValueError(f"domain label {int(labels.max())} but the discriminator has "
                             f"{self.discriminator.num_domains} domains; is num_sources right?")
        return F.cross_entropy(logits, labels, reduction="none"), (logits.argmax(-1) == labels).float()

    def _sample_weights(self, ctx: StepContext):
        return None, None

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if self.discriminator is None:
            raise RuntimeError(f"{type(self).__name__} has no discriminator: call setup(model) or "
                               "build(in_features, num_sources) first, or pass in_features=...")
        if not ctx.has_target:
            raise ValueError(f"{type(self).__name__} needs a target batch (ctx.f_t), got none")
        coeff = schedule_value(self.grl_schedule, ctx.progress, ctx.step)
        logits = self.discriminator(self._disc_input(ctx, coeff))
        n_s = ctx.f_s.shape[0]
        lab_s, lab_t = self._domain_labels(ctx)
        loss, correct = self._per_sample(logits, torch.cat([lab_s, lab_t]))
        w_s, w_t = self._sample_weights(ctx)
        if w_s is None:
            value = 0.5 * (loss[:n_s].mean() + loss[n_s:].mean())
        else:
            value = 0.5 * ((w_s * loss[:n_s]).sum() + (w_t * loss[n_s:]).sum())
        self.last_logs = {"disc_acc": 0.5 * (correct[:n_s].mean() + correct[n_s:].mean()).detach(),
                          "grl_coeff": torch.tensor(coeff)}
        return value

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, weight={self.weight}, grl_schedule={self.grl_schedule}, "
                f"multi_source={self.multi_source}")


class CDAN(DomainAdversarialLoss):
    """CDAN / CDAN+E (Long et al. NeurIPS 2018): DANN on the multilinear map ``T(f, g)``, ``g = softmax(logits)``.

    ``T(f, g) = vec(g f^T)`` (size ``C d``) when ``C d <= max_dim``, else the randomised map
    ``(f R_f) * (g R_g) / sqrt(random_dim)`` with fixed Gaussian ``R_f (d, k)``, ``R_g (C, k)`` (persistent
    buffers, drawn from ``seed``). ``g`` is detached (as in the authors' code): the reversed gradient reaches
    the features through ``f`` only. With ``entropy=True`` each sample's loss is weighted by
    ``1 + exp(-H(g))`` (detached), normalised to sum to 1 within each domain, and the two domains averaged.

    The discriminator's ``dropout`` default follows :class:`DomainDiscriminator` (none with batch norm, as TLlib's CDAN).

    Args (besides :class:`DomainAdversarialLoss`'s): ``num_classes`` (``None``: the model's
    ``classifier.out_features``), ``entropy``, ``max_dim=4096``, ``random_dim=1024``, ``seed=0``.
    Multi-source discriminators are not supported here.
    """

    name = "cdan"

    def __init__(self, in_features: Optional[int] = None, num_classes: Optional[int] = None,
                 entropy: bool = True, max_dim: int = 4096, random_dim: int = 1024, seed: int = 0,
                 hidden: int = 1024, batch_norm: bool = True, dropout: Optional[float] = None, num_layers: int = 2,
                 weight: float = 1.0, schedule="dann", name: Optional[str] = None):
        super().__init__(in_features=None, hidden=hidden, batch_norm=batch_norm, dropout=dropout,
                         num_layers=num_layers, multi_source=False, weight=weight, schedule=schedule, name=name)
        self.in_features, self.num_classes = in_features, num_classes
        self.entropy, self.max_dim, self.random_dim, self.seed = bool(entropy), int(max_dim), int(random_dim), seed
        self.randomized = False
        if in_features is not None and num_classes is not None:
            self.build(in_features, num_classes)

    def build(self, in_features: int, num_classes: int = 2) -> "CDAN":  # type: ignore[override]
        """Build the map and the discriminator for features of size ``in_features`` and ``num_classes``."""
        self.in_features, self.num_classes = in_features, num_classes
        self.randomized = in_features * num_classes > self.max_dim
        if self.randomized:
            gen = torch.Generator().manual_seed(self.seed)
            self.register_buffer("r_f", torch.randn(in_features, self.random_dim, generator=gen))
            self.register_buffer("r_g", torch.randn(num_classes, self.random_dim, generator=gen))
        self.discriminator = self._make(self.random_dim if self.randomized else in_features * num_classes, 2)
        return self

    def setup(self, module: nn.Module) -> None:
        if self.discriminator is not None:
            return
        in_features = self.in_features if self.in_features is not None else _feature_dim(module)
        num_classes = self.num_classes if self.num_classes is not None else _num_classes(module)
        self.build(in_features, int(num_classes))

    def multilinear(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``T(f, g)``: ``(n, C d)`` outer product, or ``(n, random_dim)`` randomised product."""
        if self.randomized:
            return (f @ self.r_f.to(f.dtype)) * (g @ self.r_g.to(g.dtype)) / math.sqrt(self.random_dim)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)

    def _disc_input(self, ctx: StepContext, coeff: float) -> torch.Tensor:
        f = grad_reverse(torch.cat([ctx.f_s, ctx.f_t], dim=0), coeff)
        g = torch.cat([ctx.logits_s, ctx.logits_t], dim=0).detach().softmax(-1).to(f.dtype)
        return self.multilinear(f, g)

    def _sample_weights(self, ctx: StepContext):
        if not self.entropy:
            return None, None
        w = []
        for logits in (ctx.logits_s, ctx.logits_t):
            p = logits.detach()
            p = (p.float() if p.dtype in (torch.float16, torch.bfloat16) else p).softmax(-1)
            h = -(p * p.clamp_min(1e-12).log()).sum(-1)
            e = 1.0 + torch.exp(-h)
            w.append(e / e.sum())
        return w[0], w[1]
