"""Backbones: map an input batch to a feature matrix ``(n, out_features)``.

The contract (what a user implements to bring any encoder: image, text, tabular, audio):

* an ``nn.Module`` whose ``forward(x)`` takes a batch (a tensor, or a dict of tensors) and returns ``(n, d)`` features;
* an int attribute ``out_features`` (= d);
* optionally ``blocks() -> list[nn.Module]``, its layers in input-to-output order, so that
  ``--model.freeze_blocks k`` can freeze the first k of them.

Built-in names for ``--model.backbone``: ``lenet`` (digits: the LeNet of ADDA / TLlib), ``lenet_bn`` (a wider
LeNet with BatchNorm), ``mlp`` and ``linear`` (feature vectors), ``hf`` (a
Hugging Face encoder, extra ``da[text]``), ``branches`` (D source-trained copies of a base backbone, mixed), any
torchvision classifier (``resnet18``, ``resnet50``, ``vit_b_16``, ...), or a dotted path ``my_pkg.my_module.MyEncoder``
(constructed with ``backbone_args``, plus ``input_shape`` if it accepts it).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from da.checkpoints import read_state_dict
from da.errors import UserError, unknown_name


class LeNet(nn.Module):
    """LeNet of ADDA (Tzeng et al., CVPR 2017) and TLlib (``tllib.vision.models.digits.lenet``), without BatchNorm::

        conv5(in -> 20) - maxpool2 - ReLU - conv5(20 -> 50) - Dropout2d(0.5) - maxpool2 - ReLU - flatten
        - Linear(50 h w -> 500) - ReLU - Dropout(0.5)

    No padding, so a 28x28 input gives 50 x 4 x 4 = 800 flattened features (``h = w = ((s - 4) / 2 - 4) / 2``), and
    at 28x28 and 1 channel it has 426,070 parameters (conv 520 + 25,050, fc 400,500). Inputs must be at least
    16x16 (16x16 gives 50 x 1 x 1; the field's protocols resize the 16x16 JDA/USPS digits to 28x28).

    Shape:
        input ``(n, in_channels, s, s)``, output ``(n, out_features)`` (500).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, out_features: int = 500,
                 conv_dropout: float = 0.5, dropout: float = 0.5):
        super().__init__()
        side = (int(image_size) - 4) // 2
        side = (side - 4) // 2
        if side < 1:
            raise ValueError(f"backbone 'lenet' needs images of at least 16x16, got {image_size}x{image_size}; "
                             f"resize them with --data.options '{{image_size: 28}}'")
        self.out_features = out_features
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(20, 50, 5), nn.Dropout2d(conv_dropout), nn.MaxPool2d(2), nn.ReLU())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, out_features), nn.ReLU(),
                                nn.Dropout(dropout))

    def blocks(self) -> List[nn.Module]:
        return [self.conv1, self.conv2, self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x)))


class LeNetBN(nn.Module):
    """``lenet_bn``: a wider LeNet-style CNN with BatchNorm and padding for digits (any size >= 16 px, 1 or 3 channels).

    conv5(32, pad 2)-BN-ReLU-pool, conv5(64, pad 2)-BN-ReLU-pool, adaptive average pooling to 4x4, linear to
    ``out_features``, ReLU, dropout. About 0.3 M parameters at the defaults; about 4.9x the multiply-adds of
    :class:`LeNet`. This was ``da``'s ``lenet`` before 2026-12 (the README's older digits numbers used it).
    """

    def __init__(self, in_channels: int = 1, out_features: int = 256, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.out_features = out_features
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 5, padding=2), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 5, padding=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, out_features), nn.ReLU(), nn.Dropout(dropout))

    def blocks(self) -> List[nn.Module]:
        return [self.conv1, self.conv2, self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv2(self.conv1(x))))


class MLP(nn.Module):
    """Fully connected feature extractor for vector inputs: ``in_features -> hidden... `` with ReLU and dropout."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256,), dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        layers: List[nn.Module] = []
        d = in_features
        for h in hidden:
            block: List[nn.Module] = [nn.Linear(d, h)]
            if batch_norm:
                block.append(nn.BatchNorm1d(h))
            block += [nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Sequential(*block))
            d = h
        self.layers = nn.Sequential(*layers)
        self.out_features = d

    def blocks(self) -> List[nn.Module]:
        return list(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class Flatten(nn.Module):
    """The identity on flattened inputs: a linear model when followed by the classifier."""

    def __init__(self, in_features: int):
        super().__init__()
        self.out_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class TorchvisionBackbone(nn.Module):
    """Any torchvision classifier with its final layer removed.

    Args:
        name: a torchvision model name (``torchvision.models.list_models()``), e.g. ``resnet18``, ``resnet50``.
        pretrained: load torchvision's default ImageNet weights (downloads them once into the torch hub cache).
        weights_path: a local ``.pth`` state dict of the full torchvision model (for machines without internet).
        in_channels: input channels of the data; grayscale batches are repeated to 3 channels.
    """

    def __init__(self, name: str = "resnet18", pretrained: bool = False, weights_path: Optional[str] = None,
                 in_channels: int = 3):
        super().__init__()
        import torchvision

        known = set(torchvision.models.list_models(module=torchvision.models))
        if name not in known:
            raise unknown_name("torchvision model", name, known)
        model = torchvision.models.get_model(name, weights=None)
        if weights_path is not None:
            state = read_state_dict(weights_path)
            model.load_state_dict(state)
        elif pretrained:
            model.load_state_dict(_download_torchvision_weights(name))
        self.name = name
        self.in_channels = in_channels
        self.out_features = _strip_classifier(model)
        self.model = model

    def blocks(self) -> List[nn.Module]:
        m = self.model
        if all(hasattr(m, k) for k in ("conv1", "bn1", "layer1", "layer4")):  # ResNet family
            return [nn.ModuleList([m.conv1, m.bn1]), m.layer1, m.layer2, m.layer3, m.layer4]
        if hasattr(m, "features"):
            return list(m.features)
        return [m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.model(x).flatten(1)


def _download_torchvision_weights(name: str) -> Dict[str, torch.Tensor]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=True)
    except Exception as err:  # no network, proxy, ...
        raise RuntimeError(
            f"could not download the pretrained weights of '{name}' ({err.__class__.__name__}: {err}). "
            f"On a machine with internet, download {weights.url} and pass it with "
            f"--model.backbone_args.weights_path /path/to/{weights.url.rsplit('/', 1)[-1]}, "
            f"or train without them: --model.backbone_args.pretrained false") from err


def _strip_classifier(model: nn.Module) -> int:
    """Replace the final classification layer by the identity and return the feature dimension."""
    for attr in ("fc", "classifier", "head", "heads"):
        layer = getattr(model, attr, None)
        if layer is None:
            continue
        if isinstance(layer, nn.Linear):
            setattr(model, attr, nn.Identity())
            return layer.in_features
        if isinstance(layer, nn.Sequential):
            linears = [i for i, m in enumerate(layer) if isinstance(m, nn.Linear)]
            if linears:
                last = linears[-1]
                dim = layer[last].in_features
                layer[last] = nn.Identity()
                return dim
    raise ValueError(f"cannot find the classification layer of {type(model).__name__} to remove")


def _hf(input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    from da.models.text import HFEncoder

    return HFEncoder(**kwargs)


def _branches(input_shape: Sequence[int], base: str = "", checkpoints: Sequence[str] = (),
              base_args: Optional[Dict[str, Any]] = None, mixture: Any = "learned") -> nn.Module:
    """``branches``: D copies of the backbone ``base`` (built with ``base_args``), branch d loaded from the d-th
    source checkpoint, outputs mixed by ``mixture`` (``learned``, ``uniform`` or D weights); see
    :class:`~da.models.branches.BranchesBackbone`. The checkpoints replace any pretrained weights, so ``pretrained``
    and ``weights_path`` are not applied to the branches."""
    from da.models.branches import BranchesBackbone

    if not base or base == "branches":
        raise ValueError(f"backbone 'branches' needs backbone_args.base, the name of the source models' backbone "
                         f"(e.g. {{base: lenet, checkpoints: [a.ckpt, b.ckpt]}}), got base={base!r}")
    if isinstance(checkpoints, str) or not checkpoints:
        raise ValueError(f"backbone 'branches' needs backbone_args.checkpoints, a non-empty list of source "
                         f"checkpoints (one branch each), got {checkpoints!r}")
    args = {k: v for k, v in (base_args or {}).items() if k not in ("pretrained", "weights_path")}
    return BranchesBackbone.from_checkpoints(lambda: build_backbone(base, input_shape, **args), list(checkpoints),
                                             mixture=mixture)


def build_backbone(name: str, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build a backbone by name for inputs of shape ``input_shape`` (per sample, e.g. ``(1, 16, 16)`` or ``(5000,)``)."""
    input_shape = tuple(input_shape) if input_shape is not None else ()
    if name == "lenet":
        if len(input_shape) != 3:
            raise ValueError(f"backbone 'lenet' needs image inputs (channels, height, width), got shape {input_shape}")
        return LeNet(in_channels=input_shape[0], image_size=min(input_shape[1:]), **kwargs)
    if name == "lenet_bn":
        return LeNetBN(in_channels=input_shape[0] if len(input_shape) == 3 else 1, **kwargs)
    if name == "mlp":
        return MLP(in_features=_numel(input_shape), **kwargs)
    if name == "linear":
        return Flatten(in_features=_numel(input_shape))
    if name == "hf":
        return _hf(input_shape, **kwargs)
    if name == "branches":
        return _branches(input_shape, **kwargs)
    if "." in name:
        cls = _backbone_class(name)
        if "input_shape" in inspect.signature(cls).parameters:
            kwargs = {"input_shape": input_shape, **kwargs}
        backbone = cls(**kwargs)
        if not isinstance(getattr(backbone, "out_features", None), int):
            raise TypeError(f"backbone {name} must set an int attribute `out_features` (its feature dimension)")
        return backbone
    import torchvision

    if name in set(torchvision.models.list_models(module=torchvision.models)):
        in_ch = input_shape[0] if len(input_shape) == 3 else 3
        return TorchvisionBackbone(name, in_channels=in_ch, **kwargs)
    known = ["lenet", "lenet_bn", "mlp", "linear", "hf", "branches", "resnet18", "resnet50", "<any torchvision model>", "<pkg.module.Class>"]
    raise unknown_name("backbone", name, known)


def _backbone_class(path: str) -> type:
    """The class a dotted ``--model.backbone`` names; only a subclass of ``torch.nn.Module`` is accepted, so a config
    (or a checkpoint's hyper-parameters) can never make ``build_backbone`` call a function such as ``os.system``."""
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"cannot import backbone '{path}' ({err}); give 'package.module.ClassName' of an importable "
                        "nn.Module, or a built-in name (lenet, mlp, linear, hf, branches, a torchvision model)") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"backbone '{path}' is a {type(cls).__name__}, not a torch.nn.Module subclass; a dotted "
                        "backbone must name an nn.Module class (with an int attribute `out_features`)")
    return cls


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class Bottleneck(nn.Sequential):
    """The adaptation layer of DAN / DANN / CDAN recipes: ``Linear(in, dim) [-> BatchNorm1d] -> ReLU [-> Dropout]``.

    TLlib's ``ImageClassifier`` bottleneck is ``Linear-BN-ReLU`` (``batch_norm=True, dropout=0``); DAN's Caffe recipe
    (Long et al., ICML 2015) is ``Linear-ReLU-Dropout(0.5)`` (``batch_norm=False, dropout=0.5``).

    Shape:
        input ``(n, in_features)``, output ``(n, dim)``.
    """

    def __init__(self, in_features: int, dim: int, dropout: float = 0.5, batch_norm: bool = True):
        if not 0 <= dropout < 1:
            raise ValueError(f"bottleneck dropout must be in [0, 1), got {dropout}")
        layers: List[nn.Module] = [nn.Linear(in_features, dim)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(dim))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.out_features = dim
