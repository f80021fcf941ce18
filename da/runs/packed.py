"""Compact records behind a table: one JSON line per run with only what ``da table`` reads.

``da table <sweep dir> --save-records results/<table>.jsonl`` writes them; ``da table results/<table>.jsonl`` (any
path ending in ``.jsonl``) reads them back and builds the same table, byte for byte, without the run directories.
A packed record keeps ``schema``, ``status``, ``task``, ``method``, ``seed``, ``config_hash``, the ``recipe``, the final ``metrics``
(every scalar: any ``--metric`` and every selection rule still work), the sweep ``params`` (for ``--by``), the run
directory's last two path parts (the candidates' tie-break order) and, for a failed run, its error's last line; it
drops the config, the per-validation ``history`` (so ``--select-over checkpoints`` needs the full records), versions,
split info and diagnostics. Lines are sorted and keys ordered, so the file is stable under re-packing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List

from da.runs.io import write_text_atomic
from da.runs.record import RecordError, validate_record

SUFFIX = ".jsonl"
KEPT = ("schema", "status", "task", "method", "seed", "config_hash", "recipe", "metrics")


def pack(record: dict) -> dict:
    """The compact form of one record (see the module docstring)."""
    out = {k: record.get(k) for k in KEPT}
    out["recipe"] = record.get("recipe") or (record.get("config") or {}).get("recipe")
    if out["recipe"] is None:
        del out["recipe"]
    run_dir = record.get("run_dir")
    if run_dir:
        out["run_dir"] = "/".join(Path(run_dir).parts[-2:])
    params = (record.get("sweep") or {}).get("params")
    if params:
        out["sweep"] = {"params": params}
    if record.get("status") == "failed":
        out["error"] = (str(record.get("error") or "failed").strip().splitlines() or ["failed"])[-1]
    return out


def write_packed(path: str | Path, records: Iterable[dict]) -> Path:
    """Write ``records`` packed, one per line, sorted by (task, method, seed, run_dir)."""
    rows = sorted((pack(r) for r in records), key=lambda r: (r["task"], r["method"], str(r["seed"]),
                                                               str(r.get("run_dir"))))
    return write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_packed(path: str | Path) -> List[dict]:
    """The records of a ``.jsonl`` file, each validated like a ``result.json``."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{i} is not valid JSON ({err})") from None
        out.append(validate_record(record, f"{path}:{i}"))
    return out
