"""`da`'s DANN step against TLlib's same work (digits recipe: LeNet, batch 128 + 128, SGD), interleaved, CPU time.

    python benchmarks/tllib_step.py                    # 7 rounds x 10 timed steps, batch 128 + 128, 1 thread
    python benchmarks/tllib_step.py --rounds 3 --steps 5 --batch-size 32     # a quick look

The TLlib side is written here from the definitions in TLlib (thuml/Transfer-Learning-Library: ``tllib/modules/
domain_discriminator.py``, ``tllib/modules/grl.py``, ``tllib/alignment/dann.py``, ``tllib/modules/classifier.py`` and
``examples/domain_adaptation/image_classification/dann.py``), not imported (TLlib is not a dependency) and not
copied:

* model: ``ImageClassifier`` = LeNet (``benchmarks/adda_lenet.py``: conv 1->20->50 k5, fc 800->500, dropout) ->
  bottleneck ``Linear(500, 256)-BN-ReLU`` -> ``Linear(256, 10)``, one forward on ``cat(x_s, x_t)``;
* discriminator: ``DomainDiscriminator(256, 1024)``: ``[Linear-BN-ReLU] x 2 -> Linear(1024, 1) -> Sigmoid``;
* ``WarmStartGradientReverseLayer(alpha=1, lo=0, hi=1, max_iters=1000, auto_step=True)``: coefficient
  ``2 (hi - lo) / (1 + exp(-alpha i / max_iters)) - (hi - lo) + lo`` at iteration ``i``;
* loss: ``CE(y_s) + 1/2 [BCE(d_s, 1) + BCE(d_t, 0)]`` on the sigmoid outputs, and the discriminator accuracy
  (``d >= 0.5``) computed every step, as TLlib's ``DomainAdversarialLoss`` does;
* optimiser: ``SGD(lr 0.01, momentum 0.9, weight_decay 1e-3, nesterov)`` over model + discriminator, ``LambdaLR``
  ``(1 + 0.001 i)^-0.75``, stepped every iteration.

The ``da`` side: ``TransferModule(backbone=adda_lenet.AddaLeNet, bottleneck_dim=256, bottleneck_dropout=0)`` with
``DomainAdversarialLoss()`` (the default discriminator: Linear-BN-ReLU x 2, no dropout) and the same optimiser
(``weight_decay=1e-3``, ``no_decay_norm_bias=False``, TLlib's ``LambdaLR``); ``da+dropout`` is the same with
``dropout=0.5`` (``da``'s earlier default), and ``da, per-tensor SGD`` is ``da`` with ``fused=False`` (torch's
per-tensor SGD loop, as TLlib's side runs it; ``da``'s default is the fused kernel, the same update). A step is
``training_step`` + ``backward`` + ``optimizer.step`` + ``scheduler.step`` (no Trainer: the framework cost is that of
``da``'s module and loss; the Trainer's own cost is ``benchmarks/step_time.py``'s). Per block: thread CPU time /
steps; reported: median over rounds, IQR, and the ratio to TLlib's median.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from adda_lenet import AddaLeNet  # noqa: E402


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        return grad.neg() * ctx.coeff, None


class WarmStartGRL(nn.Module):
    """TLlib's warm-start gradient reversal: the coefficient rises from ``lo`` to ``hi`` over ``max_iters``."""

    def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=True):
        super().__init__()
        self.alpha, self.lo, self.hi, self.max_iters, self.auto_step = alpha, lo, hi, max_iters, auto_step
        self.iter_num = 0

    def forward(self, x):
        span = self.hi - self.lo
        coeff = 2.0 * span / (1.0 + math.exp(-self.alpha * self.iter_num / self.max_iters)) - span + self.lo
        if self.auto_step:
            self.iter_num += 1
        return _Reverse.apply(x, coeff)


class TLlibDANN(nn.Module):
    """Classifier (LeNet + bottleneck + head), sigmoid discriminator and the DANN step, from TLlib's definitions."""

    def __init__(self, num_classes=10, bottleneck_dim=256, hidden=1024):
        super().__init__()
        self.backbone = AddaLeNet()
        self.bottleneck = nn.Sequential(nn.Linear(500, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU())
        self.head = nn.Linear(bottleneck_dim, num_classes)
        self.discriminator = nn.Sequential(
            nn.Linear(bottleneck_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())
        self.grl = WarmStartGRL()
        self.domain_acc = None

    def loss(self, x_s, x_t, y_s):
        f = self.bottleneck(self.backbone(torch.cat((x_s, x_t), dim=0)))
        y = self.head(f)
        y_src = y.chunk(2, dim=0)[0]
        f_s, f_t = f.chunk(2, dim=0)
        d = self.discriminator(self.grl(torch.cat((f_s, f_t))))
        d_s, d_t = d.chunk(2, dim=0)
        lab_s = torch.ones((f_s.size(0), 1), device=f_s.device)
        lab_t = torch.zeros((f_t.size(0), 1), device=f_t.device)
        with torch.no_grad():
            acc_s = d_s.ge(0.5).float().eq(lab_s).sum() * 100.0 / f_s.size(0)
            acc_t = d_t.ge(0.5).float().eq(lab_t).sum() * 100.0 / f_t.size(0)
            self.domain_acc = 0.5 * (acc_s + acc_t)
        transfer = 0.5 * (F.binary_cross_entropy(d_s, lab_s) + F.binary_cross_entropy(d_t, lab_t))
        return F.cross_entropy(y_src, y_s) + transfer


class Runner:
    def __init__(self, name: str, model, step_fn, opt, sched):
        self.name, self.model, self.step_fn, self.opt, self.sched = name, model, step_fn, opt, sched

    def block(self, batch, warmup: int, steps: int) -> float:
        self.model.train()
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.thread_time()
            self.opt.zero_grad(set_to_none=True)
            loss = self.step_fn(batch, i)
            loss.backward()
            self.opt.step()
            self.sched.step()
        dt = (time.thread_time() - t0) / steps
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"{self.name}: the loss became {float(loss)}")
        return dt


def make_tllib(seed: int) -> Runner:
    torch.manual_seed(seed)
    model = TLlibDANN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1.0 + 0.001 * i) ** -0.75)
    return Runner("tllib", model, lambda b, i: model.loss(b["source"][0], b["target"][0], b["source"][1]), opt,
                  sched)


def make_da(name: str, seed: int, dropout: Optional[float], fused: bool = True) -> Runner:
    from da.losses import DomainAdversarialLoss
    from da.module import TransferModule

    torch.manual_seed(seed)
    module = TransferModule(num_classes=10, input_shape=(1, 28, 28), backbone="adda_lenet.AddaLeNet",
                            bottleneck_dim=256, bottleneck_dropout=0.0,
                            losses=[DomainAdversarialLoss(dropout=dropout)], optimizer="sgd", lr=0.01,
                            momentum=0.9, weight_decay=1e-3, no_decay_norm_bias=False, fused=fused)
    opt = module.configure_optimizers()  # scheduler "none" here: the same LambdaLR as TLlib's is added below
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1.0 + 0.001 * i) ** -0.75)
    return Runner(name, module, module.training_step, opt, sched)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128, help="per stream (source and target each)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed + 1)
    n = args.batch_size
    batch = {"source": (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                        torch.zeros(n, dtype=torch.long)),
             "target": (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))}
    runners = [make_tllib(args.seed), make_da("da", args.seed, None), make_da("da, per-tensor SGD", args.seed, None,
                                                                       fused=False),
               make_da("da+dropout", args.seed, 0.5)]
    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    t0 = time.time()
    for r in range(args.rounds):
        k = r % len(runners)
        for ru in runners[k:] + runners[:k]:
            times[ru.name].append(ru.block(batch, args.warmup, args.steps))
        print(f"tllib_step: round {r + 1}/{args.rounds} ({time.time() - t0:.0f} s)", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"`{' '.join(['python', 'benchmarks/tllib_step.py', *sys.argv[1:]])}`: batch {n} + {n}, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps, thread CPU time\n")
    print("| step | CPU ms/step (median) | IQR ms | vs TLlib |\n|---|---:|---:|---:|")
    for k, v in times.items():
        q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0], v[0], v[0]]
        print(f"| {k} | {1e3 * med[k]:.1f} | {1e3 * (q[2] - q[0]):.1f} | {med[k] / med['tllib']:.3f}x |")
    print(json.dumps({k: {"cpu_ms": round(1e3 * med[k], 3), "vs_tllib": round(med[k] / med["tllib"], 4)}
                      for k in times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
