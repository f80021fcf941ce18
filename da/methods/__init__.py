"""Training methods with their own optimisation: extra modules, several optimisers, an update rule of their own.

Used from YAML as ``model.method: {class_path: da.methods.MCD, init_args: {...}}`` (``configs/method/{adda,mcd,
fixmatch,shot}.yaml``). A plain loss term does not need any of this: see :mod:`da.losses` ("Adding a loss").
The contract is :class:`~da.methods.base.TrainingMethod`; docs/training_methods.md explains it.
"""

from da.methods.adda import ADDA
from da.methods.base import TrainingMethod, freeze, trainable
from da.methods.fixmatch import FixMatch, fixmatch_loss
from da.methods.mcd import MCD, classifier_discrepancy
from da.methods.shot import SHOT, cluster_centroids, nearest_centroid

__all__ = ["TrainingMethod", "trainable", "freeze", "ADDA", "MCD", "classifier_discrepancy", "FixMatch",
           "fixmatch_loss", "SHOT", "cluster_centroids", "nearest_centroid"]
