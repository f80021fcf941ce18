"""SHOT: Source HypOthesis Transfer (Liang, Hu & Feng, "Do We Really Need to Access the Source Data?", ICML 2020).

Source-free adaptation. Start from a source model (``--model.init_from <source checkpoint>``); keep its classifier
(the source *hypothesis*) frozen and train the feature extractor ``g`` (``backbone`` + ``bottleneck``) on the
unlabelled target **alone** (``data.supervision: target_unlabeled``: the data module never reads a source sample)::

    L = L_ent + L_div + beta * L_pl
    L_ent = - E_x sum_k p_k(x) log p_k(x)                 (each prediction confident)
    L_div =   sum_k pbar_k log pbar_k,   pbar = E_x p(x)   (= -H(pbar): predictions diverse over the batch)
    L_pl  =   E_x CE(p(x), y^(x))                          (self-supervised pseudo-labels, beta = 0.3)

Pseudo-labels come from weighted k-means-style clustering of the target features ``g^(x) = g(x) / ||g(x)||`` (cosine
geometry), computed over the whole target training split in eval mode every ``refresh_every`` iterations (default:
once per pass over the target, as the paper's "each epoch")::

    c_k^(0) = sum_x p_k(x) g^(x) / sum_x p_k(x)              (centroids weighted by the source hypothesis)
    y^(x)   = argmin_k D_cos(g^(x), c_k^(0))
    c_k^(1) = sum_x 1[y^(x) = k] g^(x) / sum_x 1[y^(x) = k]  (one more hard-assignment round)

Training batches carry no sample index, so a sample's pseudo-label is its nearest centroid ``c^(1)`` computed from
the current (detached) features of the batch; at a refresh this is exactly the paper's ``y^``, in between it follows
the features. The centroids are a persistent buffer (saved in checkpoints: a resumed run continues exactly). Under
DDP the centroid sums are all-reduced. ``L_ent`` and ``L_div`` come from
:func:`da.losses.confusion.prediction_entropies`, the same function as the loss-shaped ``im`` term (with the
authors' ``eps`` inside the logarithms).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from da.errors import UserError
from da.losses.confusion import prediction_entropies
from da.methods.base import NamedParameters, TrainingMethod, freeze, trainable


def cluster_centroids(feats: torch.Tensor, probs: torch.Tensor, reduce=None) -> torch.Tensor:
    """SHOT's two-round centroids ``c^(1)`` (``(K, d)``, unit norm) of L2-normalised ``feats`` given soft ``probs``.

    ``reduce`` (e.g. an all-reduce sum across DDP ranks) is applied to the per-class sums before dividing.
    """
    reduce = reduce or (lambda t: t)
    f = F.normalize(feats.float(), dim=1)
    w = probs.float()
    c0 = reduce(w.t() @ f) / reduce(w.sum(0)).clamp_min(1e-8).unsqueeze(1)
    labels = nearest_centroid(f, c0)
    onehot = F.one_hot(labels, w.shape[1]).float()
    count = reduce(onehot.sum(0))
    c1 = reduce(onehot.t() @ f) / count.clamp_min(1).unsqueeze(1)
    c1 = torch.where(count.unsqueeze(1) > 0, c1, c0)  # an empty cluster keeps its soft centroid
    return F.normalize(c1, dim=1)


def nearest_centroid(feats: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``argmin_k D_cos(f, c_k)`` = ``argmax_k cos(f, c_k)``."""
    return (F.normalize(feats.float(), dim=1) @ F.normalize(centroids.float(), dim=1).t()).argmax(1)


class SHOT(TrainingMethod):
    """SHOT (module docstring): IM + beta x clustering pseudo-labels, classifier frozen, target data only.

    Args:
        beta: weight of the pseudo-label cross-entropy (0.3 in the paper; 0 is SHOT-IM).
        div_weight: weight of the diversity term (1 in the paper).
        refresh_every: iterations between centroid refreshes (None: one pass over the target's training batches).
        eps: inside the logarithms of the IM terms (1e-5 as the authors' code).
    Logged: ``loss``, ``ent``, ``div``, ``pl``, ``pl_acc`` (pseudo-label accuracy from the diagnostic target labels).
    """

    name = "shot"
    needs_source = False
    needs_init_from = True

    def __init__(self, beta: float = 0.3, div_weight: float = 1.0, refresh_every: Optional[int] = None,
                 eps: float = 1e-5):
        super().__init__()
        if beta < 0 or div_weight < 0:
            raise ValueError(f"SHOT needs beta >= 0 and div_weight >= 0, got {beta}, {div_weight}")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1 (or null: once per pass over the target), "
                             f"got {refresh_every}")
        self.beta, self.div_weight, self.refresh_every, self.eps = float(beta), float(div_weight), refresh_every, eps
        self.register_buffer("centroids", torch.zeros(0))
        self.register_buffer("refreshed_at", torch.tensor(-1, dtype=torch.long))

    def setup(self, module) -> None:
        freeze(module.classifier)
        self.centroids = torch.zeros(module.classifier.out_features, module.classifier.in_features)

    def parameter_sets(self, module) -> Dict[str, NamedParameters]:
        return {"features": trainable(module.named_parameters(), ("backbone.", "bottleneck."))}

    def _interval(self, module) -> int:
        if self.refresh_every is not None:
            return int(self.refresh_every)
        n = module.trainer.num_training_batches
        return max(int(n), 1) if n != float("inf") else 1

    @torch.no_grad()
    def refresh(self, module) -> None:
        """Recompute the centroids over the whole target training split (eval mode, no source data)."""
        dm = getattr(module.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "target_train_eval_loader"):
            raise UserError("SHOT clusters the whole target: train with a DomainDataModule (da fit)")
        was_training = module.training
        module.eval()
        feats, probs = [], []
        for x, _, _ in dm.target_train_eval_loader():
            x = x.to(module.device) if isinstance(x, torch.Tensor) else x
            f, logits = module.features_and_logits(x)
            feats.append(f.float())
            probs.append(logits.float().softmax(-1))
        module.train(was_training)
        reduce = None
        if module.trainer.world_size > 1:
            reduce = lambda t: module.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        self.centroids = cluster_centroids(torch.cat(feats), torch.cat(probs), reduce).to(self.centroids.dtype)
        self.refreshed_at.fill_(int(module.global_step))

    def shot_loss(self, f: torch.Tensor, logits: torch.Tensor):
        """``(L, L_ent, L_div, L_pl, pseudo-labels)`` of one target batch given the current centroids."""
        ent, h_bar = prediction_entropies(logits.float(), self.eps)
        div = -h_bar  # L_div = sum_k pbar_k log pbar_k
        pseudo = nearest_centroid(f.detach(), self.centroids)
        pl = F.cross_entropy(logits.float(), pseudo) if self.beta > 0 else logits.sum() * 0
        return ent + self.div_weight * div + self.beta * pl, ent, div, pl, pseudo

    def training_step(self, module, batch: Dict[str, Any], optimizers: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        step = int(module.global_step)
        if int(self.refreshed_at) < 0 or step - int(self.refreshed_at) >= self._interval(module):
            self.refresh(module)
        x_t, y_t = batch["target"][0], batch["target"][1]
        f, logits = module.features_and_logits(x_t)
        loss, ent, div, pl, pseudo = self.shot_loss(f, logits)
        self.update(module, optimizers["features"], loss)
        return {"loss": loss.detach(), "ent": ent.detach(), "div": div.detach(), "pl": pl.detach(),
                "pl_acc": (pseudo == y_t).float().mean()}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, beta={self.beta}, div_weight={self.div_weight}, refresh_every={self.refresh_every}"
