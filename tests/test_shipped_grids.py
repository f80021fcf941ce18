"""Every shipped sweep grid expands, its configs exist and compose, and the run count the docs state is the one it has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from da.runs.sweep import spec as S

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `([\w./-]+\.yaml)` \|.*\| ([^|]*?)(\d[\d,]*) \|$")


def _documented_counts() -> dict:
    rows = {}
    for line in (REPO / "docs" / "experiments.md").read_text().splitlines():
        m = ROW.match(line.strip())
        if m:
            rows[m.group(1)] = int(m.group(3).replace(",", ""))
    return rows


DOCUMENTED = _documented_counts()
GRIDS = sorted(p.name for p in (REPO / "experiments").glob("*.yaml"))


def test_the_docs_table_lists_every_grid():
    assert DOCUMENTED, "docs/experiments.md's 'Ready grids' table was not found"
    assert sorted(DOCUMENTED) == GRIDS


@pytest.mark.parametrize("name", GRIDS)
def test_grid_expands_to_its_documented_count(name, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths in the grids are relative to the repository root
    runs = S.expand(S.load_sweep(REPO / "experiments" / name))
    assert len(runs) == DOCUMENTED[name]
    assert len({r.hash for r in runs}) == len(runs)
    for run in runs:
        assert all(Path(f).is_file() for f in run.files)
        assert "model" in run.config and "data" in run.config, (run.params, sorted(run.config))
