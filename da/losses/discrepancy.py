"""Distribution discrepancies between source and target features: MK-MMD (DAN), JMMD (JAN), CORAL.

MMD (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012), ``MMD^2 = ||E_P phi(s) - E_Q phi(t)||^2``:

* unbiased quadratic estimator (their Eq. 3), for any batch sizes ``n, m >= 2``::

      MMD_u^2 = 1/(n(n-1)) sum_{i != j} k(s_i, s_j) + 1/(m(m-1)) sum_{i != j} k(t_i, t_j)
                - 2/(n m) sum_{i, j} k(s_i, t_j)

  Its expectation is exactly ``MMD^2``: 0 when both batches come from the same distribution (it can be
  negative on a given draw; it is not biased negative). TLlib adds ``2/(n-1)`` to a biased variant, so
  identical batches give a negative value (its issues #158, #277); there is no such constant here.
* linear-time estimator (their Lemma 14), over ``k = floor(min(n, m)/2)`` disjoint pairs::

      MMD_l^2 = 1/k sum_i [k(s_{2i}, s_{2i+1}) + k(t_{2i}, t_{2i+1}) - k(s_{2i}, t_{2i+1}) - k(s_{2i+1}, t_{2i})]

Kernels: Gaussians ``k_u(x, y) = exp(-||x - y||^2 / (2 sigma_u^2))`` with ``sigma_u^2 = 2^u * base``, ``base``
the mean (or median) squared distance between distinct points of the pooled batch (quadratic) or of the pairs
used (linear), detached; or a fixed number. Multi-kernel (DAN, Long et al. ICML 2015): ``k = sum_u beta_u k_u``
with ``beta_u = 1/U`` (``kernel_combination="mean"``, the paper's convex combination) or ``beta_u = 1``
(``"sum"``, TLlib's choice: U times larger).

Everything is a few matrix ops on the ``(n+m, n+m)`` Gram matrix: no loop over samples, no index matrix.
Distances are computed in float32 (float64 inputs stay float64) with autocast disabled.

DDP: by default each rank estimates the discrepancy of its own per-rank batch, DDP averages the gradients,
so the optimised objective is the mean over ranks of per-rank estimates (still unbiased, higher variance,
bandwidth per rank). With ``gather=True`` the features are all-gathered *with gradient*
(``torch.distributed.nn.functional.all_gather``) and every rank computes the same estimate on the global
batch; the gather's backward sums the gradient contributions from all ranks and DDP's average then yields
exactly the gradient of the global-batch estimate. Needs equal per-rank batch sizes (``drop_last=True``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from da.losses.base import AdaptationLoss, StepContext

Bandwidth = Union[str, float]


# --- helpers -------------------------------------------------------------------------------------------
def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def pairwise_sq_dists(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``D[i, j] = ||x_i - y_j||^2`` (``y = x`` when omitted), clamped at 0, in float32/float64, autocast off."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(_acc_dtype(x))
        y = x if y is None else y.to(x.dtype)
        xx = (x * x).sum(-1)
        yy = xx if y is x else (y * y).sum(-1)
        return (xx[:, None] + yy[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)


def _offdiag(d2: torch.Tensor) -> torch.Tensor:
    """Entries of a square matrix off its diagonal, as a flat vector (a boolean mask, no index matrix)."""
    n = d2.shape[0]
    return d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]


def base_bandwidth(d2: torch.Tensor, bandwidth: Bandwidth, square: bool = True) -> torch.Tensor:
    """``base`` for ``sigma_u^2 = 2^u base``: mean / median squared distance (distinct points), detached, or fixed.

    ``d2`` is a square pooled distance matrix (``square=True``) or a flat vector of pair distances.
    """
    if not isinstance(bandwidth, str):
        if bandwidth <= 0:
            raise ValueError(f"a fixed bandwidth must be > 0, got {bandwidth}")
        return torch.tensor(float(bandwidth), dtype=d2.dtype, device=d2.device)
    vals = _offdiag(d2) if square else d2.reshape(-1)
    vals = vals.detach()
    if bandwidth == "mean":
        base = vals.mean()
    elif bandwidth == "median":
        base = vals.median()
    else:
        from da.errors import unknown_name
        raise unknown_name("bandwidth", bandwidth, ["mean", "median"])
    return base.clamp_min(torch.finfo(d2.dtype).tiny)


def gaussian_kernel_matrix(d2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``exp(-d2 / (2 sigma^2))`` for each ``sigma^2`` in ``sigma2`` (shape ``(U,)``): returns ``(U, *d2.shape)``."""
    sigma2 = sigma2.reshape((-1,) + (1,) * d2.dim())
    return torch.exp(-d2.unsqueeze(0) / (2.0 * sigma2))


def multi_kernel(d2: torch.Tensor, base: torch.Tensor, kernel_mults: Sequence[float],
                 combination: str = "mean") -> torch.Tensor:
    """``sum_u beta_u exp(-d2 / (2 mult_u base))`` with ``beta_u = 1/U`` (``"mean"``) or 1 (``"sum"``)."""
    mults = torch.tensor([float(m) for m in kernel_mults], dtype=d2.dtype, device=d2.device)
    k = gaussian_kernel_matrix(d2, mults * base)
    if combination == "mean":
        return k.mean(0)
    if combination == "sum":
        return k.sum(0)
    from da.errors import unknown_name
    raise unknown_name("kernel_combination", combination, ["mean", "sum"])


def mmd_unbiased_from_kernel(k: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased ``MMD_u^2`` from the pooled ``(n+m, n+m)`` kernel matrix whose first ``n`` rows are the source."""
    m = k.shape[0] - n
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 source and 2 target samples, got {n} and {m}")
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    ss = (kss.sum() - kss.diagonal().sum()) / (n * (n - 1))
    tt = (ktt.sum() - ktt.diagonal().sum()) / (m * (m - 1))
    return ss + tt - 2.0 * kst.mean()


def _linear_pairs(s: torch.Tensor, t: torch.Tensor):
    """``(s1, s2, t1, t2)``: even/odd rows of the first ``2 floor(min(n, m)/2)`` samples (slices, no copy)."""
    k = min(s.shape[0], t.shape[0]) // 2
    if k < 1:
        raise ValueError(f"the linear-time MMD needs at least 2 source and 2 target samples, "
                         f"got {s.shape[0]} and {t.shape[0]}")
    return s[0:2 * k:2], s[1:2 * k:2], t[0:2 * k:2], t[1:2 * k:2]


def _rowwise_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=a.device.type, enabled=False):
        a = a.to(_acc_dtype(a))
        return (a - b.to(a.dtype)).pow(2).sum(-1)


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` over the default process group, with gradient; ``x`` itself when not distributed."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x.contiguous()), dim=0)


def _check_estimator(estimator: str) -> str:
    if estimator not in ("unbiased", "linear"):
        from da.errors import unknown_name
        raise unknown_name("estimator", estimator, ["unbiased", "linear"])
    return estimator


def _check_bandwidth(bandwidth: Bandwidth) -> Bandwidth:
    if isinstance(bandwidth, str) and bandwidth not in ("mean", "median"):
        from da.errors import unknown_name
        raise unknown_name("bandwidth", bandwidth, ["mean", "median"])
    if not isinstance(bandwidth, str) and float(bandwidth) <= 0:
        raise ValueError(f"a fixed bandwidth must be > 0, got {bandwidth}")
    return bandwidth


# --- losses --------------------------------------------------------------------------------------------
class MKMMD(AdaptationLoss):
    """Multi-kernel MMD^2 between source and target features (DAN, Long et al. ICML 2015).

    Args:
        kernel_mults: ``sigma_u^2 = mult_u * base``; default ``2^-3 .. 2^1`` (5 Gaussians, as TLlib).
        bandwidth: ``"mean"`` / ``"median"`` squared distance of the batch (detached), or a fixed ``base``.
        estimator: ``"unbiased"`` (quadratic, Gretton et al. 2012) or ``"linear"`` (linear time).
        kernel_combination: ``"mean"`` (convex combination, the paper) or ``"sum"`` (TLlib).
        gather: all-gather features across DDP ranks (see the module docstring).
        weight, schedule, name: see :class:`~da.losses.base.AdaptationLoss`.
    """

    name = "mmd"

    def __init__(self, kernel_mults: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0), bandwidth: Bandwidth = "mean",
                 estimator: str = "unbiased", kernel_combination: str = "mean", gather: bool = False,
                 weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        if not len(kernel_mults) or any(float(m) <= 0 for m in kernel_mults):
            raise ValueError(f"kernel_mults must be positive numbers, got {list(kernel_mults)}")
        if kernel_combination not in ("mean", "sum"):
            from da.errors import unknown_name
            raise unknown_name("kernel_combination", kernel_combination, ["mean", "sum"])
        self.kernel_mults = tuple(float(m) for m in kernel_mults)
        self.bandwidth = _check_bandwidth(bandwidth)
        self.estimator = _check_estimator(estimator)
        self.kernel_combination = kernel_combination
        self.gather = bool(gather)
        self.gathers_across_ranks = self.gather

    def _kernel(self, d2: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return multi_kernel(d2, base, self.kernel_mults, self.kernel_combination)

    def discrepancy(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """``MMD^2`` estimate between ``f_s (n, d)`` and ``f_t (m, d)`` (no gathering)."""
        if self.estimator == "unbiased":
            d2 = pairwise_sq_dists(torch.cat([f_s, f_t], dim=0))
            return mmd_unbiased_from_kernel(self._kernel(d2, base_bandwidth(d2, self.bandwidth)), f_s.shape[0])
        s1, s2, t1, t2 = _linear_pairs(f_s, f_t)
        d = torch.stack([_rowwise_sq(s1, s2), _rowwise_sq(t1, t2), _rowwise_sq(s1, t2), _rowwise_sq(s2, t1)])
        k = self._kernel(d, base_bandwidth(d, self.bandwidth, square=False))
        return (k[0] + k[1] - k[2] - k[3]).mean()

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if not ctx.has_target:
            raise ValueError(f"{type(self).__name__} needs a target batch (ctx.f_t), got none")
        f_s, f_t = ctx.f_s, ctx.f_t
        if self.gather:
            f_s, f_t = gather_features(f_s), gather_features(f_t)
        return self.discrepancy(f_s, f_t)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel_mults={self.kernel_mults}, bandwidth={self.bandwidth!r}, "
                f"estimator={self.estimator!r}, combination={self.kernel_combination!r}, gather={self.gather}")


class MMD(MKMMD):
    """Single-Gaussian MMD^2: :class:`MKMMD` with ``kernel_mults=(1.0,)`` (``sigma^2`` = the batch's mean
    squared distance by default)."""

    def __init__(self, kernel_mults: Sequence[float] = (1.0,), bandwidth: Bandwidth = "mean",
                 estimator: str = "unbiased", gather: bool = False, weight: float = 1.0, schedule="constant",
                 name: Optional[str] = None):
        super().__init__(kernel_mults=kernel_mults, bandwidth=bandwidth, estimator=estimator, gather=gather,
                         weight=weight, schedule=schedule, name=name)


class JMMD(MKMMD):
    """Joint MMD^2 over (features, softmax(logits)) (JAN, Long et al. ICML 2017).

    The joint kernel is the product of the layers' kernels, ``k((f, g), (f', g')) = k_f(f, f') k_g(g, g')``,
    plugged into the same estimator as :class:`MKMMD`. Defaults follow TLlib's JAN: the feature kernel is the
    multi-kernel of :class:`MKMMD`; the softmax kernel is one Gaussian with fixed ``sigma = 0.92``
    (``sigma^2 = 0.8464``). ``softmax_sigma=None`` makes the softmax kernel use the same adaptive
    multi-kernel as the features. Gradients flow into both the features and the logits.
    """

    name = "jmmd"

    def __init__(self, kernel_mults: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0), bandwidth: Bandwidth = "mean",
                 softmax_sigma: Optional[float] = 0.92, estimator: str = "unbiased",
                 kernel_combination: str = "mean", gather: bool = False, weight: float = 1.0, schedule="constant",
                 name: Optional[str] = None):
        super().__init__(kernel_mults=kernel_mults, bandwidth=bandwidth, estimator=estimator,
                         kernel_combination=kernel_combination, gather=gather, weight=weight, schedule=schedule,
                         name=name)
        if softmax_sigma is not None and softmax_sigma <= 0:
            raise ValueError(f"softmax_sigma must be > 0 or None, got {softmax_sigma}")
        self.softmax_sigma = softmax_sigma

    def _softmax_kernel(self, d2: torch.Tensor, square: bool) -> torch.Tensor:
        if self.softmax_sigma is None:
            return self._kernel(d2, base_bandwidth(d2, self.bandwidth, square=square))
        sigma2 = torch.tensor(float(self.softmax_sigma) ** 2, dtype=d2.dtype, device=d2.device)
        return gaussian_kernel_matrix(d2, sigma2)[0]

    def joint_discrepancy(self, layers_s: Tuple[torch.Tensor, torch.Tensor],
                          layers_t: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """JMMD^2 of ``(features, probabilities)`` pairs of the source and target batches."""
        (f_s, g_s), (f_t, g_t) = layers_s, layers_t
        if self.estimator == "unbiased":
            d2_f = pairwise_sq_dists(torch.cat([f_s, f_t], dim=0))
            d2_g = pairwise_sq_dists(torch.cat([g_s, g_t], dim=0))
            k = self._kernel(d2_f, base_bandwidth(d2_f, self.bandwidth)) * self._softmax_kernel(d2_g, True)
            return mmd_unbiased_from_kernel(k, f_s.shape[0])
        s1, s2, t1, t2 = _linear_pairs(f_s, f_t)
        p1, p2, q1, q2 = _linear_pairs(g_s, g_t)
        d_f = torch.stack([_rowwise_sq(s1, s2), _rowwise_sq(t1, t2), _rowwise_sq(s1, t2), _rowwise_sq(s2, t1)])
        d_g = torch.stack([_rowwise_sq(p1, p2), _rowwise_sq(q1, q2), _rowwise_sq(p1, q2), _rowwise_sq(p2, q1)])
        k = self._kernel(d_f, base_bandwidth(d_f, self.bandwidth, square=False)) * self._softmax_kernel(d_g, False)
        return (k[0] + k[1] - k[2] - k[3]).mean()

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if not ctx.has_target:
            raise ValueError("JMMD needs a target batch (ctx.f_t, ctx.logits_t), got none")
        f_s, f_t = ctx.f_s, ctx.f_t
        g_s, g_t = (F.softmax(x.to(_acc_dtype(x)), dim=1) for x in (ctx.logits_s, ctx.logits_t))
        if self.gather:
            f_s, f_t, g_s, g_t = (gather_features(x) for x in (f_s, f_t, g_s, g_t))
        return self.joint_discrepancy((f_s, g_s), (f_t, g_t))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, softmax_sigma={self.softmax_sigma}"


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased feature covariance ``(x - mean)^T (x - mean) / (n - 1)``, float32/float64, autocast off."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(_acc_dtype(x))
        xc = x - x.mean(0, keepdim=True)
        return xc.T @ xc / (n - 1)


class CORAL(AdaptationLoss):
    """Deep CORAL (Sun & Saenko, ECCV-W 2016): ``||C_s - C_t||_F^2 / (4 d^2)``, unbiased covariances.

    Unlike TLlib's ``CorrelationAlignmentLoss`` (mean difference + covariance difference, each a mean over
    entries) this is the paper's formula. With ``gather=True`` the covariances are of the global batch.
    """

    name = "coral"

    def __init__(self, gather: bool = False, weight: float = 1.0, schedule="constant", name: Optional[str] = None):
        super().__init__(weight=weight, schedule=schedule, name=name)
        self.gather = bool(gather)
        self.gathers_across_ranks = self.gather

    @staticmethod
    def discrepancy(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        d = f_s.shape[1]
        return (covariance(f_s) - covariance(f_t)).pow(2).sum() / (4.0 * d * d)

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if not ctx.has_target:
            raise ValueError("CORAL needs a target batch (ctx.f_t), got none")
        f_s, f_t = ctx.f_s, ctx.f_t
        if self.gather:
            f_s, f_t = gather_features(f_s), gather_features(f_t)
        return self.discrepancy(f_s, f_t)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gather={self.gather}"
