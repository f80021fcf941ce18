"""skada's side of ``benchmarks/peers.py`` (skada 0.6 deep methods, trained by skorch).

Every method gets :class:`peer_nets.ClassifierNet` (features read at the layer ``"feature"``), Adam at the shared lr,
``batch_size`` source + ``batch_size`` target samples per step (skada's ``DomainBalancedDataLoader``), skorch epochs
of ``floor(max(n_s, n_t) / batch)`` steps, and skada's own defaults for each method's terms (``reg=1``). Two heads
are passed in, because skada's defaults cannot be used as they are:

* DANN: skada's default ``DomainClassifier`` ends in ``nn.Softmax()`` over its single output, which is 1 for every
  sample, so ``BCELoss`` gets a constant and the discriminator never learns (its DANN is then source-only). The
  benchmark hands it :class:`peer_nets.Discriminator` behind skada's ``GradientReversalLayer`` and a sigmoid.
* MDD: the adversarial head is a linear layer like the classifier, behind skada's gradient reversal (logits, as its
  ``CrossEntropyLoss`` expects).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from peer_nets import Discriminator, StepClock, accuracy, make_classifier_net


class _ReversedHead(nn.Module):
    """``head(GRL(f))``; ``sigmoid`` turns a one-logit head into the probability skada's ``BCELoss`` expects."""

    def __init__(self, head: nn.Module, sigmoid: bool):
        super().__init__()
        self.head, self.sigmoid = head, sigmoid

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        from skada.deep.modules import GradientReversalLayer

        out = self.head(GradientReversalLayer.apply(f, 1.0))
        return out.sigmoid().squeeze(-1) if self.sigmoid else out


def run(job: Dict[str, Any], data: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    import skada.deep as sd
    from skorch.callbacks import Callback

    class Clock(Callback):
        def __init__(self, clock: StepClock):
            self.clock = clock

        def on_batch_begin(self, net, batch=None, training=False, **kwargs):
            if training:
                self.clock.start()

        def on_batch_end(self, net, batch=None, training=False, **kwargs):
            if training:
                self.clock.stop()

    method, seed = job["method"], int(job["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    xs, ys, xt = data["xs"], data["ys"], data["xt"]
    num_classes = int(data["num_classes"])
    net = make_classifier_net(xs.shape[1], num_classes, job["hidden"])
    feat = net.feature.out_features
    clock = StepClock(job["warmup"])
    common = dict(batch_size=int(job["batch_size"]), max_epochs=int(job["epochs"]), train_split=None,
                  optimizer=torch.optim.Adam, lr=float(job["lr"]), callbacks=[Clock(clock)], device="cpu", verbose=0)
    if method == "erm":
        model = sd.SourceOnly(net, **common)
    elif method == "dann":
        model = sd.DANN(net, "feature", reg=1, domain_classifier=_ReversedHead(Discriminator(feat), True), **common)
    elif method == "dan":
        model = sd.DAN(net, "feature", reg=1, **common)
    elif method == "coral":
        model = sd.DeepCoral(net, "feature", reg=1, **common)
    elif method == "mcc":
        model = sd.MCC(net, "feature", reg=1, **common)
    elif method == "mdd":
        model = sd.MDD(net, "feature", reg=1, disc_classifier=_ReversedHead(nn.Linear(feat, num_classes), False),
                       **common)
    else:
        return {"error": f"skada has no method {method!r} here"}
    x = torch.cat([xs, xt]).numpy().astype(np.float32)
    y = np.concatenate([ys.numpy(), -np.ones(len(xt), dtype=np.int64)])
    domain = np.concatenate([np.ones(len(xs), dtype=np.int64), -2 * np.ones(len(xt), dtype=np.int64)])
    model.fit(x, y, sample_domain=domain)
    return {"acc": accuracy(net, data["xt_test"], data["yt_test"]), **clock.summary()}
