"""Digit images held as tensors: helpers shared by the digit readers (``builtin``, ``digits``, ``jda``).

Every digit image is first brought to ``[0, 1]`` (ink = 1, background = 0), resized to ``image_size`` and
converted to ``channels``, then normalised with ``DIGIT_MEAN = 0.5`` and ``DIGIT_STD = 0.5`` per channel::

    x = (p - 0.5) / 0.5          # p in [0, 1]  ->  x in [-1, 1]

(one fixed pair for every digit dataset, so that a source and a target that share a size also share the
input scale; the per-dataset MNIST constants 0.1307 / 0.3081 would make MNIST and USPS differ in scale).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

DIGIT_MEAN = 0.5
DIGIT_STD = 0.5


def format_images(p: torch.Tensor, image_size: Optional[int] = None, channels: Optional[int] = None) -> torch.Tensor:
    """``(n, C, H, W)`` pixels in ``[0, 1]`` -> resized, channel-converted, normalised float32.

    Args:
        p: pixels in ``[0, 1]`` (any float or uint8 dtype; uint8 is divided by 255).
        image_size: square output size (bilinear, ``antialias=True`` when shrinking); ``None`` keeps the size.
        channels: 1 (RGB -> luma ``0.299 R + 0.587 G + 0.114 B``) or 3 (grey repeated); ``None`` keeps it.
    """
    if p.dtype == torch.uint8:
        p = p.float() / 255.0
    p = p.float()
    if p.dim() != 4:
        raise ValueError(f"expected images of shape (n, C, H, W), got {tuple(p.shape)}")
    if image_size is not None:
        image_size = int(image_size)
        if image_size < 1:
            raise ValueError(f"image_size={image_size} must be a positive int (e.g. 16 or 28) or None")
        if tuple(p.shape[-2:]) != (image_size, image_size):
            shrink = image_size < max(p.shape[-2:])
            p = F.interpolate(p, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=shrink).clamp_(0.0, 1.0)
    if channels is not None:
        channels = int(channels)
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 (greyscale), 3 (RGB) or None (keep)")
        c = p.shape[1]
        if c != channels:
            if c == 1:
                p = p.repeat(1, 3, 1, 1)
            elif c == 3:
                w = torch.tensor([0.299, 0.587, 0.114], dtype=p.dtype).view(1, 3, 1, 1)
                p = (p * w).sum(1, keepdim=True)
            else:
                raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return ((p - DIGIT_MEAN) / DIGIT_STD).contiguous()


DIGIT_CLASSES = [str(i) for i in range(10)]
