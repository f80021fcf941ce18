"""pytorch-adapt's side of ``benchmarks/peers.py`` (pytorch-adapt 0.0.83, in its own install folder).

pytorch-adapt pins ``torchmetrics==0.9.3`` and ``pytorch-metric-learning==1.6.3``, and that torchmetrics imports
``pkg_resources`` (gone from setuptools >= 81), so ``peers.py --install`` puts the four packages
(``setuptools<81`` included) into ``.cache/peers/pytorch-adapt`` with ``pip install --target --no-deps`` and runs
this file in a subprocess with that folder first on ``PYTHONPATH``; torch and everything else are shared with ``da``'s
environment. ``da`` is never imported here (its torchmetrics would be the old one).

Models: ``G`` = :class:`peer_nets.FeatureMLP`, ``C`` = the linear head, ``D`` = :class:`peer_nets.Discriminator`;
one Adam per model at the shared lr. Methods, with pytorch-adapt's defaults for their own terms: ``erm`` =
``Classifier``; ``dann`` = ``DANN`` (gradient reversal weight 1); ``dan`` = ``Aligner`` (its default: ``MMDLoss`` on
the features *and* on the softmax predictions); ``coral`` = ``Aligner`` with ``CORALLoss``; ``mcc`` = ``Classifier``
with ``MCCHook`` as a post hook. Its ``MeanWeighter`` averages the loss terms (total = mean, not sum). It has no MDD.
The training loop is written here (its Ignite wrapper adds validators and loggers): ``batch_size`` source and
``batch_size`` target samples per step, each stream reshuffled every time it is used up (``da``'s sampling).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator

import torch
from torch import nn

from peer_nets import Discriminator, StepClock, accuracy, make_classifier_net


def _batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def run(job: Dict[str, Any], data: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    from pytorch_adapt.adapters import DANN, Aligner, Classifier
    from pytorch_adapt.containers import Models, Optimizers
    from pytorch_adapt.hooks import MCCHook
    from pytorch_adapt.layers import CORALLoss

    method, seed = job["method"], int(job["seed"])
    if method == "mdd":
        return {"error": "pytorch-adapt 0.0.83 has no MDD (no MDD adapter, hook or loss in pytorch_adapt)"}
    torch.manual_seed(seed)
    xs, ys, xt = data["xs"], data["ys"], data["xt"]
    net = make_classifier_net(xs.shape[1], int(data["num_classes"]), job["hidden"])
    models = {"G": net.feature, "C": net.head}
    optimizers = Optimizers((torch.optim.Adam, {"lr": float(job["lr"])}))
    if method == "erm":
        adapter = Classifier(models=Models(models), optimizers=optimizers)
    elif method == "dann":
        models["D"] = nn.Sequential(Discriminator(net.feature.out_features), nn.Flatten(start_dim=0))
        adapter = DANN(models=Models(models), optimizers=optimizers)
    elif method == "dan":
        adapter = Aligner(models=Models(models), optimizers=optimizers)
    elif method == "coral":
        adapter = Aligner(models=Models(models), optimizers=optimizers, hook_kwargs={"loss_fn": CORALLoss()})
    elif method == "mcc":
        adapter = Classifier(models=Models(models), optimizers=optimizers, hook_kwargs={"post": [MCCHook()]})
    else:
        return {"error": f"pytorch-adapt has no method {method!r} here"}
    for m in models.values():
        m.train()
    bs = int(job["batch_size"])
    src, tgt = _batches(len(ys), bs, seed + 101), _batches(len(xt), bs, seed + 202)
    src_domain, tgt_domain = torch.zeros(bs, dtype=torch.long), torch.ones(bs, dtype=torch.long)
    clock = StepClock(job["warmup"])
    for _ in range(int(job["steps"])):
        i, j = next(src), next(tgt)
        batch = {"src_imgs": xs[i], "src_labels": ys[i], "target_imgs": xt[j], "src_domain": src_domain,
                 "target_domain": tgt_domain}
        clock.start()
        adapter.training_step(batch)
        clock.stop()
    return {"acc": accuracy(net, data["xt_test"], data["yt_test"]), **clock.summary()}
