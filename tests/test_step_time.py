"""benchmarks/step_time.py: the summary arithmetic, the block clock, and (slow) the script's last JSON line."""

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_time.py"


def _load():
    spec = importlib.util.spec_from_file_location("step_time_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_medians_iqr_and_overhead():
    st = _load()
    # per round (cpu s, wall s) per step: trainer 11, 12, 13 ms vs bare 10, 10, 10 ms
    times = {"erm": {"trainer": [(0.011, 0.022), (0.013, 0.026), (0.012, 0.024)],
                     "bare": [(0.010, 0.020)] * 3}}
    row = st.summarise(times, cuda=False)["erm"]
    assert row["trainer_ms"] == pytest.approx(12.0) and row["bare_ms"] == pytest.approx(10.0)
    assert row["trainer_ms_iqr"] == pytest.approx(1.0)  # quartiles 11.5 and 12.5
    assert row["overhead"] == pytest.approx(1.2) and row["overhead_wall"] == pytest.approx(1.2)
    row = st.summarise({"m": {"trainer": [(0.001, 0.030)], "bare": [(0.002, 0.020)]}}, cuda=True)["m"]
    assert row["overhead"] == pytest.approx(1.5)  # on CUDA the ratio is of wall time


def test_paired_overhead_cancels_a_load_that_drifts_between_rounds():
    st = _load()
    # the machine slows down 2x and 3x over the rounds; within each round the trainer costs 2% more than bare
    bare = [(0.100, 0.1), (0.200, 0.2), (0.300, 0.3)]
    trainer = [(1.02 * c, w) for c, w in bare]
    times = {"dann": {"trainer": trainer, "bare": bare}}
    row = st.summarise(times, cuda=False)["dann"]
    assert row["overhead_paired"] == pytest.approx(1.02) and row["overhead_paired_iqr"] == pytest.approx(0.0)
    # the pairing is by round: blocks of different rounds are never divided by each other
    times = {"dann": {"trainer": [trainer[2], trainer[0], trainer[1]], "bare": [bare[1], bare[0], bare[2]]}}
    row = st.summarise(times, cuda=False)["dann"]
    assert row["overhead"] == pytest.approx(1.02)  # same medians either way
    assert row["overhead_paired"] == pytest.approx(statistics.median([1.02 * 3 / 2, 1.02, 1.02 * 2 / 3]))


def test_block_reads_the_clock_after_warmup_and_at_the_end():
    st = _load()
    block = st._Block(warmup=2, steps=3, device=torch.device("cpu"))
    for _ in range(5):
        block.tick()
    cpu, wall = block.per_step()
    assert cpu >= 0 and wall >= 0 and block.start is not None and block.end is not None
    short = st._Block(warmup=2, steps=3, device=torch.device("cpu"))
    short.tick()
    with pytest.raises(RuntimeError, match="ran 1 of 5 steps"):
        short.per_step()


@pytest.mark.slow
def test_script_ends_with_one_json_line(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--methods", "erm", "dann", "--rounds", "1", "--steps", "2",
                          "--warmup", "1", "--batch-size", "4", "--log-every", "2", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=600, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"erm", "dann"}
    for row in last.values():
        assert set(row) == {"trainer_ms", "bare_ms", "overhead"} and row["bare_ms"] > 0
        assert row["overhead"] == pytest.approx(row["trainer_ms"] / row["bare_ms"], rel=1e-3)
    assert (tmp_path / "r.json").exists() and "| erm |" in (tmp_path / "r.md").read_text()
