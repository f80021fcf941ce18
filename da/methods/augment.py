"""Weak and strong augmentations of a *batch* of tensors on its device (FixMatch's pair), per-sample random.

Images ``(n, C, H, W)``, any value range: the ops work in the batch's ``[min, max]`` mapped to ``[0, 1]`` and map back.

* weak: a random translation of up to ``weak_shift`` (12.5 %) of the size in each direction, reflection padding, and
  optionally a horizontal flip (FixMatch's "flip-and-shift"; off by default because flipping changes digits).
* strong: RandAugment (Cubuk et al. 2020) as FixMatch uses it: ``num_ops`` ops per sample, each drawn uniformly from
  identity, autocontrast, brightness, contrast, sharpness, posterize, solarize, rotate, shear x / y, translate x / y,
  with a magnitude drawn uniformly per sample (FixMatch's RA variant), then Cutout of a square of side
  ``U(0, 0.5)`` x size filled with the sample's mean.

Feature vectors ``(n, d)`` have no geometry and no colour, so the only label-preserving perturbations we can assume
are small moves in feature space: weak = ``x + weak_noise * sigma * eps``, strong = ``x + strong_noise * sigma * eps``
then each dimension replaced by the batch mean with probability ``strong_mask`` (``sigma``: the per-dimension std of
the batch, so the noise is relative to each feature's spread, whatever its units; the masking is the feature-space
analogue of Cutout: the prediction must survive losing part of the evidence).
"""

from __future__ import annotations

import math
from typing import Callable, List

import torch
import torch.nn.functional as F


def _affine(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Per-sample affine warp (``theta``: ``(n, 2, 3)`` in normalised coordinates), outside filled with ``fill``."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def _eye(n: int, device, dtype) -> torch.Tensor:
    return torch.eye(2, 3, device=device, dtype=dtype).unsqueeze(0).repeat(n, 1, 1)


def _signed(m: torch.Tensor) -> torch.Tensor:
    return m * torch.where(torch.rand_like(m) < 0.5, -1.0, 1.0)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3), keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``b + factor * (a - b)``, clamped to [0, 1] (PIL's ImageEnhance)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(c, 1, 3, 3), groups=c)


# each op: (x in [0, 1], magnitude m in [0, 1] per sample) -> x
def _identity(x, m):
    return x


def _autocontrast(x, m):
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)


def _brightness(x, m):
    return _blend(x, torch.zeros_like(x), 1 + 0.95 * _signed(m))


def _contrast(x, m):
    return _blend(x, _mean(x).expand_as(x), 1 + 0.95 * _signed(m))


def _sharpness(x, m):
    return _blend(x, _blur(x), 1 + 0.95 * _signed(m))


def _posterize(x, m):
    levels = (2.0 ** (8 - torch.round(4 * m))).view(-1, 1, 1, 1)  # 8 .. 4 bits
    return torch.floor(x * (levels - 1) + 0.5) / (levels - 1)


def _solarize(x, m):
    t = (1 - m).view(-1, 1, 1, 1)  # threshold 1 (nothing) .. 0 (all inverted)
    return torch.where(x >= t, 1 - x, x)


def _rotate(x, m):
    a = _signed(m) * math.radians(30)
    theta = _eye(len(x), x.device, x.dtype)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return _affine(x, theta, _mean(x))


def _shear(axis: int) -> Callable:
    def op(x, m):
        theta = _eye(len(x), x.device, x.dtype)
        theta[:, axis, 1 - axis] = 0.3 * _signed(m)
        return _affine(x, theta, _mean(x))
    return op


def _translate(axis: int, max_fraction: float = 0.3) -> Callable:
    def op(x, m):
        theta = _eye(len(x), x.device, x.dtype)
        theta[:, axis, 2] = 2 * max_fraction * _signed(m)  # normalised coordinates span 2
        return _affine(x, theta, _mean(x))
    return op


STRONG_OPS: List[Callable] = [_identity, _autocontrast, _brightness, _contrast, _sharpness, _posterize, _solarize,
                              _rotate, _shear(0), _shear(1), _translate(0), _translate(1)]


def _cutout(x: torch.Tensor, max_fraction: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    side = (torch.rand(n, device=x.device) * max_fraction * min(h, w)).round().view(-1, 1, 1)
    cy = torch.randint(0, h, (n, 1, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, -1, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, -1)
    box = ((ys - cy).abs() * 2 < side) & ((xs - cx).abs() * 2 < side)
    return torch.where(box.unsqueeze(1), _mean(x).expand_as(x), x)


def _to_unit(x: torch.Tensor):
    lo, hi = x.min().detach(), x.max().detach()
    scale = (hi - lo).clamp_min(1e-6)
    return (x - lo) / scale, lo, scale


def weak_image(x: torch.Tensor, shift: float = 0.125, flip: bool = False) -> torch.Tensor:
    """Random translation by up to ``shift`` of the size (whole pixels, reflection padding), optional h-flip."""
    n, _, h, w = x.shape
    pad_h, pad_w = max(int(round(shift * h)), 0), max(int(round(shift * w)), 0)
    if flip:
        flipped = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)
    if pad_h == 0 and pad_w == 0:
        return x
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    dy = torch.randint(0, 2 * pad_h + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad_w + 1, (n,), device=x.device)
    rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad_w)
    out = padded.gather(2, rows)
    cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def strong_image(x: torch.Tensor, num_ops: int = 2, cutout: float = 0.5) -> torch.Tensor:
    """RandAugment (``num_ops`` random ops, random magnitudes, per sample) then Cutout, in the batch's value range."""
    u, lo, scale = _to_unit(x)
    n = len(u)
    for _ in range(num_ops):
        choice = torch.randint(0, len(STRONG_OPS), (n,), device=x.device)
        mag = torch.rand(n, device=x.device, dtype=x.dtype)
        out = u.clone()
        for k, op in enumerate(STRONG_OPS):
            sel = (choice == k).nonzero().squeeze(1)
            if len(sel):
                out[sel] = op(u[sel], mag[sel])
        u = out.clamp(0, 1)
    if cutout > 0:
        u = _cutout(u, cutout)
    return u * scale + lo


def weak_features(x: torch.Tensor, noise: float = 0.1) -> torch.Tensor:
    """``x + noise * std_batch * eps``: Gaussian noise relative to each feature's spread in the batch."""
    sigma = x.detach().std(dim=0, keepdim=True) if len(x) > 1 else torch.ones_like(x[:1])
    return x + noise * sigma * torch.randn_like(x)


def strong_features(x: torch.Tensor, noise: float = 0.3, mask: float = 0.3) -> torch.Tensor:
    """Larger relative Gaussian noise, then each dimension replaced by the batch mean with probability ``mask``."""
    y = weak_features(x, noise)
    if mask > 0:
        drop = torch.rand_like(y) < mask
        y = torch.where(drop, x.detach().mean(dim=0, keepdim=True).expand_as(y), y)
    return y
