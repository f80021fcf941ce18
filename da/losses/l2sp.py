"""Parameter-space penalties: L2-SP toward a starting point and plain L2 toward zero.

L2-SP (Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018)::

    Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2

``w_S`` are the transferred parameters (by default ``module.pretrained_parameter_names()``), ``w0_S`` their
values when training starts, ``w_new`` every other trainable parameter of the model (the new head).
Parameters of the loss terms themselves (names under ``losses.``, e.g. a domain discriminator) and frozen
parameters (``requires_grad=False``) are never penalised.

The starting point is stored as persistent buffers (one per parameter, in float32 when the parameter is
bf16/fp16), so a checkpoint restores it on resume. The hot path is three fused calls
(``torch._foreach_sub``, ``torch._foreach_norm(..., dtype=float32)``, ``torch.stack``): no Python loop of
per-parameter norms, and the squared norms are accumulated in float32 whatever the parameters' dtype.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from weakref import ref

import torch
from torch import nn

from da.checkpoints import StateSource, read_state_dict  # noqa: F401  (the one checkpoint reader; re-exported)
from da.losses.base import AdaptationLoss, StepContext

#: Prefix of the names of the loss terms' own parameters inside a ``TransferModule``.
LOSS_PREFIX = "losses."


def escape_name(name: str) -> str:
    """A parameter name made safe as a buffer name (no ``.``), reversibly: ``%`` -> ``%25``, ``.`` -> ``%2E``."""
    return name.replace("%", "%25").replace(".", "%2E")


def unescape_name(name: str) -> str:
    """Inverse of :func:`escape_name`."""
    return name.replace("%2E", ".").replace("%25", "%")


def match_state(names: Sequence[str], state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map module parameter names to tensors of ``state``, tolerating the usual prefix differences.

    A name ``backbone.conv.weight`` is looked up as is, then without its first component (``conv.weight``,
    a plain backbone state dict), then with ``model.`` in front (wrapped modules). Names with no match are
    left out; the caller decides whether that is an error.
    """
    out = {}
    for name in names:
        for key in (name, name.split(".", 1)[-1], "model." + name):
            if key in state:
                out[name] = state[key]
                break
    return out


def trainable_named_parameters(module: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(name, p)`` of the trainable model parameters, leaving out the loss terms' own (``losses.*``)."""
    return [(n, p) for n, p in module.named_parameters()
            if p.requires_grad and not n.startswith(LOSS_PREFIX)]


class ParameterStore(nn.Module):
    """A flat set of persistent buffers keyed by (escaped) parameter name; used for starting points and anchors."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(escape_name(name), t.detach().clone(), persistent=True)

    def names(self) -> List[str]:
        return [unescape_name(k) for k in self._buffers]

    def tensors(self) -> List[torch.Tensor]:
        return list(self._buffers.values())


def _anchor_copy(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The starting-point copy of ``t`` for parameter ``like``: float32 when ``like`` is bf16/fp16."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    return t.detach().to(device=like.device, dtype=dtype).clone()


def squared_norms(tensors: List[torch.Tensor], anchors: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """``(P,)`` float32 (float64 for float64 inputs) vector of ``||t_i - a_i||^2`` (or ``||t_i||^2``), fused.

    ``torch._foreach_sub`` promotes bf16 - float32 to float32, and ``torch._foreach_norm(dtype=...)``
    accumulates in that dtype, so low-precision parameters are never summed in low precision.
    """
    if not tensors:
        return torch.zeros(0)
    diffs = torch._foreach_sub(tensors, anchors) if anchors is not None else tensors
    acc = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return torch.stack(torch._foreach_norm(diffs, 2, dtype=acc)).pow(2)


class _ParamPenalty(AdaptationLoss):
    """Shared machinery: resolve the penalised parameters of a module once, look them up cheaply every step."""

    needs_target = False

    def __init__(self, weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        self._module_ref = None
        self._cache: Dict[str, List[torch.Tensor]] = {}
        self._names: Dict[str, List[str]] = {}

    def _bind(self, module: nn.Module, groups: Dict[str, List[str]]) -> None:
        self._module_ref = ref(module)
        self._names = groups
        self._cache = {}

    def _params(self, module: Optional[nn.Module], group: str) -> List[torch.Tensor]:
        """Parameters of ``group`` in ``module``, cached while the module (and its first parameter) is the same.

        A different module object (a deep copy, an unpickled DDP-spawn replica) is re-bound by name.
        """
        bound = self._module_ref() if self._module_ref is not None else None
        if module is None:
            module = bound
        if module is None:
            raise RuntimeError(f"{type(self).__name__} needs the model: call setup(model) once the starting "
                               "weights are loaded and pass it as StepContext(module=model)")
        if module is not bound:
            self._module_ref, self._cache = ref(module), {}
        cached = self._cache.get(group)
        names = self._names[group]
        if cached is not None and (not names or cached[0] is module.get_parameter(names[0])):
            return cached
        params = [module.get_parameter(n) for n in names]
        self._cache[group] = params
        return params

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_module_ref"], state["_cache"] = None, {}
        return state


class L2SP(_ParamPenalty):
    """L2-SP: ``alpha/2 ||w_S - w0_S||^2 + beta/2 ||w_new||^2`` (Li, Grandvalet & Davoine, ICML 2018).

    Args:
        alpha: strength of the pull toward the starting point on the transferred parameters ``S``.
        beta: weight decay on the other trainable parameters (the new layers). ``0`` disables it.
        w0_from: optional checkpoint path (or state dict) to take ``w0`` from instead of the model's weights at
            :meth:`setup` time, e.g. the source-trained model. Loaded with ``torch.load(weights_only=True)``.
        source_prefixes: names (prefixes) of the transferred parameters. ``None``: use
            ``module.pretrained_parameter_names()``.
        include: restrict the whole penalty (both terms) to parameters under these prefixes; ``None``: all.
        weight, schedule, name: see :class:`~da.losses.base.AdaptationLoss`.

    Logged in ``last_logs``: ``dist`` = ``||w_S - w0_S||``, ``new_norm`` = ``||w_new||``.
    """

    name = "l2sp"

    def __init__(self, alpha: float = 0.01, beta: float = 0.01, w0_from: Optional[StateSource] = None,
                 source_prefixes: Optional[Sequence[str]] = None, include: Optional[Sequence[str]] = None,
                 weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2SP needs alpha >= 0 and beta >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.w0_from = w0_from
        self.source_prefixes = tuple(source_prefixes) if source_prefixes is not None else None
        self.include = tuple(include) if include is not None else None
        self.w0: Optional[ParameterStore] = None

    # -- setup ---------------------------------------------------------------------------------------
    def _source_names(self, module: nn.Module, names: List[str]) -> List[str]:
        if self.source_prefixes is not None:
            return [n for n in names if n.startswith(self.source_prefixes)]
        if not hasattr(module, "pretrained_parameter_names"):
            raise TypeError(f"{type(module).__name__} has no pretrained_parameter_names(); pass "
                            "source_prefixes=['backbone.'] to say which parameters were transferred")
        pretrained = set(module.pretrained_parameter_names())
        return [n for n in names if n in pretrained]

    def setup(self, module: nn.Module) -> None:
        """Capture ``w0`` (from the model, or from ``w0_from``) as persistent buffers and bind the parameters."""
        named = trainable_named_parameters(module)
        if self.include is not None:
            named = [(n, p) for n, p in named if n.startswith(self.include)]
            if not named:
                raise ValueError(f"no trainable parameter of {type(module).__name__} starts with {self.include}")
        params = dict(named)
        source = self._source_names(module, list(params))
        new = [n for n in params if n not in set(source)]
        if self.w0_from is not None:
            state = match_state(source, read_state_dict(self.w0_from))
            missing = [n for n in source if n not in state]
            if missing:
                raise KeyError(f"w0_from has no tensor for {len(missing)} transferred parameter(s), e.g. "
                               f"{missing[:3]}; pass a checkpoint of the same architecture")
            for n in source:
                if state[n].shape != params[n].shape:
                    raise ValueError(f"w0_from['{n}'] has shape {tuple(state[n].shape)}, the model's parameter "
                                     f"{tuple(params[n].shape)}; pass a checkpoint of the same architecture")
        else:
            state = {n: params[n] for n in source}
        self.w0 = ParameterStore({n: _anchor_copy(state[n], params[n]) for n in source})
        self._bind(module, {"source": source, "new": new})
        self._after_setup(module, source)
        if not source and self.alpha > 0:
            warnings.warn(f"{type(self).__name__}: no transferred parameters in {type(module).__name__} (nothing was "
                          "pretrained or loaded with init_from), so only the beta/2 ||w||^2 term acts; load a "
                          "starting point or pass source_prefixes", stacklevel=2)

    def _after_setup(self, module: nn.Module, source: List[str]) -> None:
        """Hook for subclasses (per-group coefficients)."""

    # -- step ----------------------------------------------------------------------------------------
    def _source_coefficients(self, sq: torch.Tensor) -> torch.Tensor:
        """``sum alpha_i * ||w_i - w0_i||^2`` from the per-parameter squared distances (logs set here too)."""
        self.last_logs["dist"] = sq.sum().detach().sqrt()
        return self.alpha * sq.sum()

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if self.w0 is None:
            raise RuntimeError(f"{type(self).__name__}.setup(model) was not called; TransferModule calls it, "
                               "other training loops must call it once the starting weights are loaded")
        src = self._params(ctx.module, "source")
        sq = squared_norms(src, self.w0.tensors())
        loss = 0.5 * self._source_coefficients(sq) if src else torch.zeros((), device=self._device())
        new = self._params(ctx.module, "new") if self.beta > 0 else []
        if new:
            new_sq = squared_norms(new).sum()
            self.last_logs["new_norm"] = new_sq.detach().sqrt()
            loss = loss + 0.5 * self.beta * new_sq.to(loss.device)
        return loss

    def _device(self) -> torch.device:
        bufs = self.w0.tensors() if self.w0 is not None else []
        return bufs[0].device if bufs else torch.device("cpu")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, beta={self.beta}"


class L2(_ParamPenalty):
    """Plain L2 toward zero, ``beta/2 ||w||^2`` over all trainable model parameters: L2-SP's baseline.

    This is weight decay written as a loss (for SGD, identical to ``weight_decay=beta``). Loss terms' own
    parameters (``losses.*``) and frozen parameters are skipped. Logged: ``norm`` = ``||w||``.
    """

    name = "l2"

    def __init__(self, beta: float = 0.01, include: Optional[Sequence[str]] = None, weight: float = 1.0,
                 schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if beta < 0:
            raise ValueError(f"L2 needs beta >= 0, got {beta}")
        self.beta = float(beta)
        self.include = tuple(include) if include is not None else None

    def setup(self, module: nn.Module) -> None:
        names = [n for n, _ in trainable_named_parameters(module)
                 if self.include is None or n.startswith(self.include)]
        self._bind(module, {"all": names})

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if self._module_ref is None:
            raise RuntimeError("L2.setup(model) was not called; call it before the first step")
        sq = squared_norms(self._params(ctx.module, "all")).sum()
        self.last_logs["norm"] = sq.detach().sqrt()
        return 0.5 * self.beta * sq

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"
