"""Adaptation losses: plain PyTorch terms added to the supervised loss by ``TransferModule``.

Built-in terms have short names (``LOSSES``) for the command line; any :class:`AdaptationLoss` subclass in the
user's own module works through ``class_path`` (see :func:`build_loss`).
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Type, Union

from da.losses.adversarial import (CDAN, DomainAdversarialLoss, DomainDiscriminator, GradientReversal,
                                   grad_reverse)
from da.losses.base import AdaptationLoss, StepContext
from da.losses.confusion import BatchNuclearNorm, EntropyMinimization, InformationMaximization, MinimumClassConfusion
from da.losses.discrepancy import CORAL, JMMD, MKMMD, MMD, gaussian_kernel_matrix, pairwise_sq_dists
from da.losses.l2sp import L2, L2SP
from da.losses.margin import MarginDisparityDiscrepancy
from da.losses.multisource import BranchL2SP, MultiSourceAnchors
from da.losses.spectral import AdaptiveFeatureNorm, BatchSpectralPenalty

LOSSES: Dict[str, Type[AdaptationLoss]] = {
    "l2sp": L2SP,
    "l2": L2,
    "anchors": MultiSourceAnchors,
    "branch_l2sp": BranchL2SP,
    "branches": BranchL2SP,
    "dann": DomainAdversarialLoss,
    "cdan": CDAN,
    "mmd": MKMMD,
    "mkmmd": MKMMD,
    "dan": MKMMD,
    "jmmd": JMMD,
    "jan": JMMD,
    "coral": CORAL,
    "ent": EntropyMinimization,
    "entropy": EntropyMinimization,
    "im": InformationMaximization,
    "bnm": BatchNuclearNorm,
    "mcc": MinimumClassConfusion,
    "bsp": BatchSpectralPenalty,
    "afn": AdaptiveFeatureNorm,
    "safn": AdaptiveFeatureNorm,
    "mdd": MarginDisparityDiscrepancy,
}


def _resolve_class(path: str) -> Type[AdaptationLoss]:
    if path.lower() in LOSSES:
        return LOSSES[path.lower()]
    if "." not in path:
        from da.errors import unknown_name
        raise unknown_name("loss", path, LOSSES)
    mod_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import loss class '{path}' ({err}); give 'package.module.ClassName' of an "
                         "importable module, or a short name: " + ", ".join(sorted(LOSSES))) from err
    if not (isinstance(cls, type) and issubclass(cls, AdaptationLoss)):
        raise TypeError(f"'{path}' is not an AdaptationLoss subclass; subclass da.losses.AdaptationLoss")
    return cls


def build_loss(spec: Union[str, Mapping[str, Any], AdaptationLoss]) -> AdaptationLoss:
    """A loss term from a short name (``"dann"``), a dict, or an instance (returned as is).

    Dicts: ``{"name": "l2sp", "alpha": 0.1}`` (kwargs beside the name), or LightningCLI-style
    ``{"class_path": "my_pkg.losses.TargetEntropy", "init_args": {"weight": 0.1}}``; ``name``/``class_path``
    accept either a short name or a dotted class path.
    """
    if isinstance(spec, AdaptationLoss):
        return spec
    if isinstance(spec, str):
        return _resolve_class(spec)()
    if isinstance(spec, Mapping):
        spec = dict(spec)
        key = spec.pop("class_path", None) or spec.pop("name", None)
        if key is None:
            raise ValueError(f"a loss spec needs 'name' or 'class_path', got keys {sorted(spec)}")
        kwargs = dict(spec.pop("init_args", None) or {})
        kwargs.update(spec)
        return _resolve_class(str(key))(**kwargs)
    raise TypeError(f"a loss spec is a name, a dict or an AdaptationLoss, got {type(spec).__name__}")


__all__ = ["AdaptationLoss", "StepContext", "L2SP", "L2", "MultiSourceAnchors", "BranchL2SP", "GradientReversal",
           "grad_reverse", "DomainDiscriminator", "DomainAdversarialLoss", "CDAN", "MMD", "MKMMD", "JMMD", "CORAL",
           "EntropyMinimization", "InformationMaximization", "BatchNuclearNorm", "MinimumClassConfusion",
           "BatchSpectralPenalty", "AdaptiveFeatureNorm", "MarginDisparityDiscrepancy", "gaussian_kernel_matrix",
           "pairwise_sq_dists", "LOSSES", "build_loss"]
