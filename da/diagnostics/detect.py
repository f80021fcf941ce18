"""``da detect``: did transfer hurt (NTG verdicts from runs), and which source should I use (transferability ranking).

Modes::

    da detect --transfer runs/dann --baseline runs/target_only [--json] [--plot ntg.png]
    da detect --task jda/mnist->jda/usps --method dann --runs-root runs \\
              --baseline-config configs/data/jda_mnist_usps.yaml configs/benchmark/digits_lenet_bn_adam.yaml configs/method/oracle.yaml --seeds 0 1 2
    da detect --rank --features-dir feats/ [--scores logme leep] [--accuracies accs.json] [--json]

Runs are run directories, sweep directories (walked for ``result.json``) or ``result.json`` files; only records with
status ``finished`` count. Per-sample correctness comes from ``<run_dir>/predictions.pt`` (else the accuracy in the
record, with a note). Runs are grouped by target domain (the part of ``task`` after ``->``), so several tasks can be
judged at once. The comparison is read from the baseline records (``data.supervision == "target"``: target-only
baseline; otherwise source-only), or given with ``--comparison``.

In ``--task/--method`` mode, baseline runs missing under ``<runs-root>/baselines/<task>/seed<s>`` are launched with
``launcher(argv)`` (default: ``da fit`` in a subprocess with ``--config`` for each baseline config,
``--seed_everything s`` and ``--run_dir``); tests pass a fake launcher.

Feature files for ``--rank``: one ``<name>.npz`` or ``<name>.pt`` per candidate with ``labels`` and ``features``
(``(n, d)``, for LogME / H-score) and/or ``probs`` (``(n, Z)`` source-model softmax, for LEEP / NCE).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from da.diagnostics.ntg import NTGResult, load_outcome, negative_transfer_gap
from da.diagnostics.transferability import SCORES, Ranking, rank_sources

Launcher = Callable[[List[str]], int]


def _target_of(task: str) -> str:
    return task.split("->")[-1]


def _data_config(record: Dict[str, Any]) -> Dict[str, Any]:
    data = (record.get("config") or {}).get("data") or {}
    return data.get("init_args", data) if isinstance(data, dict) else {}


def load_runs(paths: Sequence[Any]) -> tuple:
    """Finished records under ``paths`` (run / sweep dirs or result.json files) and notes about skipped ones."""
    from da.runs.record import load_records

    records, notes = [], []
    for rec in load_records([Path(p) for p in paths], strict=False):
        if rec.get("status") == "finished":
            records.append(rec)
        else:
            notes.append(f"skipped {rec.get('run_dir')}: status {rec.get('status')!r}")
    return records, notes


def infer_comparison(baseline_records: Sequence[Dict[str, Any]]) -> str:
    """``"target-only baseline"`` when the baseline runs trained on target labels only (``data.supervision ==
    "target"`` or method ``oracle``), else ``"source-only baseline"``."""
    target_only = [(_data_config(r).get("supervision") == "target" or r.get("method") == "oracle")
                   for r in baseline_records]
    if target_only and all(target_only):
        return "target-only baseline"
    if any(target_only):
        raise ValueError("the baseline runs mix target-only and source-trained runs; give one kind, or set "
                         "--comparison explicitly")
    return "source-only baseline"


def detect_negative_transfer(transfer: Sequence[Any], baseline: Sequence[Any], comparison: str = "auto",
                             n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> List[NTGResult]:
    """NTG per target domain from two sets of runs (paths or loaded records); see the module docstring."""
    t_recs, notes = load_runs(transfer) if not _are_records(transfer) else (list(transfer), [])
    b_recs, b_notes = load_runs(baseline) if not _are_records(baseline) else (list(baseline), [])
    notes += b_notes
    if not t_recs:
        raise ValueError(f"no finished transfer runs under {list(map(str, transfer))}; give run or sweep directories "
                         f"holding result.json with status 'finished'")
    if not b_recs:
        raise ValueError(f"no finished baseline runs under {list(map(str, baseline))}; train the baseline first "
                         f"(or use --task/--method with --baseline-config to launch it)")
    by_t, by_b = defaultdict(list), defaultdict(list)
    for r in t_recs:
        by_t[_target_of(r["task"])].append(r)
    for r in b_recs:
        by_b[_target_of(r["task"])].append(r)
    results = []
    for target in sorted(by_t):
        if target not in by_b:
            raise ValueError(f"no baseline runs for target {target!r} (baselines cover: {sorted(by_b)}); "
                             f"train the baseline on {target} or drop those transfer runs")
        comp = infer_comparison(by_b[target]) if comparison == "auto" else comparison
        tasks = sorted({r["task"] for r in by_t[target]})
        methods = sorted({r["method"] for r in by_t[target]})
        base_methods = sorted({r["method"] for r in by_b[target]})
        res = negative_transfer_gap([load_outcome(r) for r in by_t[target]], [load_outcome(r) for r in by_b[target]],
                                    n_boot=n_boot, ci=ci, seed=seed, comparison=comp,
                                    task=" | ".join(tasks) if len(tasks) > 1 else tasks[0])
        res.notes = [f"transfer: {', '.join(methods)}; baseline: {', '.join(base_methods)}"] + res.notes + notes
        results.append(res)
    return results


def _are_records(items: Sequence[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) for i in items)


def run_missing_baselines(task: str, baseline_configs: Sequence[str], seeds: Sequence[int], runs_root: Any,
                          launcher: Optional[Launcher] = None) -> List[Path]:
    """Baseline run directories ``<runs_root>/baselines/<task>/seed<s>``, each fitted unless finished, else resumed
    (:func:`da.runs.lifecycle.ensure_fitted`). ``launcher(argv) -> exit status`` runs ``da <argv>`` (default: a
    subprocess). Returns the run directories of all requested seeds."""
    from da.runs.lifecycle import ensure_fitted, safe_name

    if not baseline_configs:
        raise ValueError("--baseline-config is required to launch missing baselines (the YAML of the same recipe "
                         "without the source, e.g. data.supervision: target)")
    dirs = []
    for s in seeds:
        run_dir = Path(runs_root) / "baselines" / safe_name(task) / f"seed{s}"
        args = [a for cfg in baseline_configs for a in ("--config", str(cfg))] + ["--seed_everything", str(s)]
        ensure_fitted(run_dir, args, launcher, what=f"baseline run for seed {s}")
        dirs.append(run_dir)
    return dirs


def load_feature_sets(features_dir: Any) -> Dict[str, Dict[str, Any]]:
    """``name -> {"features"?, "probs"?, "labels"}`` from ``<name>.npz`` / ``<name>.pt`` files in a directory."""
    d = Path(features_dir)
    files = sorted([*d.glob("*.npz"), *d.glob("*.pt")]) if d.is_dir() else []
    if not files:
        raise ValueError(f"no .npz or .pt feature files in {d}; save one per candidate with keys 'labels' and "
                         f"'features' (n, d) and/or 'probs' (n, Z)")
    out = {}
    for f in files:
        if f.suffix == ".npz":
            with np.load(f) as z:
                data = {k: z[k] for k in z.files}
        else:
            import torch

            data = {k: (v.numpy() if hasattr(v, "numpy") else v)
                    for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}
        if "labels" not in data or not ({"features", "probs"} & set(data)):
            raise ValueError(f"{f} has keys {sorted(data)}; it needs 'labels' and 'features' and/or 'probs'")
        out[f.stem] = {k: data.get(k) for k in ("features", "probs", "labels")}
    return out


def _print_ntg(results: List[NTGResult]) -> None:
    for r in results:
        print(f"task {r.task}")
        print(f"  verdict: {r.verdict.upper()}  (vs {r.comparison})")
        print(f"  NTG = {100 * r.gap:+.2f} pp, {100 * r.ci:.0f}% CI [{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}] pp")
        print(f"  target error: transfer {100 * r.err_transfer:.2f}% ({r.n_seeds_each[0]} seeds), "
              f"baseline {100 * r.err_baseline:.2f}% ({r.n_seeds_each[1]} seeds)")
        samples = f", {r.n_samples[0]} test samples" if r.n_samples else ""
        print(f"  bootstrap: {r.bootstrap}, {r.n_boot} replicates{samples}")
        for n in r.notes:
            print(f"  note: {n}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="da detect", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--transfer", nargs="+", help="transfer runs: run dirs, sweep dirs or result.json files")
    p.add_argument("--baseline", nargs="+", help="baseline runs (same recipe without the source, or source-only)")
    p.add_argument("--comparison", default="auto", choices=["auto", "target-only", "source-only"],
                   help="what the baseline is (auto: read data.supervision from the baseline records)")
    p.add_argument("--task", help="task (e.g. 'jda/mnist->jda/usps') whose transfer runs to judge")
    p.add_argument("--method", help="method name of the transfer runs (as in result.json)")
    p.add_argument("--runs-root", default="runs", help="where to look for runs and put launched baselines")
    p.add_argument("--baseline-config", nargs="+", help="config file(s) of the target-only baseline recipe")
    p.add_argument("--seeds", nargs="+", type=int, help="baseline seeds (default: the transfer runs' seeds)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--ci", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    p.add_argument("--rank", action="store_true", help="rank candidates by transferability scores")
    p.add_argument("--features-dir", help="--rank: folder of <name>.npz/.pt with labels + features/probs")
    p.add_argument("--scores", nargs="+", choices=SCORES, help="--rank: scores to compute (default: all that apply)")
    p.add_argument("--accuracies", help="--rank: JSON {name: measured target accuracy} to report Kendall tau")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--plot", help="write the NTG-per-task PNG here")
    p.add_argument("--fail-on-negative", action="store_true", help="exit with status 3 when negative transfer is found")
    return p


def _emit(payload: Dict[str, Any], args: argparse.Namespace, text: Callable[[], None]) -> None:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2))
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        text()


def detect_main(argv: Optional[Sequence[str]] = None, launcher: Optional[Launcher] = None) -> int:
    """Entry point of ``da detect``; returns the exit status (0, or 3 with --fail-on-negative and a detection)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.rank:
        if not args.features_dir:
            parser.error("--rank needs --features-dir DIR (one <name>.npz/.pt per candidate)")
        accs = json.loads(Path(args.accuracies).read_text()) if args.accuracies else None
        ranking: Ranking = rank_sources(load_feature_sets(args.features_dir), scores=args.scores, accuracies=accs)
        _emit(ranking.to_dict(), args, lambda: print(ranking.to_markdown()))
        return 0
    if args.task:
        if not args.method:
            parser.error("--task needs --method (the transfer runs' method name, as in result.json)")
        pool, _ = load_runs(args.transfer or [args.runs_root]) if (args.transfer or Path(args.runs_root).exists()) \
            else ([], [])
        transfer = [r for r in pool if r["task"] == args.task and r["method"] == args.method]
        if not transfer:
            parser.error(f"no finished runs of task {args.task!r} with method {args.method!r} under "
                         f"{args.transfer or args.runs_root}; train them first (da fit / da sweep)")
        if args.baseline:
            baseline: List[Any] = list(args.baseline)
        else:
            seeds = args.seeds or sorted({r["seed"] for r in transfer if r.get("seed") is not None}) or [0]
            baseline = run_missing_baselines(args.task, args.baseline_config or [], seeds, args.runs_root, launcher)
        transfer_src: List[Any] = transfer
    else:
        if not args.transfer or not args.baseline:
            parser.error("give --transfer RUNS and --baseline RUNS, or --task/--method (with --baseline-config), "
                         "or --rank --features-dir DIR")
        transfer_src, baseline = list(args.transfer), list(args.baseline)
    results = detect_negative_transfer(transfer_src, baseline, comparison=args.comparison, n_boot=args.n_boot,
                                       ci=args.ci, seed=args.seed)
    if args.plot:
        from da.diagnostics.plots import plot_ntg

        plot_ntg(results, args.plot)
    _emit({"results": [r.to_dict() for r in results]}, args, lambda: _print_ntg(results))
    if args.plot and not args.json:
        print(f"plot: {args.plot}")
    if args.fail_on_negative and any(r.verdict == "negative transfer" for r in results):
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(detect_main())
