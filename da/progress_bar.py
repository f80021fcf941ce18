"""The Lightning progress bar of a ``da`` run (the display itself is :class:`da.progress.Ticker`).

``add_progress_bar(trainer_config, callbacks)`` puts a :class:`StepProgressBar` among a run's callbacks unless the
run disabled the bar (``--trainer.enable_progress_bar false``) or chose its own: Lightning would otherwise add its
``RichProgressBar`` whenever ``rich`` is installed (``Epoch 7/-2`` for a step-budgeted run, and nothing useful in a log
file) or its per-epoch ``TQDMProgressBar``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, TextIO

from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar

from da.progress import Ticker, key_metrics, write_state


class StepProgressBar(ProgressBar):
    """The progress bar of a ``da`` run: global step / total with ETA and the key metrics (see the module docstring)."""

    def __init__(self, stream: Optional[TextIO] = None, every_fraction: float = 0.05, every_s: float = 30.0,
                 state_every_s: float = 2.0) -> None:
        super().__init__()
        self._stream = stream
        self._every_fraction, self._every_s, self._state_every_s = every_fraction, every_s, state_every_s
        self._enabled = True
        self.ticker: Optional[Ticker] = None
        self._state_t = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        message = sep.join(map(str, args))
        if self.ticker is not None and not self.ticker.closed:
            self.ticker.print(message)
        else:
            print(message, file=self._stream or sys.stdout)

    def _total(self, trainer) -> int:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        total = trainer.estimated_stepping_batches
        return int(total) if total != float("inf") else 0

    def on_train_start(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        self.ticker = Ticker(self._total(trainer), desc="fit", unit="steps", stream=self._stream or sys.stdout,
                             start=trainer.global_step, every_fraction=self._every_fraction, every_s=self._every_s)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.ticker is None:
            return
        self.ticker.update(trainer.global_step, key_metrics(self.get_metrics(trainer, pl_module)))
        now = time.monotonic()
        if now - self._state_t >= self._state_every_s:
            self._state_t = now
            self._save_state(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.ticker is not None and not trainer.sanity_checking:
            self.ticker.update(trainer.global_step, key_metrics(self.get_metrics(trainer, pl_module)), force=True)
            if self.ticker.tty:
                self.ticker.line()  # keep each validation's numbers on screen

    def on_train_end(self, trainer, pl_module) -> None:
        if self.ticker is not None:
            self.ticker.close()
            self._save_state(trainer)
            self.ticker = None

    def _save_state(self, trainer) -> None:
        root = Path(trainer.default_root_dir)
        if self.ticker is None or not root.is_dir():
            return
        try:
            write_state(root, {"step": int(self.ticker.done), "total": int(self.ticker.total),
                               "eta_s": self.ticker.eta(), "time": time.time()})
        except OSError:
            pass  # the display must never stop a run


def add_progress_bar(trainer_config: Mapping[str, Any], callbacks: List[Any]) -> None:
    """Append a :class:`StepProgressBar` to ``callbacks`` unless the bar is off or the user gave a progress bar."""
    if trainer_config.get("enable_progress_bar") is False:
        return
    chosen = list(trainer_config.get("callbacks") or []) + list(callbacks)
    if not any(isinstance(c, ProgressBar) for c in chosen):
        callbacks.append(StepProgressBar())
