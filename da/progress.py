"""One progress display for everything long that ``da`` does.

* :class:`Ticker`: ``done/total`` with rate and ETA. On a terminal it redraws one line (``\\r``); when the stream is
  not a terminal (``da fit ... > log``, a sweep's ``sweep.log``) it writes a plain line every ``every_fraction`` of the
  work or every ``every_s`` seconds, whichever comes first, and one at the end, so a log file stays readable.
  ETA = (total - done) * elapsed / (done - start), over the work done by this process (a resumed run starts at its step).
* :class:`~da.progress_bar.StepProgressBar` (its own module, so that this one does not import Lightning): the Lightning progress bar of a run: global step / ``max_steps`` (not per epoch: ``da`` runs
  are step-budgeted with ``max_epochs: -1``), ETA, ``loss`` and the validation metrics shown with ``prog_bar=True``.
  It also writes ``<run_dir>/progress.json`` (step, total, ETA; at most every 2 s) for the sweep display.
* :class:`SweepTicker`: what a sweep adds to its ``done/total`` line: the ETA from the wall times of the runs finished
  so far, and each running run's step / total from its ``progress.json``; it reprints the line every ``every_s``
  seconds while runs are going.
* :func:`iterate`: a :class:`Ticker` around any iterable (t-SNE, the embedding cache).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, TextIO, TypeVar

T = TypeVar("T")
STATE_FILE = "progress.json"


def fmt_duration(seconds: Optional[float]) -> str:
    """``3725 -> '1:02:05'``, ``65 -> '1:05'``; ``None`` (unknown) -> ``'?'``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(done: float, total: float, elapsed: float, start: float = 0.0) -> Optional[float]:
    """(total - done) * elapsed / (done - start); ``None`` before any work was done."""
    if done <= start or elapsed <= 0:
        return None
    return (total - done) * elapsed / (done - start)


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Ticker:
    """``desc  done/total unit  pct  rate  ETA  extra`` on one redrawn line (terminal) or as plain lines (see module)."""

    def __init__(self, total: float, desc: str = "", unit: str = "it", stream: Optional[TextIO] = None,
                 start: float = 0.0, every_fraction: float = 0.05, every_s: float = 30.0, tty: Optional[bool] = None,
                 clock=time.monotonic) -> None:
        self.total = float(total) if total and total > 0 else 0.0
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stdout
        self.tty = _is_tty(self.stream) if tty is None else tty
        self.start = self.done = float(start)
        self.every_fraction, self.every_s = every_fraction, every_s
        self.clock = clock
        self.t0 = clock()
        self._last_line_t = self.t0
        self._last_line_done = self.done
        self._last_draw = 0.0
        self.extra = ""
        self.closed = False

    def eta(self) -> Optional[float]:
        return eta_seconds(self.done, self.total, self.clock() - self.t0, self.start) if self.total else None

    def text(self) -> str:
        elapsed = self.clock() - self.t0
        parts = [self.desc] if self.desc else []
        if self.total:
            parts.append(f"{int(self.done)}/{int(self.total)} {self.unit} {100 * self.done / self.total:3.0f}%")
        else:
            parts.append(f"{int(self.done)} {self.unit}")
        if self.done > self.start and elapsed > 0:
            rate = (self.done - self.start) / elapsed
            one = self.unit[:-1] if self.unit.endswith("s") else self.unit
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{one}")
        parts.append(f"elapsed {fmt_duration(elapsed)}")
        if self.total:
            parts.append(f"ETA {fmt_duration(self.eta())}")
        if self.extra:
            parts.append(self.extra)
        return "  ".join(parts)

    def update(self, done: Optional[float] = None, extra: Optional[str] = None, force: bool = False) -> None:
        """Set the absolute progress (``None``: one more unit) and the trailing text; draw or log when due."""
        self.done = self.done + 1 if done is None else float(done)
        if extra is not None:
            self.extra = extra
        now = self.clock()
        if self.tty:
            if force or now - self._last_draw >= 0.1 or (self.total and self.done >= self.total):
                self._draw()
                self._last_draw = now
            return
        step = self.every_fraction * self.total if self.total else float("inf")
        if force or now - self._last_line_t >= self.every_s or self.done - self._last_line_done >= step:
            self.line()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((120, 20)).columns
        self.stream.write("\r" + self.text()[: width - 1].ljust(width - 1))
        self.stream.flush()

    def line(self) -> None:
        """Write the current state as its own line now."""
        if self.tty:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((120, 20)).columns - 1) + "\r")
        self.stream.write(self.text() + "\n")
        self.stream.flush()
        self._last_line_t, self._last_line_done = self.clock(), self.done

    def print(self, message: str) -> None:
        """A message above the bar (the bar is redrawn after it)."""
        if self.tty:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((120, 20)).columns - 1) + "\r")
        self.stream.write(message + "\n")
        if self.tty and not self.closed:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        elif self.done != self._last_line_done or self.done == self.start:
            self.line()


def iterate(items: Iterable[T], total: Optional[int] = None, desc: str = "", unit: str = "it",
            stream: Optional[TextIO] = None, **kwargs: Any) -> Iterator[T]:
    """Yield from ``items`` with a :class:`Ticker` (on stderr by default)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    ticker = Ticker(total or 0, desc=desc, unit=unit, stream=stream if stream is not None else sys.stderr, **kwargs)
    try:
        for item in items:
            yield item
            ticker.update()
    finally:
        ticker.close()


def key_metrics(metrics: Mapping[str, Any]) -> str:
    """``loss 0.412  val/source_acc 0.97``: the progress-bar metrics, loss first; Lightning's ``v_num`` and the
    macro-averaged accuracies (in ``metrics.csv``) are left out to keep one line short."""
    keys = sorted(k for k in metrics if k != "v_num" and "macro" not in k)
    keys.sort(key=lambda k: k != "loss")
    return "  ".join(f"{k} {_fmt_value(metrics[k])}" for k in keys)


def write_state(run_dir: Path, state: Dict[str, Any]) -> None:
    """``<run_dir>/progress.json``, replaced atomically."""
    tmp = Path(run_dir) / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(Path(run_dir) / STATE_FILE)


def read_state(run_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


class SweepTicker:
    """ETA and running runs' progress for a sweep's line (see the module docstring); ``every_s=0`` disables the
    periodic reprint (the line then changes only when a run starts or ends)."""

    def __init__(self, show, total: int, every_s: float = 60.0, clock=time.monotonic) -> None:
        self._show = show  # show(note): print the sweep's line with a note
        self.total = total
        self.clock = clock
        self.durations: list[float] = []
        self.running: Dict[str, tuple] = {}  # label -> (start time, run dir)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.every_s = every_s

    def start(self, label: str, run_dir: Optional[str]) -> None:
        self.running[label] = (self.clock(), run_dir)
        if self.every_s and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="da-sweep-progress", daemon=True)
            self._thread.start()

    def end(self, label: str, status: str) -> None:
        started = self.running.pop(label, None)
        if started is not None and status == "finished":
            self.durations.append(self.clock() - started[0])

    def summary(self, left: int) -> str:
        """``ETA 0:35:00 (35 s/run over 3 finished)  abc123 step 500/2000``; ``left`` counts runs not yet started."""
        parts = []
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            running_left = 0.0
            for label, (t0, run_dir) in self.running.items():
                state = read_state(Path(run_dir)) if run_dir else None
                if state and state.get("total"):
                    running_left += mean * max(0.0, 1 - state["step"] / state["total"])
                else:
                    running_left += max(0.0, mean - (self.clock() - t0))
            parts.append(f"ETA {fmt_duration(left * mean + running_left)} "
                         f"({mean:.0f} s/run over {len(self.durations)} finished)")
        for label, (_, run_dir) in self.running.items():
            state = read_state(Path(run_dir)) if run_dir else None
            if state and state.get("total"):
                parts.append(f"{label} step {state['step']}/{state['total']} ETA {fmt_duration(state.get('eta_s'))}")
        return "  ".join(parts)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.running:
                self._show("")

    def close(self) -> None:
        self._stop.set()
