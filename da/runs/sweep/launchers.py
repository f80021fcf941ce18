"""Launchers: how a sweep's runs are executed.

- ``local``: one run after another, each a subprocess (``da fit ...``), output in ``<run_dir>/sweep.log``;
  ``jobs=N`` (``--jobs N``): N at once, each with ``cores // N`` threads.
- ``inprocess``: one run after another inside the ``da sweep`` process (no start-up cost per run: for many small
  runs); ``jobs=N``: N worker processes, each running its share of the runs in process with ``cores // N``
  threads (the run locks share the runs out).
- ``local-gpus``: one run per visible GPU in parallel; each subprocess sees one GPU through
  ``CUDA_VISIBLE_DEVICES`` (``gpus=[0, 1]`` or ``--gpus 0,1``; default: every GPU torch sees).
- ``slurm``: each run a SLURM job through submitit (``pip install 'da[slurm]'``); ``wait=True`` blocks
  until they end, otherwise ``da sweep`` returns after submitting and a later ``da sweep`` / ``da table``
  picks the records up.
- ``ddp``: one run at a time using Lightning's own multi-GPU / multi-node DDP: pass ``trainer.devices``
  / ``trainer.num_nodes`` (and ``trainer.strategy: ddp``) as sweep overrides or ``--set``; the runs are
  launched like ``local`` and Lightning spawns the ranks.

Every launcher runs a :class:`~da.runs.sweep.jobs.Job` through :func:`~da.runs.sweep.jobs.execute_job`, which owns
the bookkeeping (claiming the run directory's lock, children that die with the sweep, the failed record). The command is
built by an injectable ``command_builder(run_dir, resume) -> argv`` (:func:`fit_command` by default), so
tests drive launchers with a fake command. ``local`` lives in :mod:`da.runs.sweep.local`, ``inprocess`` in
:mod:`da.runs.sweep.inprocess`; this module holds the others and the registry (:func:`make_launcher`).
"""


from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from da.errors import unknown_name
from da.runs.sweep.inprocess import WORKERS_DIR, InProcessLauncher, merge_outcomes
from da.runs.sweep.jobs import WAITING, Job, Progress, _now, execute_job, record_outcome, record_signature, unfinished
from da.runs.sweep.local import LocalLauncher, fit_command, run_pool, thread_env, usable_cores

__all__ = ["DDPLauncher", "InProcessLauncher", "LAUNCHERS", "LocalGPUsLauncher", "LocalLauncher", "SlurmLauncher",
           "WORKERS_DIR", "fit_command", "make_launcher", "merge_outcomes", "run_pool", "thread_env", "usable_cores",
           "visible_gpus"]


class DDPLauncher(LocalLauncher):
    """One run at a time using Lightning's own multi-GPU / multi-node DDP (set ``trainer.devices``,
    ``trainer.num_nodes``, ``trainer.strategy`` in the sweep's overrides); launched like ``local``."""

    name = "ddp"

    def __init__(self):
        super().__init__(jobs=1)  # Lightning spreads each run over the devices; runs go one at a time


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else ``range(torch.cuda.device_count())``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


class LocalGPUsLauncher:
    """One run per GPU in parallel: a pool of ``len(gpus)`` workers, each subprocess with
    ``CUDA_VISIBLE_DEVICES=<its gpu>``. With ``gpus=None`` every visible GPU is used."""

    name = "local-gpus"

    def __init__(self, gpus: Optional[Sequence[int | str]] = None):
        self.gpus = [str(g) for g in (gpus if gpus is not None else visible_gpus())]
        if not self.gpus:
            raise ValueError(
                "launcher 'local-gpus' found no GPU (CUDA_VISIBLE_DEVICES empty and torch sees none); "
                "pass --gpus 0,1 or use --launcher local"
            )

    def run(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        return run_pool(jobs, progress, [{"CUDA_VISIBLE_DEVICES": g} for g in self.gpus])


class SlurmLauncher:
    """Each run a SLURM job through submitit. ``params`` go to ``AutoExecutor.update_parameters``
    (e.g. ``timeout_min=120, slurm_partition="gpu", gpus_per_node=1``); logs in ``<folder>``."""

    name = "slurm"

    def __init__(self, folder: str | Path = "runs/submitit", wait: bool = False, **params: Any):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ImportError(
                "launcher 'slurm' needs submitit, which is not installed; install it with "
                "pip install 'da[slurm]' (or use --launcher local / local-gpus)"
            ) from None
        self.folder, self.wait, self.params = Path(folder), wait, params

    def run(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        # a run that starts from another run is submitted once that one has finished (run the sweep again then)
        waiting_for = [[Path(d).name for d in unfinished(job.needs)] for job in jobs]
        ready = [not w for w in waiting_for]
        for job, w in zip(jobs, waiting_for):
            if w:
                job.info["waiting_for"] = w
                progress.waits(job)
        statuses = self._submit([job for job, ok in zip(jobs, ready) if ok], progress)
        it = iter(statuses)
        return [next(it) if ok else WAITING for ok in ready]

    def _submit(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        import submitit

        executor = submitit.AutoExecutor(folder=str(self.folder))
        executor.update_parameters(**self.params)
        before = [record_signature(job.run_dir) for job in jobs]
        started, started_at = time.time(), _now()
        with executor.batch():
            handles = [executor.submit(execute_job, job) for job in jobs]
        for job, handle in zip(jobs, handles):
            progress.show(f"submitted {job.label} as SLURM job {handle.job_id}")
        if not self.wait:
            return ["submitted"] * len(jobs)
        statuses = []
        for job, handle, sig in zip(jobs, handles, before):
            try:
                status = handle.result()
            except Exception:  # the job died before execute_job could record it
                status = record_outcome(job, 1, started, started_at, sig)
            progress.end(job, status)
            statuses.append(status)
        return statuses


LAUNCHERS = {"local": LocalLauncher, "inprocess": InProcessLauncher, "local-gpus": LocalGPUsLauncher,
             "slurm": SlurmLauncher, "ddp": DDPLauncher}


def make_launcher(name: str, **options: Any):
    """A launcher by name (``local``, ``local-gpus``, ``slurm``, ``ddp``); ``options`` go to its constructor."""
    if name not in LAUNCHERS:
        raise unknown_name("launcher", name, LAUNCHERS)
    return LAUNCHERS[name](**options)
