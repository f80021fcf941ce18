"""da plot param: a metric against a sweep parameter (numbers per task / method / value, the PNG, the errors)."""

from __future__ import annotations

import json
import math

import pytest

from da.experiments.commands import plot_main
from da.experiments.plots import param_series, plot_param


def _rec(method, k, seed, acc, task="a->b", alpha=None, status="finished"):
    params = {"data.target_labeled_per_class": k}
    if alpha is not None:
        params["model.losses[0].init_args.alpha"] = alpha
    return {"schema": 1, "status": status, "task": task, "method": method, "seed": seed, "config_hash": "h",
            "metrics": {"test/target_acc": acc}, "history": [], "error": None if status != "failed" else "x",
            "sweep": {"name": "s", "params": params}}


RECORDS = [
    _rec("finetune", None, 0, 0.80), _rec("finetune", None, 1, 0.84),
    _rec("finetune", 25, 0, 0.86), _rec("finetune", 100, 0, 0.90), _rec("finetune", 100, 1, 0.92),
    _rec("l2sp", 100, 0, 0.91, alpha=1.0), _rec("l2sp", 100, 0, 0.50, alpha=0.01),
    _rec("finetune", 25, 1, 0.10, status="failed"),            # failed: left out
    _rec("frozen", 25, 0, 0.70, task="c->d"),
]


def test_series_means_stds_order_and_split_labels():
    s = param_series(RECORDS, "data.target_labeled_per_class", by=["model.losses[0].init_args.alpha"])
    assert sorted(s) == ["a->b", "c->d"]
    ft = s["a->b"]["finetune"]
    assert [p[0] for p in ft] == [None, 25, 100]                     # None first, then numbers ascending
    assert ft[0][1] == pytest.approx(82.0) and ft[0][2] == pytest.approx(math.sqrt(8.0)) and ft[0][3] == 2
    assert ft[1][1:] == (pytest.approx(86.0), 0.0, 1)                # the failed seed is not counted
    assert ft[2][1] == pytest.approx(91.0)
    assert s["a->b"]["l2sp alpha=1.0"] == [(100, pytest.approx(91.0), 0.0, 1)]
    assert s["a->b"]["l2sp alpha=0.01"][0][1] == pytest.approx(50.0)
    assert s["c->d"] == {"frozen": [(25, pytest.approx(70.0), 0.0, 1)]}


def test_missing_parameter_names_the_known_ones():
    with pytest.raises(ValueError, match="runs have: data.target_labeled_per_class"):
        param_series(RECORDS, "model.lr")


def test_plot_and_command_write_a_png(tmp_path):
    out = plot_param(RECORDS, "data.target_labeled_per_class", tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for i, r in enumerate(RECORDS):
        d = tmp_path / "sweep" / f"run{i}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
    assert plot_main(["param", str(tmp_path / "sweep"), "--param", "data.target_labeled_per_class",
                      "-o", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").stat().st_size > 10_000
