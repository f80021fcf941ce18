"""Planning and running a sweep: what to do with each run given its directory, then launching what is left.

A run's directory is ``<out>/<sweep name>/<config hash>``. Planning reads each directory with
:func:`da.runs.lifecycle.decide` (skip finished, resume interrupted, retry failed only when asked). Launching claims
each directory's lock first (:mod:`da.runs.locks`) and decides again while holding it, so two sweeps on one output
directory run every run once: a run another process holds is reported as ``running elsewhere``, one it finished
meanwhile is skipped.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

import yaml

from da.runs.io import write_json_atomic, write_text_atomic
from da.runs.lifecycle import ACTIONS, decide
from da.runs.record import SWEEP_INFO_FILE
from da.runs.sweep.references import is_run_reference, reference_text, resolve_references
from da.runs.sweep.spec import RunSpec, SweepSpec, describe_run, expand

SWEEP_CONFIG_FILE = "sweep_config.yaml"


@dataclass
class PlannedRun:
    """A run and what the sweep will do with it: ``run`` (fresh), ``resume`` (from last.ckpt), ``retry``
    (a failed run, fresh, only with ``retry_failed``), ``skip`` (finished), ``skip-failed``."""

    run: RunSpec
    run_dir: Path
    status: str
    action: str

    @property
    def resume(self) -> bool:
        return self.action == "resume"


def plan(runs: Sequence[RunSpec], sweep_dir: str | Path, retry_failed: bool = False) -> list[PlannedRun]:
    """Decide, for each run, from its directory ``<sweep_dir>/<hash>``."""
    sweep_dir = Path(sweep_dir)
    out = []
    for run in runs:
        run_dir = sweep_dir / run.hash
        status, action = decide(run_dir, retry_failed)
        out.append(PlannedRun(run, run_dir, status, action))
    return out


def format_plan(planned: Sequence[PlannedRun]) -> str:
    """The ``--dry-run`` listing: one line per run (hash, action, status, seed, task, method, params)."""
    rows = [("hash", "action", "status", "seed", "task", "method", "params")]
    for p in planned:
        task, method = describe_run(p.run.config)
        params = ", ".join(f"{k}={reference_text(v) if is_run_reference(v) else v}"
                           for k, v in p.run.params.items() if k != "seed")
        if p.run.needs:
            params += f"  [after {', '.join(p.run.needs)}]"
        rows.append((p.run.hash, p.action, p.status, str(p.run.seed), task, method, params))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    counts = {a: sum(p.action == a for p in planned) for a in ACTIONS}
    lines.append(
        f"{len(planned)} runs: " + ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    )
    return "\n".join(lines)


def dependencies_first(planned: Sequence[PlannedRun]) -> list[PlannedRun]:
    """``planned`` in its order, except that a run comes after the runs it starts from (stable)."""
    by_hash = {p.run.hash: p for p in planned}
    out: list[PlannedRun] = []
    placed: set[str] = set()

    def place(p: PlannedRun) -> None:
        if p.run.hash in placed:
            return
        placed.add(p.run.hash)
        for h in p.run.needs:
            if h in by_hash:
                place(by_hash[h])
        out.append(p)

    for p in planned:
        place(p)
    return out


# ----------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What a sweep invocation did. ``failed`` lists (hash, first line of the error)."""

    name: str
    sweep_dir: Path
    total: int
    already_finished: int = 0
    launched: int = 0
    finished: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_failed: int = 0
    submitted: int = 0
    elsewhere: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_failed

    def format(self) -> str:
        lines = [
            f"sweep '{self.name}' in {self.sweep_dir}: {self.total} runs; {self.already_finished} already finished, "
            f"{self.launched} launched: {self.finished} finished, {len(self.failed)} failed"
            + (f", {self.submitted} submitted" if self.submitted else "")
            + (f"; {self.skipped_failed} failed before and skipped (--retry-failed reruns them)" if self.skipped_failed else "")
            + (f"; {len(self.elsewhere)} running elsewhere (another process holds them; run the sweep again "
               "once it ends)" if self.elsewhere else "")
            + (f"; {len(self.waiting)} waiting for the runs they start from (not finished: running elsewhere, "
               "failed or left out by --only; run the sweep again once those have finished)" if self.waiting else "")
        ]
        for h, err in self.failed:
            lines.append(f"  FAILED {h}: {err}")
        return "\n".join(lines)


def write_run_dir(planned: PlannedRun, sweep_name: str) -> None:
    """Write ``sweep_config.yaml`` (the resolved config) and ``sweep.json`` (name, params, hash) into
    the run directory, before the run is launched."""
    run_dir = planned.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config = resolve_references(planned.run.config, run_dir.parent)
    write_text_atomic(run_dir / SWEEP_CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    info = {
        "sweep": {"name": sweep_name, "params": planned.run.params},
        "hash": planned.run.hash,
        "needs": list(planned.run.needs),
        "files": list(planned.run.files),
        "overrides": planned.run.overrides,
        "seed": planned.run.seed,
    }
    write_json_atomic(run_dir / SWEEP_INFO_FILE, info)


def run_sweep(
    spec: SweepSpec,
    out: str | Path = "runs/sweeps",
    launcher: Any = "local",
    retry_failed: bool = False,
    dry_run: bool = False,
    command_builder: Optional[Callable[[Path, bool], list[str]]] = None,
    wandb: bool = False,
    only: Optional[Mapping[str, Any]] = None,
    extra_overrides: Optional[Mapping[str, Any]] = None,
    log: Optional[TextIO] = None,
    cwd: Optional[str | Path] = None,
) -> SweepSummary:
    """Expand, plan and launch a sweep; return what it did.

    ``launcher`` is a name (``local``, ``local-gpus``, ``slurm``, ``ddp``) or a launcher object;
    ``command_builder(run_dir, resume) -> argv`` defaults to ``da fit --config <run_dir>/sweep_config.yaml
    --run_dir <run_dir> [--ckpt_path last]`` and is injectable for tests. With ``wandb`` each run gets
    ``WANDB_RUN_GROUP`` (the sweep name), ``WANDB_TAGS`` (task, method, seed) and ``WANDB_NAME`` (hash).
    """
    from da.runs.sweep import jobs as J
    from da.runs.sweep import launchers as L
    from da.runs.sweep.wandb import wandb_env

    log = log if log is not None else sys.stderr
    runs = expand(spec, extra_overrides=extra_overrides, only=only)
    sweep_dir = Path(out) / spec.name
    planned = plan(runs, sweep_dir, retry_failed=retry_failed)
    summary = SweepSummary(spec.name, sweep_dir, total=len(planned))
    summary.already_finished = sum(p.action == "skip" for p in planned)
    summary.skipped_failed = sum(p.action == "skip-failed" for p in planned)
    if dry_run:
        print(format_plan(planned), file=log)
        return summary
    if isinstance(launcher, str):
        launcher = L.make_launcher(launcher)
    builder = command_builder or L.fit_command
    jobs = []
    for p in dependencies_first(planned):
        if p.action in ("skip", "skip-failed"):
            continue
        write_run_dir(p, spec.name)
        task, method = describe_run(p.run.config)
        env = wandb_env(spec.name, p.run.hash, task, method, p.run.seed) if wandb else {}
        jobs.append(
            J.Job(
                run_dir=str(p.run_dir.resolve()),
                argv=[str(a) for a in builder(p.run_dir.resolve(), p.resume)],
                build=builder, retry_failed=retry_failed,
                env=env,
                cwd=str(Path(cwd or os.getcwd()).resolve()),
                sweep={"name": spec.name, "params": p.run.params},
                info={"hash": p.run.hash, "seed": p.run.seed, "task": task, "method": method,
                      "config": resolve_references(p.run.config, sweep_dir), "action": p.action},
                needs=[str((sweep_dir / h).resolve()) for h in p.run.needs],
            )
        )
    progress = J.Progress(
        total=len(planned), done=summary.already_finished, failed=summary.skipped_failed, stream=log, name=spec.name
    )
    progress.show()
    summary.launched = len(jobs)
    try:
        statuses = launcher.run(jobs, progress)
    finally:
        progress.close()
    for job, status in zip(jobs, statuses):
        if status == "finished":
            summary.finished += 1
        elif status == "failed":
            summary.failed.append((job.info["hash"], J.first_error_line(Path(job.run_dir))))
        elif status == J.BUSY:
            summary.elsewhere.append(job.info["hash"])
        elif status == J.WAITING:
            summary.launched -= 1
            summary.waiting.append(job.info["hash"])
        elif status == J.SKIPPED:
            summary.launched -= 1
            summary.already_finished += 1
        elif status == J.SKIPPED_FAILED:
            summary.launched -= 1
            summary.skipped_failed += 1
        else:
            summary.submitted += 1
    return summary
