"""Run the controlled negative-transfer benchmark, then analyse it (tables, NTG and monitor plots).

    python experiments/negative_transfer/run_benchmark.py experiments/negative_transfer/blobs.yaml \
        [--out runs/nt_benchmark] [--seeds 20] [--steps 300] [--analyse-only]

Every (kind, setting, seed) run is one in-process fit of ``TransferModule`` + ``DomainDataModule`` (+ the
``NegativeTransferMonitor`` on transfer runs) with a bare ``pl.Trainer`` (no logger, checkpoints or validation: the
CLI's record writing costs more than a 300-step fit of this model), appended as one JSON line to
``<out>/runs.jsonl`` as soon as it ends; a restarted benchmark skips the runs already there. Seeds are the outer
loop, so a partial file covers every setting. ``<out>/progress.log`` logs each run with its wall time.
Analysis writes ``<out>/tables.md``, ``<out>/summary.json``, ``<out>/ntg.png`` and ``<out>/monitor.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import yaml

from da.diagnostics.benchmark import Setting, auroc, expand_settings, grouped_kendall_tau, monitor_scores, \
    time_to_alarm


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def method_losses(method: str) -> list:
    """The loss terms of ``configs/method/<method>.yaml`` (``erm``: none). Only loss-term methods: a training method
    (``model.method``: ADDA, MCD, FixMatch, SHOT) has its own update rule, which the monitor's step does not drive."""
    from da.losses import build_loss
    from da.resources import resolve

    if method == "erm":
        return []
    path = resolve(f"method/{method}")
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    if model.get("method") is not None:
        raise SystemExit(f"method {method!r} ({path}) is a training method with its own update rule; the benchmark "
                         f"takes loss-term methods (dann, mmd, mcc, im, ...)")
    return [build_loss(spec) for spec in model.get("losses") or []]


def fit_one(cfg: Dict[str, Any], kind: str, setting: Setting, seed: int) -> Dict[str, Any]:
    """One fit: ``kind`` is ``transfer`` (sources + k target labels, monitor on, plus the setting's method's loss
    terms on the unlabelled target), ``baseline`` (k target labels only) or ``source_only`` (sources only; its target
    features and probabilities feed the transferability scores). Returns a JSON-able record with per-sample
    target-test correctness."""
    import pytorch_lightning as pl

    from da.data.datamodule import DomainDataModule
    from da.diagnostics import NegativeTransferMonitor
    from da.diagnostics.transferability import h_score, leep, logme, nce
    from da.module import TransferModule

    t0 = time.time()
    pl.seed_everything(seed, verbose=False)
    supervision = {"transfer": "source+target", "baseline": "target", "source_only": "source"}[kind]
    dm = DomainDataModule(sources=list(setting.sources), target=cfg["target"], target_split=cfg["target_split"],
                          supervision=supervision, target_labeled_per_class=cfg["labeled_per_class"],
                          source_label_noise=list(setting.noise), batch_size=cfg["batch_size"], num_workers=0,
                          options=cfg.get("data_options"), on_device=False, seed=seed)
    losses = method_losses(setting.method) if kind == "transfer" else []
    model = TransferModule(num_classes=dm.num_classes, input_shape=dm.input_shape, num_sources=dm.num_sources,
                           losses=losses, **cfg["model"])
    callbacks = []
    monitor = None
    if kind == "transfer":
        monitor = NegativeTransferMonitor(action=setting.action, **cfg["monitor"])
        callbacks.append(monitor)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(max_steps=cfg["steps"], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             accelerator="cpu", devices=1, callbacks=callbacks, default_root_dir=tmp,
                             log_every_n_steps=cfg["monitor"]["every_n_steps"])
        trainer.fit(model, datamodule=dm)
    model.eval()
    with torch.no_grad():
        pred = model(dm.target_test.x).argmax(-1)
    correct = (pred == dm.target_test.y).int().tolist()
    rec: Dict[str, Any] = {"kind": kind, "setting": setting.name if kind != "baseline" else "baseline",
                           "seed": seed, "acc": float(np.mean(correct)), "correct": correct,
                           "steps": int(trainer.global_step)}
    if monitor is not None:
        s = monitor.summary
        rec["monitor"] = {"history": s["history"], "alarms": s["alarms"], "final_ema_cos": s["final_ema_cos"],
                          "objective": s["target_objective"]}
        rec["source_weights"] = model.source_weights.tolist()
    if kind == "source_only":
        lab = dm.target_labeled
        with torch.no_grad():
            f, logits = model.features_and_logits(lab.x)
        f, p, y = f.double().numpy(), logits.double().softmax(-1).numpy(), lab.y.numpy()
        rec["scores"] = {"logme": logme(f, y), "leep": leep(p, y), "nce": nce(p.argmax(-1), y),
                         "hscore": h_score(f, y, shrinkage="auto")}
    rec["wall_s"] = round(time.time() - t0, 2)
    return rec


def plan(cfg: Dict[str, Any], settings: List[Setting]) -> List[tuple]:
    """(kind, setting, seed) in run order: seeds outermost; per seed the baseline, every transfer setting, and a
    source-only model per single-source setting."""
    base = Setting("baseline", "baseline", ("blobs/0",), (0.0,), (False,))
    jobs = []
    for seed in range(cfg["seeds"]):
        jobs.append(("baseline", base, seed))
        jobs += [("transfer", s, seed) for s in settings]
        jobs += [("source_only", s, seed) for s in settings if s.num_sources == 1 and s.method == "erm"]
    return jobs


def run(cfg: Dict[str, Any], out: Path) -> None:
    _quiet()
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    settings = expand_settings(cfg)
    path = out / "runs.jsonl"
    done = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["kind"], r["setting"], r["seed"]))
    jobs = plan(cfg, settings)
    t_start = time.time()
    with open(out / "progress.log", "a") as log, open(path, "a") as f:
        for i, (kind, setting, seed) in enumerate(jobs):
            key = (kind, "baseline" if kind == "baseline" else setting.name, seed)
            if key in done:
                continue
            rec = fit_one(cfg, kind, setting, seed)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            log.write(f"[{time.time() - t_start:7.1f}s] {i + 1}/{len(jobs)} {kind} {key[1]} seed {seed}: "
                      f"target acc {rec['acc']:.3f} ({rec['wall_s']}s)\n")
            log.flush()
        log.write(f"done: {len(jobs)} runs planned, wall {time.time() - t_start:.1f}s\n")


# ----------------------------------------------------------------------------------------------- analysis

def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{100 * x:+.1f}" if pct else f"{x:.3f}"


def analyse(cfg: Dict[str, Any], out: Path) -> Dict[str, Any]:
    from da.diagnostics.ntg import negative_transfer_gap
    from da.diagnostics.plots import plot_monitor, plot_ntg

    settings = {s.name: s for s in expand_settings(cfg)}
    recs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    by = {}
    for r in recs:
        by.setdefault((r["kind"], r["setting"]), {})[r["seed"]] = r
    base = by.get(("baseline", "baseline"), {})
    if len(base) < 2:
        raise SystemExit(f"need >= 2 baseline seeds in {out / 'runs.jsonl'}, found {len(base)}")
    base_acc = float(np.mean([r["acc"] for r in base.values()]))
    steps = cfg["steps"]
    mon = cfg["monitor"]
    summary: Dict[str, Any] = {"baseline_acc": base_acc, "n_baseline": len(base), "settings": {}}
    lines = ["## NTG truth per setting (target-only baseline: "
             f"{100 * base_acc:.1f}% mean target accuracy, {len(base)} seeds)", "",
             "| setting | seeds | target acc (transfer) | NTG (pp) | 95% CI (pp) | verdict | alarm rate | "
             "median steps to alarm |", "|---|---|---|---|---|---|---|---|"]
    ntg_results = {}
    for name, s in settings.items():
        runs = by.get(("transfer", name), {})
        if len(runs) < 2:
            continue
        seeds = sorted(runs)
        res = negative_transfer_gap([runs[k]["correct"] for k in seeds], [base[k]["correct"] for k in sorted(base)],
                                    paired=False, task=name, n_boot=2000, seed=0)
        ntg_results[name] = res
        alarms = []
        for k in seeds:
            steps_k = [time_to_alarm(runs[k]["monitor"]["history"], d, mon["threshold"], mon["patience"])
                       for d in range(s.num_sources) if s.harmful[d] or s.num_sources == 1]
            alarms.append(steps_k)
        flat = [a for al in alarms for a in al]
        fired = [a for a in flat if a is not None]
        summary["settings"][name] = {"acc": float(np.mean([runs[k]["acc"] for k in seeds])), "seeds": len(seeds),
                                     "ntg": res.to_dict(), "alarm_rate": len(fired) / max(len(flat), 1),
                                     "median_alarm_step": float(np.median(fired)) if fired else None}
        st = summary["settings"][name]
        lines.append(f"| {name} | {len(seeds)} | {100 * st['acc']:.1f}% | {100 * res.gap:+.1f} | "
                     f"[{100 * res.ci_low:+.1f}, {100 * res.ci_high:+.1f}] | {res.verdict} | "
                     f"{100 * st['alarm_rate']:.0f}% | {st['median_alarm_step'] if fired else '–'} |")
    lines += ["", "Alarm rate: single-source settings: runs whose source was flagged; multi-source: built-harmful "
              "sources flagged (rule: EMA cosine < threshold for `patience` checks)."]

    # --- monitor AUROC: single source, truth = measured NTG sign of the setting
    lines += ["", "## Monitor detection AUROC (score higher = more harmful)", "",
              "| population | harmful / helpful runs | -final EMA cos | -mean cos | -min EMA cos | alarm (1 - t/T) |",
              "|---|---|---|---|---|---|"]
    summary["auroc"] = {}

    def add_auroc(label: str, items: List[tuple]) -> None:
        if not items:
            return
        ys = [y for y, _ in items]
        if all(ys) or not any(ys):
            lines.append(f"| {label} | {sum(ys)} / {len(ys) - sum(ys)} | – | – | – | – |")
            return
        vals = {k: auroc([sc[k] for _, sc in items], ys) for k in ("neg_final_ema", "neg_mean_cos", "neg_min_ema",
                                                                     "alarm")}
        summary["auroc"][label] = {**vals, "n_harmful": sum(ys), "n_helpful": len(ys) - sum(ys)}
        lines.append(f"| {label} | {sum(ys)} / {len(ys) - sum(ys)} | " +
                     " | ".join(f"{vals[k]:.3f}" for k in ("neg_final_ema", "neg_mean_cos", "neg_min_ema", "alarm"))
                     + " |")

    single = {"label_noise": [], "all single-source": [], "built": []}
    multi = []
    for name, s in settings.items():
        runs = by.get(("transfer", name), {})
        if name not in summary["settings"] or s.method != "erm":  # the monitor is judged on the plain transfer
            continue
        harmful_setting = ntg_results[name].gap > 0
        for k, r in runs.items():
            h = r["monitor"]["history"]

            def scores(d: int) -> dict:  # the alarm with this benchmark's rule, as in the table above
                return monitor_scores(h, d, steps, alarm_step=time_to_alarm(h, d, mon["threshold"], mon["patience"]))

            if s.num_sources == 1:
                item = (harmful_setting, scores(0))
                single["all single-source"].append(item)
                if s.group == "label_noise":
                    single["label_noise"].append(item)
                    if s.harmful[0] or s.noise[0] == 0.0:
                        single["built"].append((s.harmful[0], item[1]))
            elif s.action == "warn":
                multi += [(s.harmful[d], scores(d)) for d in range(s.num_sources)]
    add_auroc("label noise (truth: NTG > 0)", single["label_noise"])
    add_auroc("all single-source (+ far domain)", single["all single-source"])
    add_auroc(f"label noise, truth by construction (0% vs > {100 * float(cfg.get('harmful_noise', 0.5)):.0f}%)",
              single["built"])
    add_auroc("multi-source, per source (truth: built harmful)", multi)

    # --- transferability scores vs measured gain
    lines += ["", "## Transferability scores vs measured transfer gain (Kendall tau-b)", "",
              "Gain of a run = its target accuracy minus the mean target-only baseline accuracy. Scores from a "
              "source-only model of the same seed, on the k labelled target samples per class.", "",
              "| score | tau per seed (mean ± sd) | seeds | pooled tau | points |", "|---|---|---|---|---|"]
    pts = []
    for name, s in settings.items():
        if s.num_sources != 1 or s.method != "erm":
            continue
        for k, r in by.get(("source_only", name), {}).items():
            t = by.get(("transfer", name), {}).get(k)
            if t is not None:
                pts.append((k, t["acc"] - base_acc, r["scores"]))
    summary["tau"] = {}
    for score in ("logme", "leep", "nce", "hscore"):
        if len(pts) < 2:
            break
        ts = grouped_kendall_tau([p[2][score] for p in pts], [p[1] for p in pts], [p[0] for p in pts])
        summary["tau"][score] = {"mean": ts.mean, "std": ts.std, "pooled": ts.pooled, "groups": len(ts.per_group)}
        lines.append(f"| {score} | {ts.mean:+.3f} ± {ts.std:.3f} | {len(ts.per_group)} | {ts.pooled:+.3f} | "
                     f"{ts.n_points} |")

    # --- multi-source with / without down-weighting
    lines += ["", "## Multi-source: target accuracy with and without automatic down-weighting", "",
              "| setting | warn only (acc ± sd) | downweight (acc ± sd) | Δ (pp) | harmful sources removed | "
              "good source removed |", "|---|---|---|---|---|---|"]
    for name, s in settings.items():
        if s.num_sources == 1 or s.action != "warn" or s.method != "erm":
            continue
        a = by.get(("transfer", name), {})
        b = by.get(("transfer", f"{name}+downweight"), {})
        if not a or not b:
            continue
        acc_a = np.array([r["acc"] for r in a.values()])
        acc_b = np.array([r["acc"] for r in b.values()])
        w = np.array([r["source_weights"][:s.num_sources] for r in b.values()])
        harm = [d for d in range(s.num_sources) if s.harmful[d]]
        good = [d for d in range(s.num_sources) if not s.harmful[d]]
        rem_h = float((w[:, harm] == 0).mean())
        rem_g = float((w[:, good] == 0).mean())
        summary["settings"][name]["downweight"] = {"acc_warn": float(acc_a.mean()), "acc_down": float(acc_b.mean()),
                                                   "harmful_removed": rem_h, "good_removed": rem_g}
        lines.append(f"| {name} | {100 * acc_a.mean():.1f} ± {100 * acc_a.std(ddof=1):.1f}% | "
                     f"{100 * acc_b.mean():.1f} ± {100 * acc_b.std(ddof=1):.1f}% | "
                     f"{100 * (acc_b.mean() - acc_a.mean()):+.1f} | {100 * rem_h:.0f}% | {100 * rem_g:.0f}% |")

    lines += methods_table(settings, summary)

    wall = sum(r.get("wall_s", 0.0) for r in recs)
    lines += ["", f"{len(recs)} runs, {wall / 60:.1f} min of summed fit time."]
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))

    plot_ntg(ntg_results, out / "ntg.png",
             title=f"Blobs few-shot (k={cfg['labeled_per_class']}/class): NTG vs target-only baseline")
    _plot_helpful_vs_harmful(by, out / "monitor.png")
    print("\n".join(lines))
    return summary


def methods_table(settings: Dict[str, Setting], summary: Dict[str, Any]) -> List[str]:
    """Markdown: per base setting (rows), the plain transfer and each adaptation method added to it (columns):
    target accuracy and NTG against the target-only baseline, with the verdict of its 95% interval
    (``+`` negative transfer, ``-`` positive, ``~`` inconclusive)."""
    methods = sorted({s.method for s in settings.values() if s.method != "erm"})
    if not methods:
        return []
    rows = {}
    for name, s in settings.items():
        st = summary["settings"].get(name)
        if st is None:
            continue
        base = name[: -len(f"+{s.method}")] if s.method != "erm" else name
        rows.setdefault(base, {})[s.method] = st
    mark = {"negative transfer": "+", "positive transfer": "-"}
    cols = ["erm"] + methods
    lines = ["", "## Adaptation methods on the same settings: target accuracy (NTG in pp vs the target-only "
             "baseline; + negative transfer, - positive, ~ inconclusive at 95%)", "",
             "| setting | " + " | ".join("transfer" if m == "erm" else f"+{m}" for m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for base, by_method in rows.items():
        if len(by_method) < 2:
            continue
        cells = []
        for m in cols:
            st = by_method.get(m)
            cells.append("–" if st is None else f"{100 * st['acc']:.1f}% ({100 * st['ntg']['gap']:+.1f} "
                         f"{mark.get(st['ntg']['verdict'], '~')})")
        lines.append(f"| {base} | " + " | ".join(cells) + " |")
    return lines


def _plot_helpful_vs_harmful(by: Dict[tuple, Dict[int, Any]], path: Path) -> None:
    """The monitor's signals of a helpful (0% noise) and a harmful (100% noise) single source, seed 0, on one
    picture: the two runs' histories merged by step (clean run = source 0, noisy run = source 1); the health
    panels show the clean run's values."""
    from da.diagnostics.plots import plot_monitor

    a = by.get(("transfer", "label_noise/0%"), {}).get(0)
    b = by.get(("transfer", "label_noise/100%"), {}).get(0)
    if a is None or b is None:
        return
    rows = {r["step"]: dict(r) for r in a["monitor"]["history"]}
    for r in b["monitor"]["history"]:
        row = rows.setdefault(r["step"], {"step": r["step"]})
        for k in ("cos_src0", "ema_cos_src0"):
            if k in r:
                row[k.replace("src0", "src1")] = r[k]
    alarms = [{**al, "source": 1} for al in b["monitor"]["alarms"]] + list(a["monitor"]["alarms"])
    plot_monitor({"history": [rows[k] for k in sorted(rows)], "alarms": alarms, "threshold": 0.0}, path,
                 source_names={0: "helpful: clean source (0% noise)", 1: "harmful: 100% label noise"},
                 title="NegativeTransferMonitor on blobs few-shot, seed 0: two single-source runs")


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--out", default="runs/nt_benchmark")
    p.add_argument("--seeds", type=int, default=None, help="override the config's number of seeds")
    p.add_argument("--steps", type=int, default=None, help="override the config's training steps")
    p.add_argument("--analyse-only", action="store_true")
    args = p.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    if args.steps is not None:
        cfg["steps"] = args.steps
    out = Path(args.out)
    if not args.analyse_only:
        run(cfg, out)
    analyse(cfg, out)


if __name__ == "__main__":
    main(sys.argv[1:])
