"""Backbones, heads and discriminators. See :mod:`da.models.backbones` for the backbone contract."""

from da.models.backbones import MLP, Bottleneck, Flatten, LeNet, LeNetBN, TorchvisionBackbone, build_backbone

__all__ = ["LeNet", "LeNetBN", "MLP", "Flatten", "TorchvisionBackbone", "Bottleneck", "build_backbone"]
