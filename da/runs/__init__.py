"""A run's life, in one package.

- :mod:`da.runs.config`: YAML config files composed in order, dotted overrides, and the one :func:`config_hash`.
- :mod:`da.runs.record`: ``result.json`` (schema 1): the one writer, the one reader, validation, loading.
- :mod:`da.runs.io`: atomic, fsynced file writes (unique temporary names).
- :mod:`da.runs.locks`: one live process per run directory (``fcntl.flock`` on ``<run_dir>/.lock``).
- :mod:`da.runs.lifecycle`: "fit unless finished, else resume" (:func:`decide`, :func:`ensure_fitted`), shared by
  sweeps, ``da detect`` and ``da multisource``.
- :mod:`da.runs.metrics_csv`: ``metrics.csv`` rows kept across a kill and a resume.
- :mod:`da.runs.cli_fit`: ``da fit | validate | test`` (the LightningCLI subclass; :func:`run_cli`).
- :mod:`da.runs.sweep`: sweeps and their launchers, a layer above the run (a run knows no sweep).

Checkpoints are read by :mod:`da.checkpoints` (tensors only), which the model layers share. Nothing here imports
torch or Lightning at import time except :mod:`da.runs.cli_fit` when it builds the CLI.
"""
