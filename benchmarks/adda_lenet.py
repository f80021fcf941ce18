"""The LeNet of ADDA (Tzeng et al., CVPR 2017) and TLlib's digits experiments, for the benchmarks.

Architecture (28x28 input)::

    conv5(1 -> 20) -> maxpool2 -> ReLU -> conv5(20 -> 50) -> Dropout2d(0.5) -> maxpool2 -> ReLU
    -> flatten (50 * 4 * 4 = 800) -> Linear(800, 500) -> ReLU -> Dropout(0.5)          (features: 500)

about 0.43 M parameters and 2.3 M multiply-adds per image. Used through ``da``'s dotted backbone path
(``--model.backbone adda_lenet.AddaLeNet``, with ``benchmarks/`` on ``sys.path``) so that the benchmarks time the same
network as TLlib whatever ``da``'s built-in ``lenet`` is.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


class AddaLeNet(nn.Sequential):
    """ADDA / TLlib LeNet feature extractor for ``(channels, 28, 28)`` inputs; ``out_features = 500``."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28)):
        shape = tuple(input_shape)
        if len(shape) != 3 or tuple(shape[1:]) != (28, 28):
            raise ValueError(f"AddaLeNet needs (channels, 28, 28) inputs (800 features after two conv5/pool2 "
                             f"stages), got input_shape {shape}")
        super().__init__(
            nn.Conv2d(shape[0], 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(20, 50, kernel_size=5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(1), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Dropout(0.5))
        self.out_features = 500
