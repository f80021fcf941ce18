"""Sweeps: a YAML grid (and seeded random search) expanded into runs named by the hash of their config.

- :mod:`da.runs.sweep.spec`: sweep files, their expansion into runs, and what task / method a run is.
- :mod:`da.runs.sweep.references`: ``from_run`` values, a run that starts from another run of the sweep.
- :mod:`da.runs.sweep.plan`: skip / resume / retry per run directory, and :func:`run_sweep`.
- :mod:`da.runs.sweep.jobs`: one job: claim its run directory's lock, run its child, record the outcome.
- :mod:`da.runs.sweep.launchers`: local, in-process, local multi-GPU, SLURM (submitit) and Lightning-DDP launchers.
- :mod:`da.runs.sweep.wandb`: W&B grouping of a sweep's runs and the W&B sweep export.
- :mod:`da.runs.sweep.command`: ``da sweep``.

A sweep is above a run: this package uses :mod:`da.runs` (config, records, the lifecycle, locks), never the reverse.
"""

from da.runs.sweep.plan import run_sweep
from da.runs.sweep.spec import expand, load_sweep, parse_sweep

__all__ = ["expand", "load_sweep", "parse_sweep", "run_sweep"]
