"""Model selection per seed (DomainBed-style) with each validator, over runs and over checkpoints."""

from __future__ import annotations

import math

import pytest

from da.experiments.selection import VALIDATORS, get_validator, select_runs

# (seed, weight) -> validators and test metric. Designed so the rules disagree:
#   seed 0: source-val -> w0.1, oracle -> w1, entropy -> w1,   snd -> w0.1, bnm -> w1
#   seed 1: source-val -> w1,   oracle -> w0.1, entropy -> w0.1, snd -> w1, bnm -> w0.1
TABLE = {
    (0, 0.1): dict(src=0.90, tgt=0.70, ent=0.50, snd=0.30, bnm=0.60, test=0.71),
    (0, 1.0): dict(src=0.85, tgt=0.80, ent=0.40, snd=0.20, bnm=0.70, test=0.79),
    (1, 0.1): dict(src=0.80, tgt=0.75, ent=0.30, snd=0.10, bnm=0.90, test=0.74),
    (1, 1.0): dict(src=0.88, tgt=0.60, ent=0.60, snd=0.40, bnm=0.50, test=0.62),
}


def rec(seed, w, v, status="finished", task="a->b", method="dann", history=None):
    return {
        "schema": 1, "status": status, "task": task, "method": method, "seed": seed,
        "run_dir": f"/runs/{method}/{seed}/{w}", "error": "x" if status == "failed" else None,
        "metrics": {"val/source_acc": v["src"], "val/target_acc": v["tgt"], "val/target_entropy": v["ent"],
                    "val/target_snd": v["snd"], "val/target_bnm": v["bnm"], "test/target_acc": v["test"]},
        "history": history or [],
        "sweep": {"name": "s", "params": {"w": w, "seed": seed}},
    }


RECORDS = [rec(s, w, v) for (s, w), v in TABLE.items()]

EXPECTED = {  # validator -> weight chosen for seed 0, seed 1
    "source-val": (0.1, 1.0),
    "target-oracle": (1.0, 0.1),
    "entropy": (1.0, 0.1),
    "snd": (0.1, 1.0),
    "bnm": (1.0, 0.1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_validator_picks_the_right_run_per_seed(name):
    result = select_runs(RECORDS, validator=name)
    assert [(p.seed, p.params) for p in result.picks] == [(0, {"w": EXPECTED[name][0]}), (1, {"w": EXPECTED[name][1]})]
    assert [p.value for p in result.picks] == [TABLE[(0, EXPECTED[name][0])]["test"], TABLE[(1, EXPECTED[name][1])]["test"]]
    assert all(p.candidates == 2 for p in result.picks)


def test_validator_table_and_unknown_name():
    assert set(VALIDATORS) == {"source-val", "target-oracle", "entropy", "snd", "bnm"}
    assert [n for n, v in VALIDATORS.items() if v.uses_target_labels] == ["target-oracle"]
    assert get_validator("entropy").mode == "min"
    with pytest.raises(ValueError, match="unknown model-selection rule 'source_val'; did you mean 'source-val'"):
        get_validator("source_val")


def test_failed_and_running_runs_are_excluded_and_counted():
    bad = dict(src=0.99, tgt=0.99, ent=0.0, snd=9, bnm=9, test=0.99)
    records = RECORDS + [rec(0, 3.0, bad, status="failed"), rec(1, 3.0, bad, status="running")]
    result = select_runs(records)
    assert (result.n_failed, result.n_unfinished) == (1, 1)
    assert [p.params["w"] for p in result.picks] == [0.1, 1.0]


def test_ties_go_to_the_first_run_directory_and_missing_validator_ranks_last():
    v = dict(src=0.9, tgt=0.5, ent=0.5, snd=0.5, bnm=0.5, test=0.5)
    a, b = rec(0, 0.1, v), rec(0, 1.0, {**v, "test": 0.6})
    assert select_runs([b, a]).picks[0].record is a  # /runs/dann/0/0.1 < /runs/dann/0/1.0
    b["metrics"]["val/source_acc"] = None
    a["metrics"]["val/source_acc"] = 0.1
    assert select_runs([b, a]).picks[0].record is a
    a["metrics"]["val/source_acc"] = None
    with pytest.raises(ValueError, match=r"none has 'val/source_acc'; pick another rule"):
        select_runs([a, b])
    single = select_runs([a])  # one candidate needs no validator
    assert single.picks[0].record is a and math.isnan(single.picks[0].validator_value)


def test_groups_are_task_method_seed():
    v = dict(src=0.9, tgt=0.5, ent=0.5, snd=0.5, bnm=0.5, test=0.5)
    records = [rec(0, 0.1, v, task="a->b"), rec(0, 0.1, v, task="b->a"), rec(0, 0.1, v, method="erm")]
    assert [(p.task, p.method, p.seed) for p in select_runs(records).picks] == [
        ("a->b", "dann", 0), ("a->b", "erm", 0), ("b->a", "dann", 0)]


def test_checkpoint_level_selection_over_history():
    v = dict(src=0.9, tgt=0.5, ent=0.5, snd=0.5, bnm=0.5, test=0.5)
    h1 = [{"step": 100, "val/source_acc": 0.80, "val/target_acc": 0.60, "val/target_entropy": 0.9},
          {"step": 200, "val/source_acc": 0.93, "val/target_acc": 0.66, "val/target_entropy": 0.7}]
    h2 = [{"step": 100, "val/source_acc": 0.91, "val/target_acc": 0.72, "val/target_entropy": 0.5},
          {"step": 200, "val/source_acc": 0.92, "val/target_acc": 0.70, "val/target_entropy": 0.6}]
    records = [rec(0, 0.1, v, history=h1), rec(0, 1.0, v, history=h2)]
    pick = select_runs(records, metric="val/target_acc", over="checkpoints").picks[0]
    assert (pick.params["w"], pick.step, pick.value, pick.candidates) == (0.1, 200, 0.66, 4)
    pick = select_runs(records, validator="entropy", metric="val/target_acc", over="checkpoints").picks[0]
    assert (pick.params["w"], pick.step, pick.value) == (1.0, 100, 0.72)
    pick = select_runs(records, validator="target-oracle", metric="val/target_acc", over="checkpoints").picks[0]
    assert (pick.step, pick.value) == (100, 0.72)
    with pytest.raises(ValueError, match="'test/target_acc' is not logged per validation.*val/target_acc"):
        select_runs(records, metric="test/target_acc", over="checkpoints")
    with pytest.raises(ValueError, match="unknown selection granularity"):
        select_runs(records, over="epochs")
