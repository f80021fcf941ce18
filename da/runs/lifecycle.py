"""The one routine of a run's life: fit it unless it is finished, else resume it from its last checkpoint.

:func:`decide` reads a run directory and says what to do: ``skip`` (finished), ``resume`` (a ``running`` or
interrupted run, or one without a readable record, that has ``checkpoints/last.ckpt``), ``run`` (nothing to resume
from), ``retry`` / ``skip-failed`` (a run that failed, rerun only when asked). ``da sweep`` plans its runs with it
(and decides again once it holds a run's lock); :func:`ensure_fitted` applies it to one run directory for
``da detect`` (missing baselines) and ``da multisource`` (each stage).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from da.runs.record import RESULT_FILE, raw_record, read_record, run_status

LAST_CKPT = Path("checkpoints") / "last.ckpt"
ACTIONS = ("run", "resume", "retry", "skip", "skip-failed")
_INTERRUPT_MARKERS = ("KeyboardInterrupt", "SIGTERM", "SIGINT", "interrupted")

#: runs ``da <argv>`` (``argv[0]`` is ``fit``) and returns its exit status
Launch = Callable[[List[str]], int]


def interrupt_in_chain(err: Optional[BaseException]) -> bool:
    """Whether ``err`` is, or was raised while handling, a ``KeyboardInterrupt``. Lightning turns a Ctrl-C (and a
    sweep's SIGTERM, which raises ``KeyboardInterrupt``) inside ``fit`` into ``sys.exit(1)``; such a run was
    interrupted, not failed: its record says so (resumable) and an in-process sweep stops instead of going on."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _interrupted(run_dir: Path) -> bool:
    error = (raw_record(run_dir) or {}).get("error") or ""
    head = str(error).strip().splitlines()[-1:] or [""]
    return any(m in head[0] or str(error).startswith(m) for m in _INTERRUPT_MARKERS)


def decide(run_dir: Union[str, Path], retry_failed: bool = False) -> Tuple[str, str]:
    """(status, action) for one run directory.

    finished -> skip; failed -> retry with ``retry_failed`` else skip-failed (a run that failed because it was
    interrupted, ``KeyboardInterrupt``/``SIGTERM``, is resumed like a running one); running, missing or corrupt
    record -> resume when ``checkpoints/last.ckpt`` exists, else run.
    """
    run_dir = Path(run_dir)
    status = run_status(run_dir)
    if status == "finished":
        return status, "skip"
    if status == "failed" and not _interrupted(run_dir):
        return status, "retry" if retry_failed else "skip-failed"
    if status == "failed":
        status = "interrupted"
    return status, "resume" if (run_dir / LAST_CKPT).is_file() else "run"


def da_command() -> List[str]:
    """``da`` run with this Python interpreter (so work started from a virtual environment runs in it)."""
    return [sys.executable, "-c", "from da.cli import main; main()"]


def fit_argv(args: Sequence[str], run_dir: Union[str, Path], resume: bool) -> List[str]:
    """``fit <args> --run_dir <run_dir> [--ckpt_path last]``."""
    return ["fit", *map(str, args), "--run_dir", str(run_dir), *(["--ckpt_path", "last"] if resume else [])]


def subprocess_launch(argv: List[str]) -> int:
    """Run ``da <argv>`` in a subprocess with this interpreter; return its exit status."""
    return subprocess.call([*da_command(), *argv])


def inprocess_launch(argv: List[str]) -> int:
    """Run ``da <argv>`` inside this process (:func:`da.runs.cli_fit.run_and_release`); exceptions propagate."""
    from da.runs.cli_fit import run_and_release

    run_and_release(argv)
    return 0


LAUNCHES = {"subprocess": subprocess_launch, "inprocess": inprocess_launch}


def ensure_fitted(run_dir: Union[str, Path], args: Sequence[str], launch: Optional[Launch] = None,
                  what: str = "the run") -> dict:
    """The finished record of ``da fit <args> --run_dir <run_dir>``: read when the directory already holds a finished
    run, else made by launching the fit (resumed from ``last.ckpt`` when there is one; a failed run is rerun).

    ``launch(argv) -> exit status`` runs ``da <argv>`` (default: a subprocess). Raises :class:`RuntimeError` naming the
    directory when the fit does not end with a finished record.
    """
    run_dir = Path(run_dir)
    status, action = decide(run_dir, retry_failed=True)
    if action == "skip":
        return read_record(run_dir)
    argv = fit_argv(args, run_dir, resume=action == "resume")
    code = (launch or subprocess_launch)(argv)
    if code != 0 or run_status(run_dir) != "finished":
        raise RuntimeError(f"{what} did not finish (exit code {code}); see {run_dir / RESULT_FILE} and its log, fix "
                           f"the config, and run again (command: da {' '.join(argv)})")
    return read_record(run_dir)


def safe_name(name: str) -> str:
    """A task or method name as one path component: ``a/b->c/d`` -> ``a-b_to_c-d``, ``x+y`` -> ``x_y``."""
    return name.replace("->", "_to_").replace("/", "-").replace("+", "_")
