"""The multi-source workflow: one model per source domain, then a target fine-tune that uses all of them.

Both readings of multi-source L2-SP, ``min sum_d 1/2 ||w_d - w0_d||^2 + lambda/n sum_i L(y_i, f(x_i))`` (Li,
Grandvalet & Davoine, ICML 2018, with D starting points), against the two usual baselines, from one command::

    da multisource --config configs/data/X.yaml --sources a/1 a/2 a/3 --target a/4 --out runs/multisource/a4

Stages (each a ``da fit``, as a subprocess of the ``da`` command or in-process through :func:`da.runs.cli_fit.run_cli`):

1. **Sources** (``anchors``, ``branches``, ``single``): one source-only run per source domain,
   ``<out>/sources/<source>``, evaluated on the target as well (the direct-transfer accuracy). All source runs share
   the seed, hence the initial weights, which is what makes their weight average meaningful (model soups, Wortsman
   et al. ICML 2022; Fisher merging, Matena & Raffel NeurIPS 2022). ``pooled``: one run on all sources together,
   ``<out>/sources/pooled``.
2. **Target** fine-tunes on labelled target data (``--data.supervision target``, ``--shots`` labels per class):

   * ``anchors``: ``configs/method/anchors.yaml`` with the D source checkpoints as anchors,
     ``sum_d alpha_d/2 ||w - w_d||^2``, starting from ``w_bar = sum_d alpha_d w_d / sum_d alpha_d``, the minimiser of
     the penalty (the model is initialised there with ``--model.init_from <out>/target/anchors/w_bar.ckpt``; the head
     is averaged too). Starting from one source instead would favour it before any target data is seen.
   * ``branches``: ``configs/method/branches.yaml``: a ``branches`` backbone with one branch per source checkpoint,
     a learned mixture and L2-SP per branch toward its own source; a new head.
   * ``single``: L2-SP (``configs/method/l2sp.yaml``) from each source model alone; the best is reported (chosen on
     target test accuracy: an oracle choice, the strongest single-source baseline).
   * ``pooled``: L2-SP from the model trained on all sources pooled.

Runs whose directory already holds a finished ``result.json`` (made with the same arguments) are reused; an
unfinished one resumes from its ``last.ckpt``. ``<out>/summary.json`` gathers the target accuracies.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import yaml

from da.errors import unknown_name
from da.runs.lifecycle import LAUNCHES, LAST_CKPT, ensure_fitted, safe_name
from da.runs.io import write_json_atomic
from da.runs.record import read_record

METHODS = ("anchors", "branches", "pooled", "single")
ACC = "test/target_acc"
_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "method"
DEFAULT_METHOD_CONFIGS = {"anchors": _CONFIGS / "anchors.yaml", "branches": _CONFIGS / "branches.yaml",
                          "l2sp": _CONFIGS / "l2sp.yaml"}
MODEL_PREFIXES = ("backbone.", "bottleneck.", "classifier.")


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(str(i) for i in items) + "]"


def average_checkpoints(checkpoints: Sequence[Any], weights: Optional[Sequence[float]] = None) -> Dict[str, torch.Tensor]:
    """``w_bar = sum_d a_d w_d / sum_d a_d`` over the model tensors (``backbone.``, ``bottleneck.``, ``classifier.``).

    Floating tensors are averaged in float64 and cast back; integer buffers (BatchNorm's ``num_batches_tracked``)
    are taken from the first checkpoint. ``weights``: the anchors' alphas (default equal). Checkpoints are ``da fit``
    checkpoints, ``torch.save``d state dicts or in-memory state dicts, all of the same architecture.
    """
    from da.losses.l2sp import read_state_dict

    if not len(checkpoints):
        raise ValueError("average_checkpoints needs at least one checkpoint")
    a = torch.tensor([1.0] * len(checkpoints) if weights is None else [float(w) for w in weights], dtype=torch.float64)
    if a.numel() != len(checkpoints) or (a < 0).any() or a.sum() <= 0:
        raise ValueError(f"weights must be {len(checkpoints)} non-negative numbers with a positive sum, "
                         f"got {None if weights is None else list(weights)}")
    a = a / a.sum()
    states = [{k: v for k, v in read_state_dict(c).items() if k.startswith(MODEL_PREFIXES)} for c in checkpoints]
    keys = list(states[0])
    for d, s in enumerate(states[1:], 1):
        if set(s) != set(keys) or any(s[k].shape != states[0][k].shape for k in keys):
            diff = sorted(set(s) ^ set(keys))[:3] or [k for k in keys if s[k].shape != states[0][k].shape][:3]
            raise ValueError(f"checkpoint {d} does not have the architecture of checkpoint 0 (e.g. {diff}); "
                             "the anchors must be models of the same backbone and head")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            acc = sum(float(a[d]) * s[k].double() for d, s in enumerate(states))
            out[k] = acc.to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def fit(run_dir: Path, args: List[str], launcher: str = "subprocess") -> Dict[str, Any]:
    """``da fit <args> --run_dir <run_dir>`` unless the directory already holds a finished run of these ``args``
    (and of the same text of its ``--config`` files).

    Returns the record, with ``"reused": True`` when nothing was run. A run left unfinished resumes from its
    ``last.ckpt``. A finished run made with other arguments is an error (it would silently mix experiments).
    """
    if launcher not in LAUNCHES:
        raise unknown_name("launcher", launcher, LAUNCHES)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / "workflow.json"
    rec = read_record(run_dir, missing_ok=True)
    prev = json.loads(marker.read_text()) if marker.exists() else None
    # what the run is: its arguments and the text of its config files (a generated method config may change)
    ident = {"args": list(args), "configs": [Path(args[i + 1]).read_text() for i, a in enumerate(args[:-1])
                                             if a == "--config" and Path(args[i + 1]).is_file()]}
    if rec and prev is not None and prev != ident:
        raise ValueError(f"{run_dir} holds a run made with other arguments or configs ({prev.get('args')}); "
                         "remove the directory or choose another --out")
    if rec and rec.get("status") == "finished" and (run_dir / LAST_CKPT).exists():
        return {**rec, "reused": True}
    write_json_atomic(marker, ident)
    return {**ensure_fitted(run_dir, args, LAUNCHES[launcher], what=f"da fit in {run_dir}"), "reused": False}


def _load_yaml(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"method config {path} not found; pass its path (--anchors-config, "
                                "--branches-config, --l2sp-config) when `da` is installed without its configs/")
    return yaml.safe_load(path.read_text()) or {}


def _anchors_config(template: Path, checkpoints: List[str], out: Path) -> List[float]:
    """Write the anchors method config pointed at ``checkpoints``; return the alphas used for ``w_bar``."""
    cfg = _load_yaml(template)
    terms = [t for t in cfg.get("model", {}).get("losses", [])
             if str(t.get("class_path", "")).rsplit(".", 1)[-1] == "MultiSourceAnchors"]
    if len(terms) != 1:
        raise ValueError(f"{template} must hold exactly one da.losses.MultiSourceAnchors term, found {len(terms)}")
    init = terms[0].setdefault("init_args", {})
    init["anchors"] = list(checkpoints)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    alphas = init.get("alphas")
    return [1.0] * len(checkpoints) if alphas is None else [float(x) for x in alphas]


def _branches_config(template: Path, checkpoints: List[str], source_model: Mapping[str, Any], out: Path) -> None:
    """Write the branches method config: the source runs' backbone as ``base``, one branch per checkpoint."""
    cfg = _load_yaml(template)
    model = cfg.setdefault("model", {})
    model["backbone"] = "branches"
    bargs = dict(model.get("backbone_args") or {})
    bargs.update(base=source_model["backbone"], base_args=dict(source_model.get("backbone_args") or {}),
                 checkpoints=list(checkpoints))
    bargs.setdefault("mixture", "learned")
    model["backbone_args"] = bargs
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_multisource(configs: Sequence[str], sources: Sequence[str], target: str,
                    methods: Sequence[str] = METHODS, out: str = "runs/multisource", seed: int = 0,
                    shots: Optional[int] = 10, supervision: str = "target", overrides: Sequence[str] = (),
                    source_overrides: Sequence[str] = (), target_overrides: Sequence[str] = (),
                    launcher: str = "subprocess", source_checkpoint: str = "last",
                    method_configs: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Train the source models, then the target runs of ``methods``; write and return ``<out>/summary.json``.

    Args:
        configs: base ``--config`` files (data, model, trainer), in order.
        sources, target: domain names ``<dataset>/<domain>`` (at least two sources).
        methods: any of ``anchors``, ``branches``, ``pooled``, ``single``.
        out: the workflow's directory (``sources/``, ``target/``, ``summary.json``).
        seed: ``--seed_everything`` of every run.
        shots: labelled target samples per class of the target runs (None: all target training labels).
        supervision: ``target`` (fine-tune on target labels only) or ``source+target``.
        overrides: extra ``da fit`` arguments for every run; ``source_overrides`` / ``target_overrides`` for one
            stage (e.g. ``["--trainer.max_steps", "500"]``).
        launcher: ``subprocess`` (the ``da`` command) or ``inprocess`` (:func:`da.runs.cli_fit.run_cli`).
        source_checkpoint: ``last`` or ``best`` (best source-validation accuracy) source checkpoint.
        method_configs: paths replacing ``configs/method/{anchors,branches,l2sp}.yaml``.
    """
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in METHODS:
            raise unknown_name("multi-source method", m, METHODS)
    sources = list(sources)
    if len(sources) < 2 or len(set(sources)) != len(sources):
        raise ValueError(f"give at least two distinct source domains, got {sources}")
    if target in sources:
        raise ValueError(f"the target {target} is also a source; leave it out of --sources")
    if source_checkpoint not in ("last", "best"):
        raise unknown_name("source checkpoint", source_checkpoint, ("last", "best"))
    if supervision not in ("target", "source+target"):
        raise ValueError(f"the target runs fine-tune on target labels: supervision must be 'target' or "
                         f"'source+target', got {supervision!r}")
    paths = {**DEFAULT_METHOD_CONFIGS, **{k: Path(v) for k, v in (method_configs or {}).items()}}
    root = Path(out).resolve()
    base = [a for c in configs for a in ("--config", str(Path(c).resolve()))]
    common = ["--seed_everything", str(seed)]

    def source_run(doms: List[str], name: str) -> Dict[str, Any]:
        args = [*base, *common, "--data.sources", _yaml_list(doms), "--data.target", target,
                "--data.supervision", "source", *overrides, *source_overrides]
        return fit(root / "sources" / name, args, launcher)

    def target_run(run_dir: Path, doms: List[str], method_cfg: Path, extra: List[str]) -> Dict[str, Any]:
        args = [*base, "--config", str(method_cfg), *common, "--data.sources", _yaml_list(doms),
                "--data.target", target, "--data.supervision", supervision,
                "--data.target_labeled_per_class", "null" if shots is None else str(int(shots)),
                *extra, *overrides, *target_overrides]
        return fit(run_dir, args, launcher)

    def ckpt(rec: Mapping[str, Any]) -> str:
        return str(Path(rec["run_dir"]) / "checkpoints" / f"{source_checkpoint}.ckpt")

    summary: Dict[str, Any] = {"task": "+".join(sources) + "->" + target, "seed": seed, "shots": shots,
                               "supervision": supervision, "source_checkpoint": source_checkpoint,
                               "sources": {}, "methods": {}, "reused": []}

    def note(rec: Mapping[str, Any]) -> Dict[str, Any]:
        if rec.get("reused"):
            summary["reused"].append(rec["run_dir"])
        m = rec.get("metrics", {})
        return {"run_dir": rec["run_dir"], "method": rec.get("method"), "target_acc": m.get(ACC),
                "source_acc": m.get("test/source_acc")}

    src_recs: Dict[str, Dict[str, Any]] = {}
    if set(methods) & {"anchors", "branches", "single"}:
        for s in sources:
            src_recs[s] = source_run([s], safe_name(s))
            summary["sources"][s] = note(src_recs[s])  # target_acc here: direct transfer, no target label
    checkpoints = [ckpt(src_recs[s]) for s in sources] if src_recs else []
    tdir = root / "target"

    if "anchors" in methods:
        run_dir = tdir / "anchors"
        run_dir.mkdir(parents=True, exist_ok=True)
        alphas = _anchors_config(paths["anchors"], checkpoints, run_dir / "method.yaml")
        w_bar = run_dir / "w_bar.ckpt"
        torch.save({"state_dict": average_checkpoints(checkpoints, alphas), "anchors": checkpoints,
                    "alphas": alphas}, w_bar)
        rec = target_run(run_dir, sources, run_dir / "method.yaml",
                         ["--model.init_from", str(w_bar), "--model.method_name", "anchors"])
        summary["methods"]["anchors"] = {**note(rec), "init": "w_bar", "alphas": alphas}

    if "branches" in methods:
        run_dir = tdir / "branches"
        run_dir.mkdir(parents=True, exist_ok=True)
        # the source model's backbone from the config LightningCLI saved (result.json stringifies dict values)
        src_model = _load_yaml(Path(src_recs[sources[0]]["run_dir"]) / "config.yaml")["model"]
        _branches_config(paths["branches"], checkpoints, src_model, run_dir / "method.yaml")
        rec = target_run(run_dir, sources, run_dir / "method.yaml", ["--model.method_name", "branches"])
        mix = {k: v for k, v in rec.get("metrics", {}).items() if "_mix" in k}
        summary["methods"]["branches"] = {**note(rec), "mixture": mix}

    if "single" in methods:
        per = {}
        for s in sources:
            rec = target_run(tdir / "single" / safe_name(s), [s], paths["l2sp"],
                             ["--model.init_from", ckpt(src_recs[s]), "--model.method_name", "single+l2sp"])
            per[s] = note(rec)
        best = max(per, key=lambda s: per[s]["target_acc"] if per[s]["target_acc"] is not None else -1.0)
        summary["methods"]["single"] = {"per_source": per, "best_source": best,
                                        "target_acc": per[best]["target_acc"],
                                        "selection": "best target test accuracy (oracle choice of the source)"}

    if "pooled" in methods:
        pooled_src = source_run(sources, "pooled")
        summary["sources"]["pooled"] = note(pooled_src)
        rec = target_run(tdir / "pooled", sources, paths["l2sp"],
                         ["--model.init_from", ckpt(pooled_src), "--model.method_name", "pooled+l2sp"])
        summary["methods"]["pooled"] = note(rec)

    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "summary.json", summary)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A markdown table of the target accuracies in ``summary``."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    lines = [f"{summary['task']} (seed {summary['seed']}, {summary['shots']} target labels per class)", "",
             "| run | target acc |", "|---|---:|"]
    for s, r in summary["sources"].items():
        lines.append(f"| source only: {s} (direct transfer) | {pct(r['target_acc'])} |")
    for m, r in summary["methods"].items():
        label = f"{m} (best: {r['best_source']})" if m == "single" else m
        lines.append(f"| {label} | {pct(r['target_acc'])} |")
    return "\n".join(lines)


def summarize_workflows(dirs: Sequence[str]) -> str:
    """Mean ± sample std over workflow directories (one per seed) of every run's target accuracy, as markdown.

    Reads ``<dir>/summary.json`` of each; rows are the direct-transfer source models, then the target methods (the
    ``single`` row reports each seed's best source, an oracle pick). n = the number of directories holding the row.
    """
    from da.experiments.tables import mean_std

    rows: Dict[str, List[float]] = {}
    task, shots = None, None
    for d in dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        task, shots = s["task"], s["shots"]
        for name, r in s["sources"].items():
            if r.get("target_acc") is not None:
                rows.setdefault(f"source only: {name} (direct transfer)", []).append(100 * r["target_acc"])
        for m, r in s["methods"].items():
            if r.get("target_acc") is not None:
                label = f"{m} (best single source, oracle pick)" if m == "single" else m
                rows.setdefault(label, []).append(100 * r["target_acc"])
    if not rows:
        raise ValueError(f"no summary.json with results in {list(dirs)}")
    lines = [f"{task}, {shots} labelled target samples per class: target accuracy (x100), mean ± sample std over "
             f"workflow seeds", "", "| run | target acc | n |", "|---|---:|---:|"]
    for label, vals in rows.items():
        mean, std = mean_std(vals)
        sd = f" ± {std:.1f}" if std is not None else ""
        lines.append(f"| {label} | {mean:.1f}{sd} | {len(vals)} |")
    return "\n".join(lines)


def multisource_main(argv: Optional[List[str]] = None) -> int:
    """``da multisource``: see the module docstring. Unknown ``--key value`` arguments go to every ``da fit``."""
    if argv and argv[0] == "summarize":
        if len(argv) < 2:
            print("usage: da multisource summarize <workflow dir> [<workflow dir> ...]", file=sys.stderr)
            return 2
        print(summarize_workflows(argv[1:]))
        return 0
    p = argparse.ArgumentParser(prog="da multisource", description=__doc__.split("\n\n")[0],
                                epilog="Any other --key value (e.g. --trainer.max_steps 500) is passed to every da fit. "
                                "`da multisource summarize DIR...` prints mean ± std over workflow directories (seeds).")
    p.add_argument("--config", action="append", default=[], help="base config (repeatable, in order)")
    p.add_argument("--sources", nargs="+", required=True, help="source domains, e.g. jda/mnist digits/svhn")
    p.add_argument("--target", required=True, help="the target domain")
    p.add_argument("--method", nargs="+", default=list(METHODS), choices=METHODS,
                   help="target runs to make (default: all four)")
    p.add_argument("--out", default=None, help="workflow directory (default runs/multisource/<task>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", default="10", help="labelled target samples per class, or 'all'")
    p.add_argument("--supervision", default="target", choices=["target", "source+target"])
    p.add_argument("--source-args", default="", help="extra da fit arguments for the source runs (one string)")
    p.add_argument("--target-args", default="", help="extra da fit arguments for the target runs (one string)")
    p.add_argument("--launcher", default="subprocess", choices=["subprocess", "inprocess"])
    p.add_argument("--source-checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--anchors-config", default=None)
    p.add_argument("--branches-config", default=None)
    p.add_argument("--l2sp-config", default=None)
    args, extra = p.parse_known_args(argv)
    shots = None if str(args.shots).lower() in ("all", "none", "null") else int(args.shots)
    out = args.out or str(Path("runs") / "multisource" / safe_name("+".join(args.sources) + "_to_" + args.target))
    method_configs = {k: v for k, v in (("anchors", args.anchors_config), ("branches", args.branches_config),
                                        ("l2sp", args.l2sp_config)) if v}
    summary = run_multisource(args.config, args.sources, args.target, methods=args.method, out=out, seed=args.seed,
                              shots=shots, supervision=args.supervision, overrides=extra,
                              source_overrides=shlex.split(args.source_args),
                              target_overrides=shlex.split(args.target_args), launcher=args.launcher,
                              source_checkpoint=args.source_checkpoint, method_configs=method_configs)
    print(format_summary(summary))
    print(f"[da] summary: {Path(out).resolve() / 'summary.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(multisource_main())
