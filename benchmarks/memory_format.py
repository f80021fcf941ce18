"""channels_last vs the default (contiguous) memory layout for the digits backbones, and the fused optimiser kernel
vs torch's per-tensor loop, side by side in one process.

The same network, the same weights and inputs: only the layout differs (``TransferModule(channels_last=True)``,
``model.channels_last: true`` in a recipe), then (``channels_last+fused``) also the optimiser's kernel
(``fused=True``: one call over all parameters, the same update to float rounding; ``model.fused``, ``da``'s
default). Per round, each variant runs ``--steps`` timed training steps (forward, backward, optimiser step) after
``--warmup`` untimed ones, the order reversed every other round; reported: median thread CPU ms per step over
``--rounds`` (robust to other processes on a shared machine) and the speed-ups over the contiguous, per-tensor step.

    OMP_NUM_THREADS=1 python benchmarks/memory_format.py            # lenet 28x28 batch 256, lenet_bn 16x16 batch 128
    OMP_NUM_THREADS=1 python benchmarks/memory_format.py --optimizer adam     # the builtin / lenet_bn_adam recipes
    OMP_NUM_THREADS=1 python benchmarks/memory_format.py --optimizer adam --compile   # + torch.compile (inductor)

``--compile`` adds a fourth variant, ``channels_last+fused+compiled``: the same model under ``nn.Module.compile()``
(inductor's generated C++ on a CPU); its compile time (the first warm-up block's wall time) is reported apart.
``--bf16`` adds ``channels_last+fused+bf16``: the same model's step under ``torch.autocast("cpu", torch.bfloat16)``
(what ``--trainer.precision bf16-mixed`` does on a CPU). It pays only where the CPU has bfloat16 instructions
(``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``, printed with the result); elsewhere oneDNN emulates them.

    OMP_NUM_THREADS=1 python benchmarks/memory_format.py --optimizer adam --bf16 --cases lenet_bn_16px_b128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from da.module import TransferModule  # noqa: E402
from da.runs.preflight import cpu_bf16_flags  # noqa: E402

CASES = {  # name: (backbone, input side, batch = source + target)
    "lenet_28px_b256": ("lenet", 28, 256),
    "lenet_bn_16px_b128": ("lenet_bn", 16, 128),
}


VARIANTS = {"contiguous": (False, False), "channels_last": (True, False), "channels_last+fused": (True, True)}


def make(backbone: str, side: int, channels_last: bool, fused: bool, optimizer: str = "sgd", seed: int = 0):
    torch.manual_seed(seed)
    model = TransferModule(input_shape=(1, side, side), backbone=backbone, bottleneck_dim=256,
                           channels_last=channels_last)
    if optimizer == "adam":
        return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=fused or None)


def block(model, opt, x, y, steps: int) -> float:
    t0 = time.thread_time()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.thread_time() - t0) / steps * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="SGD momentum 0.9, or Adam")
    p.add_argument("--compile", action="store_true", help="also time the channels_last+fused model compiled")
    p.add_argument("--bf16", action="store_true", help="also time the channels_last+fused step under bf16 autocast")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for case in args.cases:
        backbone, side, batch = CASES[case]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, side, side, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        variants = {k: make(backbone, side, cl, fused, args.optimizer) for k, (cl, fused) in VARIANTS.items()}
        compile_s = None
        if args.compile:
            model, opt = make(backbone, side, True, True, args.optimizer)
            model.compile()
            t0 = time.perf_counter()
            block(model, opt, x, y, 1)  # the compile happens here, outside the timed blocks
            compile_s = round(time.perf_counter() - t0, 1)
            variants["channels_last+fused+compiled"] = (model, opt)
        if args.bf16:
            variants["channels_last+fused+bf16"] = make(backbone, side, True, True, args.optimizer)
        times = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                model, opt = variants[name]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("+bf16")):
                    if args.warmup:
                        block(model, opt, x, y, args.warmup)
                    times[name].append(block(model, opt, x, y, args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[case] = {**{f"{k}_ms": round(v, 2) for k, v in med.items()},
                     "speedup": round(med["contiguous"] / med["channels_last"], 2),
                     "speedup_fused": round(med["contiguous"] / med["channels_last+fused"], 2)}
        if compile_s is not None:
            out[case].update(compile_s=compile_s,
                             speedup_compiled=round(med["contiguous"] / med["channels_last+fused+compiled"], 2))
        if args.bf16:
            out[case].update(speedup_bf16=round(med["contiguous"] / med["channels_last+fused+bf16"], 2),
                             cpu_bf16=cpu_bf16_flags())
        print(f"{case} ({args.optimizer}): " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()) +
              f" per step (thread CPU, median of {args.rounds}): channels_last {out[case]['speedup']:.2f}x, "
              f"+ fused {out[case]['speedup_fused']:.2f}x" +
              (f", + compiled {out[case]['speedup_compiled']:.2f}x (compile {compile_s:.0f} s wall)"
               if compile_s is not None else "") +
              (f", + bf16 {out[case]['speedup_bf16']:.2f}x (CPU bf16 flags: {out[case]['cpu_bf16'] or 'none'})"
               if args.bf16 else ""), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
