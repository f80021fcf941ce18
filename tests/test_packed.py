"""Records behind tables: ``da table --error sem``, ``--save-records`` / ``.jsonl`` round trips, and every README
table rebuilt byte for byte from its shipped records (``results/<sweep>.jsonl``)."""

from __future__ import annotations

import json
from pathlib import Path

from da.experiments.commands import table_main
from da.runs.packed import pack, read_packed, write_packed
from da.runs.record import load_records
from da.experiments.tables import make_table
from tests.test_tables import stored  # noqa: F401 - the fixture: 4 cells x 3 seeds + one failed run


def _refresh_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("refresh_readme", Path(__file__).resolve().parents[1] / "results"
                                                  / "refresh_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


refresh = _refresh_module()  # the one README-table parser (results/refresh_readme.py)


def readme_tables(text: str) -> list[tuple[str, list[str], str]]:
    return [t[:3] for t in refresh.readme_tables(text)]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"


def test_sem_is_std_over_sqrt_n(stored):  # noqa: F811
    table = make_table(load_records(stored), error="sem")
    # sem = std / sqrt(3): 3.606 -> 2.082, 2.646 -> 1.528, 1 -> 0.577 (stds in tests/test_tables.py)
    assert table.splitlines()[2:4] == ["| mnist->usps | 73.0 ± 2.1 | **83.0 ± 1.5** |",
                                       "| usps->mnist | **61.0 ± 0.6** | 58.0 ± 1.5 |"]
    assert "mean ± standard error of the mean (sample std / sqrt(n)) over n=3 seeds" in table
    assert "ddof" not in table


def test_packed_records_rebuild_the_table_byte_for_byte(stored, tmp_path, capsys):  # noqa: F811
    assert table_main([str(stored), "--save-records", str(tmp_path / "t.jsonl"), "--error", "sem"]) == 0
    from_runs = capsys.readouterr().out
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 13  # 12 finished + 1 failed
    first = json.loads(lines[0])
    assert set(first) == {"schema", "status", "task", "method", "seed", "config_hash", "metrics", "run_dir"}
    assert table_main([str(tmp_path / "t.jsonl"), "--error", "sem"]) == 0
    assert capsys.readouterr().out == from_runs  # the failed run is still counted in the caption
    assert "Excluded: 1 failed run." in from_runs
    # re-packing the packed records gives the same file
    write_packed(tmp_path / "again.jsonl", read_packed(tmp_path / "t.jsonl"))
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "t.jsonl").read_text()


def test_pack_keeps_sweep_params_and_the_failed_error_line():
    rec = {"schema": 1, "status": "failed", "task": "a->b", "method": "dann", "seed": 2, "metrics": {},
           "error": "Traceback\n  ...\nRuntimeError: out of memory", "config": {"big": 1}, "history": [{"step": 1}],
           "run_dir": "/x/runs/sweeps/g/abc123", "sweep": {"name": "g", "params": {"model.lr": 0.1}}}
    assert pack(rec) == {"schema": 1, "status": "failed", "task": "a->b", "method": "dann", "seed": 2,
                         "config_hash": None, "metrics": {}, "run_dir": "g/abc123",
                         "sweep": {"params": {"model.lr": 0.1}}, "error": "RuntimeError: out of memory"}


def test_readme_table_parser_on_a_known_text(stored, tmp_path, capsys):  # noqa: F811
    table_main([str(stored), "--save-records", str(tmp_path / "x.jsonl")])
    printed = capsys.readouterr().out
    text = f"# t\n\n```bash\nda sweep e.yaml\nda table runs/sweeps/x  # note\n```\n\n{printed}\nmore text\n"
    (name, args, table), = readme_tables(text)
    assert (name, args, table) == ("x", [], printed)
    table_main([str(tmp_path / f"{name}.jsonl"), *args])
    assert capsys.readouterr().out == table


def test_refresh_rewrites_a_stale_readme_table_from_its_records(stored, tmp_path, capsys):  # noqa: F811
    table_main([str(stored), "--save-records", str(tmp_path / "x.jsonl")])
    printed = capsys.readouterr().out
    stale = printed.replace("73.0", "99.9")
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\n```bash\nda table runs/sweeps/x\n```\n\n{stale}\nafter\n")
    assert refresh.main(["--readme", str(readme), "--results", str(tmp_path)]) == 1  # check mode: stale
    assert refresh.main(["--readme", str(readme), "--results", str(tmp_path), "--write"]) == 0
    assert readme.read_text() == f"# t\n\n```bash\nda table runs/sweeps/x\n```\n\n{printed}\nafter\n"
    assert refresh.main(["--readme", str(readme), "--results", str(tmp_path)]) == 0


def test_every_readme_table_is_rebuilt_byte_for_byte_from_its_shipped_records():
    """Each README table printed by `da table` has its records in results/<sweep>.jsonl (a table without them belongs
    in docs/results_archive.md), and `da table` on those records prints exactly the README's text."""
    tables = readme_tables((REPO / "README.md").read_text())
    assert len(tables) >= 2, [t[0] for t in tables]  # JDA digits under TLlib's recipe, Amazon features (at least)
    missing = [name for name, _, _ in tables if not (RESULTS / f"{name}.jsonl").is_file()]
    assert not missing, f"README tables without shipped records (results/<sweep>.jsonl): {missing}"
    for name, args, table in tables:
        assert refresh.table_from_records(name, args, RESULTS) == table, f"README table of {name} differs from records"


def test_papers_tables_with_shipped_records_are_rebuilt_from_them():
    """A `papers/*/README.md` table whose sweep has records in results/ prints exactly as written (papers/dann_amazon's
    72-run sweep has no shipped records yet, so its table is not checked)."""
    checked = 0
    for page in sorted((REPO / "papers").glob("*/README.md")):
        for name, args, table in readme_tables(page.read_text()):
            if (RESULTS / f"{name}.jsonl").is_file():
                assert refresh.table_from_records(name, args, RESULTS) == table, f"{page}: table of {name} differs"
                checked += 1
    assert checked >= 1  # papers/adda_mnist_usps from the JDA records


def _packed(path, rows):
    """rows: (task, method, seed, target accuracy in [0, 1]) -> a packed records file."""
    write_packed(path, [{"schema": 1, "status": "finished", "task": t, "method": m, "seed": s, "config_hash": None,
                         "metrics": {"test/target_acc": a}} for t, m, s, a in rows])


def test_help_where_table_from_hand_made_records(tmp_path):
    """JDA means per direction with the difference from ERM, the Amazon mean of complete seeds' pair means, pairs
    above ERM's per-pair mean, ``n=`` below 3 seeds, rows by the JDA mean (best first), Amazon-only rows last."""
    mu, um = refresh.JDA_TASKS
    _packed(tmp_path / "jda_tllib.jsonl",
            [(mu, "erm", s, a) for s, a in enumerate((0.80, 0.82, 0.84))]
            + [(um, "erm", s, a) for s, a in enumerate((0.60, 0.70, 0.80))]
            + [(mu, "dann", 0, 0.90), (mu, "dann", 1, 0.92), (um, "dann", 0, 0.95), (um, "dann", 1, 0.97)]
            + [(mu, "mcc", s, 0.95) for s in range(3)] + [(um, "mcc", s, 0.99) for s in range(3)])
    pairs = [f"amazon/{i}" for i in range(12)]
    _packed(tmp_path / "amazon_dann_methods.jsonl",
            [(t, "erm", s, 0.75) for t in pairs for s in range(3)]
            + [(t, "dann", s, 0.80 if i < 4 else 0.70) for i, t in enumerate(pairs) for s in range(3)]
            + [(t, "coral", 0, 0.76) for t in pairs] + [(pairs[0], "coral", 1, 0.99)])  # seed 1 incomplete
    lines = refresh.help_where_table(tmp_path).splitlines()
    assert lines[2:] == [
        "| erm | 82.0 | 70.0 | 75.0 | — |",
        "| mcc | 95.0 (+13.0) | 99.0 (+29.0) | — | — |",
        "| dann | 91.0 (+9.0) n=2 | 96.0 (+26.0) n=2 | 73.3 (-1.7) | 4 / 12 |",
        "| coral | — | — | 76.0 (+1.0) n=1 | 12 / 12 |"]


def test_readme_help_where_table_is_rebuilt_from_the_shipped_records():
    text = (REPO / "README.md").read_text()
    span = refresh.help_where_span(text)
    assert span is not None, "README.md lost its help-where markers"
    assert text[span[0]:span[1]] == refresh.help_where_table(RESULTS)
