"""Concurrency and faults: run-directory locks, two sweeps on one folder, kill -9 of a sweep, kill-and-resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import Callback

from da.errors import UserError
from da.runs import locks
from da.runs.cli_fit import run_cli
from da.runs.io import write_json_atomic
from tests.helpers import BLOBS_ARGS, fit_args

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


class SleepEveryStep(Callback):
    """Makes a tiny run slow enough to be killed halfway (used by the subprocess below)."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


FAKE_FIT = textwrap.dedent("""
    import json, os, sys, time
    args = sys.argv[1:]
    run_dir = args[args.index("--run_dir") + 1]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"run": os.path.basename(run_dir), "pid": os.getpid()}) + "\\n")
    base = {"schema": 1, "task": "a->b", "method": "erm", "seed": 0, "run_dir": run_dir, "error": None}
    json.dump({**base, "status": "running", "metrics": {}}, open(os.path.join(run_dir, "result.json"), "w"))
    with open(os.path.join(run_dir, "metrics.csv"), "w") as f:
        f.write("step,train/loss\\n")
        for step in range(5):
            f.write(f"{step},{1.0 / (step + 1)}\\n")
            f.flush()
            time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) / 5)
    json.dump({**base, "status": "finished", "metrics": {"test/target_acc": 0.5}},
              open(os.path.join(run_dir, "result.json"), "w"))
""")

SWEEP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from da.runs.sweep.plan import run_sweep
    from da.runs.sweep.spec import parse_sweep
    root = Path(sys.argv[1])
    spec = parse_sweep({"name": "s", "base": [str(root / "base.yaml")],
                        "grid": {"model.lr": [0.1, 0.2, 0.3, 0.4]}, "seeds": [0, 1]})
    def build(run_dir, resume):
        return [sys.executable, str(root / "fake_fit.py"), "--run_dir", str(run_dir)]
    s = run_sweep(spec, out=str(root / "out"), command_builder=build)
    print(json.dumps({"finished": s.finished, "elsewhere": s.elsewhere, "failed": s.failed,
                      "already": s.already_finished}))
""")


@pytest.fixture
def project(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {backbone: mlp}\ndata: {sources: [a], target: b}\n")
    (tmp_path / "fake_fit.py").write_text(FAKE_FIT)
    (tmp_path / "sweep.py").write_text(SWEEP)
    return tmp_path


def _sweep(root: Path, sleep: float) -> subprocess.Popen:
    env = {**ENV, "FAKE_LOG": str(root / "calls.jsonl"), "FAKE_SLEEP": str(sleep)}
    return subprocess.Popen([sys.executable, str(root / "sweep.py"), str(root)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _calls(root: Path) -> list:
    path = root / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")  # a zombie waiting for init to reap it is dead
    except (OSError, IndexError):
        return False


def test_two_concurrent_sweeps_launch_every_run_once(project):
    a, b = _sweep(project, 0.5), _sweep(project, 0.5)
    outs = [json.loads(p.communicate(timeout=240)[0].strip().splitlines()[-1]) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0
    runs = [c["run"] for c in _calls(project)]
    assert len(runs) == 8 and len(set(runs)) == 8  # every run launched exactly once
    assert sum(o["finished"] for o in outs) == 8 and all(o["failed"] == [] for o in outs)
    for run_dir in (project / "out" / "s").iterdir():
        assert json.loads((run_dir / "result.json").read_text())["status"] == "finished"
        rows = list(csv.reader((run_dir / "metrics.csv").open()))
        assert rows[0] == ["step", "train/loss"] and [r[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]
        assert all(len(r) == 2 for r in rows)


def test_kill_9_of_a_sweep_leaves_no_orphan_and_a_restart_finishes(project):
    sweep = _sweep(project, 60.0)
    deadline = time.time() + 60
    while not _calls(project) and time.time() < deadline:
        time.sleep(0.05)
    (first,) = _calls(project)
    assert _alive(first["pid"])
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 15
    while _alive(first["pid"]) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(first["pid"]), "the sweep's child outlived it"
    again = _sweep(project, 0.0)
    out = json.loads(again.communicate(timeout=240)[0].strip().splitlines()[-1])
    assert out["elsewhere"] == [] and out["failed"] == [] and out["finished"] == 8


def test_fit_refuses_a_run_directory_held_by_another_process(tmp_path):
    run = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from da.runs import locks; "
                               f"assert locks.try_lock({str(run)!r}) is not None; print('held', flush=True); "
                               "time.sleep(60)"], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"run directory {run} is in use by another live process \(pid "
                                            rf"{holder.pid}\)"):
            run_cli(fit_args(run, ["--trainer.max_steps", "5"]))
        assert locks.try_lock(run) is None
    finally:
        holder.kill()
        holder.wait()
    assert locks.try_lock(run) is not None  # released by the kernel with its holder
    locks.release(run)
    run_cli(fit_args(run, ["--trainer.max_steps", "5", "--trainer.val_check_interval", "5"]))
    assert json.loads((run / "result.json").read_text())["status"] == "finished"


def test_concurrent_atomic_writes_leave_one_whole_file(tmp_path):
    path = tmp_path / "result.json"

    def writer(k):
        for i in range(100):
            write_json_atomic(path, {"writer": k, "i": i, "pad": "x" * 5000})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads(path.read_text())
    assert data["i"] == 99 and len(data["pad"]) == 5000
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def _rows(path: Path) -> list:
    with path.open() as f:
        return sorted((tuple(sorted((k, v) for k, v in r.items() if v != "")) for r in csv.DictReader(f)))


def test_kill_and_resume_keeps_every_metrics_row_and_the_first_start(tmp_path):
    extra = ["--trainer.max_steps", "40", "--trainer.log_every_n_steps", "5"]
    run_cli(fit_args(tmp_path / "full", extra))
    cut = tmp_path / "cut"
    slow = json.dumps({"class_path": "tests.test_faults.SleepEveryStep", "init_args": {"seconds": 0.1}})
    proc = subprocess.Popen([sys.executable, "-c", "from da.cli import main; main()",
                             *fit_args(cut, [*extra, "--trainer.callbacks", slow])], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (cut / "checkpoints" / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # a few steps past the checkpoint of step 20
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = json.loads((cut / "result.json").read_text())
    assert first["status"] == "running" and [h["step"] for h in first["history"]] == [20]
    run_cli(fit_args(cut, [*extra, "--ckpt_path", "last"]))
    rec = json.loads((cut / "result.json").read_text())
    assert rec["status"] == "finished" and [h["step"] for h in rec["history"]] == [20, 40]
    assert _rows(cut / "metrics.csv") == _rows(tmp_path / "full" / "metrics.csv")
    assert len(rec["segments"]) == 2 and rec["started_at"] == first["started_at"]
    assert rec["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in rec["segments"]), abs=0.01)
    assert rec["segments"][0]["wall_time_s"] > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_an_in_process_sweep_and_leaves_the_run_resumable(tmp_path, sig):
    """Lightning turns a KeyboardInterrupt inside fit into sys.exit(1); the in-process launcher must still stop the
    sweep (exit 130) rather than record a failure and start the next run, and the interrupted run must resume."""
    from da.runs.lifecycle import decide
    (tmp_path / "base.yaml").write_text(textwrap.dedent("""
        trainer:
          max_steps: 400
          val_check_interval: 200
          enable_progress_bar: false
          enable_model_summary: false
          accelerator: cpu
          callbacks: [{class_path: tests.test_faults.SleepEveryStep, init_args: {seconds: 0.05}}]
        model: {backbone: mlp, backbone_args: {hidden: [16]}}
        data: {sources: [blobs/0], target: blobs/1, batch_size: 32}
    """))
    (tmp_path / "sweep.yaml").write_text("name: s\nbase: [base.yaml]\ngrid: {model.lr: [0.001, 0.002]}\nseeds: [0]\n")
    proc = subprocess.Popen([sys.executable, "-m", "da.cli", "sweep", str(tmp_path / "sweep.yaml"), "--launcher",
                             "inprocess", "--out", str(tmp_path / "out")], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    first = None
    while time.time() < deadline and first is None:  # wait until one run is training (its metrics.csv has rows)
        for d in (tmp_path / "out" / "s").glob("*"):
            csv_path = next(d.glob("**/metrics.csv"), None)
            if (d / "result.json").is_file() and csv_path is not None and len(csv_path.read_text().splitlines()) > 1:
                first = d
        time.sleep(0.2)
    assert first is not None, "no run started"
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "interrupted; run the same command again" in err
    others = [d for d in (tmp_path / "out" / "s").iterdir() if d.is_dir() and d != first]
    assert len(others) == 1 and not (others[0] / "result.json").exists()  # the next run was never started
    # interrupted, not failed: resumed from last.ckpt when a validation wrote one, else run again
    resumable = "resume" if (first / "checkpoints" / "last.ckpt").is_file() else "run"
    assert decide(first) == ("interrupted", resumable)


KILLER = textwrap.dedent("""
    import os
    import torch

    class Net(torch.nn.Module):
        '''A backbone whose construction kills the process, as the kernel's OOM killer would a worker.'''

        def __init__(self, **kwargs):
            super().__init__()
            os._exit(9)
""")

TINY_RUN = ("trainer: {max_steps: 10, val_check_interval: 10, enable_progress_bar: false, enable_model_summary: false,"
            " accelerator: cpu}\nmodel: {backbone: mlp, backbone_args: {hidden: [8]}}\n"
            "data: {sources: [blobs/0], target: blobs/1, batch_size: 16}\n")


def _sweep_cli(tmp_path: Path, sweep: Path, *extra: str) -> list:
    return [sys.executable, "-m", "da.cli", "sweep", str(sweep), "--launcher", "inprocess", "--out",
            str(tmp_path / "out"), *extra]


def test_inprocess_jobs_share_the_runs_out_and_a_dying_worker_takes_only_its_run(tmp_path):
    """`--launcher inprocess --jobs 2`: two worker processes run each run once; one whose worker is killed (os._exit
    in its backbone, as the OOM killer would) gets a failed record saying so, its worker is replaced, the others
    finish, and the workers' output is kept for a look; a sweep without deaths leaves no worker files behind."""
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "base.yaml").write_text(TINY_RUN)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nbase: [base.yaml]\ngrid:\n  - {model.lr: [0.01, 0.02, 0.03]}\n"
                     "  - {model.lr: [0.01], model.backbone: [killer.Net]}\nseeds: [0]\n")
    env = {**ENV, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    env.pop("OMP_NUM_THREADS")  # the launcher sets each worker's share (2 cores // 2 jobs here: 1)
    proc = subprocess.run(_sweep_cli(tmp_path, sweep, "--jobs", "2"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "4 launched: 3 finished, 1 failed" in proc.stderr
    runs = [d for d in (tmp_path / "out" / "s").iterdir() if d.is_dir() and not d.name.startswith(".")]
    records = {d.name: json.loads((d / "result.json").read_text()) for d in runs}
    assert sorted(r["status"] for r in records.values()) == ["failed", "finished", "finished", "finished"]
    for d in runs:  # each run was started once, by one worker
        assert (d / "sweep.log").read_text().count("(in process) da fit") == 1, d.name
    (dead,) = [r for r in records.values() if r["status"] == "failed"]
    assert dead["error"].splitlines()[-1].endswith("died with status 9 while training this run")
    assert f"FAILED {dead['config_hash']}: da sweep: its worker process" in proc.stderr
    workers = tmp_path / "out" / "s" / ".workers"
    assert len(list(workers.glob("*.log"))) == 2 and "exited with status 9" in proc.stderr

    sweep.write_text("name: t\nbase: [base.yaml]\ngrid: {model.lr: [0.01, 0.02]}\nseeds: [0]\n")
    proc = subprocess.run(_sweep_cli(tmp_path, sweep, "--jobs", "2"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 launched: 2 finished, 0 failed" in proc.stderr
    assert not (tmp_path / "out" / "t" / ".workers").exists()


def test_sigterm_stops_an_inprocess_jobs_sweep_its_workers_and_leaves_both_runs_resumable(tmp_path):
    from da.runs.lifecycle import decide

    (tmp_path / "base.yaml").write_text(TINY_RUN.replace("max_steps: 10", "max_steps: 400").replace(
        "accelerator: cpu}", "accelerator: cpu, callbacks: [{class_path: tests.test_faults.SleepEveryStep}]}"))
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nbase: [base.yaml]\ngrid: {model.lr: [0.001, 0.002, 0.003]}\nseeds: [0]\n")
    proc = subprocess.Popen(_sweep_cli(tmp_path, sweep, "--jobs", "2"), cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, training = time.time() + 120, []
    while time.time() < deadline and len(training) < 2:  # until both workers are training (metrics rows)
        training = [d for d in (tmp_path / "out" / "s").glob("[0-9a-f]*")
                    if any(len(p.read_text().splitlines()) > 1 for p in d.glob("**/metrics.csv"))]
        time.sleep(0.2)
    assert len(training) == 2, "the two workers did not both start a run"
    holders = [locks.holder(d) for d in training]
    assert None not in holders and len(set(holders)) == 2 and proc.pid not in holders  # two workers, not the sweep
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "interrupted; run the same command again" in err
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in holders):
        time.sleep(0.2)
    assert not any(_alive(p) for p in holders), "a worker outlived its sweep"
    for d in training:
        assert decide(d)[0] == "interrupted"
