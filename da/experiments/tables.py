"""Paper tables as a pure function of run records.

``make_table(records, metric, selection, ...)`` groups the records by (task, method), chooses one run per
seed with a model-selection rule (:mod:`da.experiments.selection`), and reports, per cell,

    mean = (1/n) sum_i x_i,      std = sqrt( sum_i (x_i - mean)^2 / (n - 1) )   (sample std, ddof = 1)

of ``scale * metric`` over the n seeds (std is omitted for n = 1); ``error="sem"`` shows the standard error of the
mean instead, sem = std / sqrt(n), as DomainBed reports. The best method per task is in bold
(``**x**`` in markdown, ``\\textbf{x}`` in LaTeX), compared on the displayed (rounded) means, ties all
bold; a method called ``oracle`` (trained on target labels) is shown but never bolded. With several
tasks an ``Avg`` entry gives each method's mean of its per-task means (only for methods that have every
task). The caption names the metric, the selection rule (and whether it uses target labels), n, that the
spread is the sample std, and how many failed or unfinished runs were excluded.

Formats: ``markdown`` (pipe table, pandoc ``Table:`` caption), ``latex`` (booktabs: ``\\toprule``,
``\\midrule``, ``\\bottomrule``; needs ``\\usepackage{booktabs}``), ``csv`` (one line per cell with n,
mean, std and whether it is best, for further analysis).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

from da.errors import unknown_name
from da.experiments.selection import SelectionResult, get_validator, select_runs

FORMATS = ("markdown", "latex", "csv")
AXES = ("task", "method")
BASELINE_METHODS = ("erm", "source-only", "source_only")
UNRANKED_METHODS = ("oracle",)
AVG = "Avg"


@dataclass
class Cell:
    """Statistics of one (task, method) cell; ``std`` is ``None`` when n < 2."""

    values: list[float]
    mean: float
    std: Optional[float]
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def sem(self) -> Optional[float]:
        """Standard error of the mean, std / sqrt(n) (``None`` when n < 2)."""
        return None if self.std is None else self.std / math.sqrt(self.n)


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof = 1; ``None`` for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))


_NUMBER = re.compile(r"(None|-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)")


def natural_key(label: str) -> tuple:
    """Sort key that reads numbers as numbers and ``None`` as smaller than any: ``weight=3`` < ``weight=10``,
    ``k=None`` < ``k=1``."""
    parts = []
    for i, chunk in enumerate(_NUMBER.split(label)):
        if i % 2 == 0:
            parts.append((1, 0.0, chunk))
        else:
            parts.append((0, float("-inf") if chunk == "None" else float(chunk), ""))
    return tuple(parts)


def method_order(methods) -> list[str]:
    """Baselines (``erm``, ``source-only``) first, ``oracle`` last, the rest alphabetically (numbers in a label, e.g.
    a ``--by`` value, compared as numbers)."""
    def key(m: str):
        return (0 if m in BASELINE_METHODS else 2 if m in UNRANKED_METHODS else 1, natural_key(m))
    return sorted(set(methods), key=key)


def compute_cells(selection: SelectionResult, scale: float) -> dict[tuple[str, str], Cell]:
    """(task, method) -> :class:`Cell` over the selected runs' finite metric values times ``scale``."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for pick in selection.picks:
        if pick.value is not None and math.isfinite(pick.value):
            values[(pick.task, pick.method)].append(pick.value * scale)
    cells = {}
    for key, xs in values.items():
        m, s = mean_std(xs)
        cells[key] = Cell(xs, m, s)
    return cells


def split_methods(records: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Copies of ``records`` whose method label carries the sweep parameters ``keys``:
    ``dann`` -> ``dann weight=0.3`` (the last part of a dotted key; records without the key keep their label)."""
    out = []
    for r in records:
        params = (r.get("sweep") or {}).get("params") or {}
        extra = [f"{k.rsplit('.', 1)[-1]}={params[k]}" for k in keys if k in params]
        out.append({**r, "method": " ".join([r["method"], *extra])} if extra else r)
    return out


def _mark_best(entries: dict[str, Cell], digits: int, higher_is_better: bool) -> None:
    ranked = {m: round(c.mean, digits) for m, c in entries.items() if m not in UNRANKED_METHODS}
    if len(ranked) < 2:
        return
    best = max(ranked.values()) if higher_is_better else min(ranked.values())
    for m, r in ranked.items():
        entries[m].best = r == best


def _caption(metric, scale, validator, select_over, selection, cells, higher_is_better, has_avg, any_best,
             error: str = "std") -> str:
    ns = sorted({c.n for c in cells.values()})
    n_txt = f"n={ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else (
        f"n={ns[0]}-{ns[-1]} seeds (cells with fewer than {ns[-1]} show their n)"
    )
    scale_txt = f" (x{scale:g})" if scale != 1 else ""
    parts = []
    if validator.uses_target_labels:
        parts.append("ORACLE model selection (uses target labels; an upper bound, not an unsupervised result).")
    spread = "sample std (ddof=1)" if error == "std" else "standard error of the mean (sample std / sqrt(n))"
    parts.append(f"{metric}{scale_txt}: mean ± {spread} over {n_txt}.")
    k = selection.max_candidates
    among = f" among up to {k} {'runs' if select_over == 'runs' else 'checkpoints'} per seed" if k > 1 else " per seed"
    labels = "uses target labels" if validator.uses_target_labels else "uses no target label"
    parts.append(f"Model selection: {validator.name} ({validator.mode} {validator.key}{among}; {labels}).")
    if any_best:
        parts.append(f"Bold: best method per task ({'higher' if higher_is_better else 'lower'} is better).")
    if has_avg:
        parts.append(f"{AVG}: mean of the per-task means.")
    excluded = []
    if selection.n_failed:
        excluded.append(f"{selection.n_failed} failed run{'s' if selection.n_failed != 1 else ''}")
    if selection.n_unfinished:
        excluded.append(f"{selection.n_unfinished} unfinished run{'s' if selection.n_unfinished != 1 else ''}")
    if excluded:
        parts.append(f"Excluded: {', '.join(excluded)}.")
    return " ".join(parts)


def recipe_text(records: Sequence[dict]) -> str:
    """The caption's first sentence: the benchmark recipe(s) of the tabulated runs (the top-level ``recipe`` key a
    ``configs/benchmark/*.yaml`` file sets), e.g. ``Recipe: digits_tllib.``"""
    names = sorted({str(r.get("recipe") or (r.get("config") or {}).get("recipe") or "not recorded") for r in records})
    if len(names) == 1:
        return f"Recipe: {names[0]}."
    return f"Recipes: {', '.join(names)} (mixed: compare methods only under the same recipe)."


def _latex_escape(text: str) -> str:
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append(r"\textbackslash{}")
        elif ch in "&%$#_{}":
            out.append("\\" + ch)
        elif ch == "~":
            out.append(r"\textasciitilde{}")
        elif ch == "^":
            out.append(r"\textasciicircum{}")
        else:
            out.append(ch)
    return "".join(out).replace("->", r"$\rightarrow$").replace("±", r"$\pm$")


def make_table(
    records: Sequence[dict],
    metric: str = "test/target_acc",
    selection: str = "source-val",
    rows: str = "task",
    cols: str = "method",
    fmt: str = "markdown",
    scale: float = 100,
    digits: int = 1,
    select_over: str = "runs",
    higher_is_better: bool = True,
    average: bool = True,
    split_by: Sequence[str] = (),
    error: str = "std",
) -> str:
    """The table of ``metric`` (mean ± sample std over seeds) by task and method; see the module doc.

    ``split_by`` names sweep parameters (e.g. ``model.losses[0].init_args.weight``) that become part of
    the method label (``dann weight=0.3``) instead of being chosen by model selection: a table of an
    ablation over that parameter.
    """
    if fmt not in FORMATS:
        raise unknown_name("table format", fmt, FORMATS)
    if error not in ("std", "sem"):
        raise unknown_name("error bar (--error)", error, ("std", "sem"))
    if rows not in AXES:
        raise unknown_name("table rows", rows, AXES)
    if cols not in AXES or cols == rows:
        raise ValueError(f"table cols must be the other axis of {AXES} than rows='{rows}', got '{cols}'")
    validator = get_validator(selection)
    if split_by:
        records = split_methods(records, split_by)
    sel = select_runs(records, validator=selection, metric=metric, over=select_over)
    if not sel.picks:
        raise ValueError(
            f"no finished run to tabulate ({len(records)} records: {sel.n_failed} failed, "
            f"{sel.n_unfinished} unfinished); point `da table` at a sweep or run directory holding result.json"
        )
    cells = compute_cells(sel, scale)
    if not cells:
        known = sorted({k for p in sel.picks for k in (p.record.get("metrics") or {})})
        raise unknown_name("metric (no finished record has it)", metric, known)
    tasks = sorted({t for t, _ in cells})
    methods = method_order(m for _, m in cells)
    for t in tasks:
        _mark_best({m: c for (tt, m), c in cells.items() if tt == t}, digits, higher_is_better)
    avg: dict[str, Cell] = {}
    if average and len(tasks) > 1:
        for m in methods:
            if all((t, m) in cells for t in tasks):
                means = [cells[(t, m)].mean for t in tasks]
                avg[m] = Cell(means, sum(means) / len(means), None)
        _mark_best(avg, digits, higher_is_better)
    any_best = any(c.best for c in cells.values()) or any(c.best for c in avg.values())
    caption = _caption(metric, scale, validator, select_over, sel, cells, higher_is_better, bool(avg), any_best,
                       error)
    caption = f"{caption} {recipe_text([p.record for p in sel.picks])}"
    if fmt == "csv":
        return _csv(cells, tasks, methods, rows, metric, selection, digits)
    max_n = max(c.n for c in cells.values())

    def text(cell: Optional[Cell], latex: bool, is_avg: bool = False) -> str:
        if cell is None:
            return "-"
        s = f"{cell.mean:.{digits}f}"
        spread = cell.std if error == "std" else cell.sem
        if spread is not None:
            s += (r" $\pm$ " if latex else " ± ") + f"{spread:.{digits}f}"
        if cell.n < max_n and not is_avg:
            s += f" (n={cell.n})"
        if cell.best:
            s = rf"\textbf{{{s}}}" if latex else f"**{s}**"
        return s

    row_keys = tasks if rows == "task" else methods
    col_keys = methods if rows == "task" else tasks

    def grid(latex: bool) -> tuple[list[str], list[list[str]], Optional[list[str]]]:
        """Header, body rows and the Avg row (rows='task') as cell strings."""
        header = [rows.capitalize()] + list(col_keys) + ([AVG] if avg and rows == "method" else [])
        body = []
        for r in row_keys:
            line = [r] + [text(cells.get((r, c) if rows == "task" else (c, r)), latex) for c in col_keys]
            if avg and rows == "method":
                line.append(text(avg.get(r), latex, is_avg=True))
            body.append(line)
        avg_row = [AVG] + [text(avg.get(m), latex, is_avg=True) for m in methods] if avg and rows == "task" else None
        return header, body, avg_row

    if fmt == "markdown":
        header, body, avg_row = grid(latex=False)
        lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in body + ([avg_row] if avg_row else [])]
        return "\n".join(lines) + f"\n\nTable: {caption}\n"
    header, body, avg_row = grid(latex=True)
    esc = _latex_escape
    lines = [
        r"\begin{table}[t]",
        r"  \centering",
        rf"  \caption{{{esc(caption)}}}",
        rf"  \begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
        r"    \toprule",
        "    " + " & ".join(esc(h) for h in header) + r" \\",
        r"    \midrule",
    ]
    lines += ["    " + " & ".join([esc(line[0])] + line[1:]) + r" \\" for line in body]
    if avg_row:
        lines += [r"    \midrule", "    " + " & ".join(avg_row) + r" \\"]
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _csv(cells, tasks, methods, rows, metric, selection, digits) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "method", "n", "mean", "std", "best", "metric", "selection"])
    order = [(t, m) for t in tasks for m in methods] if rows == "task" else [(t, m) for m in methods for t in tasks]
    for t, m in order:
        c = cells.get((t, m))
        if c is None:
            continue
        std = "" if c.std is None else f"{c.std:.10g}"
        w.writerow([t, m, c.n, f"{c.mean:.10g}", std, int(c.best), metric, selection])
    return buf.getvalue()
