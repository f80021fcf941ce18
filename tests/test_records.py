"""Run records (result.json schema 1): validation errors, loading, sweep annotation, ordering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from da.runs.record import RecordError, load_records, read_record, run_status, validate_record


def record(**kw) -> dict:
    base = {"schema": 1, "status": "finished", "task": "jda/mnist->jda/usps", "method": "dann", "seed": 0,
            "config_hash": "abc", "metrics": {"test/target_acc": 0.7, "val/source_acc": 0.9},
            "history": [{"step": 10, "epoch": 0, "val/source_acc": 0.8}], "error": None}
    base.update(kw)
    return base


def put(run_dir: Path, rec: dict | str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return run_dir


def test_valid_record_passes_unchanged():
    r = record()
    assert validate_record(r) is r


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": 2}, "has schema 2; this version of da reads schema 1"),
        ({"status": "done"}, "unknown status 'done'; known: finished, failed, running"),
        ({"metrics": {"test/target_acc": "0.7"}}, "metric 'test/target_acc' is '0.7'; metrics must be numbers"),
        ({"seed": "0"}, "'seed' is '0' \\(str\\), expected int or NoneType"),
        ({"status": "failed", "error": None}, "status 'failed' without an 'error'"),
        ({"history": [{"epoch": 1}]}, r"history\[0\] is .* int 'step'"),
        ({"wall_time_s": "fast"}, "'wall_time_s' is 'fast'"),
        ({"sweep": {"name": "x", "params": [1]}}, "sweep.params must be an object"),
    ],
)
def test_invalid_records_name_the_problem(change, message):
    with pytest.raises(RecordError, match=message):
        validate_record(record(**change), "x/result.json")


def test_missing_key_is_named():
    r = record()
    del r["task"]
    with pytest.raises(RecordError, match="in run/result.json has no 'task'"):
        validate_record(r, "run/result.json")


def test_load_records_walks_sorts_dedupes_and_attaches_sweep_info(tmp_path):
    put(tmp_path / "sweep/b", record(seed=1, method="erm"))
    put(tmp_path / "sweep/a", record(seed=2, method="erm"))
    d = put(tmp_path / "sweep/c", record(seed=0, method="dann", sweep=None))
    (d / "sweep.json").write_text(json.dumps({"sweep": {"name": "abl", "params": {"seed": 0, "w": 0.1}}}))
    put(tmp_path / "sweep/c/nested/deeper", record(task="b->a", seed=0))
    records = load_records([tmp_path / "sweep", tmp_path / "sweep/a/result.json", tmp_path / "sweep/a"])
    assert [(r["task"], r["method"], r["seed"]) for r in records] == [
        ("b->a", "dann", 0), ("jda/mnist->jda/usps", "dann", 0),
        ("jda/mnist->jda/usps", "erm", 1), ("jda/mnist->jda/usps", "erm", 2)]
    assert records[1]["sweep"] == {"name": "abl", "params": {"seed": 0, "w": 0.1}}
    assert records[1]["run_dir"] == str((tmp_path / "sweep/c").resolve())


def test_broken_records(tmp_path):
    d = put(tmp_path / "runs/x", '{"schema": 1, "status": "fin')
    with pytest.raises(RecordError, match="not valid JSON .*killed while writing"):
        load_records(tmp_path / "runs")
    put(tmp_path / "runs/y", record())
    with pytest.warns(UserWarning, match="skipping invalid record"):
        assert len(load_records(tmp_path / "runs", strict=False)) == 1
    assert run_status(d) == "corrupt"
    assert run_status(tmp_path / "runs/y") == "finished"
    assert run_status(tmp_path / "nothing") == "missing"
    with pytest.raises(RecordError, match="no record at"):
        read_record(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_records(tmp_path / "nope")


# ------------------------------------------------------------------ pictures drawn from a run's records


def test_metrics_csv_is_read_sparse_and_sorted(tmp_path):
    from da.experiments.plots import find_metrics_csv, read_metrics_csv

    run = tmp_path / "run"
    (run / "version_0").mkdir(parents=True)
    (run / "version_0/metrics.csv").write_text(
        "epoch,step,train/loss,val/source_acc\n0,20,1.5,\n0,10,2.0,\n0,19,,0.8\n1,,0.3,\n")
    path = find_metrics_csv(run)
    assert path == run / "version_0/metrics.csv"
    assert read_metrics_csv(path) == {"train/loss": [(10, 2.0), (20, 1.5)], "val/source_acc": [(19, 0.8)]}


def test_plot_curves_and_tsne_write_pngs(tmp_path):
    import numpy as np

    from da.experiments.plots import _ema, _subsample, plot_curves, plot_tsne

    assert _ema([1.0, 3.0, 3.0], 0.5) == [1.0, 2.0, 2.5]
    s, t = _subsample(3000, 500, 2000, np.random.default_rng(0))
    assert (len(s), len(t)) == (1500, 500) and np.all(np.diff(s) > 0)
    s, t = _subsample(10, 20, 2000, np.random.default_rng(0))
    assert (len(s), len(t)) == (10, 20)

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train/loss,train/cls,val/source_acc,val/target_acc\n"
                                     + "".join(f"0,{i},{2 - i / 10},{1.5 - i / 10},," + "\n" for i in range(10))
                                     + "0,9,,,0.9,0.7\n")
    out = plot_curves([run], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 3
    out = plot_tsne(fs, ft, rng.integers(0, 3, 40), rng.integers(0, 3, 30), tmp_path / "tsne.png", "t", max_points=50)
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="same d"):
        plot_tsne(fs, ft[:, :4], path=tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        plot_curves([tmp_path / "empty"], tmp_path / "y.png")
