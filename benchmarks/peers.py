"""`da` against its peers, side by side in one run: skada 0.6 and pytorch-adapt 0.0.83 on the same tasks and protocol.

For every task (default: four pairs of the DANN paper's Amazon review features, ``amazon_dann``), method (source-only
``erm``, ``dann``, ``dan`` (MMD), ``coral`` (Deep CORAL), ``mcc``, ``mdd``) and seed, each framework trains

* the same network: :class:`peer_nets.FeatureMLP` (5000 -> 50, ReLU) + a linear classifier, and for DANN the same
  discriminator (:class:`peer_nets.Discriminator`, the layers of ``da.losses.DomainDiscriminator``);
* on the same arrays: read once here through ``da``'s own reader (``DomainDataModule``, all 2,000 labelled source
  reviews, the target's 2,000 unlabelled training reviews; ``da`` itself reads the same files with
  ``--data.val_fraction 0``); accuracy is measured on the target's official test file, final iterate;
* with the same optimisation: Adam (lr 1e-3, no weight decay, no schedule), ``batch`` source + ``batch`` target
  samples per step, the same number of steps (whole epochs of ``floor(max(n_s, n_t) / batch)`` steps, since skorch
  counts epochs), the same seeds;
* each method with its framework's own defaults for its terms (weights 1, the framework's kernels and schedules:
  see ``peer_da.py``, ``peer_skada.py``, ``peer_adapt.py``).

``da`` runs through its public CLI (``da.cli.run_cli`` with ``configs/data/amazon_dann.yaml`` +
``configs/method/<m>.yaml`` + the protocol as overrides: what a user of ``da fit`` gets); methods are picked up by
config name, so a method whose config is not in the checkout is reported as missing. Step time is the thread CPU time
of one training step (forward, losses, backward, optimiser step; data loading excluded), measured by the same
:class:`peer_nets.StepClock` in every framework. Each framework runs in its own subprocess, one at a time, with
``OMP_NUM_THREADS=1``.

    python benchmarks/peers.py --install        # once: skada and pytorch-adapt into .cache/peers/ (not into da's env)
    python benchmarks/peers.py --quick          # 1 seed, 2 pairs, 10 epochs (6 CPU-minutes)
    python benchmarks/peers.py                  # 3 seeds, 4 pairs, 48 epochs (1,488 steps)
    python benchmarks/peers.py --out benchmarks/results/peers   # also write peers.md and peers.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = REPO / ".cache" / "peers"
FRAMEWORKS = ("da", "skada", "pytorch-adapt")
METHODS = ("erm", "dann", "dan", "coral", "mcc", "mdd")
AMAZON = ("books", "dvd", "electronics", "kitchen")
DEFAULT_PAIRS = ("books->kitchen", "dvd->electronics", "electronics->books", "kitchen->dvd")
QUICK_PAIRS = DEFAULT_PAIRS[:2]
#: what ``--install`` puts where: one install folder per peer, never da's own environment
INSTALL = {
    "skada": ["skada==0.6.0", "skorch==1.4.0", "POT==0.9.7.post1", "pandas>=2.3", "tabulate>=0.7.7"],
    "pytorch-adapt": ["pytorch-adapt==0.0.83", "torchmetrics==0.9.3", "pytorch-metric-learning==1.6.3",
                      "setuptools<81"],
}
PROBE = {"da": "da", "skada": "skada.deep", "pytorch-adapt": "pytorch_adapt.adapters"}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 2 pairs, 10 epochs")
    p.add_argument("--pairs", nargs="+", default=None,
                   help=f"Amazon pairs 'source->target' or 'all' (default {' '.join(DEFAULT_PAIRS)})")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (--quick: 0)")
    p.add_argument("--epochs", type=int, default=None, help="default 48 (--quick: 10)")
    p.add_argument("--batch-size", type=int, default=64, help="source and target samples per step, each")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[50], help="hidden widths of the shared MLP")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps of each run")
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data"), help="data root (../shared/data)")
    p.add_argument("--da-checkout", default=str(REPO),
                   help="the da checkout whose code and configs/ the da rows use (default: this one), e.g. a branch's "
                        "worktree with methods not merged yet")
    p.add_argument("--out", default=None, help="write PREFIX.md (the table) and PREFIX.jsonl (every run)")
    p.add_argument("--install", action="store_true", help="pip-install the peers into .cache/peers/ and exit")
    p.add_argument("--table", nargs="+", default=None, metavar="JSONL",
                   help="print the table of saved runs (--out's .jsonl files, e.g. two runs with different seeds) "
                        "for the chosen pairs, methods and frameworks, and exit")
    args = p.parse_args(argv)
    args.seeds_given = args.seeds is not None
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if args.epochs is None:
        args.epochs = 10 if args.quick else 48
    if args.epochs <= 0 or args.batch_size <= 0 or args.lr <= 0:
        p.error(f"--epochs, --batch-size and --lr must be positive, got {args.epochs}, {args.batch_size}, {args.lr}")
    pairs = args.pairs or list(QUICK_PAIRS if args.quick else DEFAULT_PAIRS)
    if pairs == ["all"]:
        pairs = [f"{s}->{t}" for s in AMAZON for t in AMAZON if s != t]
    args.tasks = [task_name(pair, p) for pair in pairs]
    return args


def task_name(pair: str, parser: Optional[argparse.ArgumentParser] = None) -> str:
    """``books->kitchen`` -> ``amazon_dann/books->amazon_dann/kitchen`` (the ``da`` task name)."""
    parts = [s.strip().split("/")[-1] for s in pair.split("->")]
    if len(parts) != 2 or any(s not in AMAZON for s in parts) or parts[0] == parts[1]:
        msg = f"bad pair {pair!r}: give 'source->target' with two different domains of {', '.join(AMAZON)}"
        if parser is not None:
            parser.error(msg)
        raise ValueError(msg)
    return f"amazon_dann/{parts[0]}->amazon_dann/{parts[1]}"


def short_task(task: str) -> str:
    """``amazon_dann/books->amazon_dann/kitchen`` -> ``B→K``."""
    return "→".join(s.split("/")[-1][0].upper() for s in task.split("->"))


# ----------------------------------------------------------------------------------------------------- environments

def framework_env(framework: str, da_checkout: Path = REPO) -> Dict[str, str]:
    """The environment of a framework's worker: its own install folder (if any) first on ``PYTHONPATH``; da's worker
    gets ``da_checkout`` (without writing byte code there when it is another checkout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONWARNINGS": "ignore"}
    paths = [str(HERE)]
    if framework == "da":
        paths.append(str(da_checkout))
        if Path(da_checkout).resolve() != REPO:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        folder = CACHE / framework
        if folder.is_dir():
            paths.insert(0, str(folder))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def probe(framework: str, da_checkout: Path = REPO) -> Optional[str]:
    """None when the framework imports in its environment, else why not (the error's last line)."""
    proc = subprocess.run([sys.executable, "-c", f"import {PROBE[framework]}"],
                          env=framework_env(framework, da_checkout), capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return f"{framework} does not import ({last}); run `python benchmarks/peers.py --install`"


def install() -> None:
    for framework, packages in INSTALL.items():
        target = CACHE / framework
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(target), *packages]
        print("[peers] " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


# ----------------------------------------------------------------------------------------------------- data

def export_task(task: str, root: str) -> Dict[str, object]:
    """Read a task through ``da``'s reader, save the arrays the peers train on; returns the file and the sizes."""
    import torch

    from da.data.datamodule import DomainDataModule

    path = CACHE / "data" / (task.replace("/", "-").replace("->", "_to_") + ".pt")
    source, target = task.split("->")
    dm = DomainDataModule(sources=[source], target=target, root=root, val_fraction=0.0, seed=0)
    dm.prepare()
    src = dm.source_train[0]
    sizes = {"n_s": len(src), "n_t": len(dm.target_train), "n_test": len(dm.target_test)}
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        sparse = lambda x: x.float().to_sparse()  # noqa: E731  (bag-of-words counts: ~99% zeros)
        torch.save({"xs": sparse(src.x), "ys": src.y.long(), "xt": sparse(dm.target_train.x),
                    "xt_test": sparse(dm.target_test.x), "yt_test": dm.target_test.y.long(),
                    "num_classes": len(dm.classes)}, path)
    return {"data": str(path), **sizes}


# ----------------------------------------------------------------------------------------------------- table

def mean_std(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def format_table(results: List[dict], tasks: Sequence[str], methods: Sequence[str],
                 frameworks: Sequence[str]) -> str:
    """One markdown table: a row per (task, method) and a mean-over-tasks row per method; per framework the target
    accuracy (mean ± std over seeds; no ± for one seed) and the step time (thread CPU ms, mean over seeds). A framework that could not
    run a cell shows a note number; the notes (the reasons) follow the table."""
    notes: List[str] = []

    def note(reason: str) -> str:
        if reason not in notes:
            notes.append(reason)
        return f"n/a [{notes.index(reason) + 1}]"

    def cell(rows: List[dict], by_seed_over_tasks: bool):
        if not rows:
            return "", ""
        bad = [r for r in rows if "error" in r]
        if bad:
            return note(bad[0]["error"]), ""
        if by_seed_over_tasks:  # mean over tasks per seed, then mean ± std over seeds
            seeds = sorted({r["seed"] for r in rows})
            if any(len([r for r in rows if r["seed"] == s]) != len(tasks) for s in seeds):
                return "incomplete", ""
            accs = [mean_std([r["acc"] for r in rows if r["seed"] == s])[0] for s in seeds]
        else:
            accs = [r["acc"] for r in rows]
        m, s = mean_std(accs)
        ms = mean_std([r["step_ms"] for r in rows])[0]
        return (f"{m:.1f} ± {s:.1f}" if len(accs) > 1 else f"{m:.1f}"), f"{ms:.2f}"

    head = "| task | method | " + " | ".join(f"{f} acc | {f} ms/step" for f in frameworks) + " |"
    lines = [head, "|---|---|" + "---:|---:|" * len(frameworks)]
    groups = [(short_task(t), [t], False) for t in tasks]
    if len(tasks) > 1:
        groups.append((f"mean of {len(tasks)}", list(tasks), True))
    for label, group_tasks, over in groups:
        for m in methods:
            cells = []
            for f in frameworks:
                rows = [r for r in results if r["framework"] == f and r["method"] == m and r["task"] in group_tasks]
                cells += cell(rows, over)
            if any(cells):
                lines.append(f"| {label} | {m} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i + 1}] {reason}" for i, reason in enumerate(notes)]
    return "\n".join(lines)


def merge_runs(results: List[dict]) -> List[dict]:
    """One row per (framework, task, method, seed): a later run replaces an earlier one, except that a failed run
    never replaces a finished one (so a second file can fill in what the first could not run)."""
    kept: Dict[tuple, dict] = {}
    for r in results:
        key = (r["framework"], r["task"], r["method"], r["seed"])
        if key not in kept or "error" not in r or "error" in kept[key]:
            kept[key] = r
    return list(kept.values())


# ----------------------------------------------------------------------------------------------------- main

def _commit(checkout: Path) -> str:
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or str(checkout)


def make_jobs(args: argparse.Namespace, data: Dict[str, dict], framework: str, run_root: Path) -> List[dict]:
    jobs = []
    for task in args.tasks:
        info = data[task]
        per_epoch = max(info["n_s"], info["n_t"]) // args.batch_size
        for method in args.methods:
            for seed in args.seeds:
                jobs.append({"framework": framework, "task": task, "method": method, "seed": seed,
                             "data": info["data"], "epochs": args.epochs, "steps": args.epochs * per_epoch,
                             "batch_size": args.batch_size, "lr": args.lr, "hidden": list(args.hidden),
                             "warmup": args.warmup, "root": args.root,
                             "configs": str(Path(args.da_checkout) / "configs"),
                             "data_config": "amazon_dann.yaml",
                             "run_dir": str(run_root / framework / short_task(task) / f"{method}-s{seed}")})
    return jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:  # this checkout's da, also when another da is installed
        sys.path.insert(0, str(REPO))
    if args.install:
        install()
        return 0
    if args.table:
        results = merge_runs([json.loads(line) for path in args.table for line in Path(path).read_text().splitlines()
                              if line])
        results = [r for r in results if r["seed"] in args.seeds or not args.seeds_given]
        seeds = sorted({r["seed"] for r in results})
        print(f"Target accuracy (%, final iterate, mean ± std over seeds {seeds}) and thread CPU ms per training "
              f"step, from {', '.join(args.table)}.\n")
        print(format_table(results, args.tasks, args.methods, args.frameworks))
        return 0
    t0 = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_root = CACHE / "runs" / stamp
    run_root.mkdir(parents=True, exist_ok=True)
    data = {task: export_task(task, args.root) for task in args.tasks}
    results: List[dict] = []
    for framework in args.frameworks:
        jobs = make_jobs(args, data, framework, run_root)
        why = probe(framework, Path(args.da_checkout))
        if why is not None:
            results += [{**{k: j[k] for k in ("framework", "task", "method", "seed")}, "error": why} for j in jobs]
            print(f"[peers] {why}", flush=True)
            continue
        jobs_path, out_path = run_root / f"{framework}.jobs.json", run_root / f"{framework}.jsonl"
        jobs_path.write_text(json.dumps(jobs))
        proc = subprocess.run([sys.executable, str(HERE / "peer_worker.py"), framework, str(jobs_path),
                               str(out_path)], env=framework_env(framework, Path(args.da_checkout)), cwd=str(REPO))
        done = [json.loads(line) for line in out_path.read_text().splitlines()] if out_path.exists() else []
        results += done
        if proc.returncode != 0 or len(done) < len(jobs):
            missing = [j for j in jobs[len(done):]]
            results += [{**{k: j[k] for k in ("framework", "task", "method", "seed")},
                         "error": f"{framework} worker exited with status {proc.returncode}"} for j in missing]
    steps = sorted({j["steps"] for j in make_jobs(args, data, "da", run_root)})
    table = format_table(results, args.tasks, args.methods, args.frameworks)
    caption = (f"Target accuracy (%, final iterate, mean ± std over seeds {args.seeds}) and thread CPU ms per training "
               f"step. Amazon (DANN features), MLP 5000-{'-'.join(map(str, args.hidden))}-2, Adam lr {args.lr}, "
               f"batch {args.batch_size} + {args.batch_size}, {args.epochs} epochs = {'/'.join(map(str, steps))} "
               f"steps, OMP_NUM_THREADS=1, da at {_commit(Path(args.da_checkout))}. "
               f"Wall time {time.time() - t0:.0f} s.")
    print("\n" + caption + "\n\n" + table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(caption + "\n\n" + table + "\n")
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    shutil.rmtree(run_root / "da", ignore_errors=True)  # checkpoints of the da runs; the records are in results
    return 0


if __name__ == "__main__":
    sys.exit(main())
