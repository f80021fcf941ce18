"""``da sweep``: run a sweep file (argparse; the ``da`` command dispatches here)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from da.runs.config import parse_yaml_value


def _stop_on_sigterm():
    """SIGTERM stops the sweep like Ctrl-C: its children are stopped and their runs stay resumable."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a sweep run from a worker thread): leave signals alone
        return signal.getsignal(signal.SIGTERM)


def _key_values(items: Optional[Sequence[str]], flag: str) -> dict:
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
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="local / inprocess: N runs at once on this machine, each with cores/N threads "
                   "(OMP_NUM_THREADS, unless you set it); inprocess uses N worker processes (default 1)")
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
    from da.runs.sweep.plan import run_sweep
    from da.runs.sweep.spec import load_sweep
    from da.runs.sweep.wandb import wandb_sweep_config

    args = sweep_parser().parse_args(argv)
    from da.resources import resolve

    spec = load_sweep(resolve(args.sweep, "experiments"))  # a file, or a packaged grid by name
    if args.wandb_sweep is not None:
        import yaml

        text = yaml.safe_dump(wandb_sweep_config(spec, args.sweep), sort_keys=False)
        if args.wandb_sweep == "-":
            sys.stdout.write(text)
        else:
            Path(args.wandb_sweep).write_text(text)
            print(f"wrote W&B sweep config to {args.wandb_sweep}; start it with `wandb sweep {args.wandb_sweep}`",
                  file=sys.stderr)
        return 0
    launcher = args.launcher
    if not args.dry_run:
        from da.runs.sweep.launchers import make_launcher

        options = {}
        if args.jobs != 1:
            if args.jobs < 1:
                raise SystemExit(f"da sweep: --jobs must be >= 1, got {args.jobs}")
            if args.launcher not in ("local", "inprocess"):
                raise SystemExit(f"da sweep: --jobs is for the local and inprocess launchers (runs at once on this "
                                 f"machine's CPU); {args.launcher} sets its own parallelism"
                                 + (" (one run per GPU: --gpus)" if args.launcher == "local-gpus" else ""))
            options["jobs"] = args.jobs
        if args.launcher == "local-gpus" and args.gpus:
            options["gpus"] = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if args.launcher == "slurm":
            options = {**_key_values(args.slurm, "--slurm"), "wait": args.wait,
                       "folder": str(Path(args.out) / spec.name / ".submitit")}
        launcher = make_launcher(args.launcher, **options)
    previous = _stop_on_sigterm()
    try:
        summary = run_sweep(
            spec, out=args.out, launcher=launcher, retry_failed=args.retry_failed, dry_run=args.dry_run,
            wandb=args.wandb, only=_key_values(args.only, "--only"), extra_overrides=_key_values(args.set_, "--set"),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to finish the sweep (finished runs are skipped, "
              f"the interrupted one resumes from its last.ckpt)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.dry_run:
        return 0
    print(summary.format(), file=sys.stderr)
    print(f"table: da table {summary.sweep_dir}", file=sys.stderr)
    return 0 if not summary.failed else 1
