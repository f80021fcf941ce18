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

Every launcher runs a :class:`Job` through :func:`execute_job`, which owns the bookkeeping: a run that
exits non-zero without leaving a fresh record gets a ``"failed"`` ``result.json`` with the tail of its
output, and a finished record is annotated with the sweep's ``{"name", "params"}``. The command is
built by an injectable ``command_builder(run_dir, resume) -> argv`` (:func:`fit_command` by default), so
tests drive launchers with a fake command.
"""

from __future__ import annotations

import datetime as _dt
import os
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from da.errors import unknown_name
from da.experiments import records as rec

LOG_FILE = "sweep.log"
ERROR_TAIL_CHARS = 4000


def da_command() -> list[str]:
    """``da`` run with this Python interpreter (so work started from a virtual environment runs in it)."""
    return [sys.executable, "-c", "from da.cli import main; main()"]


def fit_command(run_dir: str | Path, resume: bool) -> list[str]:
    """``da fit --config <run_dir>/sweep_config.yaml --run_dir <run_dir> [--ckpt_path last]``, run with
    this Python interpreter (:func:`da_command`)."""
    run_dir = Path(run_dir)
    argv = [*da_command(), "fit",
            "--config", str(run_dir / "sweep_config.yaml"), "--run_dir", str(run_dir)]
    if resume:
        argv += ["--ckpt_path", "last"]
    return argv


def wandb_env(sweep_name: str, run_hash: str, task: str, method: str, seed: Any) -> dict[str, str]:
    """Environment variables W&B reads at ``wandb.init``: the run joins group ``sweep_name``, is tagged
    ``task:...``, ``method:...``, ``seed:...`` and named by its hash; ``WANDB_RUN_ID`` (sweep + hash) with
    ``WANDB_RESUME=allow`` makes a resumed run continue the same W&B run. Under a W&B agent
    (``WANDB_SWEEP_ID`` set) the agent's run id and name are kept."""
    tags = [f"task:{task}", f"method:{method}", f"seed:{seed}"]
    env = {
        "WANDB_RUN_GROUP": sweep_name,
        "WANDB_TAGS": ",".join(t.replace(",", ";")[:64] for t in tags),
    }
    if "WANDB_SWEEP_ID" not in os.environ:
        env["WANDB_NAME"] = run_hash
        env["WANDB_RUN_ID"] = re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep_name}-{run_hash}")[:64]
        env["WANDB_RESUME"] = "allow"
    return env


@dataclass
class Job:
    """One run to execute: its directory, command, extra environment and sweep annotation."""

    run_dir: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    sweep: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.info.get("hash") or Path(self.run_dir).name)


class Progress:
    """The sweep's progress line: ``[name] done/total done, running, failed, left``, printed on every
    change (to ``stream``, stderr by default). Thread-safe."""

    def __init__(self, total: int, done: int = 0, failed: int = 0, stream: Optional[TextIO] = None, name: str = "sweep"):
        self.total, self.done, self.failed, self.running = total, done, failed, 0
        self.stream = stream if stream is not None else sys.stderr
        self.name = name
        self._lock = threading.Lock()
        from da.progress import SweepTicker  # ETA from finished runs, running runs' steps, a reprint every minute

        self.ticker = SweepTicker(self.show, total)

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.running

    def line(self) -> str:
        extra = self.ticker.summary(self.left)
        return (f"[{self.name}] {self.done}/{self.total} done, {self.running} running, "
                f"{self.failed} failed, {self.left} left" + (f"  {extra}" if extra else ""))

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
            if status == "finished":
                self.done += 1
            elif status == "failed":
                self.failed += 1
            self.show(f"{status} {job.label}")

    def close(self) -> None:
        self.ticker.close()


# live subprocesses, so that an interrupt stops them all
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_all() -> None:
    """Terminate every subprocess a launcher started in this process (used on Ctrl-C)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _stop(proc)


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
    try:
        import json

        error = json.loads((Path(run_dir) / rec.RESULT_FILE).read_text()).get("error") or ""
    except (OSError, ValueError, AttributeError):
        return "no record"
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "unknown error"


def _read_json(path: Path) -> Optional[dict]:
    import json

    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def record_signature(run_dir: str | Path) -> Optional[tuple]:
    """(inode, mtime_ns, size) of ``result.json``, or ``None``: compared before and after a run to tell
    whether the run wrote its record."""
    try:
        st = (Path(run_dir) / rec.RESULT_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def record_outcome(job: Job, returncode: int, started: float, started_at: str, before: Optional[tuple] = None) -> str:
    """After a job's process ended: return ``"finished"`` or ``"failed"`` and make the record say so.

    A record is *fresh* when ``result.json`` changed since ``before`` (its signature at launch). Exit 0 with a fresh
    ``finished`` record: annotate it with ``sweep`` and return ``finished``. Anything else (non-zero
    exit, no fresh record, a record still ``running``) becomes a ``failed`` record carrying the error:
    the run's own error when its fresh record has one, else the exit status and the tail of its output.
    """
    run_dir = Path(job.run_dir)
    path = run_dir / rec.RESULT_FILE
    record = _read_json(path) if path.is_file() else None
    fresh = record is not None and record_signature(run_dir) != before
    if returncode == 0 and fresh and record.get("status") == "finished":
        if not record.get("sweep"):
            record["sweep"] = job.sweep
            rec.write_json_atomic(path, record)
        return "finished"
    if fresh and record.get("status") == "failed" and record.get("error"):
        if not record.get("sweep"):
            record["sweep"] = job.sweep
            rec.write_json_atomic(path, record)
        return "failed"
    base = record if fresh else {}
    why = (f"exited with status {returncode}" if returncode != 0
           else f"exited with status 0 but its record says {base.get('status', 'nothing')!r}")
    info = job.info
    failed = {
        "schema": rec.SCHEMA_VERSION,
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
                 + _log_tail(run_dir),
        "sweep": job.sweep,
    }
    rec.write_json_atomic(path, failed)
    return "failed"


def execute_job(job: Job, extra_env: Optional[dict[str, str]] = None) -> str:
    """Run one job to completion; its output goes to ``<run_dir>/sweep.log``. Returns the final status.

    On ``KeyboardInterrupt`` the subprocess is terminated and the interrupt re-raised: the run keeps its
    ``running`` record and checkpoint, so the next ``da sweep`` resumes it. Under SLURM with several
    tasks only rank 0 (``SLURM_PROCID=0``) does the bookkeeping.
    """
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **job.env, **(extra_env or {})}
    started, started_at = time.time(), _now()
    before = record_signature(run_dir)
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"\n=== {started_at} {' '.join(job.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            returncode = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return "finished" if returncode == 0 else "failed"
    return record_outcome(job, returncode, started, started_at, before)


class LocalLauncher:
    """Runs jobs one after another in this machine's subprocesses (also the ``ddp`` launcher)."""

    name = "local"

    @staticmethod
    def execute(job: Job) -> str:
        return execute_job(job)

    def run(self, jobs: Sequence[Job], progress: Progress) -> list[str]:
        statuses = []
        for job in jobs:
            progress.start(job)
            try:
                status = self.execute(job)
            except BaseException:
                progress.end(job, "interrupted")
                raise
            progress.end(job, status)
            statuses.append(status)
        return statuses


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
    import contextlib
    import traceback

    from da.cli import run_cli

    args = job.argv[job.argv.index("fit"):] if "fit" in job.argv else list(job.argv)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started, started_at = time.time(), _now()
    before = record_signature(run_dir)
    saved_env = {k: os.environ.get(k) for k in job.env}
    os.environ.update(job.env)
    returncode = 0
    try:
        with open(run_dir / LOG_FILE, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            log.write(f"\n=== {started_at} (in process) da {' '.join(args)}\n")
            try:
                run_cli(args)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - a failed run, recorded below like a non-zero exit
                traceback.print_exc(file=log)
                returncode = 1
    finally:
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

        def work(job: Job) -> str:
            gpu = free.get()
            try:
                progress.start(job)
                status = execute_job(job, {"CUDA_VISIBLE_DEVICES": gpu})
                progress.end(job, status)
                return status
            finally:
                free.put(gpu)

        pool = ThreadPoolExecutor(max_workers=len(self.gpus))
        futures = [pool.submit(work, job) for job in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
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
