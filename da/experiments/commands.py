"""Entry points of ``da table`` and ``da plot`` (argparse; the ``da`` command dispatches here).

Each ``*_main(argv)`` takes the arguments after the sub-command name and returns an exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from da.experiments.selection import SELECT_OVER, VALIDATORS
from da.experiments.tables import AXES, FORMATS


def table_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="da table", description="Mean ± std table of run records by task and method.")
    p.add_argument("paths", nargs="+", help="sweep directories, run directories or result.json files")
    p.add_argument("--metric", default="test/target_acc")
    p.add_argument("--selection", default="source-val", choices=list(VALIDATORS),
                   help="model-selection rule per seed (target-oracle uses target labels and is marked)")
    p.add_argument("--select-over", default="runs", choices=list(SELECT_OVER),
                   help="choose among runs (final metrics) or among every validation checkpoint in history")
    p.add_argument("--rows", default="task", choices=list(AXES), help="task (methods as columns) or method")
    p.add_argument("--format", default="markdown", choices=list(FORMATS))
    p.add_argument("--scale", type=float, default=100.0)
    p.add_argument("--digits", type=int, default=1)
    p.add_argument("--lower-is-better", action="store_true", help="bold the lowest mean (errors, losses)")
    p.add_argument("--no-average", action="store_true", help="leave out the Avg row/column")
    p.add_argument("--by", nargs="+", action="extend", default=[], metavar="PARAM",
                   help="sweep parameters shown as separate methods instead of selected, e.g. "
                   "--by model.losses[0].init_args.weight")
    p.add_argument("--skip-invalid", action="store_true", help="warn about and skip invalid records")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="keep only these tasks")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", help="keep only these methods")
    p.add_argument("-o", "--output", default=None, help="write the table to this file instead of stdout")
    p.add_argument("--error", default="std", choices=["std", "sem"],
                   help="spread after ±: sample std (ddof=1) or standard error of the mean (std / sqrt(n))")
    p.add_argument("--save-records", default=None, metavar="FILE.jsonl",
                   help="also write the records behind the table, packed (da table FILE.jsonl rebuilds it)")
    return p


def table_main(argv: Optional[Sequence[str]] = None) -> int:
    """``da table``: prints (or writes) the table."""
    from da.runs.record import load_records
    from da.experiments.tables import make_table

    args = table_parser().parse_args(argv)
    records = load_records(args.paths, strict=not args.skip_invalid)
    if not records:
        from da.errors import UserError

        raise UserError(f"no result.json records under {', '.join(map(str, args.paths))}: give run or sweep "
                        f"directories (a run writes <run_dir>/result.json when it starts)")
    records = [r for r in records if (args.tasks is None or r.get("task") in args.tasks)
               and (args.methods is None or r.get("method") in args.methods)]
    if not records:
        print("da table: no record matches --tasks / --methods", file=sys.stderr)
        return 2
    cols = "method" if args.rows == "task" else "task"
    text = make_table(
        records, metric=args.metric, selection=args.selection, rows=args.rows, cols=cols, fmt=args.format,
        scale=args.scale, digits=args.digits, select_over=args.select_over,
        higher_is_better=not args.lower_is_better, average=not args.no_average, split_by=args.by, error=args.error,
    )
    if args.save_records:
        from da.runs.packed import write_packed

        print(f"wrote {write_packed(args.save_records, records)}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="da plot", description="Learning curves, t-SNE maps and metric-vs-parameter plots as PNG.")
    sub = p.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("curves", help="train loss and val accuracies vs step from metrics.csv")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("-o", "--output", default="curves.png")
    c.add_argument("--smooth", type=float, default=0.6, help="EMA factor for the training loss (0 = raw)")
    c.add_argument("--title", default=None)
    t = sub.add_parser("tsne", help="t-SNE of source/target features from .npz files "
                       "(arrays feats_s, feats_t, optional labels_s, labels_t); one panel per file")
    t.add_argument("features", nargs="+")
    t.add_argument("-o", "--output", default="tsne.png")
    t.add_argument("--titles", nargs="+", default=None, help="one title per file (default: file names)")
    t.add_argument("--title", default="t-SNE of source and target features")
    t.add_argument("--max-points", type=int, default=2000)
    t.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("param", help="a metric (mean ± std over seeds) against a sweep parameter, one line per "
                       "method, one panel per task")
    q.add_argument("paths", nargs="+", help="sweep directories, run directories or result.json files")
    q.add_argument("--param", required=True, help="the sweep parameter on the x axis, e.g. data.target_labeled_per_class")
    q.add_argument("--by", nargs="+", action="extend", default=[], metavar="PARAM",
                   help="other sweep parameters that split the method label (as da table --by)")
    q.add_argument("--metric", default="test/target_acc")
    q.add_argument("--scale", type=float, default=100.0)
    q.add_argument("--xlabel", default=None)
    q.add_argument("--title", default=None)
    q.add_argument("-o", "--output", default="param.png")
    return p


def plot_main(argv: Optional[Sequence[str]] = None) -> int:
    """``da plot curves RUN_DIR... -o curves.png`` / ``da plot tsne before.npz after.npz -o tsne.png``."""
    import numpy as np

    from da.experiments import plots

    args = plot_parser().parse_args(argv)
    if args.kind == "curves":
        out = plots.plot_curves(args.run_dirs, args.output, smooth=args.smooth, title=args.title)
    elif args.kind == "param":
        from da.runs.record import load_records

        out = plots.plot_param(load_records(args.paths, strict=False), args.param, args.output, metric=args.metric,
                               scale=args.scale, by=args.by, title=args.title, xlabel=args.xlabel)
    else:
        titles = args.titles or [Path(f).stem for f in args.features]
        if len(titles) != len(args.features):
            raise SystemExit(f"--titles gives {len(titles)} titles for {len(args.features)} files")
        panels = []
        for f, title in zip(args.features, titles):
            data = np.load(f)
            missing = [k for k in ("feats_s", "feats_t") if k not in data]
            if missing:
                raise SystemExit(f"{f} lacks arrays {missing}; save np.savez(f, feats_s=..., feats_t=..., labels_s=..., labels_t=...)")
            panels.append({"feats_s": data["feats_s"], "feats_t": data["feats_t"], "title": title,
                           "labels_s": data["labels_s"] if "labels_s" in data else None,
                           "labels_t": data["labels_t"] if "labels_t" in data else None})
        out = plots.plot_tsne_panels(panels, args.output, title=args.title, max_points=args.max_points, seed=args.seed)
    print(f"wrote {out}", file=sys.stderr)
    return 0
