"""Transferability scores: rank source models / pretrained checkpoints on a target *before* training.

All scores take what a source model produces on the labelled target training set and return a number where
higher means "expected to transfer better":

- LogME (You, Liu, Wang, Long, ICML 2021): log marginal evidence of Bayesian linear regression from features
  to each one-hot label column, maximised over the prior precision ``alpha`` and noise precision ``beta``,
  averaged over classes and divided by ``n``.
- LEEP (Nguyen, Hassner, Seeger, Archambeau, ICML 2020): ``(1/n) sum_i log sum_z P(y_i | z) theta(x_i)_z``
  with ``theta`` the source model's softmax and ``P(y | z)`` from the empirical joint
  ``P(y, z) = (1/n) sum_{i: y_i = y} theta(x_i)_z``.
- NCE (Tran, Nguyen, Hassner, ICCV 2019): ``-H(Y | Z)`` with ``Z`` the source model's hard predictions.
- H-score (Bao, Li, Huang, Wang, Zhang, Huang, ICIP 2019): ``tr(cov(f)^-1 cov(E[f | y]))``; with shrinkage of
  ``cov(f)`` (Ibrahim, Ponomareva, Mazumder, ICLR 2023) for high-dimensional features.

They are evaluated, as in those papers, by the (weighted) Kendall tau between a score and the accuracy each
source reaches after fine-tuning (:func:`kendall_tau`). :func:`rank_sources` ranks named candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from da.errors import unknown_name

ArrayLike = Any


def _np(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _labels(labels: ArrayLike, n: int, what: str) -> np.ndarray:
    y = _np(labels, np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{what} has {n} rows but labels has {y.shape[0]} entries; pass one label per sample")
    if y.min() < 0:
        raise ValueError(f"labels must be class indices >= 0, got {y.min()}")
    return y


def logme_evidence(features: ArrayLike, target: ArrayLike, alpha: float, beta: float) -> float:
    """Log evidence ``log p(y | F, alpha, beta)`` of Bayesian linear regression ``y = F w + eps``,
    ``w ~ N(0, alpha^-1 I)``, ``eps ~ N(0, beta^-1 I)``, for one real target column, computed in closed form:

        n/2 log beta + d/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log |A|,
        A = alpha I + beta F^T F,  m = beta A^-1 F^T y.
    """
    f = _np(features)
    y = _np(target).reshape(-1)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    return float(n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                 - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)


def logme(features: ArrayLike, labels: ArrayLike, max_iter: int = 100, tol: float = 1e-5,
          return_per_class: bool = False) -> Union[float, Tuple[float, np.ndarray]]:
    """LogME (You et al., ICML 2021): mean over classes ``k`` of ``max_{alpha, beta} log p(y_k | F, alpha, beta) / n``
    with ``y_k`` the one-hot column of class ``k``.

    The maximisation uses MacKay's fixed-point updates in the SVD basis of ``F = U S V^T`` (``sigma = s^2``,
    ``x = U^T y``, ``t = alpha / beta``): ``gamma = sum sigma / (sigma + t)``,
    ``alpha = gamma / ||m||^2``, ``beta = (n - gamma) / ||F m - y||^2``, until ``t`` changes by < ``tol``
    (relative). One SVD serves all classes, so the cost is ``O(n d min(n, d))``.
    """
    f = _np(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {f.shape}")
    n, d = f.shape
    y = _labels(labels, n, "features")
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    r = sigma.shape[0]
    per_class = []
    for k in np.unique(y):
        yk = (y == k).astype(np.float64)
        x2 = (u.T @ yk) ** 2
        res_out = max(float(yk @ yk - x2.sum()), 0.0)  # part of y outside the column space of F
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = float(np.sum(sigma / (sigma + t)))
            m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
            res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + res_out
            alpha = gamma / max(m2, 1e-12)
            beta = (n - gamma) / max(res2, 1e-12)
            if abs(alpha / beta - t) / t < tol:
                break
        t = alpha / beta
        m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
        res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + res_out
        logdet = float(np.sum(np.log(alpha + beta * sigma))) + (d - r) * math.log(alpha)
        ev = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
              - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
        per_class.append(ev / n)
    per_class = np.asarray(per_class)
    score = float(per_class.mean())
    return (score, per_class) if return_per_class else score


def leep(source_probs: ArrayLike, labels: ArrayLike) -> float:
    """LEEP (Nguyen et al., ICML 2020): ``(1/n) sum_i log sum_z P(y_i | z) theta_iz`` (<= 0; 0 is best).

    ``source_probs``: ``(n, Z)`` softmax outputs of the source model over its own ``Z`` classes.
    """
    theta = _np(source_probs)
    if theta.ndim != 2 or (theta < -1e-9).any() or not np.allclose(theta.sum(1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be (n, Z) probabilities with rows summing to 1; apply softmax "
                         "to the source model's logits first")
    n = theta.shape[0]
    y = _labels(labels, n, "source_probs")
    onehot = np.eye(int(y.max()) + 1)[y]
    joint = onehot.T @ theta / n  # (C, Z)
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
    eep = np.sum(cond[y] * theta, axis=1)
    return float(np.mean(np.log(np.clip(eep, 1e-300, None))))


def nce(source_hard_preds: ArrayLike, labels: ArrayLike) -> float:
    """NCE (Tran et al., ICCV 2019): ``-H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)`` (<= 0; 0 when Z determines Y)."""
    z = _np(source_hard_preds, np.int64).reshape(-1)
    y = _labels(labels, z.shape[0], "source_hard_preds")
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((yi.max() + 1, zi.max() + 1))
    np.add.at(joint, (yi, zi), 1.0)
    joint /= z.shape[0]
    pz = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / pz)[nz])))


def h_score(features: ArrayLike, labels: ArrayLike, shrinkage: Union[None, float, str] = None) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(cov(f)^+ cov(g))``, ``g(x) = E[f | y(x)]`` (population covariances).

    Args:
        shrinkage: ``None``: pseudo-inverse of ``cov(f)``; a float ``a`` in [0, 1]:
            ``(1 - a) cov(f) + a (tr cov(f) / d) I``; ``"auto"``: ``a`` from the Ledoit-Wolf estimate
            (the regularised H-score of Ibrahim et al., ICLR 2023, stable when ``d`` is close to ``n``).
    """
    f = _np(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {f.shape}")
    n, d = f.shape
    y = _labels(labels, n, "features")
    fc = f - f.mean(0)
    cov_f = fc.T @ fc / n
    _, yi = np.unique(y, return_inverse=True)
    means = np.zeros((yi.max() + 1, d))
    np.add.at(means, yi, fc)
    means /= np.bincount(yi)[:, None]
    g = means[yi]
    cov_g = g.T @ g / n
    if shrinkage is None:
        inv = np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True)
    else:
        if shrinkage == "auto":
            from sklearn.covariance import ledoit_wolf_shrinkage

            a = float(ledoit_wolf_shrinkage(f))
        elif isinstance(shrinkage, (int, float)) and 0.0 <= shrinkage <= 1.0:
            a = float(shrinkage)
        else:
            raise ValueError(f"shrinkage must be None, 'auto' or a float in [0, 1], got {shrinkage!r}")
        target = np.trace(cov_f) / d * np.eye(d)
        inv = np.linalg.pinv((1 - a) * cov_f + a * target, hermitian=True)
    return float(np.sum(inv * cov_g))  # tr(inv @ cov_g), both symmetric


def kendall_tau(scores: Sequence[float], accs: Sequence[float], weighted: bool = False) -> float:
    """Kendall's tau-b between scores and measured accuracies; ``weighted=True`` gives the hyperbolically
    weighted tau (Vigna, WWW 2015) used by the LogME paper, where swaps among the top candidates cost more."""
    from scipy import stats

    s, a = _np(scores).reshape(-1), _np(accs).reshape(-1)
    if s.shape != a.shape or s.shape[0] < 2:
        raise ValueError(f"need two equal-length sequences of >= 2 values, got {s.shape} and {a.shape}")
    if weighted:
        return float(stats.weightedtau(s, a).statistic)
    return float(stats.kendalltau(s, a).statistic)


SCORES = ("logme", "hscore", "leep", "nce")
_FEATURE_SCORES = ("logme", "hscore")
_PROB_SCORES = ("leep", "nce")


@dataclass
class Ranking:
    """Candidates ranked by transferability scores (higher is better); ``rows`` are sorted by ``primary``."""

    rows: List[Dict[str, Any]]
    scores: List[str]
    primary: str
    taus: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"primary": self.primary, "scores": self.scores, "rows": self.rows, "kendall_tau": self.taus}

    def to_markdown(self) -> str:
        cols = ["rank", "name"] + self.scores + (["accuracy"] if any("accuracy" in r for r in self.rows) else [])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for i, r in enumerate(self.rows, 1):
            cells = [str(i), r["name"]] + [
                "" if r.get(c) is None else f"{r[c]:.4f}" for c in cols[2:]]
            lines.append("| " + " | ".join(cells) + " |")
        if self.taus:
            lines.append("")
            for s, t in self.taus.items():
                lines.append(f"Kendall tau ({s} vs accuracy): {t['tau']:+.3f}, weighted {t['weighted_tau']:+.3f}")
        return "\n".join(lines)


def _is_probs(x: np.ndarray) -> bool:
    return x.ndim == 2 and (x >= 0).all() and np.allclose(x.sum(1), 1.0, atol=1e-4)


def rank_sources(feature_sets: Mapping[str, Any], scores: Optional[Sequence[str]] = None,
                 accuracies: Optional[Mapping[str, float]] = None,
                 hscore_shrinkage: Union[None, float, str] = "auto") -> Ranking:
    """Score and rank candidate sources / checkpoints on one target.

    Args:
        feature_sets: ``name -> (array, labels)`` where the array is ``(n, d)`` features (scored by LogME and
            H-score) or ``(n, Z)`` source-model probabilities, rows summing to 1 (scored by LEEP and NCE on their
            argmax); or ``name -> {"features": ..., "probs": ..., "labels": ...}`` to give both.
        scores: which scores to compute (default: all that the inputs allow), from ``logme, hscore, leep, nce``.
        accuracies: optional ``name -> measured target accuracy after transfer``; adds Kendall tau per score.
        hscore_shrinkage: passed to :func:`h_score`.
    """
    if not feature_sets:
        raise ValueError("rank_sources needs at least one candidate in feature_sets")
    wanted = list(scores) if scores is not None else list(SCORES)
    for s in wanted:
        if s not in SCORES:
            raise unknown_name("transferability score", s, SCORES)
    rows = []
    for name, entry in feature_sets.items():
        if isinstance(entry, Mapping):
            feats, probs, y = entry.get("features"), entry.get("probs"), entry["labels"]
        else:
            arr, y = entry
            arr = _np(arr)
            feats, probs = (None, arr) if _is_probs(arr) else (arr, None)
        row: Dict[str, Any] = {"name": str(name)}
        for s in wanted:
            if s in _FEATURE_SCORES and feats is not None:
                row[s] = logme(feats, y) if s == "logme" else h_score(feats, y, shrinkage=hscore_shrinkage)
            elif s in _PROB_SCORES and probs is not None:
                row[s] = leep(probs, y) if s == "leep" else nce(_np(probs).argmax(1), y)
        if accuracies is not None and name in accuracies:
            row["accuracy"] = float(accuracies[name])
        rows.append(row)
    present = [s for s in wanted if any(s in r for r in rows)]
    if not present:
        raise ValueError(f"none of the scores {wanted} applies to the inputs: give features for logme/hscore "
                         f"or probabilities (rows summing to 1) for leep/nce")
    primary = present[0]
    rows.sort(key=lambda r: -r.get(primary, -np.inf))
    taus: Dict[str, Dict[str, float]] = {}
    if accuracies is not None:
        for s in present:
            pairs = [(r[s], r["accuracy"]) for r in rows if s in r and "accuracy" in r]
            if len(pairs) >= 2:
                sc, ac = zip(*pairs)
                taus[s] = {"tau": kendall_tau(sc, ac), "weighted_tau": kendall_tau(sc, ac, weighted=True),
                           "n": len(pairs)}
    return Ranking(rows=rows, scores=present, primary=primary, taus=taus)
