"""Executing one sweep job: claim its run directory, run its command as a child process, record the outcome.

:func:`execute_job` owns the bookkeeping every launcher shares:

* **claim**: it takes the run directory's lock (:mod:`da.runs.locks`) and decides again what to do with the run
  (another sweep may have finished it meanwhile); a directory another live process holds is reported as ``busy``
  ("running elsewhere") and left alone. The locked descriptor is handed to the child (``$DA_RUN_LOCK_FD``), so the
  child's ``da fit`` holds the same lock and a restarted sweep sees it held for as long as either lives.
* **children die with their sweep**: each child starts in its own process group and, on Linux, with
  ``PR_SET_PDEATHSIG = SIGTERM`` (the kernel signals it when the sweep dies, even by ``kill -9``); on ``SIGTERM`` /
  ``SIGINT`` the sweep stops its children's process groups itself.
* **outcome**: a run that exits non-zero without leaving a fresh record gets a ``"failed"`` ``result.json`` with the
  tail of its output, and a finished record is annotated with the sweep's ``{"name", "params"}``.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO

from da.runs import locks
from da.runs.lifecycle import decide
from da.runs.record import RESULT_FILE, SCHEMA_VERSION, raw_record, run_status, write_record

LOG_FILE = "sweep.log"
ERROR_TAIL_CHARS = 4000
#: what :func:`execute_job` may return besides a run's own ``finished`` / ``failed``
BUSY, SKIPPED, SKIPPED_FAILED, WAITING = "busy", "skipped", "skip-failed", "waiting"


@dataclass
class Job:
    """One run to execute: its directory, command, extra environment and sweep annotation.

    ``build(run_dir, resume) -> argv`` (when given) rebuilds the command once the run is claimed, from the decision
    taken then (a run another sweep left half done resumes); ``retry_failed`` is that decision's flag."""

    run_dir: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    sweep: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    build: Optional[Callable[[Path, bool], list[str]]] = None
    retry_failed: bool = False
    #: run directories this run starts from (sweep ``from_run`` references); it waits until they have finished
    needs: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.info.get("hash") or Path(self.run_dir).name)


class Progress:
    """The sweep's progress line: ``[name] done/total done, running, failed, left``, printed on every
    change (to ``stream``, stderr by default). Thread-safe."""

    def __init__(self, total: int, done: int = 0, failed: int = 0, stream: Optional[TextIO] = None, name: str = "sweep"):
        self.total, self.done, self.failed, self.running, self.elsewhere = total, done, failed, 0, 0
        self.waiting = 0
        self.stream = stream if stream is not None else sys.stderr
        self.name = name
        self._lock = threading.Lock()
        from da.progress import SweepTicker  # ETA from finished runs, running runs' steps, a reprint every minute

        self.ticker = SweepTicker(self.show, total)

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.running - self.elsewhere - self.waiting

    def line(self) -> str:
        extra = self.ticker.summary(self.left)
        return (f"[{self.name}] {self.done}/{self.total} done, {self.running} running, "
                f"{self.failed} failed, {self.left} left" + (f", {self.elsewhere} running elsewhere"
                                                             if self.elsewhere else "")
                + (f", {self.waiting} waiting" if self.waiting else "")
                + (f"  {extra}" if extra else ""))

    def show(self, note: str = "") -> None:
        print(self.line() + (f"  ({note})" if note else ""), file=self.stream, flush=True)

    def start(self, job: Job) -> None:
        with self._lock:
            self.running += 1
            self.ticker.start(job.label, job.run_dir)
            self.show(f"started {job.label}")

    def end(self, job: Job, status: str) -> None:
        with self._lock:
            self.running -= 1
            self.ticker.end(job.label, status)
            if status in ("finished", SKIPPED):
                self.done += 1
            elif status in ("failed", SKIPPED_FAILED):
                self.failed += 1
            elif status == BUSY:
                self.elsewhere += 1
            elif status == WAITING:
                self.waiting += 1
            note = {BUSY: "running elsewhere", SKIPPED: "finished elsewhere", SKIPPED_FAILED: "failed elsewhere",
                    WAITING: "waiting for " + ", ".join(job.info.get("waiting_for", [])) + ":"}.get(status, status)
            self.show(f"{note} {job.label}")

    def waits(self, job: Job) -> None:
        """A job not started because a run it starts from has not finished (``job.info["waiting_for"]``)."""
        with self._lock:
            self.waiting += 1
            self.show("waiting for " + ", ".join(job.info.get("waiting_for", [])) + f": {job.label}")

    def close(self) -> None:
        self.ticker.close()


# live subprocesses, so that an interrupt stops them all
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover
        return None


_PRCTL = _libc_prctl()  # looked up here, so the child after fork only calls it


def _die_with_parent() -> None:
    """``preexec_fn`` of a sweep's child: the kernel sends it SIGTERM when the sweep dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the child's process group (it and what it started), then SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # the group is gone (or not ours): the child alone
            if proc.poll() is None:
                proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_all() -> None:
    """Stop every subprocess a launcher started in this process (on Ctrl-C / SIGTERM)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _stop(proc)


def start_child(argv: list[str], **popen: object) -> subprocess.Popen:
    """``subprocess.Popen`` for a sweep's child: its own process group, dies with its parent; tracked for
    :func:`stop_all`."""
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent, **popen)
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return proc


def _forget(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _log_tail(run_dir: Path, chars: int = ERROR_TAIL_CHARS) -> str:
    try:
        with open(run_dir / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def first_error_line(run_dir: Path) -> str:
    """The last non-empty line of a failed run's ``error`` (the exception line of a traceback)."""
    record = raw_record(run_dir)
    if record is None:
        return "no record"
    error = record.get("error") or ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "unknown error"


def record_signature(run_dir: str | Path) -> Optional[tuple]:
    """(inode, mtime_ns, size) of ``result.json``, or ``None``: compared before and after a run to tell
    whether the run wrote its record."""
    try:
        st = (Path(run_dir) / RESULT_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def record_outcome(job: Job, returncode: int, started: float, started_at: str, before: Optional[tuple] = None,
                   note: str = "") -> str:
    """After a job's process ended: return ``"finished"`` or ``"failed"`` and make the record say so.

    A record is *fresh* when ``result.json`` changed since ``before`` (its signature at launch). Exit 0 with a fresh
    ``finished`` record: annotate it with ``sweep`` and return ``finished``. Anything else (non-zero
    exit, no fresh record, a record still ``running``) becomes a ``failed`` record carrying the error:
    the run's own error when its fresh record has one, else the exit status and the tail of its output; a ``note``
    (what the sweep knows of the failure) becomes the error's last line, the one summaries show.
    """
    run_dir = Path(job.run_dir)
    record = raw_record(run_dir)
    fresh = record is not None and record_signature(run_dir) != before
    if returncode == 0 and fresh and record.get("status") == "finished":
        if not record.get("sweep"):
            record["sweep"] = job.sweep
            write_record(run_dir, record)
        return "finished"
    if fresh and record.get("status") == "failed" and record.get("error"):
        if not record.get("sweep") or note:
            record["sweep"] = record.get("sweep") or job.sweep
            record["error"] += f"\n{note}" if note else ""
            write_record(run_dir, record)
        return "failed"
    base = record if fresh else {}
    why = (f"exited with status {returncode}" if returncode != 0
           else f"exited with status 0 but its record says {base.get('status', 'nothing')!r}")
    info = job.info
    failed = {
        "schema": SCHEMA_VERSION,
        "status": "failed",
        "task": base.get("task") or info.get("task") or "?",
        "method": base.get("method") or info.get("method") or "?",
        "seed": base.get("seed", info.get("seed")),
        "config_hash": base.get("config_hash") or info.get("hash"),
        "config": base.get("config") or info.get("config"),
        "metrics": base.get("metrics") or {},
        "history": base.get("history") or [],
        "wall_time_s": round(time.time() - started, 3),
        "git_commit": base.get("git_commit"),
        "versions": base.get("versions"),
        "run_dir": str(run_dir),
        "started_at": base.get("started_at") or started_at,
        "finished_at": _now(),
        "error": f"da sweep: the run {why}; command: {' '.join(job.argv)}\n--- tail of {LOG_FILE} ---\n"
                 + _log_tail(run_dir) + (f"\n{note}" if note else ""),
        "sweep": job.sweep,
    }
    write_record(run_dir, failed)
    return "failed"


def unfinished(run_dirs) -> list[str]:
    """The run directories (a job's ``needs``) whose run has not finished."""
    return [d for d in run_dirs if run_status(d) != "finished"]


def claim(job: Job, abandoned: Optional[Callable[[Job], bool]] = None) -> Optional[str]:
    """Make the job's run directory, take its lock and decide again what to do with it.

    ``None``: this process now holds the run and the job's command is (re)built from the decision; otherwise the
    lock is not kept and the job's outcome is returned: ``busy`` (another live process holds the directory),
    ``skipped`` (it finished meanwhile), ``skip-failed`` (it failed meanwhile; rerun with ``--retry-failed``) or
    ``waiting`` (a run it starts from, ``job.needs``, has not finished; named in ``job.info["waiting_for"]``).

    ``abandoned(job)`` (the workers of ``inprocess --jobs N``): True when another worker of this sweep claimed the
    run before and died in it (the sweep gives it a failed record); it is reported ``busy`` rather than run again, so
    one crash is not repeated by every worker.
    """
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    if locks.try_lock(job.run_dir) is None:
        return BUSY
    _, action = decide(job.run_dir, job.retry_failed)
    if action in ("skip", "skip-failed"):
        locks.release(job.run_dir)
        return SKIPPED if action == "skip" else SKIPPED_FAILED
    if abandoned is not None and abandoned(job):
        locks.release(job.run_dir)
        return BUSY
    waiting = [Path(d).name for d in unfinished(job.needs)]
    if waiting:
        locks.release(job.run_dir)
        job.info["waiting_for"] = waiting
        return WAITING
    if job.build is not None:
        job.argv = [str(a) for a in job.build(Path(job.run_dir), action == "resume")]
    job.info["action"] = action
    return None


def execute_job(job: Job, extra_env: Optional[dict[str, str]] = None) -> str:
    """Claim the job's run directory (:func:`claim`), run its command to completion with output in
    ``<run_dir>/sweep.log``, and return the final status.

    On ``KeyboardInterrupt`` the child is stopped and the interrupt re-raised: the run keeps its ``running`` record
    and checkpoint, so the next ``da sweep`` resumes it. Under SLURM with several tasks only rank 0
    (``SLURM_PROCID=0``) does the bookkeeping.
    """
    run_dir = Path(job.run_dir)
    outcome = claim(job)
    if outcome is not None:
        return outcome
    try:
        fd = locks.try_lock(run_dir)
        env = {**os.environ, **job.env, **(extra_env or {}), locks.ENV_FD: str(fd)}
        started, started_at = time.time(), _now()
        before = record_signature(run_dir)
        with open(run_dir / LOG_FILE, "ab") as log:
            log.write(f"\n=== {started_at} {' '.join(job.argv)}\n".encode())
            log.flush()
            proc = start_child(job.argv, cwd=job.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,))
            try:
                returncode = proc.wait()
            except BaseException:
                _stop(proc)
                raise
            finally:
                _forget(proc)
        if os.environ.get("SLURM_PROCID", "0") != "0":
            return "finished" if returncode == 0 else "failed"
        return record_outcome(job, returncode, started, started_at, before)
    finally:
        locks.release(run_dir)
