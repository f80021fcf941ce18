"""Sweeps, run records, model selection, paper tables and plots.

- :mod:`da.experiments.sweep`: sweep files -> runs named by their config hash; skip / resume / retry.
- :mod:`da.experiments.launchers`: local, local multi-GPU, SLURM (submitit) and Lightning-DDP launchers.
- :mod:`da.experiments.records`: ``result.json`` (schema 1) loading and validation.
- :mod:`da.experiments.selection`: model selection per seed (source-val, target-oracle, entropy, SND, BNM).
- :mod:`da.experiments.tables`: mean ± std tables in markdown, LaTeX (booktabs) and CSV.
- :mod:`da.experiments.plots`: learning curves and t-SNE of source/target features.
- :mod:`da.experiments.commands`: ``da sweep``, ``da table`` and ``da plot``.

Nothing here imports torch, matplotlib or wandb at import time.
"""

from da.experiments.records import RecordError, load_records, validate_record
from da.experiments.selection import VALIDATORS, select_runs
from da.experiments.sweep import config_hash, expand, load_sweep, run_sweep
from da.experiments.tables import make_table

__all__ = [
    "RecordError", "load_records", "validate_record", "VALIDATORS", "select_runs",
    "config_hash", "expand", "load_sweep", "run_sweep", "make_table",
]
