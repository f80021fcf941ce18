"""Pictures of negative transfer: NTG per task with its interval, and the online monitor's signals over steps.

- :func:`plot_ntg`: one row per task, the negative-transfer gap ``err_T(transfer) - err_T(baseline)`` in
  percentage points with its bootstrap interval, coloured by verdict, and a zero line (right of it: transfer
  hurt).
- :func:`plot_monitor`: the gradient cosine of every source with the target objective (raw checks as dots, its
  moving average as a line, the threshold and each alarm marked), target prediction health (entropy,
  collapse) and domain separability (proxy A-distance, discriminator accuracy) when recorded. Reads a
  :class:`~da.diagnostics.monitor.NegativeTransferMonitor`, its ``history`` list, or a run's ``metrics.csv``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from da.diagnostics.ntg import NTGResult  # noqa: E402

VERDICT_COLOURS = {"negative transfer": "#c0392b", "inconclusive": "#7f8c8d", "positive transfer": "#1e8449"}
_COS = re.compile(r"^cos_src(\d+)$")


def plot_ntg(results: Union[Sequence[NTGResult], Mapping[str, NTGResult]], path: Union[str, Path],
             title: Optional[str] = None) -> Path:
    """NTG per task with error bars (percentage points), coloured by verdict; returns the PNG path."""
    items: List[Tuple[str, NTGResult]] = (list(results.items()) if isinstance(results, Mapping)
                                          else [(r.task or f"task {i}", r) for i, r in enumerate(results)])
    if not items:
        raise ValueError("plot_ntg needs at least one NTGResult")
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.55 * len(items)), constrained_layout=True)
    for i, (name, r) in enumerate(items):
        c = VERDICT_COLOURS.get(r.verdict, "black")
        g, lo, hi = 100 * r.gap, 100 * r.ci_low, 100 * r.ci_high
        ax.errorbar(g, i, xerr=[[g - lo], [hi - g]], fmt="o", color=c, ecolor=c, elinewidth=2.5, capsize=5,
                    markersize=7)
        ax.annotate(f"{g:+.1f} pp  (n={r.n_seeds_each[0]}/{r.n_seeds_each[1]})", (hi, i),
                    xytext=(8, 0), textcoords="offset points", va="center", fontsize=8.5, color=c)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(range(len(items)), [n for n, _ in items])
    ax.invert_yaxis()
    ax.set_ylim(len(items) - 0.4, -0.6)
    lo_all = min(100 * r.ci_low for _, r in items)
    hi_all = max(100 * r.ci_high for _, r in items)
    span = max(hi_all - lo_all, 1.0)
    ax.set_xlim(min(lo_all, 0) - 0.1 * span, max(hi_all, 0) + 0.45 * span)
    comps = sorted({r.comparison for _, r in items})
    ci = items[0][1].ci
    ax.set_xlabel(f"NTG = err(transfer) − err({' / '.join(c.replace(' baseline', '') for c in comps)} baseline),"
                  f" percentage points\n(bars: {100 * ci:.0f}% bootstrap CI over seeds and test samples;"
                  f" n = transfer/baseline seeds)")
    ax.set_title(title or "Negative-transfer gap per task (right of 0: transfer hurt the target)")
    present = [v for v in VERDICT_COLOURS if any(r.verdict == v for _, r in items)]
    ax.legend(handles=[Line2D([], [], color=VERDICT_COLOURS[v], marker="o", lw=2.5, label=v) for v in present],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, framealpha=0.9, borderaxespad=0.0)
    ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _float(v: Any) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def history_from_metrics_csv(path: Union[str, Path]) -> List[Dict[str, float]]:
    """Rows ``{"step": s, "<signal>": value}`` from a CSVLogger ``metrics.csv`` (columns ``monitor/...``), one per
    check, keyed by the ``monitor/step`` column (the global step of the check; Lightning repeats a callback's
    last logged values on later rows, which this collapses)."""
    rows: Dict[int, Dict[str, float]] = {}
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            vals = {k[len("monitor/"):]: _float(v) for k, v in raw.items() if k and k.startswith("monitor/")}
            vals = {k: v for k, v in vals.items() if v is not None}
            step = vals.get("step", _float(raw.get("step")))
            if step is None or not vals:
                continue
            rows.setdefault(int(step), {"step": int(step)}).update(vals)
    if not rows:
        raise ValueError(f"{path} has no monitor/ columns; add NegativeTransferMonitor to trainer.callbacks")
    return [rows[s] for s in sorted(rows)]


def _alarms_from(history: List[Dict[str, float]]) -> Dict[int, int]:
    first: Dict[int, int] = {}
    for row in history:
        for k, v in row.items():
            if k.startswith("alarm_src") and v >= 0.5:
                first.setdefault(int(k[len("alarm_src"):]), int(row["step"]))
    return first


def _resolve_monitor_source(source: Any) -> Any:
    """A run directory or result.json -> the monitor summary it holds (else its metrics.csv path)."""
    if not isinstance(source, (str, Path)):
        if isinstance(source, Mapping) and "diagnostics" in source:
            return source["diagnostics"]["NegativeTransferMonitor"]
        return source
    p = Path(source)
    record_path = p / "result.json" if p.is_dir() else (p if p.suffix == ".json" else None)
    if record_path is not None and record_path.is_file():
        import json

        summary = (json.loads(record_path.read_text()).get("diagnostics") or {}).get("NegativeTransferMonitor")
        if summary and summary.get("history"):
            return summary
    if p.is_dir():
        if (p / "metrics.csv").is_file():
            return p / "metrics.csv"
        raise ValueError(f"{p} has neither monitor history in result.json nor a metrics.csv; train with "
                         f"NegativeTransferMonitor in trainer.callbacks")
    return p


def plot_monitor(source: Any, path: Union[str, Path], source_names: Optional[Mapping[int, str]] = None,
                 threshold: Optional[float] = None, title: Optional[str] = None) -> Path:
    """The monitor's signals over steps; ``source`` is a monitor, its ``history`` (list of dicts) or ``summary``,
    a run directory / ``result.json`` (its ``diagnostics.NegativeTransferMonitor``) or a ``metrics.csv`` path. ``source_names`` maps a source index to a legend label (e.g. ``{1: "permuted labels"}``).
    """
    alarms: Dict[int, int] = {}
    source = _resolve_monitor_source(source)
    if isinstance(source, Mapping):  # the monitor's summary (from result.json diagnostics)
        history = list(source.get("history") or [])
        alarms = {a["source"]: a["step"] for a in source.get("alarms", [])}
        threshold = source.get("threshold", 0.0) if threshold is None else threshold
    elif hasattr(source, "history"):
        history = list(source.history)
        alarms = {a["source"]: a["step"] for a in source.alarms}
        threshold = source.threshold if threshold is None else threshold
        if source_names is None and source.source_names:
            source_names = dict(enumerate(source.source_names))
    elif isinstance(source, (str, Path)):
        history = history_from_metrics_csv(source)
        alarms = _alarms_from(history)
    else:
        history = list(source)
        alarms = _alarms_from(history)
    if not history:
        raise ValueError("the monitor has no history yet: it checks every every_n_steps optimizer steps")
    threshold = 0.0 if threshold is None else threshold
    names = dict(source_names or {})
    sources = sorted({int(m.group(1)) for row in history for k in row if (m := _COS.match(k))})
    has_sep = any("a_distance" in r or "disc_acc" in r for r in history)
    n_panels = 2 + has_sep
    fig, axes = plt.subplots(n_panels, 1, figsize=(8.5, 2.6 * n_panels + 0.6), sharex=True,
                             constrained_layout=True)
    cmap = plt.get_cmap("tab10")

    def series(key: str) -> Tuple[List[int], List[float]]:
        pts = [(r["step"], r[key]) for r in history if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax = axes[0]
    for d in sources:
        c = cmap(d % 10)
        label = names.get(d, f"source {d}")
        xs, ys = series(f"cos_src{d}")
        ax.plot(xs, ys, "o", color=c, alpha=0.35, markersize=4)
        xe, ye = series(f"ema_cos_src{d}")
        ax.plot(xe or xs, ye or ys, "-", color=c, lw=2, label=f"{label}: moving average (dots: each check)")
        if d in alarms:
            ax.axvline(alarms[d], color=c, ls=":", lw=1.8)
            ax.annotate(f"alarm: {label}, step {alarms[d]}", (alarms[d], 0.03), xycoords=("data", "axes fraction"),
                        xytext=(4, 0), textcoords="offset points", va="bottom", fontsize=8, color=c)
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold ({threshold:g})")
    ax.set_ylim(-1.05, 1.75)  # the band above 1 holds the legend
    ax.set_yticks([-1, -0.5, 0, 0.5, 1])
    ax.set_ylabel("cosine(∇ source CE,\n∇ target objective)")
    ax.set_title("Gradient alignment per source (below the threshold: the source pulls against the target)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=2, framealpha=0.9)
    ax.grid(alpha=0.3)

    ax = axes[1]
    xs, ys = series("target_entropy")
    ax.plot(xs, ys, "-", color="#34495e", lw=2, label="mean prediction entropy (nats, left)")
    ax.set_ylabel("target entropy (nats)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    xs, ys = series("target_collapse")
    ax2.plot(xs, ys, "-", color="#e67e22", lw=2, label="fraction predicted as the top class (right)")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("collapse fraction")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right", framealpha=0.9)
    ax.set_title("Target prediction health", fontsize=10)
    ax.grid(alpha=0.3)

    if has_sep:
        ax = axes[2]
        xs, ys = series("a_distance")
        if xs:
            ax.plot(xs, ys, "-", color="#8e44ad", lw=2, label="proxy A-distance 2(1 − 2 err), linear probe")
        xs, ys = series("disc_acc")
        if xs:
            ax.plot(xs, ys, "-", color="#16a085", lw=2, label="domain discriminator accuracy")
        ax.set_ylim(0, 2.05)
        ax.set_ylabel("separability")
        ax.set_title("Domain separability of features (0: indistinguishable, 2: separable)", fontsize=10)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("training step")
    fig.suptitle(title or "Negative-transfer monitor", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
