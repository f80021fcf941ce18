"""Coefficient schedules over training progress ``p`` in ``[0, 1]`` or over the step ``i``.

Progress is ``global_step / total_steps`` (``trainer.estimated_stepping_batches``) and the step is ``global_step``,
so a schedule is the same after a resume and on every DDP rank. A schedule is called as ``schedule(p, step)``;
progress-based ones ignore ``step``, step-based ones (:class:`WarmStart`) need it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Union


class Schedule:
    """A function of progress ``p`` in [0, 1] returning a multiplier."""

    #: True for schedules of the step count (they need ``step``), False for schedules of progress.
    uses_step: bool = False

    def __call__(self, p: float, step: Optional[int] = None) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """1 at every step."""

    def __call__(self, p: float, step: Optional[int] = None) -> float:
        return 1.0


class DANNSchedule(Schedule):
    """``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` (Ganin & Lempitsky, ICML 2015, gamma = 10): 0 at p=0, ~1 at p=1."""

    def __init__(self, gamma: float = 10.0):
        self.gamma = float(gamma)

    def __call__(self, p: float, step: Optional[int] = None) -> float:
        p = min(max(float(p), 0.0), 1.0)
        return 2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0


class LinearWarmup(Schedule):
    """0 at p=0, rising linearly to 1 at ``p = warmup``, then 1."""

    def __init__(self, warmup: float = 0.1):
        if not 0 < warmup <= 1:
            raise ValueError(f"warmup must be in (0, 1], got {warmup}")
        self.warmup = float(warmup)

    def __call__(self, p: float, step: Optional[int] = None) -> float:
        return min(max(float(p), 0.0) / self.warmup, 1.0)


class WarmStart(Schedule):
    """The coefficient of TLlib's ``WarmStartGradientReverseLayer``, a function of the step ``i`` with its own horizon::

        lambda_i = lo + (hi - lo) * (2 / (1 + exp(-alpha i / N)) - 1)      (N = max_iters, in optimiser steps)

    It does not depend on the run's length: with TLlib's defaults (alpha = 1, lo = 0, hi = 1, N = 1000) it is 0 at
    i = 0, 0.462 at i = 1,000 and 0.848 at i = 2,500, whatever ``max_steps`` is. ``alpha = 10`` and ``N = max_steps``
    give :class:`DANNSchedule` (Ganin & Lempitsky 2015) over the whole run.
    """

    uses_step = True

    def __init__(self, alpha: float = 1.0, lo: float = 0.0, hi: float = 1.0, max_iters: int = 1000):
        if not max_iters or max_iters <= 0:
            raise ValueError(f"warm_start max_iters must be a positive number of steps, got {max_iters}")
        self.alpha, self.lo, self.hi, self.max_iters = float(alpha), float(lo), float(hi), int(max_iters)

    def __call__(self, p: float, step: Optional[int] = None) -> float:
        if step is None:
            raise ValueError("the warm_start schedule is a function of the step: call it as schedule(progress, step) "
                             "(TransferModule passes global_step)")
        i = max(int(step), 0)
        return self.lo + (self.hi - self.lo) * (2.0 / (1.0 + math.exp(-self.alpha * i / self.max_iters)) - 1.0)


def tllib_warm_start() -> WarmStart:
    """``tllib``: TLlib's DANN / CDAN GRL exactly (alpha 1, lo 0, hi 1, max_iters 1,000 steps)."""
    return WarmStart(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000)


_NAMED = {"constant": Constant, "dann": DANNSchedule, "linear": LinearWarmup, "warmup": LinearWarmup,
          "warm_start": WarmStart, "tllib": tllib_warm_start}


def schedule_value(schedule: Any, p: float, step: Optional[int] = None) -> float:
    """``schedule(p, step)`` for step-based schedules (``uses_step``), else ``schedule(p)``: a user's schedule that is
    any callable of progress alone keeps working."""
    return schedule(p, step) if getattr(schedule, "uses_step", False) else schedule(p)


def make_schedule(spec: Union[str, Schedule, Mapping[str, Any], None]) -> Schedule:
    """Build a schedule from a name (``constant``, ``dann``, ``linear``/``warmup``, ``warm_start``, ``tllib``), a
    mapping ``{name: <name>, <arg>: <value>, ...}`` (e.g. ``{name: warm_start, max_iters: 2500}``) or pass one
    through."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    args: dict = {}
    if isinstance(spec, Mapping):
        args = {k: v for k, v in spec.items() if k != "name"}
        if "name" not in spec:
            raise ValueError(f"a schedule given as a mapping needs a 'name' (one of {sorted(_NAMED)}), got {dict(spec)}")
        spec = spec["name"]
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _NAMED:
            from da.errors import unknown_name
            raise unknown_name("schedule", spec, _NAMED)
        try:
            return _NAMED[key](**args)
        except TypeError as err:
            raise ValueError(f"schedule {spec!r} does not take {sorted(args)}: {err}") from err
    raise TypeError(f"schedule must be a name, a mapping with a name or a Schedule, got {type(spec).__name__}")
