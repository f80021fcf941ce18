"""Run records: the ``result.json`` every run writes (schema 1): the one writer, the one reader, found and checked.

A record is the single source of truth for tables, model selection and plots. Its keys (schema 1):

``schema`` (1), ``status`` (``"finished" | "failed" | "running"``), ``task`` (``"src1+src2->tgt"``),
``method``, ``seed``, ``config_hash``, ``config``, ``metrics`` (flat ``{"split/name": float}``),
``history`` (one row per validation run), ``wall_time_s``, ``git_commit``, ``versions``, ``run_dir``,
``started_at``, ``finished_at``, ``error``, and optionally ``diagnostics`` and ``sweep``
(``{"name": str, "params": {key: value}}``, added by ``da sweep``).

:func:`write_record` is the one writer (atomic and fsynced, :mod:`da.runs.io`); :func:`read_record` the one
reader (validates; raises :class:`RecordError`, or returns ``None`` for a missing record with ``missing_ok``);
:func:`run_status` reads only the status, tolerating a broken file, for deciding what to do with a run directory.
``load_records`` walks directories for ``result.json`` files, validates each against this schema and
returns plain dicts. A run started by ``da sweep`` also has a ``sweep.json`` beside its record; its
``sweep`` entry is attached when the record itself lacks one (a run killed before the sweep could
annotate it, or one launched on SLURM).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Union

from da.errors import MissingFileError, UserError
from da.runs.io import write_json_atomic

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
SWEEP_INFO_FILE = "sweep.json"
STATUSES = ("finished", "failed", "running")

# key -> accepted types; keys every record must have
_REQUIRED: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "status": (str,),
    "task": (str,),
    "method": (str,),
    "seed": (int, type(None)),
    "metrics": (dict,),
}
# optional keys -> accepted types when present (None always accepted)
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "config_hash": (str,),
    "config": (dict,),
    "history": (list,),
    "wall_time_s": (int, float),
    "git_commit": (str,),
    "versions": (dict,),
    "run_dir": (str,),
    "started_at": (str,),
    "finished_at": (str,),
    "error": (str,),
    "diagnostics": (dict,),
    "sweep": (dict,),
}

PathLike = Union[str, "os.PathLike[str]"]


class RecordError(UserError):
    """A ``result.json`` that does not follow schema 1; the message names the file, the key and the fix."""


def _where(source: Any) -> str:
    return f" in {source}" if source else ""


def validate_record(record: Any, source: Any = None) -> dict:
    """Check ``record`` against schema 1 and return it; raise :class:`RecordError` naming the problem.

    Metric values must be numbers (``None`` and NaN are allowed: a metric that was not computed).
    ``history`` rows must be dicts with an int ``step``. A ``"failed"`` record must carry ``error``.
    """
    where = _where(source)
    if not isinstance(record, dict):
        raise RecordError(f"record{where} is a {type(record).__name__}, expected a JSON object")
    for key, types in _REQUIRED.items():
        if key not in record:
            raise RecordError(
                f"record{where} has no '{key}'; schema {SCHEMA_VERSION} needs {sorted(_REQUIRED)} "
                f"(was it written by an older or foreign tool? rerun it with `da fit`)"
            )
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise RecordError(
                f"record{where}: '{key}' is {value!r} ({type(value).__name__}), expected "
                f"{' or '.join(t.__name__ for t in types)}"
            )
    for key, types in _OPTIONAL.items():
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise RecordError(
                f"record{where}: '{key}' is {value!r} ({type(value).__name__}), expected "
                f"{' or '.join(t.__name__ for t in types)} or null"
            )
    if record["schema"] != SCHEMA_VERSION:
        raise RecordError(
            f"record{where} has schema {record['schema']!r}; this version of da reads schema "
            f"{SCHEMA_VERSION} (upgrade da to read newer records)"
        )
    if record["status"] not in STATUSES:
        raise RecordError(
            f"record{where}: unknown status '{record['status']}'; known: {', '.join(STATUSES)}"
        )
    for name, value in record["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordError(
                f"record{where}: metric '{name}' is {value!r}; metrics must be numbers or null"
            )
    for i, row in enumerate(record.get("history") or []):
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(
            row.get("step"), int
        ):
            raise RecordError(
                f"record{where}: history[{i}] is {row!r}; each row must be an object with an int 'step'"
            )
    if record["status"] == "failed" and not record.get("error"):
        raise RecordError(f"record{where}: status 'failed' without an 'error' message")
    sweep = record.get("sweep")
    if sweep is not None and not isinstance(sweep.get("params", {}), dict):
        raise RecordError(f"record{where}: sweep.params must be an object, got {sweep.get('params')!r}")
    return record


def read_record(path: PathLike, missing_ok: bool = False) -> Optional[dict]:
    """Read and validate one ``result.json`` (or the one inside a run directory).

    Raises :class:`RecordError` naming the file when it is missing (``missing_ok``: return ``None`` instead), is not
    JSON or does not follow schema 1. A run started by ``da sweep`` gets its ``sweep`` entry from ``sweep.json``
    when the record lacks one.
    """
    path = Path(path)
    if path.is_dir() or (not path.exists() and path.suffix != ".json"):  # a run directory (maybe not made yet)
        path = path / RESULT_FILE
    if missing_ok and not path.is_file():
        return None
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"no record at {path}; a run writes {RESULT_FILE} in its run directory") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not valid JSON ({err}); the run was probably killed while writing it") from None
    record = validate_record(record, path)
    if record.get("sweep") is None:
        info = path.parent / SWEEP_INFO_FILE
        if info.is_file():
            try:
                record["sweep"] = json.loads(info.read_text()).get("sweep")
            except json.JSONDecodeError:
                pass
    record.setdefault("run_dir", str(path.parent.resolve()))
    if record.get("run_dir") is None:
        record["run_dir"] = str(path.parent.resolve())
    return record


def raw_record(run_dir: PathLike) -> Optional[dict]:
    """The JSON object in ``<run_dir>/result.json`` without validation (``None`` when missing, broken or not an
    object): for bookkeeping that must work on a half-valid record (what to do with a run, its error line)."""
    try:
        data = json.loads((Path(run_dir) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_status(run_dir: PathLike) -> str:
    """The status of the run in ``run_dir``: a record's status, ``"missing"`` or ``"corrupt"``.

    Reads only the ``status`` key, so a partly valid record still tells a sweep what to do with it.
    """
    if not (Path(run_dir) / RESULT_FILE).is_file():
        return "missing"
    status = (raw_record(run_dir) or {}).get("status")
    return status if status in STATUSES else "corrupt"


def find_record_files(paths: Iterable[PathLike]) -> list[Path]:
    """Every ``result.json`` under ``paths`` (files are taken as they are; directories are walked)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob(RESULT_FILE)))
        else:
            raise MissingFileError(f"no such file or directory: {p} (give run directories, sweep directories or result.json files)")
    return found


def load_records(paths: Union[PathLike, Sequence[PathLike]], strict: bool = True) -> list[dict]:
    """Load every record under ``paths`` (directories are walked for ``result.json``).

    Records are deduplicated by their resolved file path and returned sorted by (task, method, seed,
    run_dir), so a table built from them does not depend on file-system order. With ``strict=False``
    an invalid record is skipped with a warning instead of raising :class:`RecordError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records, seen = [], set()
    for f in find_record_files(paths):
        key = f.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            if f.suffix == ".jsonl":  # packed records behind a table (da table --save-records)
                from da.runs.packed import read_packed

                records.extend(read_packed(f))
                continue
            records.append(read_record(f))
        except RecordError as err:
            if strict:
                raise
            import warnings

            warnings.warn(f"skipping invalid record: {err}", stacklevel=2)
    records.sort(key=lambda r: (r["task"], r["method"], -1 if r["seed"] is None else r["seed"], str(r.get("run_dir"))))
    return records


def metric_value(record: dict, key: str) -> float:
    """``record["metrics"][key]`` as a float (NaN when absent or null)."""
    value = record.get("metrics", {}).get(key)
    return float("nan") if value is None else float(value)


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def write_record(run_dir: PathLike, record: Dict[str, Any]) -> Path:
    """Write ``<run_dir>/result.json`` atomically and durably (a reader never sees half a record)."""
    return write_json_atomic(Path(run_dir) / RESULT_FILE, record)


def update_record(run_dir: PathLike, **fields: Any) -> Optional[dict]:
    """Set ``fields`` in the record of ``run_dir`` (read, update, atomic write); ``None`` when it has no record."""
    record = raw_record(run_dir)
    if record is None:
        return None
    record.update(fields)
    write_record(run_dir, record)
    return record


def git_commit(path: Optional[Path] = None) -> Optional[str]:
    """The commit of the `da` checkout (or ``path``), with ``-dirty`` when it has uncommitted changes; None outside git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> Dict[str, Optional[str]]:
    """Versions of Python and the packages a result depends on (``None`` when not installed)."""
    import importlib.metadata as md

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for pkg in ("da", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "numpy", "transformers", "wandb"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``started_at`` / ``finished_at``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
