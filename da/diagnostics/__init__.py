"""Negative-transfer diagnostics: measure it after training (NTG), catch it while training (a callback), and
predict it before training (transferability scores). See docs/diagnostics.md.

- :func:`negative_transfer_gap` / :class:`NTGResult` (``ntg.py``): ``err_T(transfer) - err_T(baseline)`` with a
  bootstrap interval over seeds and test samples (Wang et al., CVPR 2019).
- :class:`NegativeTransferMonitor` (``monitor.py``): Lightning callback, per-source gradient alignment, target
  health, proxy A-distance, alarms (``trainer.callbacks: [{class_path: da.diagnostics.NegativeTransferMonitor}]``).
- :func:`logme`, :func:`leep`, :func:`nce`, :func:`h_score`, :func:`kendall_tau`, :func:`rank_sources`
  (``transferability.py``).
- :func:`weight_drift`, :func:`state_dict_of` (``drift.py``): how far fine-tuning moved the weights from ``w0``.
- :func:`plot_ntg`, :func:`plot_monitor` (``plots.py``); ``da detect`` (``detect.py``).

Names are imported on first use, so ``import da.diagnostics`` stays cheap (Lightning and matplotlib load only
when the monitor or the plots are asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "negative_transfer_gap": "ntg", "NTGResult": "ntg", "load_outcome": "ntg",
    "NegativeTransferMonitor": "monitor", "proxy_a_distance": "signals",
    "logme": "transferability", "leep": "transferability", "nce": "transferability",
    "h_score": "transferability", "kendall_tau": "transferability", "rank_sources": "transferability",
    "Ranking": "transferability",
    "weight_drift": "drift", "state_dict_of": "drift", "block_of": "drift",
    "plot_ntg": "plots", "plot_monitor": "plots",
    "detect_negative_transfer": "detect", "run_missing_baselines": "detect", "detect_main": "detect",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'da.diagnostics' has no attribute {name!r}; available: {', '.join(__all__)}")
    value = getattr(importlib.import_module(f"da.diagnostics.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
