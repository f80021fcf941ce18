"""The networks and the step clock that ``benchmarks/peers.py`` hands to every framework (plain PyTorch, no ``da``).

This file imports only ``torch``, so it loads unchanged in ``da``'s environment and in the peers' (pytorch-adapt's
own install folder pins an old ``torchmetrics`` that ``da`` cannot import). ``da`` uses :class:`FeatureMLP` as its
backbone by dotted path (``--model.backbone peer_nets.FeatureMLP``) and adds its own ``nn.Linear`` classifier; the
peers get the same :class:`FeatureMLP` plus the same ``nn.Linear`` head (:func:`make_classifier_net`) and, for the
adversarial methods, :class:`Discriminator`, which has the layers of ``da.losses.DomainDiscriminator`` at its
defaults (``tests/test_peers_script.py`` checks they match).
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn


class FeatureMLP(nn.Module):
    """``in_features -> [Linear -> ReLU] x len(hidden)``: the feature extractor G of every framework.

    Args:
        input_shape: per-sample input shape (``da`` passes it; the features' size is its product).
        in_features: the input size when ``input_shape`` is not given (the peers' side).
        hidden: widths of the hidden layers (default ``[50]``: the DANN paper's Amazon network has one hidden layer).
    """

    def __init__(self, input_shape: Optional[Sequence[int]] = None, in_features: Optional[int] = None,
                 hidden: Sequence[int] = (50,)):
        super().__init__()
        if in_features is None:
            if not input_shape:
                raise ValueError("FeatureMLP needs input_shape (da passes it) or in_features")
            in_features = 1
            for s in input_shape:
                in_features *= int(s)
        layers: List[nn.Module] = []
        d = int(in_features)
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        self.layers = nn.Sequential(*layers)
        self.out_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class ClassifierNet(nn.Module):
    """``head(feature(x))``: G followed by the linear classifier C (``da``'s ``TransferModule`` layout).

    skada reads the features by the layer name ``"feature"``; pytorch-adapt takes ``feature`` and ``head`` as its
    models ``G`` and ``C``.
    """

    def __init__(self, feature: FeatureMLP, num_classes: int):
        super().__init__()
        self.feature = feature
        self.head = nn.Linear(feature.out_features, num_classes)

    def forward(self, x: torch.Tensor, sample_weight=None) -> torch.Tensor:
        return self.head(self.feature(x))


def make_classifier_net(in_features: int, num_classes: int, hidden: Sequence[int] = (50,)) -> ClassifierNet:
    return ClassifierNet(FeatureMLP(in_features=in_features, hidden=hidden), num_classes)


class Discriminator(nn.Sequential):
    """``[Linear -> BatchNorm1d -> ReLU] x 2 -> Linear(1)``: one domain logit per sample.

    The layers of ``da.losses.DomainDiscriminator(in_features, hidden=1024)`` with its default (no dropout beside
    BatchNorm, as TLlib's ``DomainDiscriminator``; the README's peer table was measured before that default, with
    ``Dropout(0.5)`` after each ReLU in all three frameworks), so the adversarial methods of every framework play against the same discriminator.
    """

    def __init__(self, in_features: int, hidden: int = 1024, num_layers: int = 2, dropout: float = 0.0):
        layers: List[nn.Module] = []
        d = in_features
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
            d = hidden
        layers.append(nn.Linear(d, 1))
        super().__init__(*layers)


class StepClock:
    """Thread CPU time of training steps: ``start()`` before a step's compute, ``stop()`` after its optimiser step.

    Uses ``time.thread_time_ns`` (CPU time of the calling thread: not inflated when other jobs share the cores, as
    wall time is; with ``OMP_NUM_THREADS=1`` torch computes in the calling thread). The first ``warmup`` steps are not
    counted. Data loading between steps is outside the clock in every framework.
    """

    def __init__(self, warmup: int = 10):
        self.warmup = int(warmup)
        self.steps = 0
        self.timed_ns: List[int] = []
        self._t0: Optional[int] = None

    def start(self) -> None:
        self._t0 = time.thread_time_ns()

    def stop(self) -> None:
        if self._t0 is None:
            return
        dt = time.thread_time_ns() - self._t0
        self._t0 = None
        self.steps += 1
        if self.steps > self.warmup:
            self.timed_ns.append(dt)

    def summary(self) -> Dict[str, float]:
        """``steps`` run, ``step_ms`` (mean thread CPU ms over the timed steps), ``timed_steps``."""
        n = len(self.timed_ns)
        return {"steps": self.steps, "timed_steps": n,
                "step_ms": (sum(self.timed_ns) / n / 1e6) if n else float("nan")}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``, in percent."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    model.train(was)
    return 100.0 * correct / max(len(y), 1)
