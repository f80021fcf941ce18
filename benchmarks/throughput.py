"""Training throughput of ERM and of every adaptation loss on the same model, in one run.

    python benchmarks/throughput.py                                  # CUDA: ResNet-50, 224x224, batch 64, bf16, NHWC
    python benchmarks/throughput.py --device cpu --threads 2         # CPU: LeNet, 28x28, batch 64, float32
    python benchmarks/throughput.py --device cpu --model resnet18 --image-size 64 --batch-size 32

What one step is: ``TransferModule.training_step`` (the real code: one backbone forward on ``cat(x_s, x_t)`` when a
term needs the target, cross-entropy, each term times its scheduled weight, the logged values detached), then
``backward`` and an SGD (momentum 0.9) step, under ``torch.autocast(bfloat16)`` with ``--precision bf16``.
Lightning's logging machinery is left out (``log``/``log_dict`` are no-ops here), so the figures are the cost of
the computation. The batch is a fixed random tensor already on the device: no data loading is timed.

Two baselines, because the terms do not all touch the same data:

* ``erm``: source batch only; the baseline of the parameter penalties (L2-SP, L2, anchors), which need no target.
* ``erm+target``: ERM that also forwards the target batch (as every target-based method must): the baseline of
  DANN, CDAN, MMD, JMMD and CORAL, so that their overhead is the term itself, not the second half of the batch.

Measurement: every method gets its own module built from the same seed (same initial weights). For each of
``--repeats`` rounds, the methods run in a rotated order (interleaving spreads slow drifts such as thermal throttling
or other jobs over all methods), each for ``--warmup`` untimed steps and then ``--steps`` timed ones (CUDA-synchronised
before and after). The reported time per step is the median over rounds; the spread is the interquartile range.
``best`` is the fastest round: other jobs on a shared machine only ever slow a round down, so on a busy machine the
best round is the less disturbed estimate of a method's own cost (as ``timeit`` recommends).
``erm (control)`` is a second, independent ERM module: its "overhead" against ``erm`` is the noise floor of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

#: Issue #4 targets (GPU, ResNet-50, bf16, channels_last): maximal overhead against the matching baseline.
TARGETS = {"l2sp": 0.03, "mmd": 0.05, "dann": 0.10}

PARAM_METHODS = ("l2sp", "l2", "anchors_d1", "anchors_d8")
TARGET_METHODS = ("dann", "cdan", "mmd", "jmmd", "coral")
ALL_METHODS = ("erm", "erm_control", "erm+target") + PARAM_METHODS + TARGET_METHODS


def baseline_of(method: str) -> str:
    """The method an overhead is measured against: ``erm+target`` for terms that need the target batch."""
    if method in TARGET_METHODS:
        return "erm+target"
    return "erm"


def _make_module_class():
    from da.module import TransferModule

    class BenchModule(TransferModule):
        """``TransferModule`` with a step counter instead of a Trainer and without Lightning's logging calls."""

        bench_step = 0
        bench_total = 1

        @property
        def global_step(self) -> int:  # read by training_step (loss terms' ``ctx.step``)
            return self.bench_step

        @property
        def progress(self) -> float:  # schedules see a run of ``bench_total`` steps
            return min(self.bench_step / max(self.bench_total, 1), 1.0)

        def log(self, *args, **kwargs) -> None:
            pass

        def log_dict(self, *args, **kwargs) -> None:
            pass

    return BenchModule


def _anchor_states(base_state: Dict[str, torch.Tensor], num: int, seed: int) -> List[Dict[str, torch.Tensor]]:
    """``num`` "source-trained" models: the backbone weights plus independent Gaussian perturbations (scale 0.01)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        out.append({k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                    for k, v in base_state.items() if k.startswith("backbone.") and v.is_floating_point()})
    return out


def build_losses(method: str, base_state: Dict[str, torch.Tensor], seed: int):
    """The loss terms of ``method`` (library defaults unless stated)."""
    from da.losses import CDAN, CORAL, JMMD, L2, L2SP, MKMMD, DomainAdversarialLoss, MultiSourceAnchors

    if method in ("erm", "erm_control", "erm+target"):
        return []
    if method == "l2sp":  # the backbone is the transferred part (w0 = its weights at setup), the head is new
        return [L2SP(alpha=0.01, beta=0.01, source_prefixes=["backbone."])]
    if method == "l2":
        return [L2(beta=0.01)]
    if method.startswith("anchors_d"):
        num = int(method[len("anchors_d"):])
        return [MultiSourceAnchors(_anchor_states(base_state, num, seed + 1))]
    factories: Dict[str, Callable] = {"dann": DomainAdversarialLoss, "cdan": CDAN, "mmd": MKMMD, "jmmd": JMMD,
                                      "coral": CORAL}
    if method not in factories:
        from da.errors import unknown_name
        raise unknown_name("benchmark method", method, ALL_METHODS)
    return [factories[method]()]


def build_module(method: str, args, base_state: Dict[str, torch.Tensor], device: torch.device):
    cls = _make_module_class()
    torch.manual_seed(args.seed)  # the same initial weights for every method
    module = cls(num_classes=args.num_classes, input_shape=args.input_shape, backbone=args.model,
                 backbone_args=args.backbone_args, bottleneck_dim=args.bottleneck_dim or None,
                 losses=build_losses(method, base_state, args.seed), optimizer="sgd", lr=0.01, momentum=0.9)
    if method == "erm+target":
        module.needs_target = True  # forward cat(x_s, x_t), no term: the target-based methods' baseline
    module.bench_total = args.repeats * (args.warmup + args.steps)
    module.to(device)
    if args.channels_last:
        module.to(memory_format=torch.channels_last)
    module.train()
    return module


def make_batch(args, device: torch.device):
    g = torch.Generator().manual_seed(args.seed + 7)
    shape = (args.batch_size, *args.input_shape)
    x_s, x_t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g)
    d = torch.zeros(args.batch_size, dtype=torch.long)
    x_s, x_t, y, d = (t.to(device) for t in (x_s, x_t, y, d))
    if args.channels_last and x_s.ndim == 4:
        x_s, x_t = x_s.contiguous(memory_format=torch.channels_last), x_t.contiguous(memory_format=torch.channels_last)
    return {"source": (x_s, y, d), "target": (x_t, y)}


class Runner:
    """One method's module, optimizer and step function."""

    def __init__(self, method: str, module, batch, device: torch.device, precision: str):
        self.method, self.module, self.batch, self.device = method, module, batch, device
        self.opt = module.configure_optimizers()
        self.autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else nullcontext())
        self.samples_per_step = len(batch["source"][1]) * (2 if module.needs_target else 1)

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.module.training_step(self.batch, self.module.bench_step)
        loss.backward()
        self.opt.step()
        self.module.bench_step += 1
        return loss

    def timed(self, warmup: int, steps: int) -> float:
        """Seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self.step()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        _sync(self.device)
        dt = (time.perf_counter() - t0) / steps
        if not torch.isfinite(loss.detach().float()):
            raise FloatingPointError(f"{self.method}: the loss became {float(loss)}; the benchmark model diverged")
        return dt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(xs: List[float]):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarise(times: Dict[str, List[float]], samples: Dict[str, int]) -> List[Dict[str, float]]:
    """Rows with median time per step, steps/s, samples/s, IQR and the overhead against the matching baseline."""
    med = {m: statistics.median(ts) for m, ts in times.items()}
    best = {m: min(ts) for m, ts in times.items()}
    rows = []
    for m, ts in times.items():
        lo, hi = _quartiles(ts)
        base = baseline_of(m) if m not in ("erm", "erm+target") else None
        row = {"method": m, "ms_per_step": 1e3 * med[m], "iqr_ms": 1e3 * (hi - lo), "steps_per_s": 1.0 / med[m],
               "samples_per_s": samples[m] / med[m], "baseline": base,
               "overhead": (med[m] / med[base] - 1.0) if base in med else None,
               "overhead_vs_erm": med[m] / med["erm"] - 1.0 if "erm" in med else None,
               "best_ms_per_step": 1e3 * best[m],
               "overhead_best": (best[m] / best[base] - 1.0) if base in best else None}
        rows.append(row)
    return rows


def target_checks(rows: List[Dict[str, float]]) -> Dict[str, str]:
    """The issue's targets against what was measured (noise = the control's overhead and the baselines' IQR)."""
    by = {r["method"]: r for r in rows}
    out = {}
    for m, limit in TARGETS.items():
        if m in by and by[m]["overhead"] is not None:
            ok = by[m]["overhead"] <= limit
            out[m] = f"{by[m]['overhead']:+.1%} vs <= {limit:.0%}: {'met' if ok else 'NOT met'}"
    if "anchors_d1" in by and "anchors_d8" in by:
        a1, a8 = by["anchors_d1"], by["anchors_d8"]
        diff = a8["ms_per_step"] - a1["ms_per_step"]
        noise = max(a1["iqr_ms"], a8["iqr_ms"])
        if "erm_control" in by and by["erm_control"]["overhead"] is not None:
            noise = max(noise, abs(by["erm_control"]["overhead"]) * by["erm"]["ms_per_step"])
        out["anchors_d8_vs_d1"] = (f"{diff:+.3f} ms/step (noise {noise:.3f} ms): "
                                   f"{'within noise' if abs(diff) <= noise else 'NOT within noise'}")
    return out


def markdown(rows: List[Dict[str, float]], meta: Dict[str, object], checks: Dict[str, str]) -> str:
    lines = [f"Model `{meta['model']}` {meta['input_shape']} batch {meta['batch_size']} on {meta['device_name']} "
             f"({meta['precision']}, channels_last={meta['channels_last']}, torch threads {meta['threads']}), "
             f"{meta['repeats']} interleaved rounds x {meta['steps']} timed steps after {meta['warmup']} warm-up "
             f"steps; median, IQR over rounds.", "",
             "| method | ms/step | IQR ms | steps/s | samples/s | baseline | overhead | vs erm | best ms | overhead (best) |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ov = "" if r["overhead"] is None else f"{r['overhead']:+.1%}"
        ve = "" if r["overhead_vs_erm"] is None or r["method"] == "erm" else f"{r['overhead_vs_erm']:+.1%}"
        ob = "" if r["overhead_best"] is None else f"{r['overhead_best']:+.1%}"
        lines.append(f"| {r['method']} | {r['ms_per_step']:.2f} | {r['iqr_ms']:.2f} | {r['steps_per_s']:.1f} | "
                     f"{r['samples_per_s']:.0f} | {r['baseline'] or ''} | {ov} | {ve} | {r['best_ms_per_step']:.2f} | "
                     f"{ob} |")
    if checks:
        lines += ["", "Targets of issue #4 (set for a GPU, ResNet-50, bf16):", ""]
        lines += [f"- {k}: {v}" for k, v in checks.items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--model", default=None, help="backbone name: lenet, resnet18, resnet50, ... "
                                                 "(default resnet50 on CUDA, lenet_bn on CPU: the net of the "
                                                 "CPU numbers in benchmarks/README.md)")
    p.add_argument("--image-size", type=int, default=None, help="input height = width (default 224 / 28)")
    p.add_argument("--channels", type=int, default=None, help="input channels (default 3 / 1)")
    p.add_argument("--batch-size", type=int, default=64, help="per stream: source and target batches each")
    p.add_argument("--num-classes", type=int, default=None, help="default 31 (Office-31) / 10 (digits)")
    p.add_argument("--bottleneck-dim", type=int, default=None, help="0 for none (default 256 for ResNets, 0 else)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed block")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (the median is reported)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                   help="auto: on for CUDA with 4-d inputs")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), help=f"subset of {' '.join(ALL_METHODS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write <out>.json and <out>.md (e.g. benchmarks/results/cpu_lenet)")
    args = p.parse_args(argv)
    unknown = [m for m in args.methods if m not in ALL_METHODS]
    if unknown:
        from da.errors import unknown_name
        raise unknown_name("benchmark method", unknown[0], ALL_METHODS)
    for need in ("erm",) + tuple(baseline_of(m) for m in args.methods):
        if need not in args.methods:
            args.methods.insert(0, need)
    return args


def resolve(args) -> torch.device:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    gpu = device.type == "cuda"
    args.model = args.model or ("resnet50" if gpu else "lenet_bn")
    digits = args.model in ("lenet", "lenet_bn")
    args.image_size = args.image_size or (224 if gpu or not digits else 28)
    args.channels = args.channels or (1 if digits else 3)
    args.num_classes = args.num_classes or (31 if args.model.startswith(("resnet", "vit")) else 10)
    if args.bottleneck_dim is None:
        args.bottleneck_dim = 256 if args.model.startswith("resnet") else 0
    args.input_shape = (args.channels, args.image_size, args.image_size)
    args.backbone_args = {}
    if args.precision == "auto":
        args.precision = "bf16" if gpu else "fp32"
    args.channels_last = (gpu if args.channels_last == "auto" else args.channels_last == "true")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cudnn.benchmark = True
    return device


def run(args) -> Dict[str, object]:
    device = resolve(args)
    cls = _make_module_class()
    torch.manual_seed(args.seed)
    base = cls(num_classes=args.num_classes, input_shape=args.input_shape, backbone=args.model,
               bottleneck_dim=args.bottleneck_dim or None)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base
    batch = make_batch(args, device)
    runners = [Runner(m, build_module(m, args, base_state, device), batch, device, args.precision)
               for m in args.methods]
    times: Dict[str, List[float]] = {m: [] for m in args.methods}
    t_start = time.time()
    for r in range(args.repeats):
        k = r % len(runners)
        for runner in runners[k:] + runners[:k]:
            times[runner.method].append(runner.timed(args.warmup, args.steps))
        print(f"round {r + 1}/{args.repeats} done ({time.time() - t_start:.0f} s)", file=sys.stderr)
    rows = summarise(times, {ru.method: ru.samples_per_step for ru in runners})
    checks = target_checks(rows)
    meta = {"model": args.model, "input_shape": list(args.input_shape), "batch_size": args.batch_size,
            "num_classes": args.num_classes, "bottleneck_dim": args.bottleneck_dim, "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
            "precision": args.precision, "channels_last": args.channels_last, "threads": torch.get_num_threads(),
            "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "wall_s": round(time.time() - t_start, 1),
            "command": " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]])}
    return {"meta": meta, "rows": rows, "checks": checks, "raw_seconds_per_step": times}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = markdown(result["rows"], result["meta"], result["checks"])
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(f"{result['meta']['date']}, `{result['meta']['command']}`\n\n{text}")
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
