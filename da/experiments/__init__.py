"""Results: model selection, paper tables and plots, all pure functions of run records.

- :mod:`da.experiments.selection`: model selection per seed (source-val, target-oracle, entropy, SND, BNM).
- :mod:`da.experiments.tables`: mean ± std tables in markdown, LaTeX (booktabs) and CSV.
- :mod:`da.experiments.plots`: learning curves and t-SNE of source/target features.
- :mod:`da.experiments.commands`: ``da table`` and ``da plot``.

Records are read through :mod:`da.runs.record` (the one reader); sweeps live in :mod:`da.runs.sweep`.
Nothing here imports torch, matplotlib or wandb at import time.
"""

from da.experiments.selection import VALIDATORS, select_runs
from da.experiments.tables import make_table
from da.runs.record import RecordError, load_records, validate_record

__all__ = ["RecordError", "load_records", "validate_record", "VALIDATORS", "select_runs", "make_table"]
