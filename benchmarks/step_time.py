"""Per-step cost of a training step through `da fit`'s Trainer and bare, for each method, in one process.

    python benchmarks/step_time.py --quick                  # CPU, < 3 min; last line: one JSON object
    python benchmarks/step_time.py                          # CPU LeNet, batch 128 + 128, 7 rounds x 50 steps
    python benchmarks/step_time.py --batch-size 4           # the per-step overhead resolved (tiny compute)
    python benchmarks/step_time.py --device cuda            # GPU: ResNet-50 224x224, batch 64 + 64, bf16, NHWC

Two variants of the same method, module and data:

* ``trainer``: the model and Trainer are built by ``da``'s own CLI class (``_build_cli_class`` of ``da fit``: what
  ``da fit --config configs/method/<m>.yaml`` builds: its defaults, the CSV logger in a run directory, the
  ``ModelCheckpoint`` callback, ``log_every_n_steps`` = 25, the progress bar) and trained with ``trainer.fit`` on
  ``da``'s ``DomainDataModule``. A step is the time between two consecutive ``on_train_batch_end`` calls of a timing
  callback: batch fetch, hooks, ``training_step``, backward, optimiser (and scheduler) step, logging.
* ``bare``: a hand loop on the same module: next batch from the same data module's train loader, ``zero_grad``,
  ``training_step`` (with ``log``/``log_dict`` stubbed out), ``backward``, ``optimizer.step``, ``scheduler.step``.

The data is a registered synthetic in-memory dataset (``stepbench/source``, ``stepbench/target``: Gaussian images,
10 classes), so nothing is read from disk and ``--device cuda`` needs no data files (it is generated where it runs).
The backbone defaults to the ADDA / TLlib LeNet (``benchmarks/adda_lenet.py``) on CPU and ResNet-50 on CUDA.

Measurement: ``--rounds`` rounds; in each, every method runs one block of each variant (methods in rotated order,
the two variants alternating which goes first), each block ``--warmup`` untimed steps then ``--steps`` timed ones (a
multiple of ``log_every_n_steps``, so every block holds the same share of logging steps). Per block: thread CPU time
(``time.thread_time``: robust to other processes on a shared machine) and wall time (CUDA-synchronised at the
block's ends), divided by the steps. Reported: the median over rounds and the IQR; ``overhead`` = trainer / bare of
the CPU-time medians (on CUDA, of wall time); ``overhead_paired`` = the median over rounds of each round's own
trainer / bare (adjacent blocks: a load that drifts between rounds cancels). Timings on a busy machine are noisy:
compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # `da` of this checkout, and adda_lenet for the dotted backbone path

import torch  # noqa: E402

METHODS = ("erm", "l2sp", "dann", "mmd", "cdan", "coral")
#: ERM that also forwards the target batch (as every target-based method must): those methods' baseline
ERM_TARGET = "erm+target"
TARGET_METHODS = ("dann", "cdan", "mmd", "jmmd", "coral")
VARIANTS = ("trainer", "bare")
EVERY_STEP = "trainer_log_every_step"  # --compare-every-step-logging: the training dict logged on every step


# ----------------------------------------------------------------------------------------------- data
def _register_synthetic() -> None:
    from da.data.domain import Domain, _DATASETS, register_dataset

    if "stepbench" in _DATASETS:
        return

    @register_dataset("stepbench", domains=("source", "target"), modality="image",
                      description="synthetic Gaussian images for benchmarks/step_time.py")
    def load_stepbench(domain: str, root=None, n: int = 1024, shape=(1, 28, 28), num_classes: int = 10,
                       **_: Any) -> Dict[str, Domain]:
        g = torch.Generator().manual_seed(0 if domain == "source" else 1)
        x = torch.randn(int(n), *[int(s) for s in shape], generator=g)
        y = torch.arange(int(n)) % int(num_classes)
        return {"all": Domain(f"stepbench/{domain}", [str(c) for c in range(int(num_classes))], y, x=x)}


# ----------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Block:
    """Clock readings at the end of the warm-up and at the end of the last timed step."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.n = 0
        self.start: Optional[tuple] = None
        self.end: Optional[tuple] = None

    def tick(self) -> None:
        """Call after every step (``on_train_batch_end`` or the bare loop's step)."""
        self.n += 1
        if self.n in (self.warmup, self.warmup + self.steps):
            _sync(self.device)
            now = (time.thread_time(), time.perf_counter())
            if self.n == self.warmup:
                self.start = now
            else:
                self.end = now

    def per_step(self) -> tuple:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the block ran {self.n} of {self.warmup + self.steps} steps; did training stop early?")
        return tuple((e - s) / self.steps for s, e in zip(self.start, self.end))


def _timer_callback(block: _Block):
    from pytorch_lightning.callbacks import Callback

    class StepTimer(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            block.tick()

    return StepTimer()


# ----------------------------------------------------------------------------------------------- one method
class MethodBench:
    """One method's CLI-built model, data module and Trainer factory, and its two timed variants."""

    def __init__(self, method: str, args, workdir: Path):
        try:  # where `da fit`'s CLI class lives (da.runs.cli_fit since the runs package; da.cli before)
            from da.runs.cli_fit import _build_cli_class
        except ImportError:
            from da.cli import _build_cli_class

        base = _build_cli_class()
        counter = {"i": 0}

        class BenchCLI(base):
            def _run_dir(self) -> Path:  # a fresh run directory per Trainer (no metrics.csv to adopt)
                counter["i"] += 1
                return workdir / method / f"trainer{counter['i']}"

        from da.data.datamodule import DomainDataModule
        from da.module import TransferModule

        self.method, self.args, self.device = method, args, torch.device(args.device)
        self.cli = BenchCLI(TransferModule, DomainDataModule, args=self._cli_args(), run=False,
                            save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
        self.model, self.dm = self.cli.model, self.cli.datamodule
        if method == ERM_TARGET:
            self.model.needs_target = True
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if args.compile:
            self.model.backbone.compile()
        self.trainer = None

    def _cli_args(self) -> List[str]:
        a = self.args
        n = a.samples or a.batch_size * (8 if a.device.startswith("cuda") else 64)
        options = {"n": n, "shape": a.input_shape, "num_classes": a.num_classes}
        config = "erm" if self.method == ERM_TARGET else self.method
        out = ["--config", str(ROOT / "configs" / "method" / f"{config}.yaml"),
               "--data.sources", "[stepbench/source]", "--data.target", "stepbench/target",
               "--data.target_split", "transductive", "--data.batch_size", str(a.batch_size),
               "--data.options", json.dumps(options), "--model.backbone", a.backbone,
               "--trainer.accelerator", "gpu" if a.device.startswith("cuda") else "cpu", "--trainer.devices", "1",
               "--trainer.precision", a.precision]
        if a.bottleneck_dim:
            out += ["--model.bottleneck_dim", str(a.bottleneck_dim)]
        if a.log_every is not None:
            out += ["--trainer.log_every_n_steps", str(a.log_every)]
        return out

    def run_trainer(self, warmup: int, steps: int, every_step: bool = False) -> tuple:
        block = _Block(warmup, steps, self.device)
        self.trainer = self.cli.instantiate_trainer(max_steps=warmup + steps, callbacks=[_timer_callback(block)],
                                                    enable_model_summary=False)
        if every_step:  # what TransferModule did before it logged on the logger's cadence only
            self.model._train_logs_due = lambda: True
        try:
            self.trainer.fit(self.model, datamodule=self.dm)
        finally:
            self.model.__dict__.pop("_train_logs_due", None)
        return block.per_step()

    def run_bare(self, warmup: int, steps: int) -> tuple:
        model, dev = self.model, self.device
        if self.trainer is None:
            raise RuntimeError("run a trainer block first (it sets up the data module on the device)")
        model.to(dev)  # Lightning's teardown moved it back to the CPU
        model.trainer = self.trainer  # configure_optimizers reads the run length for the lr schedule
        out = model.configure_optimizers()
        opt, sched = (out["optimizer"], out["lr_scheduler"]["scheduler"]) if isinstance(out, dict) else (out, None)
        model.trainer = None
        model.log = model.log_dict = lambda *a, **k: None  # bare: no Lightning logging at all
        model.train()
        autocast = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if "bf16" in self.args.precision
                    else nullcontext())
        loader = self.dm.train_dataloader()
        it = iter(loader)
        block = _Block(warmup, steps, dev)
        try:
            for i in range(warmup + steps):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                if isinstance(batch, tuple):  # CombinedLoader: (batch, batch_idx, dataloader_idx)
                    batch = batch[0]
                opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = model.training_step(batch, i)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                block.tick()
        finally:
            del model.log, model.log_dict
        if not torch.isfinite(loss.detach().float()):
            raise FloatingPointError(f"{self.method}: the loss became {float(loss)}; the benchmark model diverged")
        return block.per_step()


# ----------------------------------------------------------------------------------------------- run
def _quartiles(xs: List[float]) -> tuple:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarise(times: Dict[str, Dict[str, List[tuple]]], cuda: bool) -> Dict[str, Dict[str, float]]:
    """Per method: median ms/step (CPU and wall) and IQR of each variant, and overhead = trainer / bare."""
    rows = {}
    for m, by_variant in times.items():
        row: Dict[str, float] = {}
        for v in by_variant:
            for k, name in ((0, "ms"), (1, "wall_ms")):
                xs = [1e3 * t[k] for t in by_variant[v]]
                lo, hi = _quartiles(xs)
                row[f"{v}_{name}"] = round(statistics.median(xs), 4)
                row[f"{v}_{name}_iqr"] = round(hi - lo, 4)
        key = "wall_ms" if cuda else "ms"
        row["overhead"] = round(row[f"trainer_{key}"] / row[f"bare_{key}"], 4)
        row["overhead_wall"] = round(row["trainer_wall_ms"] / row["bare_wall_ms"], 4)
        # paired: trainer / bare of the two adjacent blocks of each round, so a load that drifts between rounds
        # (a shared machine) cancels; its median and IQR over rounds
        k = 1 if cuda else 0
        paired = [t[k] / b[k] for t, b in zip(by_variant["trainer"], by_variant["bare"])]
        lo, hi = _quartiles(paired)
        row["overhead_paired"], row["overhead_paired_iqr"] = round(statistics.median(paired), 4), round(hi - lo, 4)
        base = ERM_TARGET if m in TARGET_METHODS else "erm" if m != ERM_TARGET else None
        if base in times and m != base:  # the method's own cost: against the matching baseline, through the Trainer
            row["vs_baseline"] = base
        if EVERY_STEP in by_variant:
            row["overhead_log_every_step"] = round(row[f"{EVERY_STEP}_{key}"] / row[f"bare_{key}"], 4)
        rows[m] = row
    key = "wall_ms" if cuda else "ms"
    for m, row in rows.items():
        if "vs_baseline" in row:
            row["overhead_vs_baseline"] = round(row[f"trainer_{key}"] / rows[row["vs_baseline"]][f"trainer_{key}"], 4)
    return rows


def markdown(rows: Dict[str, Dict[str, float]], meta: Dict[str, Any]) -> str:
    lines = [f"`{meta['command']}` ({meta['date']}, {meta['device_name']}, torch threads {meta['threads']}, "
             f"{meta['wall_s']} s): backbone `{meta['backbone']}`, input {meta['input_shape']}, batch "
             f"{meta['batch_size']} + {meta['batch_size']}, precision {meta['precision']}, "
             f"log_every_n_steps {meta['log_every']}; {meta['rounds']} rounds x {meta['steps']} timed steps after "
             f"{meta['warmup']}; median (IQR) over rounds.", "",
             "| method | trainer CPU ms | bare CPU ms | overhead (CPU) | trainer wall ms | bare wall ms | "
             "overhead (wall) | paired overhead (IQR) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    if any(EVERY_STEP + "_ms" in r for r in rows.values()):
        lines[-2] = lines[-2].replace("| bare CPU ms |",
                                      "| trainer, logging every step: CPU ms (overhead) | bare CPU ms |")
        lines[-1] = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for m, r in rows.items():
        extra = (f" {r[EVERY_STEP + '_ms']:.2f} ({r[EVERY_STEP + '_ms'] / r['bare_ms'] - 1:+.1%}) |"
                 if EVERY_STEP + "_ms" in r else "")
        lines.append(f"| {m} | {r['trainer_ms']:.2f} ({r['trainer_ms_iqr']:.2f}) |{extra} {r['bare_ms']:.2f} "
                     f"({r['bare_ms_iqr']:.2f}) | {r['trainer_ms'] / r['bare_ms'] - 1:+.1%} | "
                     f"{r['trainer_wall_ms']:.2f} ({r['trainer_wall_ms_iqr']:.2f}) | {r['bare_wall_ms']:.2f} "
                     f"({r['bare_wall_ms_iqr']:.2f}) | {r['overhead_wall'] - 1:+.1%} | "
                     f"{r['overhead_paired'] - 1:+.1%} ({r['overhead_paired_iqr']:.1%}) |")
    base = [f"{m} {r['overhead_vs_baseline'] - 1:+.1%} vs {r['vs_baseline']}" for m, r in rows.items()
            if "overhead_vs_baseline" in r]
    if base:
        lines += ["", "Method cost through the Trainer (trainer time against the matching baseline's): " + ", ".join(base)]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: batch 8, 2 rounds x 25 steps (< 3 min on an idle 2-core CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"configs/method/<name>.yaml, or {ERM_TARGET} (ERM forwarding the target too: the baseline of "
                        f"target-based methods); default {' '.join(METHODS)} (CUDA: {ERM_TARGET} too)")
    p.add_argument("--batch-size", type=int, default=None, help="per stream (default 128 CPU, 64 CUDA, 8 quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per block (default 50, quick 25)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each block")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 2)")
    p.add_argument("--log-every", type=int, default=None, help="trainer.log_every_n_steps (default: da fit's)")
    p.add_argument("--backbone", default=None, help="default adda_lenet.AddaLeNet (CPU) / resnet50 (CUDA)")
    p.add_argument("--image-size", type=int, default=None, help="default 28 (LeNet) / 224")
    p.add_argument("--bottleneck-dim", type=int, default=None, help="default none (LeNet) / 256 (ResNet)")
    p.add_argument("--samples", type=int, default=None, help="samples per synthetic domain (default 64 batches, "
                                                             "8 on CUDA)")
    p.add_argument("--precision", default=None, help="Trainer precision: 32-true (CPU default) or bf16-mixed "
                                                     "(CUDA default; bare runs under torch.autocast(bfloat16))")
    p.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                   help="model in torch.channels_last (auto: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (nn.Module.compile)")
    p.add_argument("--compare-every-step-logging", action="store_true",
                   help=f"a third variant, {EVERY_STEP}: the Trainer with the training dict logged on every step "
                        f"(the behaviour before logging followed log_every_n_steps)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: least disturbed "
                                                         "on a shared CPU)")
    p.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("step_time.py: --device cuda but torch.cuda.is_available() is False; use --device cpu")
    if args.quick and cuda:
        raise SystemExit("step_time.py: --quick is the CPU smoke run; drop --quick for the CUDA case")
    args.methods = args.methods or (list(METHODS[:1]) + [ERM_TARGET] + list(METHODS[1:]) if cuda else list(METHODS))
    args.batch_size = args.batch_size or (8 if args.quick else 64 if cuda else 128)
    args.steps = args.steps or (25 if args.quick else 50)
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.backbone = args.backbone or ("resnet50" if cuda else "adda_lenet.AddaLeNet")
    lenet = "lenet" in args.backbone.lower()
    size = args.image_size or (28 if lenet else 224)
    args.input_shape = [1 if lenet else 3, size, size]
    args.num_classes = 10 if lenet else 31
    if args.bottleneck_dim is None:
        args.bottleneck_dim = 0 if lenet else 256
    args.precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    args.channels_last = cuda if args.channels_last == "auto" else args.channels_last == "true"
    return args


def run(args) -> Dict[str, Any]:
    import logging
    import warnings

    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore", message=".*(does not have many workers|could not find the monitored key"
                                              "|val_check_interval|args parameter is intended).*")
    _register_synthetic()  # imports Lightning, which sets its loggers to INFO
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):  # no per-Trainer banners
        logging.getLogger(name).setLevel(logging.WARNING)
    t0 = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="da_step_time_"))
    benches = [MethodBench(m, args, workdir) for m in args.methods]
    for b in benches:  # untimed: data set-up on the device, first-call costs (and compilation)
        b.run_trainer(2, 1)
    variants = VARIANTS + ((EVERY_STEP,) if args.compare_every_step_logging else ())
    times: Dict[str, Dict[str, List[tuple]]] = {m: {v: [] for v in variants} for m in args.methods}
    for r in range(args.rounds):
        k = r % len(benches)
        for b in benches[k:] + benches[:k]:
            for v in (variants if r % 2 == 0 else variants[::-1]):
                if v == "bare":
                    times[b.method][v].append(b.run_bare(args.warmup, args.steps))
                else:
                    times[b.method][v].append(b.run_trainer(args.warmup, args.steps, every_step=v == EVERY_STEP))
        print(f"step_time: round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    rows = summarise(times, args.device.startswith("cuda"))
    dev = torch.device(args.device)
    meta = {"backbone": args.backbone, "input_shape": args.input_shape, "batch_size": args.batch_size,
            "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
            "log_every": benches[0].trainer.log_every_n_steps, "rounds": args.rounds, "steps": args.steps,
            "warmup": args.warmup, "threads": torch.get_num_threads(),
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                            else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"),
            "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_s": round(time.time() - t0, 1),
            "command": " ".join(["python", "benchmarks/step_time.py", *sys.argv[1:]])}
    return {"meta": meta, "rows": rows, "raw_seconds_per_step": times}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from da.quiet import quiet_known_noise

    quiet_known_noise()  # the Trainer here is da fit's: the same filters of Lightning's false and advertising lines
    result = run(args)
    print(markdown(result["rows"], result["meta"]))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(markdown(result["rows"], result["meta"]))
    summary = {m: {"trainer_ms": r["trainer_ms"], "bare_ms": r["bare_ms"], "overhead": r["overhead"]}
               for m, r in result["rows"].items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
