"""``metrics.csv`` across resumes: the rows logged before a kill survive the resumed segment.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. A resumed ``da fit`` therefore reads the
file first and writes back the rows logged *before* the checkpoint it resumes from (``step < global_step``; later
rows are logged again by the resumed run, which replays those steps), then lets the logger append. A run killed
again keeps its earlier rows the same way, so after any number of kills the file holds every row of an
uninterrupted run, once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Tuple

from da.runs.io import write_text_atomic

METRICS_FILE = "metrics.csv"


def read_rows(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """(header, rows) of a CSV file; ``([], [])`` when it is missing or empty."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [dict(r) for r in reader]
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        return [], []


def _step(row: Dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def rows_before(path: Path, step: int) -> Tuple[List[str], List[Dict[str, str]]]:
    """(sorted header, rows) of ``path`` logged before global step ``step`` (rows without a step are dropped)."""
    header, rows = read_rows(path)
    kept = [r for r in rows if _step(r) < step]
    return sorted(k for k in header if k), kept


def write_rows(path: Path, header: List[str], rows: List[Dict[str, str]]) -> None:
    """Write ``rows`` under ``header`` atomically (the layout ``CSVLogger`` appends to)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
