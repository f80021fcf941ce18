"""The ``local`` launcher: a sweep's runs as subprocesses on this machine, one after another or ``jobs`` at once
(each with its share of the cores), and the pool of slots that ``local --jobs N`` and ``local-gpus`` share."""

from __future__ import annotations

import os
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from da.runs import locks
from da.runs.lifecycle import da_command, fit_argv
from da.runs.sweep.jobs import WAITING, Job, Progress, execute_job, stop_all, unfinished
from da.runs.sweep.plan import SWEEP_CONFIG_FILE


def fit_command(run_dir: str | Path, resume: bool) -> list[str]:
    """``da fit --config <run_dir>/sweep_config.yaml --run_dir <run_dir> [--ckpt_path last]``, run with
    this Python interpreter (:func:`~da.runs.lifecycle.da_command`)."""
    run_dir = Path(run_dir)
    return [*da_command(), *fit_argv(["--config", str(run_dir / SWEEP_CONFIG_FILE)], run_dir, resume)]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_env(jobs: int, threads: Optional[int] = None) -> dict[str, str]:
    """The environment that gives each of ``jobs`` runs at once its share of the cores: ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` = ``threads`` or ``usable_cores() // jobs`` (at least 1). Empty for one job, and when the
    user has set ``OMP_NUM_THREADS`` (theirs is kept: torch's float reductions depend on the thread count, so a
    table made with one thread per run stays reproducible)."""
    if threads is None and (jobs <= 1 or "OMP_NUM_THREADS" in os.environ):
        return {}
    n = str(threads if threads is not None else max(1, usable_cores() // jobs))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _check_jobs(jobs: int) -> int:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (runs at once), got {jobs!r}")
    return jobs


class LocalLauncher:
    """Runs jobs in this machine's subprocesses: one after another, or ``jobs`` at once (each with its share of the
    cores, :func:`thread_env`); also the ``ddp`` launcher (one at a time)."""

    name = "local"

    def __init__(self, jobs: int = 1):
        self.jobs = _check_jobs(jobs)

    @staticmethod
    def execute(job: Job) -> str:
        return execute_job(job)

    #: seconds between looks at a run that another process is training and a waiting job starts from
    poll_s = 10.0

    def run(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        """Each job in order; then the jobs left waiting for a run they start from: started once it has finished,
        waited for while another live process trains it (two sweeps on one folder), given up when it is neither
        (failed, or not started anywhere: reported as waiting). With ``jobs`` > 1, a pool of that many
        (:func:`run_pool`)."""
        if self.jobs > 1:
            return run_pool(jobs, progress, [thread_env(self.jobs)] * self.jobs)
        return self._run_sequential(jobs, progress)

    def _run_sequential(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
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


def run_pool(jobs: Sequence[Job], progress: Progress, slots: Sequence[dict[str, str]]) -> list[str]:
    """Run ``jobs`` as subprocesses, ``len(slots)`` at once, each with one free slot's extra environment (a GPU for
    ``local-gpus``, a share of the cores for ``local --jobs N``). A job that starts from another run of the pool
    waits for it; ``jobs`` come in dependency order (run_sweep's), so that run was submitted before it."""
    free: queue.Queue[dict[str, str]] = queue.Queue()
    for slot in slots:
        free.put(dict(slot))
    futures: dict[str, Future] = {}

    def work(job: Job) -> str:
        for d in job.needs:  # a run this one starts from, launched before it in this pool: wait for it
            if d in futures:
                futures[d].result()
        slot = free.get()
        try:
            progress.start(job)
            status = execute_job(job, slot)
            progress.end(job, status)
            return status
        finally:
            free.put(slot)

    pool = ThreadPoolExecutor(max_workers=len(slots))
    for job in jobs:
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
