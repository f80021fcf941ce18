"""How far fine-tuning moved the weights from their starting point.

``weight_drift(weights, reference)`` compares two state dicts parameter by parameter (the keys both hold with the same
shape) and returns ``||w - w0|| / ||w0||`` overall and per group (by default the transformer / ResNet block a
parameter belongs to). It is what explains an L2-SP result: the penalty's gradient ``alpha (w - w0)`` only matters
when the weights move far enough for it to compete with the task gradient.

``state_dict_of(path)`` reads a Lightning checkpoint (its ``state_dict``), a plain ``torch.save`` state dict or a
Hugging Face model folder (``model.safetensors`` / ``pytorch_model.bin``), so a run's ``last.ckpt`` can be compared
with the pretrained encoder it started from::

    drift = weight_drift(state_dict_of("runs/x/checkpoints/last.ckpt"),
                         state_dict_of("../shared/models/all-MiniLM-L6-v2"), prefix="backbone.model.")
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

from da.checkpoints import read_state_dict

_BLOCK = re.compile(r"(?:^|\.)(layer|layers|blocks|h)\.(\d+)\.")


def block_of(name: str) -> str:
    """The group a parameter name belongs to: ``layer.3`` for ``encoder.layer.3.attention...``, else its first part."""
    m = _BLOCK.search(name)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    return name.split(".", 1)[0]


def state_dict_of(path: str | Path) -> Dict[str, torch.Tensor]:
    """The tensors saved at ``path``: a Lightning checkpoint, a ``torch.save``-d state dict or a Hugging Face folder."""
    path = Path(path)
    if path.is_dir():
        st = path / "model.safetensors"
        if st.exists():
            from safetensors.torch import load_file
            return load_file(str(st))
        pt = path / "pytorch_model.bin"
        if pt.exists():
            return read_state_dict(pt)
        raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")
    return read_state_dict(path)


def weight_drift(weights: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], prefix: str = "",
                 group: Optional[Callable[[str], str]] = block_of) -> Dict[str, object]:
    """``||w - w0|| / ||w0||`` over the parameters ``weights`` and ``reference`` share.

    Args:
        weights: the trained state dict (keys ``prefix + name``).
        reference: the starting point (keys ``name``; e.g. the pretrained model's own state dict).
        prefix: what ``weights``' keys carry in front of the reference's names (``backbone.model.`` for a
            ``TransferModule`` with an ``hf`` backbone).
        group: maps a reference name to a group name for the per-group figures (None: no groups).

    Returns ``{"relative", "distance", "reference_norm", "max_abs", "n_tensors", "n_params", "groups"}`` where
    ``groups`` maps each group to its own ``relative`` drift. Floating-point tensors only; sums in float64.
    """
    sq, ref_sq, max_abs, n_t, n_p = 0.0, 0.0, 0.0, 0, 0
    per: Dict[str, list] = {}
    for name, w0 in reference.items():
        w = weights.get(prefix + name)
        if w is None or not torch.is_tensor(w0) or not w0.is_floating_point() or w.shape != w0.shape:
            continue
        w0 = w0.detach().to("cpu", torch.float64)
        diff = w.detach().to("cpu", torch.float64) - w0
        d2, r2 = float(diff.pow(2).sum()), float(w0.pow(2).sum())
        sq, ref_sq, n_t, n_p = sq + d2, ref_sq + r2, n_t + 1, n_p + w0.numel()
        max_abs = max(max_abs, float(diff.abs().max())) if diff.numel() else max_abs
        if group is not None:
            acc = per.setdefault(group(name), [0.0, 0.0])
            acc[0] += d2
            acc[1] += r2
    if n_t == 0:
        raise ValueError(f"no parameter of the reference found in the weights under prefix {prefix!r} "
                         f"(reference keys look like {next(iter(reference), None)!r}, "
                         f"weights keys like {next(iter(weights), None)!r})")
    rel = lambda d2, r2: math.sqrt(d2) / math.sqrt(r2) if r2 > 0 else float("inf") if d2 > 0 else 0.0
    return {"relative": rel(sq, ref_sq), "distance": math.sqrt(sq), "reference_norm": math.sqrt(ref_sq),
            "max_abs": max_abs, "n_tensors": n_t, "n_params": n_p,
            "groups": {g: rel(d2, r2) for g, (d2, r2) in per.items()}}
