"""The progress display: plain lines off a terminal, one redrawn line on it, ETA arithmetic, the run's step bar,
the sweep's ETA, and the silenced false / advertising messages."""

import io
import json
import logging
import warnings

from da.progress import SweepTicker, Ticker, eta_seconds, fmt_duration, iterate, write_state
from da.quiet import quiet_known_noise
from tests.helpers import fit_args


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_eta_and_durations():
    assert eta_seconds(50, 200, 25.0) == 75.0  # 150 left at 2 per second
    assert eta_seconds(150, 200, 25.0, start=100) == 25.0  # a resumed run: the rate of this process only
    assert eta_seconds(0, 200, 5.0) is None
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(65) == "1:05" and fmt_duration(None) == "?"


def test_plain_lines_every_fraction_when_not_a_terminal():
    out, clock = io.StringIO(), FakeClock()
    t = Ticker(200, desc="fit", unit="steps", stream=out, every_fraction=0.1, every_s=1e9, clock=clock)
    assert not t.tty
    for step in range(1, 201):
        clock.t = step * 0.5
        t.update(step, extra=f"loss {1 / step:.3f}")
    t.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("fit  20/200 steps  10%  2 steps/s  elapsed 0:10  ETA 1:30  loss 0.050")
    assert lines[-1].startswith("fit  200/200 steps 100%") and "ETA 0:00" in lines[-1]


def test_plain_lines_every_k_seconds():
    out, clock = io.StringIO(), FakeClock()
    t = Ticker(10_000, stream=out, every_fraction=0.5, every_s=30, clock=clock)
    for step in range(1, 101):
        clock.t = step * 10.0  # 10 s per step: a line every third step
        t.update(step)
    assert len(out.getvalue().splitlines()) == 33


def test_terminal_redraws_one_line():
    out, clock = io.StringIO(), FakeClock()
    t = Ticker(50, desc="fit", unit="steps", stream=out, tty=True, clock=clock)
    for step in range(1, 51):
        clock.t = step * 1.0
        t.update(step)
    t.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 51 and "50/50 steps 100%" in text


def test_iterate_counts_items():
    out = io.StringIO()
    assert list(iterate(range(7), desc="maps", stream=out, every_fraction=1.0)) == list(range(7))
    assert out.getvalue().splitlines()[-1].startswith("maps  7/7 it 100%")


def test_run_shows_global_step_bar_and_writes_its_state(tmp_path, capsys):
    from da.cli import run_cli

    run_cli(fit_args(tmp_path / "run", ["--trainer.enable_progress_bar", "true"]))
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("fit  ")]
    assert steps and steps[-1].startswith("fit  40/40 steps 100%"), out[-2000:]
    assert "val/source_acc" in steps[-1] and "Epoch" not in out
    state = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert state["step"] == 40 and state["total"] == 40


def test_sweep_eta_from_finished_runs(tmp_path):
    clock, shown = FakeClock(), []
    s = SweepTicker(shown.append, total=5, every_s=0, clock=clock)
    s.start("a", str(tmp_path / "a"))
    clock.t = 10.0
    s.end("a", "finished")
    (tmp_path / "b").mkdir()
    write_state(tmp_path / "b", {"step": 5, "total": 10, "eta_s": 6.0})
    s.start("b", str(tmp_path / "b"))
    # 3 runs not started (3 x 10 s) + the running one half done (5 s)
    assert s.summary(left=3) == "ETA 0:35 (10 s/run over 1 finished)  b step 5/10 ETA 0:06"


def test_sweep_progress_line_carries_the_eta(tmp_path):
    from da.runs.sweep.jobs import Job, Progress

    out = io.StringIO()
    p = Progress(total=3, stream=out, name="g")
    p.ticker.every_s = 0
    job = Job(run_dir=str(tmp_path / "r1"), argv=[])
    p.start(job)
    p.end(job, "finished")
    p.close()
    assert out.getvalue().splitlines()[-1].startswith("[g] 1/3 done, 0 running, 0 failed, 2 left  ETA ")


def test_false_and_advertising_messages_are_silenced_and_nothing_else(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("Experiment logs directory /r/ exists and is not empty. Previous log files in this directory "
                      "will be deleted when the new ones are saved!")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("a real problem")
    assert [str(w.message) for w in seen] == ["a real problem"]
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
        log.info("GPU available: False, used: False")
    assert "Tip" not in caplog.text and "GPU available" in caplog.text
