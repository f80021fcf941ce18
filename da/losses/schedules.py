"""Coefficient schedules over training progress ``p`` in ``[0, 1]``.

Progress is ``global_step / total_steps`` (``trainer.estimated_stepping_batches``), so a schedule is the same
after a resume and on every DDP rank.
"""

from __future__ import annotations

import math
from typing import Union


class Schedule:
    """A function of progress ``p`` in [0, 1] returning a multiplier."""

    def __call__(self, p: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    def __call__(self, p: float) -> float:
        return 1.0


class DANNSchedule(Schedule):
    """``lambda_p = 2 / (1 + exp(-gamma p)) - 1`` (Ganin & Lempitsky, ICML 2015, gamma = 10): 0 at p=0, ~1 at p=1."""

    def __init__(self, gamma: float = 10.0):
        self.gamma = float(gamma)

    def __call__(self, p: float) -> float:
        p = min(max(float(p), 0.0), 1.0)
        return 2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0


class LinearWarmup(Schedule):
    """0 at p=0, rising linearly to 1 at ``p = warmup``, then 1."""

    def __init__(self, warmup: float = 0.1):
        if not 0 < warmup <= 1:
            raise ValueError(f"warmup must be in (0, 1], got {warmup}")
        self.warmup = float(warmup)

    def __call__(self, p: float) -> float:
        return min(max(float(p), 0.0) / self.warmup, 1.0)


class TLlibWarmStart(Schedule):
    """TLlib's ``WarmStartGradientReverseLayer`` coefficient: ``tanh(alpha * i / (2 N))`` rescaled to [lo, hi].

    Unlike :class:`DANNSchedule` it depends on the step count ``i`` (progress * total_steps), not on the run's
    length: ``2 (hi - lo) / (1 + exp(-alpha i / N)) - (hi - lo) + lo``. Needs ``total_steps`` to turn progress
    into steps.
    """

    def __init__(self, alpha: float = 1.0, lo: float = 0.0, hi: float = 1.0, max_iters: int = 1000,
                 total_steps: int = 1000):
        self.alpha, self.lo, self.hi = float(alpha), float(lo), float(hi)
        self.max_iters, self.total_steps = int(max_iters), int(total_steps)

    def __call__(self, p: float) -> float:
        i = float(p) * self.total_steps
        return 2.0 * (self.hi - self.lo) / (1.0 + math.exp(-self.alpha * i / self.max_iters)) - (self.hi - self.lo) + self.lo


_NAMED = {"constant": Constant, "dann": DANNSchedule, "linear": LinearWarmup, "warmup": LinearWarmup,
          "tllib": TLlibWarmStart}


def make_schedule(spec: Union[str, Schedule, None]) -> Schedule:
    """Build a schedule from a name (``constant``, ``dann``, ``linear``/``warmup``, ``tllib``) or pass one through."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _NAMED:
            from da.errors import unknown_name
            raise unknown_name("schedule", spec, _NAMED)
        return _NAMED[key]()
    raise TypeError(f"schedule must be a name or a Schedule, got {type(spec).__name__}")
