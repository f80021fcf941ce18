"""Entry points of ``da sweep``, ``da table`` and ``da plot`` (argparse; the ``da`` command dispatches here).

Each ``*_main(argv)`` takes the arguments after the sub-command name and returns an exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from da.experiments.selection import SELECT_OVER, VALIDATORS
from da.experiments.tables import AXES, FORMATS


def _key_values(items: Optional[Sequence[str]], flag: str) -> dict:
    from da.experiments.sweep import parse_yaml_value

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r} (e.g. {flag} trainer.max_steps=100)")
        out[key] = parse_yaml_value(value)
    return out


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="da sweep",
        description="Run a sweep file: each run in <out>/<name>/<config hash>/; finished runs are skipped, "
        "interrupted ones resumed from last.ckpt, failed ones retried with --retry-failed.",
    )
    p.add_argument("sweep", help="sweep YAML file (see docs/experiments.md)")
    p.add_argument("--out", default="runs/sweeps", help="root of sweep directories (default: runs/sweeps)")
    p.add_argument("--launcher", default="local", choices=["local", "inprocess", "local-gpus", "slurm", "ddp"],
                   help="local: sequential subprocesses; inprocess: sequential inside this process (no start-up "
                   "cost per run, for many small runs); local-gpus: one run per GPU in parallel; slurm: submitit jobs; "
                   "ddp: one run at a time with Lightning's multi-GPU/multi-node DDP (set trainer.devices / "
                   "trainer.num_nodes with --set)")
    p.add_argument("--gpus", default=None, help="GPU ids for local-gpus, e.g. 0,1 (default: all visible)")
    p.add_argument("--slurm", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="submitit parameters, e.g. timeout_min=120 slurm_partition=gpu gpus_per_node=1")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and report their outcome")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs whose record says failed")
    p.add_argument("--dry-run", action="store_true", help="list the runs (hash, action, status, seed, task, method)")
    p.add_argument("--only", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="run only runs whose params match, e.g. --only seed=0 (a W&B agent passes its point here)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", dest="set_",
                   help="extra overrides for every run (part of the config, so part of the hash)")
    p.add_argument("--wandb", action="store_true",
                   help="group W&B runs by sweep, tag task/method/seed, name by hash (env vars for the run's WandbLogger)")
    p.add_argument("--wandb-sweep", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the grid as a W&B sweep config (to FILE, or stdout) and exit")
    return p


def sweep_main(argv: Optional[Sequence[str]] = None) -> int:
    """``da sweep``: returns 0 when every run finished, 1 when some failed, 130 when interrupted."""
    from da.experiments import sweep as S

    args = sweep_parser().parse_args(argv)
    spec = S.load_sweep(args.sweep)
    if args.wandb_sweep is not None:
        import yaml

        text = yaml.safe_dump(S.wandb_sweep_config(spec, args.sweep), sort_keys=False)
        if args.wandb_sweep == "-":
            sys.stdout.write(text)
        else:
            Path(args.wandb_sweep).write_text(text)
            print(f"wrote W&B sweep config to {args.wandb_sweep}; start it with `wandb sweep {args.wandb_sweep}`",
                  file=sys.stderr)
        return 0
    launcher = args.launcher
    if not args.dry_run:
        from da.experiments.launchers import make_launcher

        options = {}
        if args.launcher == "local-gpus" and args.gpus:
            options["gpus"] = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if args.launcher == "slurm":
            options = {**_key_values(args.slurm, "--slurm"), "wait": args.wait,
                       "folder": str(Path(args.out) / spec.name / ".submitit")}
        launcher = make_launcher(args.launcher, **options)
    try:
        summary = S.run_sweep(
            spec, out=args.out, launcher=launcher, retry_failed=args.retry_failed, dry_run=args.dry_run,
            wandb=args.wandb, only=_key_values(args.only, "--only"), extra_overrides=_key_values(args.set_, "--set"),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to finish the sweep (finished runs are skipped, "
              f"the interrupted one resumes from its last.ckpt)", file=sys.stderr)
        return 130
    if args.dry_run:
        return 0
    print(summary.format(), file=sys.stderr)
    print(f"table: da table {summary.sweep_dir}", file=sys.stderr)
    return 0 if not summary.failed else 1


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
    return p


def table_main(argv: Optional[Sequence[str]] = None) -> int:
    """``da table``: prints (or writes) the table."""
    from da.experiments.records import load_records
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
        higher_is_better=not args.lower_is_better, average=not args.no_average, split_by=args.by,
    )
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
        from da.experiments.records import load_records

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
