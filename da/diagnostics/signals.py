"""The signals the negative-transfer monitor computes on a batch: batch plumbing, gradient dot products, prediction
entropy and the proxy A-distance (Ben-David et al., NeurIPS 2007) of a linear source-vs-target probe."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch


def _cat_inputs(a: Any, b: Any) -> Any:
    """Concatenate two batches of inputs (tensors, or dicts of tensors with the same keys) along dim 0."""
    if isinstance(a, dict):
        if set(a) != set(b):
            raise ValueError(f"source and target inputs have different keys: {sorted(a)} vs {sorted(b)}")
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def _batch_len(x: Any) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(u.float() * v.float()).sum() for u, v in zip(a, b)]).sum()


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def proxy_a_distance(f_s: torch.Tensor, f_t: torch.Tensor, seed: int = 0, ridge: float = 1.0) -> Dict[str, float]:
    """Proxy A-distance ``2 (1 - 2 err)`` of a linear source-vs-target probe, fitted on a random half of a balanced
    sample and scored on the other half (Ben-David et al., NeurIPS 2007; clipped to [0, 2]).

    The probe is a ridge-regression classifier on standardised features (closed form, ``(X^T X + ridge I) w = X^T y``
    with targets +-1, in float64): any linear classifier gives a valid proxy, and this one costs one small solve
    instead of an iterative logistic-regression fit, so the monitor stays cheap on a busy CPU.
    """
    m = min(len(f_s), len(f_t))
    g = torch.Generator().manual_seed(seed)
    xs = f_s.detach().cpu().double()[torch.randperm(len(f_s), generator=g)[:m]]
    xt = f_t.detach().cpu().double()[torch.randperm(len(f_t), generator=g)[:m]]
    x = torch.cat([xs, xt])
    y = torch.cat([-torch.ones(m, dtype=torch.float64), torch.ones(m, dtype=torch.float64)])
    perm = torch.randperm(2 * m, generator=g)
    tr, te = perm[:m], perm[m:]
    mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-8)
    z = (x - mu) / sd
    z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)  # bias column
    a = z[tr].T @ z[tr] + ridge * torch.eye(z.shape[1], dtype=z.dtype)
    w = torch.linalg.solve(a, z[tr].T @ y[tr])
    err = float(((z[te] @ w > 0).double() * 2 - 1 != y[te]).double().mean())
    return {"probe_err": err, "a_distance": float(min(max(2.0 * (1.0 - 2.0 * err), 0.0), 2.0))}
