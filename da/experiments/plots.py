"""Pictures of runs: learning curves from ``metrics.csv`` and t-SNE maps of source/target features.

- :func:`plot_curves`: for one or more run directories, training losses (left) and validation accuracies
  (right) against the optimisation step, read from the run's ``metrics.csv`` (Lightning's CSVLogger:
  one row per logging call, empty cells for keys not logged in that row); a run without it falls back to
  its record's ``history``.
- :func:`plot_tsne`: a 2-D t-SNE (van der Maaten & Hinton, JMLR 2008) of source and target features,
  at most ``max_points`` points (subsampled evenly per domain), source as circles and target as
  crosses, colour = class. :func:`plot_tsne_panels` draws several maps side by side (before / after
  adaptation) in one PNG.

Matplotlib is used through ``matplotlib.figure.Figure`` (no pyplot state, no display needed); it and
scikit-learn are imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DEFAULT_TRAIN_KEYS = ("train/loss", "train/cls")
VAL_SUFFIX = "_acc"


def find_metrics_csv(run_dir: str | Path) -> Optional[Path]:
    """``<run_dir>/metrics.csv``, else the first ``metrics.csv`` below it (CSVLogger's version folders)."""
    run_dir = Path(run_dir)
    direct = run_dir / "metrics.csv"
    if direct.is_file():
        return direct
    found = sorted(run_dir.rglob("metrics.csv"))
    return found[0] if found else None


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` from a CSVLogger file, skipping empty cells; sorted by step."""
    from da.runs.metrics_csv import read_rows

    series: dict[str, list[tuple[int, float]]] = {}
    for row in read_rows(Path(path))[1]:
        step = row.get("step")
        if step in (None, ""):
            continue
        step_i = int(float(step))
        for key, value in row.items():
            if key in ("step", "epoch") or value in (None, ""):
                continue
            try:
                series.setdefault(key, []).append((step_i, float(value)))
            except ValueError:
                continue
    return {k: sorted(v) for k, v in series.items()}


def _series_from_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from da.runs.record import raw_record

    record = raw_record(run_dir) or {}
    series: dict[str, list[tuple[int, float]]] = {}
    for row in record.get("history") or []:
        for key, value in row.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def _run_label(run_dir: Path) -> str:
    from da.runs.record import raw_record

    try:
        r = raw_record(run_dir) or {}
        return f"{r['method']} {r['task']} s{r['seed']}"
    except (KeyError, TypeError):
        return run_dir.name


def _sweep_params(run_dir: Path) -> dict:
    from da.runs.record import RecordError, read_record

    try:
        return dict(((read_record(run_dir).get("sweep") or {}).get("params")) or {})
    except (RecordError, OSError, ValueError):
        return {}


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """``method task sSEED`` per run; runs that share a label (a sweep over a parameter) get the sweep parameters
    whose values differ among them appended, by the last part of the key: ``dann ... s0 weight=0.3``."""
    labels = [_run_label(Path(d)) for d in run_dirs]
    params = [_sweep_params(Path(d)) for d in run_dirs]
    out = list(labels)
    for label in set(labels):
        same = [i for i, lb in enumerate(labels) if lb == label]
        if len(same) < 2:
            continue
        keys = sorted({k for i in same for k in params[i]} - {"seed"})
        differing = [k for k in keys if len({json.dumps(params[i].get(k), sort_keys=True) for i in same}) > 1]
        for i in same:
            extra = [f"{k.rsplit('.', 1)[-1]}={params[i].get(k)}" for k in differing]
            out[i] = " ".join([label, *extra]) if extra else f"{label} ({Path(run_dirs[i]).name})"
    return out


def fit_title(fig, title: str, fontsize: float = 12.0) -> str:
    """``title`` wrapped to the figure's width (about 0.6 em per character), so a long one is not clipped."""
    import textwrap

    width_chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    return textwrap.fill(title, width=width_chars)


def _ema(values: Sequence[float], smooth: float) -> list[float]:
    """Exponential moving average ``m_t = smooth * m_{t-1} + (1 - smooth) * x_t`` (``smooth=0``: raw)."""
    out, m = [], None
    for x in values:
        m = x if m is None else smooth * m + (1 - smooth) * x
        out.append(m)
    return out


def plot_curves(
    run_dirs: Sequence[str | Path],
    path: str | Path,
    train_keys: Optional[Sequence[str]] = None,
    val_keys: Optional[Sequence[str]] = None,
    smooth: float = 0.6,
    title: Optional[str] = None,
) -> Path:
    """Learning curves of the runs in ``run_dirs`` as a PNG at ``path``; returns ``path``.

    Left: ``train_keys`` (default ``train/loss`` and ``train/cls`` when logged, else every ``train/*``
    except schedule weights), smoothed with an EMA of factor ``smooth``. Right: ``val_keys`` (default
    every ``val/*_acc``), unsmoothed, with markers.
    """
    from matplotlib.figure import Figure

    runs = []
    for d in run_dirs:
        d = Path(d)
        csv_path = find_metrics_csv(d)
        series = read_metrics_csv(csv_path) if csv_path else _series_from_history(d)
        if not series:
            raise FileNotFoundError(f"no metrics.csv and no history in result.json under {d}; is it a run directory?")
        runs.append((d, series))
    runs = [(label, series) for label, (_, series) in zip(run_labels([d for d, _ in runs]), runs)]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_t, ax_v = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    styles = ["-", "--", ":", "-."]
    for (label, series), colour in zip(runs, colours):
        keys_t = list(train_keys) if train_keys else [k for k in DEFAULT_TRAIN_KEYS if k in series] or sorted(
            k for k in series if k.startswith("train/") and not k.endswith("_weight")
        )
        keys_v = list(val_keys) if val_keys else sorted(k for k in series if k.startswith("val/") and k.endswith(VAL_SUFFIX))
        for i, key in enumerate(k for k in keys_t if k in series):
            steps, values = zip(*series[key])
            ax_t.plot(steps, _ema(values, smooth), styles[i % 4], color=colour, lw=1.4,
                      label=f"{key} ({label})" if len(runs) > 1 else key)
        for i, key in enumerate(k for k in keys_v if k in series):
            steps, values = zip(*series[key])
            ax_v.plot(steps, values, styles[i % 4], marker="o", ms=3, color=colour if len(runs) > 1 else f"C{i}",
                      lw=1.4, label=f"{key} ({label})" if len(runs) > 1 else key)
    ax_t.set_title("training loss" + (f" (EMA {smooth:g})" if smooth else ""))
    ax_v.set_title("validation accuracy")
    for ax, what in ((ax_t, "train/* loss (fewer steps than log_every_n_steps?)"), (ax_v, "val/*_acc")):
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, frameon=False)
    ax_v.set_ylabel("accuracy")
    ax_t.set_ylabel("loss")
    fig.suptitle(fit_title(fig, title or (runs[0][0] if len(runs) == 1 else f"{len(runs)} runs")), fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def _subsample(n_s: int, n_t: int, max_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices keeping at most ``max_points`` in total, half per domain (a small domain's share goes to
    the other), sorted."""
    half = max_points // 2
    k_s = min(n_s, max(half, max_points - n_t))
    k_t = min(n_t, max_points - k_s)
    pick = lambda n, k: np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)  # noqa: E731
    return pick(n_s, k_s), pick(n_t, k_t)


def tsne_embed(feats_s, feats_t, max_points: int = 2000, seed: int = 0):
    """2-D t-SNE of the (subsampled) union of source and target features.

    Returns ``(emb_s, emb_t, idx_s, idx_t)``: embeddings and the kept indices of each domain.
    Perplexity ``min(30, (n - 1) / 3)``, PCA initialisation, ``random_state=seed``.
    """
    from sklearn.manifold import TSNE

    fs, ft = np.asarray(feats_s, dtype=np.float64), np.asarray(feats_t, dtype=np.float64)
    if fs.ndim != 2 or ft.ndim != 2 or fs.shape[1] != ft.shape[1]:
        raise ValueError(f"features must be (n, d) arrays with the same d, got {fs.shape} and {ft.shape}")
    rng = np.random.default_rng(seed)
    idx_s, idx_t = _subsample(len(fs), len(ft), max_points, rng)
    x = np.concatenate([fs[idx_s], ft[idx_t]])
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(x)}")
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    emb = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
               learning_rate="auto").fit_transform(x)
    return emb[: len(idx_s)], emb[len(idx_s):], idx_s, idx_t


def plot_tsne_panels(panels: Sequence[dict], path: str | Path, title: Optional[str] = None,
                     max_points: int = 2000, seed: int = 0, class_names: Optional[Sequence[str]] = None) -> Path:
    """Several t-SNE maps side by side; each panel is a dict with ``feats_s``, ``feats_t``, optional
    ``labels_s``, ``labels_t`` and ``title``. Returns ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels_all = [np.asarray(p[k]) for p in panels for k in ("labels_s", "labels_t") if p.get(k) is not None]
    classes = np.unique(np.concatenate(labels_all)) if labels_all else np.array([])
    cmap_name = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"
    fig = Figure(figsize=(5.2 * len(panels) + (1.6 if len(classes) else 0), 5.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    cmap = __import__("matplotlib").colormaps[cmap_name]
    colour_of = {c: cmap(i % cmap.N if cmap_name != "turbo" else i / max(1, len(classes) - 1)) for i, c in enumerate(classes)}
    from da.progress import iterate

    for ax, panel in zip(axes, iterate(panels, desc=f"t-SNE ({max_points} points max per domain)", unit="maps")):
        emb_s, emb_t, idx_s, idx_t = tsne_embed(panel["feats_s"], panel["feats_t"], max_points, seed)
        for emb, idx, key, marker, size in ((emb_s, idx_s, "labels_s", "o", 14), (emb_t, idx_t, "labels_t", "x", 18)):
            labels = panel.get(key)
            if labels is None:
                colours = "0.35" if marker == "o" else "C3"
            else:
                colours = [colour_of[c] for c in np.asarray(labels)[idx]]
            kwargs = {"facecolors": "none", "edgecolors": colours} if marker == "o" else {"c": colours}
            ax.scatter(emb[:, 0], emb[:, 1], marker=marker, s=size, linewidths=0.9, alpha=0.75, **kwargs)
        ax.set_title(panel.get("title", ""), fontsize=12)
        ax.set_axis_off()
    domain_handles = [
        Line2D([], [], marker="o", ls="", mfc="none", mec="0.2", ms=7, label="source"),
        Line2D([], [], marker="x", ls="", color="0.2", ms=7, label="target"),
    ]
    axes[0].legend(handles=domain_handles, loc="upper left", frameon=True, fontsize=9)
    if len(classes):
        names = list(class_names) if class_names is not None else [str(c) for c in classes]
        class_handles = [Line2D([], [], marker="s", ls="", color=colour_of[c], ms=8, label=names[i] if i < len(names) else str(c))
                         for i, c in enumerate(classes[:20])]
        fig.legend(handles=class_handles, loc="outside right center", title="class", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def plot_tsne(feats_s, feats_t, labels_s=None, labels_t=None, path: str | Path = "tsne.png",
              title: str = "t-SNE of source and target features", max_points: int = 2000, seed: int = 0,
              class_names: Optional[Sequence[str]] = None) -> Path:
    """One t-SNE map of source (circles) and target (crosses) features coloured by class; see module doc."""
    panel = {"feats_s": feats_s, "feats_t": feats_t, "labels_s": labels_s, "labels_t": labels_t, "title": ""}
    return plot_tsne_panels([panel], path, title=title, max_points=max_points, seed=seed, class_names=class_names)


# ----------------------------------------------------------------------------------------------------
# A metric against a sweep parameter
# ----------------------------------------------------------------------------------------------------

def param_series(records: Sequence[dict], param: str, metric: str = "test/target_acc", scale: float = 100.0,
                 by: Sequence[str] = ()) -> dict[str, dict[str, list[tuple]]]:
    """``{task: {method: [(value, mean, std, n), ...]}}``: ``metric`` x ``scale`` over the finished runs (seeds) of
    each task, method and value of the sweep parameter ``param``, values ordered (None first, then numbers).
    ``by`` names other sweep parameters that split the method label (as ``da table --by``); std is the sample std
    (0 for one run)."""
    from da.runs.record import metric_value
    from da.experiments.tables import mean_std, natural_key, split_methods

    finished = [r for r in records if r.get("status") == "finished"]
    with_param = [r for r in finished if param in ((r.get("sweep") or {}).get("params") or {})]
    if not with_param:
        known = sorted({k for r in finished for k in ((r.get("sweep") or {}).get("params") or {})})
        raise ValueError(f"no finished run has the sweep parameter {param!r}; the runs have: {', '.join(known) or 'none'}")
    groups: dict[tuple, list[float]] = {}
    for r in split_methods(with_param, [k for k in by if k != param]):
        value = r["sweep"]["params"][param]
        y = metric_value(r, metric)
        if math.isfinite(y):
            groups.setdefault((r["task"], r["method"], json.dumps(value)), []).append(y * scale)
    out: dict[str, dict[str, list[tuple]]] = {}
    for (task, method, value), ys in groups.items():
        mean, std = mean_std(ys)
        out.setdefault(task, {}).setdefault(method, []).append((json.loads(value), mean, std or 0.0, len(ys)))
    for methods in out.values():
        for pts in methods.values():
            pts.sort(key=lambda p: natural_key(str(p[0])))
    return out


def plot_param(records: Sequence[dict], param: str, path: str | Path, metric: str = "test/target_acc",
               scale: float = 100.0, by: Sequence[str] = (), title: Optional[str] = None,
               xlabel: Optional[str] = None) -> Path:
    """``metric`` (mean ± std over seeds, error bars) against the sweep parameter ``param``, one panel per task and
    one line per method; the values sit at evenly spaced positions labelled with their text (``none`` for null)."""
    from matplotlib.figure import Figure

    from da.experiments.tables import natural_key

    series = param_series(records, param, metric=metric, scale=scale, by=by)
    values = sorted({json.dumps(p[0]) for m in series.values() for pts in m.values() for p in pts},
                    key=lambda v: natural_key(str(json.loads(v))))
    pos = {v: i for i, v in enumerate(values)}
    tasks = sorted(series)
    fig = Figure(figsize=(4.6 * len(tasks) + 0.4, 4.0), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    methods = sorted({m for t in tasks for m in series[t]})
    for ax, task in zip(axes, tasks):
        for i, method in enumerate(methods):
            pts = series[task].get(method)
            if not pts:
                continue
            xs = [pos[json.dumps(p[0])] for p in pts]
            ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=4, capsize=3, lw=1.4,
                        color=f"C{i % 10}", label=method)
        ax.set_xticks(range(len(values)), ["none" if json.loads(v) is None else str(json.loads(v)) for v in values])
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
    fig.supxlabel(xlabel or param, fontsize=10)
    axes[0].set_ylabel(f"{metric}" + (f" (x{scale:g})" if scale != 1 else ""))
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(fit_title(fig, title or f"{metric} vs {param} (mean ± std over seeds)"), fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path
