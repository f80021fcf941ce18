"""Launchers: how a sweep's runs are executed.

- ``local``: one run after another, each a subprocess (``da fit ...``), output in ``<run_dir>/sweep.log``.
- ``inprocess``: one run after another inside the ``da sweep`` process (no start-up cost per run: for many small
  runs).
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
tests drive launchers with a fake command.
"""


from __future__ import annotations

import contextlib
import os
import queue
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

from da.errors import unknown_name
from da.runs import locks
from da.runs.lifecycle import da_command, fit_argv, interrupt_in_chain
from da.runs.sweep.jobs import (LOG_FILE, WAITING, Job, Progress, _now, claim, execute_job, record_outcome,
                                record_signature, stop_all, unfinished)
from da.runs.sweep.plan import SWEEP_CONFIG_FILE


def fit_command(run_dir: str | Path, resume: bool) -> list[str]:
    """``da fit --config <run_dir>/sweep_config.yaml --run_dir <run_dir> [--ckpt_path last]``, run with
    this Python interpreter (:func:`~da.runs.lifecycle.da_command`)."""
    run_dir = Path(run_dir)
    return [*da_command(), *fit_argv(["--config", str(run_dir / SWEEP_CONFIG_FILE)], run_dir, resume)]


class LocalLauncher:
    """Runs jobs one after another in this machine's subprocesses (also the ``ddp`` launcher)."""

    name = "local"

    @staticmethod
    def execute(job: Job) -> str:
        return execute_job(job)

    #: seconds between looks at a run that another process is training and a waiting job starts from
    poll_s = 10.0

    def run(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        """Each job in order; then the jobs left waiting for a run they start from: started once it has finished,
        waited for while another live process trains it (two sweeps on one folder), given up when it is neither
        (failed, or not started anywhere: reported as waiting)."""
        statuses = [self._one(job, progress) for job in jobs]
        waiting = [i for i, s in enumerate(statuses) if s == WAITING]
        while waiting:
            left = {i: unfinished(jobs[i].needs) for i in waiting}
            ready = [i for i in waiting if not left[i]]
            for i in ready:
                progress.waiting -= 1
                statuses[i] = self._one(jobs[i], progress)
            blocked = [i for i in waiting if left[i] and any(locks.held_elsewhere(d) for d in left[i])]
            if not ready and not blocked:
                break
            if not ready:
                time.sleep(self.poll_s)
            waiting = [i for i, s in enumerate(statuses) if s == WAITING and (i in blocked or i in ready)]
        return statuses

    def _one(self, job: Job, progress: Progress) -> str:
        progress.start(job)
        try:
            status = self.execute(job)
        except BaseException:
            progress.end(job, "interrupted")
            raise
        progress.end(job, status)
        return status


class InProcessLauncher(LocalLauncher):
    """Runs jobs one after another inside this Python process (``da.cli.run_cli``), output in ``sweep.log``.

    For sweeps of many small runs (feature-vector heads, toy tasks) where starting a Python process with torch and
    Lightning costs more than the training itself. Each run re-seeds everything from its config; a run that raises is
    recorded as failed like a subprocess that exits non-zero. A crash of the interpreter itself (out of memory) stops
    the whole sweep, which is why ``local`` stays the default.
    """

    name = "inprocess"

    @staticmethod
    def execute(job: Job) -> str:
        return _execute_in_process(job)


def _execute_in_process(job: Job) -> str:
    from da.runs.cli_fit import run_and_release as run_cli

    outcome = claim(job)
    if outcome is not None:
        return outcome
    try:
        return _run_claimed_in_process(job, run_cli)
    finally:
        locks.release(job.run_dir)


@contextlib.contextmanager
def _logging_to(stream):
    """Point Lightning's console log handlers (and any handler left on a closed stream) at ``stream`` for the run.
    Lightning adds its handler when first imported, bound to the ``sys.stderr`` of that moment: in an in-process
    sweep that was the first run's ``sweep.log``, closed after it, so every later run's Lightning lines were lost as
    "--- Logging error --- ValueError: I/O operation on closed file"."""
    import logging

    loggers = [logging.getLogger()] + [lg for name, lg in logging.Logger.manager.loggerDict.items()
                                       if isinstance(lg, logging.Logger)
                                       and name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")]
    swapped = []
    for logger in loggers:
        for h in logger.handlers:
            if type(h) is not logging.StreamHandler:  # not files, not test-capture handlers
                continue
            old = getattr(h, "stream", None)
            if logger is logging.getLogger() and not getattr(old, "closed", False):
                continue  # a root handler on a live stream is the user's own
            swapped.append((h, old))
            h.stream = stream  # not setStream: it would flush the old, possibly closed, stream
    try:
        yield
    finally:
        for h, old in swapped:
            h.stream = old if not getattr(old, "closed", False) else sys.__stderr__


def _run_claimed_in_process(job: Job, run_cli) -> str:
    import signal
    import traceback

    args = job.argv[job.argv.index("fit"):] if "fit" in job.argv else list(job.argv)
    run_dir = Path(job.run_dir)
    started, started_at = time.time(), _now()
    before = record_signature(run_dir)
    saved_env = {k: os.environ.get(k) for k in job.env}
    os.environ.update(job.env)
    returncode = 0
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C; the next run needs it back
    try:
        with open(run_dir / LOG_FILE, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                _logging_to(log):
            log.write(f"\n=== {started_at} (in process) da {' '.join(args)}\n")
            try:
                run_cli(args)
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # noqa: BLE001 - a failed run, recorded below like a non-zero exit
                traceback.print_exc(file=log)
                if interrupt_in_chain(err):  # the run is resumable (its record names the interrupt); stop the sweep
                    raise KeyboardInterrupt(f"run {run_dir.name} interrupted") from err
                returncode = 1
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return record_outcome(job, returncode, started, started_at, before)


class DDPLauncher(LocalLauncher):
    """One run at a time using Lightning's own multi-GPU / multi-node DDP (set ``trainer.devices``,
    ``trainer.num_nodes``, ``trainer.strategy`` in the sweep's overrides); launched like ``local``."""

    name = "ddp"


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
        free: queue.Queue[str] = queue.Queue()
        for g in self.gpus:
            free.put(g)

        futures: dict[str, Future] = {}

        def work(job: Job) -> str:
            for d in job.needs:  # a run this one starts from, launched before it in this pool: wait for it
                if d in futures:
                    futures[d].result()
            gpu = free.get()
            try:
                progress.start(job)
                status = execute_job(job, {"CUDA_VISIBLE_DEVICES": gpu})
                progress.end(job, status)
                return status
            finally:
                free.put(gpu)

        pool = ThreadPoolExecutor(max_workers=len(self.gpus))
        for job in jobs:  # in dependency order (run_sweep's), so a job's needs are submitted before it
            futures[job.run_dir] = pool.submit(work, job)
        try:
            return [f.result() for f in futures.values()]
        except BaseException:
            for f in futures.values():
                f.cancel()
            stop_all()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


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
