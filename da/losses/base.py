"""The contract between `TransferModule` and every adaptation loss.

A loss term is an ``nn.Module`` that receives a narrow, named :class:`StepContext` and returns a scalar
tensor. `TransferModule` multiplies it by ``weight * schedule(progress)`` and adds it to the supervised
loss. Nothing here imports Lightning: a loss can be used in any training loop by building a
``StepContext`` by hand.

Writing a new loss::

    class TargetEntropy(AdaptationLoss):
        def forward(self, ctx):
            p = ctx.logits_t.softmax(-1)
            return -(p * p.clamp_min(1e-8).log()).sum(-1).mean()

and using it from YAML with ``class_path: my_pkg.my_module.TargetEntropy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from da.losses.schedules import Schedule, make_schedule, schedule_value


@dataclass
class StepContext:
    """What a loss term may look at during one training step.

    Attributes:
        f_s, f_t: features of the labelled (source) and unlabelled (target) batch, ``(n, d)``.
        logits_s, logits_t: classifier outputs for the same batches, ``(n, C)``.
        y_s: labels of the labelled batch, ``(n,)`` int64.
        d_s: source-domain index of each labelled sample, ``(n,)`` int64 (0 .. num_sources - 1;
            ``num_sources`` marks labelled *target* samples in semi-supervised tasks).
        num_sources: how many source domains the task has.
        progress: training progress in ``[0, 1]`` (``global_step / total_steps``).
        module: the model (a ``TransferModule`` or any ``nn.Module``), for parameter-based terms
            (L2-SP, multi-source anchors). ``None`` when a term does not need it.
        step: the global step (an int), for terms that act every k steps.
        extras: anything a custom backbone wants to expose to a custom loss (e.g. intermediate layers).
    """

    f_s: torch.Tensor
    f_t: Optional[torch.Tensor]
    logits_s: torch.Tensor
    logits_t: Optional[torch.Tensor]
    y_s: torch.Tensor
    d_s: Optional[torch.Tensor] = None
    num_sources: int = 1
    progress: float = 0.0
    module: Optional[nn.Module] = None
    step: int = 0
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def has_target(self) -> bool:
        return self.f_t is not None and self.f_t.shape[0] > 0


class AdaptationLoss(nn.Module):
    """Base class of a loss term: ``total = CE + sum_i weight_i * schedule_i(progress) * term_i(ctx)``.

    Args:
        weight: the trade-off coefficient (lambda in most papers).
        schedule: how the coefficient grows over training progress ``p``: ``"constant"``, ``"dann"``
            (``2 / (1 + exp(-gamma p)) - 1``, Ganin & Lempitsky 2015), ``"linear"`` (warm-up), ``"tllib"``
            (TLlib's warm-start GRL, over steps), ``{name: warm_start, max_iters: N}``, or a
            :class:`~da.losses.schedules.Schedule` instance.
        name: the key under which the term is logged (``train/<name>``); defaults to the class's ``name``.

    Subclasses implement :meth:`forward` and may set ``needs_target = False`` (parameter-based terms),
    override :meth:`setup` (called once the model is built and its starting weights are loaded) and
    fill ``self.last_logs`` with extra scalars to log (e.g. a discriminator's accuracy).
    """

    name: str = "loss"
    needs_target: bool = True
    #: Terms whose value depends on the whole global batch (e.g. MMD) set this when they gather
    #: features across ranks under DDP; purely informational, used in docs and logs.
    gathers_across_ranks: bool = False

    def __init__(self, weight: float = 1.0, schedule: Union[str, Schedule, Dict[str, Any]] = "constant",
                 name: Optional[str] = None):
        super().__init__()
        if weight < 0:
            raise ValueError(f"loss weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.schedule = make_schedule(schedule)
        if name is not None:
            self.name = name
        self.last_logs: Dict[str, torch.Tensor] = {}

    def current_weight(self, progress: float, step: Optional[int] = None) -> float:
        """``weight * schedule(progress, step)``: the coefficient applied at this step (``step`` = global step)."""
        return self.weight * schedule_value(self.schedule, progress, step)

    def setup(self, module: nn.Module) -> None:
        """Hook called by `TransferModule` when training starts (after weights are loaded)."""

    def forward(self, ctx: StepContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(ctx)")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}, schedule={self.schedule}"


LossFactory = Callable[..., AdaptationLoss]
