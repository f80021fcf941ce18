"""The ``inprocess`` launcher: a sweep's runs inside a Python process (no interpreter start-up per run), one after
another, or shared out among ``jobs`` worker processes (:mod:`da.runs.sweep.worker`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from da.runs import locks
from da.runs.lifecycle import interrupt_in_chain
from da.runs.sweep.jobs import (BUSY, LOG_FILE, SKIPPED, SKIPPED_FAILED, WAITING, Job, Progress, _forget, _now,
                                claim, record_outcome, record_signature, start_child, stop_all)
from da.runs.sweep.local import LocalLauncher, thread_env


class InProcessLauncher(LocalLauncher):
    """Runs jobs one after another inside this Python process (``da.cli.run_cli``), output in ``sweep.log``.

    For sweeps of many small runs (feature-vector heads, toy tasks) where starting a Python process with torch and
    Lightning costs more than the training itself. Each run re-seeds everything from its config; a run that raises is
    recorded as failed like a subprocess that exits non-zero. A crash of the interpreter itself (out of memory) stops
    the whole sweep, which is why ``local`` stays the default.

    With ``jobs`` > 1, ``jobs`` worker processes (:mod:`da.runs.sweep.worker`) each walk the job list in process,
    with their share of the cores (:func:`thread_env`); a run one worker holds, another skips (its lock), so the runs
    are shared out and each runs once. This process follows their start / end events for the progress line and
    merges their outcomes (:func:`merge_outcomes`). A worker that dies (out of memory) takes only the run it was
    training: that run gets a failed record, the others carry on.
    """

    name = "inprocess"
    #: seconds between looks at the workers' event files
    events_poll_s = 1.0

    @staticmethod
    def execute(job: Job) -> str:
        return _execute_in_process(job)

    def run(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        if self.jobs > 1 and len(jobs) > 1:
            return self._run_workers(list(jobs), progress)
        return self._run_sequential(jobs, progress)

    def _run_workers(self, jobs: list[Job], progress: Progress) -> list[str]:
        import pickle
        import subprocess

        folder = Path(jobs[0].run_dir).parent / WORKERS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{os.getpid()}-{int(time.time())}"
        jobs_file = Path(f"{stem}.jobs.pkl")
        try:
            jobs_file.write_bytes(pickle.dumps(jobs))
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError("launcher 'inprocess' with jobs > 1 hands its jobs to worker processes by pickle, and "
                            f"these do not pickle ({err}): give a module-level command_builder, or jobs=1") from err
        env = {**os.environ, **thread_env(self.jobs), "PYTHONUNBUFFERED": "1"}
        by_dir = {job.run_dir: job for job in jobs}
        before = {job.run_dir: record_signature(job.run_dir) for job in jobs}
        events = [Path(f"{stem}-{k}.events") for k in range(self.jobs)]
        logs = [Path(f"{stem}-{k}.log") for k in range(self.jobs)]
        reports: dict[str, list[str]] = {job.run_dir: [] for job in jobs}
        started: dict[str, tuple[float, str]] = {}  # run_dir -> (time, utc) its worker claimed it
        training: list[Optional[str]] = [None] * self.jobs  # the run each worker is training now
        offsets = [0] * self.jobs
        procs: list[Any] = [None] * self.jobs
        deaths: list[int] = []

        def spawn(k: int) -> None:
            with open(logs[k], "ab") as log:
                procs[k] = start_child([sys.executable, "-m", "da.runs.sweep.worker", str(jobs_file), str(events[k])],
                                       env=env, stdout=log, stderr=subprocess.STDOUT)

        def read_events(k: int) -> None:
            try:
                with open(events[k]) as f:
                    f.seek(offsets[k])
                    chunk = f.read()
            except OSError:
                return
            complete, sep, _ = chunk.rpartition("\n")  # a line still being written waits for the next look
            offsets[k] += len(complete) + len(sep)
            for line in complete.splitlines():
                kind, status, run_dir = line.split("\t", 2)
                job = by_dir.get(run_dir)
                if job is None:
                    continue
                if kind == "start":
                    started[run_dir], training[k] = (time.time(), _now()), run_dir
                    progress.start(job)
                else:
                    reports[run_dir].append(status)
                    if training[k] == run_dir:
                        training[k] = None
                        progress.end(job, status)

        def died(k: int) -> bool:
            """Worker ``k`` exited with an error: the run it was training (if any) gets a failed record; True to start
            another worker in its place (it died in a run, so the rest of its walk may still be needed)."""
            code = procs[k].returncode
            deaths.append(code)
            run_dir, training[k] = training[k], None
            if run_dir is None:
                return False
            job = by_dir[run_dir]
            note = (f"da sweep: its worker process (pid {procs[k].pid}) died with status {code} while training this "
                    "run" + (" (killed: out of memory?)" if code == -signal.SIGKILL else ""))
            status = record_outcome(job, code, *started[run_dir], before[run_dir], note=note)
            reports[run_dir].append(status)
            progress.end(job, status)
            return True

        try:
            for k in range(self.jobs):
                spawn(k)
            while True:
                alive = 0
                for k, proc in enumerate(procs):
                    if proc is None:
                        continue
                    running = proc.poll() is None
                    read_events(k)  # after the poll: an exited worker's last events are all on disk
                    if running:
                        alive += 1
                        continue
                    _forget(proc)
                    if proc.returncode in (130, -signal.SIGINT, -signal.SIGTERM):  # stopped, not crashed: the
                        raise KeyboardInterrupt(f"sweep worker {proc.pid} was stopped")  # sweep stops, resumable
                    if proc.returncode != 0 and died(k):
                        spawn(k)
                        alive += 1
                    else:
                        procs[k] = None
                if not alive:
                    break
                time.sleep(self.events_poll_s)
        except BaseException:
            stop_all()
            raise
        finally:
            for proc in procs:
                if proc is not None:
                    _forget(proc)
        statuses = []
        for job in jobs:
            if not reports[job.run_dir]:  # every worker died before reaching it
                reports[job.run_dir].append(record_outcome(job, 1, time.time(), _now(), before[job.run_dir]))
            status = merge_outcomes(reports[job.run_dir])
            if job.run_dir not in started:  # ended by other workers' reports only (busy, skipped, waiting)
                progress.start(job)
                progress.end(job, status)
            statuses.append(status)
        if deaths:
            progress.show("a worker exited with status " + ", ".join(str(c) for c in deaths)
                          + f"; its output is in {folder}")
        else:
            for path in [jobs_file, *events, *logs]:
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when no other sweep's workers are in it
        return statuses


#: where ``inprocess`` with jobs > 1 keeps its workers' job list, event files and output (in the sweep directory)
WORKERS_DIR = ".workers"
#: a run's outcome as its workers reported it, strongest first: the worker that ran it says finished / failed, the
#: others busy (it held the run) or skipped (it had finished); every worker busy means another sweep held it
_OUTCOME_ORDER = ("finished", "failed", SKIPPED, SKIPPED_FAILED, WAITING, BUSY)


def merge_outcomes(reports: Sequence[str]) -> str:
    """One run's outcome from every worker's report of it, the strongest in :data:`_OUTCOME_ORDER`."""
    for status in _OUTCOME_ORDER:
        if status in reports:
            return status
    raise ValueError(f"no known outcome among the workers' reports {list(reports)!r}")


def _execute_in_process(job: Job, on_claimed=None, abandoned=None) -> str:
    """Claim the job's run directory and run it in this process; a sweep worker's ``on_claimed(job)`` is called once
    the run is claimed, its ``abandoned`` goes to :func:`~da.runs.sweep.jobs.claim`."""
    from da.runs.cli_fit import run_and_release as run_cli

    outcome = claim(job, abandoned)
    if outcome is not None:
        return outcome
    try:
        if on_claimed is not None:
            on_claimed(job)
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
