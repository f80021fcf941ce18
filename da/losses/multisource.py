"""Multi-source parameter penalties: one target model pulled toward D source-trained models (anchors), and
L2-SP per branch of a :class:`~da.models.branches.BranchesBackbone`.

Both read ``min sum_d 1/2 ||w_d - w0_d||^2 + lambda/n sum_i L(y_i, f(x_i))`` (L2-SP, Li et al. ICML 2018,
with several starting points): either a single ``w`` with D anchors, or D branches each with its own ``w0_d``.

The anchors identity (Huszár, PNAS 2018, for summed EWC penalties), with ``A = sum_d a_d`` and
``w_bar = sum_d a_d w_d / A``::

    sum_d a_d ||w - w_d||^2 = A ||w - w_bar||^2 + sum_d a_d ||w_d - w_bar||^2          (1)

(expand ``w - w_d = (w - w_bar) + (w_bar - w_d)``; the cross term ``2 <w - w_bar, sum_d a_d (w_bar - w_d)>``
is 0). With fixed ``a`` the last sum is a constant, so each step costs one fused pass over ``w`` whatever D.

With learnable ``a`` the gradient wrt ``a_d`` is ``||w - w_d||^2 / 2``. Differentiating the right side of (1)
with ``w_bar`` held fixed gives ``(||w - w_bar||^2 + ||w_d - w_bar||^2) / 2`` instead: it misses the cross
term ``<w - w_bar, w_bar - w_d>``, which only vanishes in the a-weighted sum. So learnable weights need the
D distances every step; they are computed without an autograd graph (memory O(P), reads O(D P)) and the
penalty is assembled so that its value is exactly (1), its gradient wrt ``w`` is ``A (w - w_bar)`` (one graph)
and its gradient wrt ``a_d`` is ``||w - w_d||^2 / 2``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from da.losses.base import StepContext
from da.losses.l2sp import (L2SP, ParameterStore, StateSource, _anchor_copy, _ParamPenalty, match_state,
                            read_state_dict, squared_norms, trainable_named_parameters)


def _softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    """``log(exp(x) - 1)``, stable for large x."""
    return x + torch.log(-torch.expm1(-x))


class MultiSourceAnchors(_ParamPenalty):
    """``sum_d alpha_d/2 ||w - w_d||^2`` toward D source-trained models, computed as ``A/2 ||w - w_bar||^2 + c``.

    Args:
        anchors: D checkpoint paths (``da fit`` checkpoints or ``torch.save(state_dict)`` files) or in-memory
            state dicts. Only parameters present in every anchor (and under ``include``) are penalised.
        alphas: the D coefficients ``alpha_d >= 0``; ``None``: ``0.01 / D`` each (total 0.01, L2-SP's default).
        learnable: make the alphas trainable, ``alpha = softplus(theta)``.
        fixed_total: with ``learnable``, renormalise ``alpha`` to keep ``sum alpha`` at its initial value
            (``alpha = A0 softplus(theta) / sum softplus(theta)``). Without it, the penalty alone drives every
            alpha to 0 (its gradient wrt alpha_d, ``||w - w_d||^2/2``, is never negative).
        include: parameter-name prefixes to penalise (default the backbone); ``None``: all trainable ones.
        log_every: with fixed alphas, log each source's distance ``dist{d} = ||w - w_d||`` every this many steps
            (D extra fused passes, no graph); 0 disables it. With learnable alphas they are logged every step
            (computed anyway).

    Logged: ``dist_bar = ||w - w_bar||``, ``dist{d}``, ``alpha{d}`` (learnable).
    """

    name = "anchors"

    def __init__(self, anchors: Sequence[StateSource], alphas: Optional[Sequence[float]] = None,
                 learnable: bool = False, fixed_total: bool = True, include: Optional[Sequence[str]] = ("backbone.",),
                 log_every: int = 50, weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if isinstance(anchors, (str, bytes)) or not len(anchors):
            raise ValueError("anchors must be a non-empty list of checkpoint paths or state dicts, "
                             f"got {anchors!r}")
        self.anchor_sources = list(anchors)
        num = len(self.anchor_sources)
        if alphas is None:
            alphas = [0.01 / num] * num
        if len(alphas) != num or any(a < 0 for a in alphas) or sum(alphas) <= 0:
            raise ValueError(f"alphas must be {num} non-negative numbers with a positive sum (one per anchor), "
                             f"got {list(alphas)}")
        self.include = tuple(include) if include is not None else None
        self.learnable, self.fixed_total, self.log_every = bool(learnable), bool(fixed_total), int(log_every)
        init = torch.tensor([float(a) for a in alphas], dtype=torch.float64)
        self.register_buffer("total", init.sum())
        if self.learnable:
            self.alpha_raw = nn.Parameter(_softplus_inverse(init.clamp_min(1e-12)).float())
        else:
            self.register_buffer("alpha_fixed", init)
        self.anchors: Optional[nn.ModuleList] = None
        self.wbar: Optional[ParameterStore] = None
        self.register_buffer("const", torch.zeros((), dtype=torch.float64))

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sources)

    def alphas(self) -> torch.Tensor:
        """The current ``(D,)`` coefficients (with gradient when learnable)."""
        if not self.learnable:
            return self.alpha_fixed
        a = F.softplus(self.alpha_raw)
        return a * (self.total.to(a.dtype) / a.sum()) if self.fixed_total else a

    def setup(self, module: nn.Module) -> None:
        """Read the anchors, keep the parameters present in all of them, precompute ``w_bar`` and the constant."""
        params = dict((n, p) for n, p in trainable_named_parameters(module)
                      if self.include is None or n.startswith(self.include))
        states = [match_state(list(params), read_state_dict(src)) for src in self.anchor_sources]
        names = [n for n in params if all(n in s for s in states)]
        if not names:
            raise ValueError(f"no trainable parameter under {self.include} is present in all "
                             f"{self.num_anchors} anchors; check the checkpoints' architecture or `include`")
        for d, s in enumerate(states):
            for n in names:
                if s[n].shape != params[n].shape:
                    raise ValueError(f"anchor {d} has '{n}' of shape {tuple(s[n].shape)}, the model's is "
                                     f"{tuple(params[n].shape)}; anchors must share the model's architecture")
        self.anchors = nn.ModuleList(ParameterStore({n: _anchor_copy(s[n], params[n]) for n in names})
                                     for s in states)
        self._bind(module, {"anchored": names})
        self._refresh_mean()

    @torch.no_grad()
    def _refresh_mean(self) -> None:
        """``w_bar`` and ``const = 1/2 sum_d a_d ||w_d - w_bar||^2`` for the current alphas (float64 sums)."""
        a = self.alphas().detach().double()
        weights = (a / a.sum()).tolist()
        stores = [st.tensors() for st in self.anchors]
        mean = torch._foreach_mul(stores[0], weights[0])
        for d in range(1, self.num_anchors):
            torch._foreach_add_(mean, stores[d], alpha=weights[d])
        if not self.learnable:  # learnable alphas recompute w_bar every step
            self.wbar = ParameterStore(dict(zip(self.anchors[0].names(), mean)))
        spread = torch.stack([squared_norms(stores[d], mean).double().sum() for d in range(self.num_anchors)])
        self.const.copy_(0.5 * (a * spread).sum())

    def _distances_sq(self, params: List[torch.Tensor]) -> torch.Tensor:
        """``(D,)`` ``||w - w_d||^2``, no graph."""
        with torch.no_grad():
            return torch.stack([squared_norms(params, st.tensors()).sum() for st in self.anchors])

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if self.anchors is None:
            raise RuntimeError("MultiSourceAnchors.setup(model) was not called; call it once the model is built")
        params = self._params(ctx.module, "anchored")
        self.last_logs = {}
        if not self.learnable:
            sq = squared_norms(params, self.wbar.tensors()).sum()
            self.last_logs["dist_bar"] = sq.detach().sqrt()
            if self.log_every > 0 and (ctx.step + 1) % self.log_every == 0:  # Lightning logs at step k*n - 1
                for d, v in enumerate(self._distances_sq(params)):
                    self.last_logs[f"dist{d}"] = v.sqrt()
            return 0.5 * self.total.to(sq.dtype) * sq + self.const.to(sq.dtype)
        alpha = self.alphas()
        dist_sq = self._distances_sq(params).to(alpha.dtype)
        a = alpha.detach()
        with torch.no_grad():
            stores = [st.tensors() for st in self.anchors]
            w = a / a.sum()
            mean = torch._foreach_mul(stores[0], w[0])
            for d in range(1, self.num_anchors):
                torch._foreach_add_(mean, torch._foreach_mul(stores[d], w[d]))
        sq = squared_norms(params, mean).sum()
        self.last_logs["dist_bar"] = sq.detach().sqrt()
        for d in range(self.num_anchors):
            self.last_logs[f"dist{d}"] = dist_sq[d].sqrt()
            self.last_logs[f"alpha{d}"] = a[d]
        # value: sum_d a_d/2 ||w - w_d||^2; d/da_d = ||w - w_d||^2 / 2; d/dw = A (w - w_bar) (zero-valued term).
        return 0.5 * (alpha * dist_sq).sum() + 0.5 * a.sum().to(sq.dtype) * (sq - sq.detach())

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, anchors={self.num_anchors}, learnable={self.learnable}, "
                f"include={self.include}")


class BranchL2SP(L2SP):
    """L2-SP per branch of a ``BranchesBackbone``: ``sum_d alpha_d/2 ||w_d - w0_d||^2 + beta/2 ||w_new||^2``.

    Each branch ``d`` (parameters ``backbone.branches.{d}.*``) is pulled toward its own starting point
    ``w0_d``, captured at :meth:`setup` like :class:`~da.losses.l2sp.L2SP` (this *is* L2SP restricted to the
    branch prefix, with a per-branch alpha). ``w_new`` is everything else trainable: the head and the mixture
    logits. ``alpha`` may be one number or one per branch.

    Logged: ``dist_branch{d} = ||w_d - w0_d||`` and, when the backbone has ``mixture_weights()``, ``mix{d}``
    (which source the target trusts).
    """

    name = "branch_l2sp"

    def __init__(self, alpha: Union[float, Sequence[float]] = 0.01, beta: float = 0.01,
                 prefix: str = "backbone.branches.", w0_from: Optional[StateSource] = None,
                 weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        alphas = [float(a) for a in alpha] if isinstance(alpha, (list, tuple)) else None
        if alphas is not None and any(a < 0 for a in alphas):
            raise ValueError(f"BranchL2SP alphas must be >= 0, got {alphas}")
        super().__init__(alpha=alphas[0] if alphas else float(alpha), beta=beta, w0_from=w0_from,
                         source_prefixes=[prefix], weight=weight, schedule=schedule, name=name)
        self.prefix = prefix
        self._alpha_list = alphas
        self.register_buffer("group", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("alpha_vec", torch.zeros(0), persistent=False)

    def _after_setup(self, module: nn.Module, source: List[str]) -> None:
        if not source:
            raise ValueError(f"no trainable parameter starts with '{self.prefix}'; BranchL2SP needs a "
                             "BranchesBackbone as the model's backbone (or set `prefix`)")
        ids = []
        for n in source:
            head = n[len(self.prefix):].split(".", 1)[0]
            if not head.isdigit():
                raise ValueError(f"parameter '{n}' is under '{self.prefix}' but has no branch index")
            ids.append(int(head))
        num = max(ids) + 1
        alphas = self._alpha_list if self._alpha_list is not None else [self.alpha] * num
        if len(alphas) != num:
            raise ValueError(f"BranchL2SP got {len(alphas)} alphas for {num} branches; give one per branch")
        device = self.w0.tensors()[0].device
        self.group = torch.tensor(ids, dtype=torch.long, device=device)
        self.alpha_vec = torch.tensor(alphas, dtype=torch.float64, device=device)

    def _source_coefficients(self, sq: torch.Tensor) -> torch.Tensor:
        per_branch = torch.zeros(self.alpha_vec.numel(), dtype=sq.dtype, device=sq.device)
        per_branch = per_branch.index_add(0, self.group, sq)
        for d, v in enumerate(per_branch.detach().sqrt()):
            self.last_logs[f"dist_branch{d}"] = v
        return (self.alpha_vec.to(sq.dtype) * per_branch).sum()

    def forward(self, ctx: StepContext) -> torch.Tensor:
        loss = super().forward(ctx)
        backbone = getattr(ctx.module, "backbone", None)
        if hasattr(backbone, "mixture_weights"):
            for d, v in enumerate(backbone.mixture_weights().detach()):
                self.last_logs[f"mix{d}"] = v
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prefix={self.prefix!r}, alphas={self._alpha_list or self.alpha}"
