"""Sweeps: hashing, expansion, skip/resume/retry decisions, failed runs, kill-and-resume, launchers, W&B export.

Runs are launched with a fake training command (a small Python script that writes ``result.json`` the way
``da fit`` does), so these tests need no training.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from da.runs import config as C
from da.runs import lifecycle
from da.runs.sweep import launchers as L
from da.runs.sweep import local as local_launcher
from da.runs.sweep import plan as P
from da.runs.sweep import references as R
from da.runs.sweep import spec as S
from da.runs.sweep import wandb as W
from da.runs.record import load_records
from da.experiments.tables import make_table

FAKE_FIT = textwrap.dedent(
    """
    import json, os, sys, time
    import yaml
    args = sys.argv[1:]
    cfg_path = args[args.index("--config") + 1]
    run_dir = args[args.index("--run_dir") + 1]
    resume = "--ckpt_path" in args
    cfg = yaml.safe_load(open(cfg_path))
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"run": os.path.basename(run_dir), "resume": resume,
                            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "t": time.time(),
                            "threads": os.environ.get("OMP_NUM_THREADS"),
                            "group": os.environ.get("WANDB_RUN_GROUP"),
                            "init_from": cfg["model"].get("init_from"),
                            "init_exists": os.path.isfile(str(cfg["model"].get("init_from")))}) + "\\n")
    data, model = cfg["data"], cfg["model"]
    task = "+".join(data["sources"]) + "->" + data["target"]
    base = {"schema": 1, "task": task, "method": model.get("method_name", "erm"),
            "seed": cfg["seed_everything"], "config": cfg, "run_dir": run_dir, "error": None}
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    open(os.path.join(run_dir, "checkpoints", "last.ckpt"), "w").write("ckpt")
    json.dump({**base, "status": "running", "metrics": {}}, open(os.path.join(run_dir, "result.json"), "w"))
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if cfg.get("fail"):
        print("Traceback (most recent call last):\\nRuntimeError: boom", file=sys.stderr)
        sys.exit(3)
    w = model["losses"][0]["init_args"]["weight"] if model.get("losses") else 0.0
    acc = 0.5 + 0.1 * w + 0.01 * cfg["seed_everything"] + (0.05 if data["target"] == "u" else 0.0)
    metrics = {"test/target_acc": acc, "val/source_acc": 0.9 - 0.01 * w}
    json.dump({**base, "status": "finished", "metrics": metrics}, open(os.path.join(run_dir, "result.json"), "w"))
    """
)


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with configs, a sweep file and the fake training script; cwd is set to it."""
    write(tmp_path / "configs/base.yaml", {
        "seed_everything": 0, "trainer": {"max_steps": 10},
        "model": {"backbone": "lenet", "lr": 0.001},
        "data": {"sources": ["m"], "target": "u", "batch_size": 8},
    })
    write(tmp_path / "configs/data/u_m.yaml", {"data": {"sources": ["u"], "target": "m"}})
    write(tmp_path / "configs/method/erm.yaml", {"model": {"losses": []}})
    write(tmp_path / "configs/method/dann.yaml", {"model": {"method_name": "dann", "losses": [
        {"class_path": "fake_losses.DomainAdversarialLoss", "init_args": {"weight": 1.0, "schedule": "dann"}}]}})
    write(tmp_path / "fake_fit.py", FAKE_FIT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_SLEEP", "0")
    return tmp_path


def fake_builder(root: Path):
    def build(run_dir: Path, resume: bool) -> list[str]:
        argv = [sys.executable, str(root / "fake_fit.py"), "--config", str(run_dir / "sweep_config.yaml"),
                "--run_dir", str(run_dir)]
        return argv + (["--ckpt_path", "last"] if resume else [])
    return build


def calls(root: Path) -> list[dict]:
    path = root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sweep_spec(grid=None, seeds=(0, 1), **extra) -> S.SweepSpec:
    data = {"name": "abl", "base": ["configs/base.yaml"],
            "grid": grid or {"data": ["configs/base.yaml", "configs/data/u_m.yaml"],
                             "method": ["configs/method/erm.yaml", "configs/method/dann.yaml"]},
            "seeds": list(seeds), **extra}
    return S.parse_sweep(data)


# ------------------------------------------------------------------------------------------------ hashing


def test_hash_is_sha1_of_sorted_canonical_json():
    cfg = {"b": {"y": [1, 2.0], "x": "s"}, "a": 1.0}
    expected = hashlib.sha1(b'{"a":1,"b":{"x":"s","y":[1,2]}}').hexdigest()[:12]
    assert C.config_hash(cfg) == expected
    assert len(expected) == 12


def test_hash_stable_under_key_order_and_int_float_and_run_dir():
    a = {"model": {"lr": 0.001, "losses": [{"w": 1}]}, "seed_everything": 0}
    b = {"seed_everything": 0, "model": {"losses": [{"w": 1.0}], "lr": 1e-3}, "run_dir": "/elsewhere"}
    assert C.config_hash(a) == C.config_hash(b)
    c = {"model": {"lr": 0.001, "losses": [{"w": 0.3}]}, "seed_everything": 0}
    d = {"model": {"lr": 0.001, "losses": [{"w": 1}]}, "seed_everything": 1}
    assert len({C.config_hash(a), C.config_hash(c), C.config_hash(d)}) == 3


def test_hash_ignores_where_and_how_a_run_logs():
    a = {"model": {"lr": 0.1}, "trainer": {"max_steps": 5}}
    b = {"model": {"lr": 0.1}, "trainer": {"max_steps": 5, "logger": {"class_path": "WandbLogger"}},
         "run_dir": "x", "ckpt_path": "last"}
    assert C.config_hash(a) == C.config_hash(b)
    assert C.config_hash(a) != C.config_hash({"model": {"lr": 0.1}, "trainer": {"max_steps": 6}})


def test_yaml_reads_exponent_floats(tmp_path):
    path = write(tmp_path / "x.yaml", "a: 1e-3\nb: [1e-4, 2.5E+2]\nc: 3\nd: '1e-3'\n")
    assert C.load_yaml(path) == {"a": 0.001, "b": [0.0001, 250.0], "c": 3, "d": "1e-3"}


# ------------------------------------------------------------------------------------- merge, overrides


def test_deep_merge_replaces_lists_and_changed_class_paths():
    base = {"model": {"lr": 1, "losses": [{"a": 1}], "opt": {"class_path": "SGD", "init_args": {"momentum": 0.9}}}}
    upd = {"model": {"losses": [], "opt": {"class_path": "Adam", "init_args": {"eps": 1}}, "wd": 0}}
    assert C.deep_merge(base, upd) == {"model": {"lr": 1, "losses": [], "wd": 0,
                                                 "opt": {"class_path": "Adam", "init_args": {"eps": 1}}}}
    same = {"model": {"opt": {"class_path": "SGD", "init_args": {"lr": 2}}}}
    assert C.deep_merge(base, same)["model"]["opt"]["init_args"] == {"momentum": 0.9, "lr": 2}
    assert base["model"]["losses"] == [{"a": 1}]  # inputs untouched


def test_set_dotted_with_list_indices_and_errors():
    cfg = {"model": {"losses": [{"init_args": {"weight": 1.0}}, {"init_args": {}}]}}
    C.set_dotted(cfg, "model.losses[0].init_args.weight", 0.3)
    C.set_dotted(cfg, "model.losses[1].init_args.alpha", 2)
    C.set_dotted(cfg, "trainer.max_steps", 5)
    assert cfg == {"model": {"losses": [{"init_args": {"weight": 0.3}}, {"init_args": {"alpha": 2}}]},
                   "trainer": {"max_steps": 5}}
    assert C.parse_dotted("a.b[2][0].c") == ["a", "b", 2, 0, "c"]
    with pytest.raises(ValueError, match=r"index 2 is out of range, model.losses has 2 item"):
        C.set_dotted(cfg, "model.losses[2].init_args.weight", 1)
    with pytest.raises(ValueError, match="not a list"):
        C.set_dotted(cfg, "trainer[0]", 1)
    with pytest.raises(ValueError, match="bad override key"):
        C.parse_dotted("model..lr")


# -------------------------------------------------------------------------------------------- expansion


def test_expansion_counts_order_and_params(project):
    spec = sweep_spec(grid={"data": ["configs/base.yaml", "configs/data/u_m.yaml"],
                            "method": ["configs/method/dann.yaml"],
                            "model.losses[0].init_args.weight": [0.1, 0.3, 1.0]},
                      seeds=[0, 1, 2], overrides={"trainer.max_steps": 7})
    runs = S.expand(spec)
    assert len(runs) == 2 * 3 * 3
    assert [r.seed for r in runs[:6]] == [0] * 6  # seeds outermost
    first = runs[0]
    assert first.params == {"data": "configs/base.yaml", "method": "configs/method/dann.yaml",
                            "model.losses[0].init_args.weight": 0.1, "seed": 0}
    assert first.config["trainer"]["max_steps"] == 7
    assert first.config["model"]["losses"][0]["init_args"] == {"weight": 0.1, "schedule": "dann"}
    assert first.config["seed_everything"] == 0
    assert runs[3].config["data"]["sources"] == ["u"]
    assert len({r.hash for r in runs}) == 18
    only = S.expand(spec, only={"seed": 1, "model.losses[0].init_args.weight": "0.3"})
    assert [(r.seed, r.params["model.losses[0].init_args.weight"]) for r in only] == [(1, 0.3), (1, 0.3)]


def test_expansion_random_search_is_seeded_and_in_range(project):
    random = {"n": 4, "seed": 3, "space": {"model.lr": {"log_uniform": [1e-4, 1e-1]},
                                           "data.batch_size": {"choice": [16, 32]}}}
    spec = sweep_spec(grid={"method": ["configs/method/erm.yaml"]}, seeds=[0, 1], random=random)
    runs = S.expand(spec)
    assert len(runs) == 1 * 4 * 2
    lrs = [r.config["model"]["lr"] for r in runs]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    assert lrs[:4] == lrs[4:]  # the same points for every seed
    assert [r.hash for r in runs] == [r.hash for r in S.expand(spec)]  # same file -> same runs
    other = S.expand(sweep_spec(grid={"method": ["configs/method/erm.yaml"]}, seeds=[0, 1],
                                random={**random, "seed": 4}))
    assert [r.config["model"]["lr"] for r in other] != lrs
    pinned = S.expand(spec, only={"model.lr": 0.01, "data.batch_size": 16, "seed": 0})
    assert len(pinned) == 1 and pinned[0].config["model"]["lr"] == 0.01


def test_list_of_grids_is_a_union_of_products(project):
    spec = sweep_spec(grid=[{"method": ["configs/method/erm.yaml"]},
                            {"method": ["configs/method/dann.yaml"],
                             "model.losses[0].init_args.weight": [0.1, 1.0]}], seeds=[0, 1])
    runs = S.expand(spec)
    assert [(r.seed, r.params.get("model.losses[0].init_args.weight")) for r in runs] == [
        (0, None), (0, 0.1), (0, 1.0), (1, None), (1, 0.1), (1, 1.0)]
    assert runs[0].config["model"]["losses"] == []
    assert len(S.expand(spec, only={"model.losses[0].init_args.weight": 1.0})) == 2
    with pytest.raises(ValueError, match="has 2 sub-grids; a W&B sweep has one parameter grid"):
        W.wandb_sweep_config(spec)


def test_describe_run_names_task_and_method(project, monkeypatch):
    (project / "my_losses.py").write_text("class Named:\n    name = 'fancy'\nclass Plain:\n    pass\n")
    monkeypatch.syspath_prepend(str(project))
    assert S.loss_short_name("my_losses.Named") == "fancy"
    assert S.loss_short_name("my_losses.Plain") == "plain"
    assert S.loss_short_name("not_a_module.Thing") == "thing"
    cfg = {"data": {"sources": ["a", "b"], "target": "c"},
           "model": {"losses": [{"class_path": "my_losses.Named"}, {"class_path": "x.Y", "init_args": {"name": "z"}}]}}
    assert S.describe_run(cfg) == ("a+b->c", "fancy+z")
    assert S.describe_run({"data": {"sources": "a", "target": "c", "supervision": "target"}}) == ("a->c", "oracle")
    assert S.describe_run({"model": {"method_name": "mine"}}) == ("?", "mine")
    # a method with its own update rule is named by its class, as TransferModule names it (not "erm")
    assert S.describe_run({"model": {"method": {"class_path": "da.methods.MCD"}}}) == ("?", "mcd")
    assert S.describe_run({"model": {"method": {"class_path": "da.methods.FixMatch", "init_args": {}},
                                     "losses": []}}) == ("?", "fixmatch")


def test_duplicate_configs_are_kept_once(project):
    spec = sweep_spec(grid={"method": ["configs/method/erm.yaml", "configs/method/erm.yaml"]}, seeds=[0])
    assert len(S.expand(spec)) == 1


def test_sweep_file_errors_name_the_fix(project):
    with pytest.raises(ValueError, match="did you mean 'seeds'"):
        S.parse_sweep({"name": "x", "seed": [0]})
    with pytest.raises(ValueError, match="needs a non-empty list"):
        S.parse_sweep({"name": "x", "grid": {"model.lr": 0.1}})
    with pytest.raises(ValueError, match="did you mean 'log_uniform'"):
        S.parse_sweep({"name": "x", "random": {"n": 2, "space": {"model.lr": {"loguniform": [1, 2]}}}})
    with pytest.raises(FileNotFoundError, match="configs/nope.yaml"):
        S.expand(S.parse_sweep({"name": "x", "base": ["configs/nope.yaml"]}))


# ---------------------------------------------------------------------------------------------- decisions


def fake_run_dir(root: Path, name: str, status=None, ckpt=False, error=None, raw=None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if raw is not None:
        (d / "result.json").write_text(raw)
    elif status:
        (d / "result.json").write_text(json.dumps({"status": status, "error": error}))
    if ckpt:
        (d / "checkpoints").mkdir()
        (d / "checkpoints/last.ckpt").write_text("x")
    return d


def test_skip_resume_retry_decisions(tmp_path):
    cases = {
        "finished": (dict(status="finished", ckpt=True), ("finished", "skip"), ("finished", "skip")),
        "failed": (dict(status="failed", ckpt=True, error="Traceback\nValueError: x"),
                   ("failed", "skip-failed"), ("failed", "retry")),
        "killed": (dict(status="failed", ckpt=True, error="Traceback ...\nKeyboardInterrupt"),
                   ("interrupted", "resume"), ("interrupted", "resume")),
        "running_ckpt": (dict(status="running", ckpt=True), ("running", "resume"), ("running", "resume")),
        "running": (dict(status="running"), ("running", "run"), ("running", "run")),
        "missing_ckpt": (dict(ckpt=True), ("missing", "resume"), ("missing", "resume")),
        "missing": (dict(), ("missing", "run"), ("missing", "run")),
        "corrupt": (dict(raw='{"status": "fini'), ("corrupt", "run"), ("corrupt", "run")),
    }
    for name, (kwargs, plain, retry) in cases.items():
        d = fake_run_dir(tmp_path, name, **kwargs)
        assert lifecycle.decide(d) == plain, name
        assert lifecycle.decide(d, retry_failed=True) == retry, name


def test_fit_command_resumes_from_last(tmp_path):
    argv = L.fit_command(tmp_path / "r", resume=True)
    assert argv[3:] == ["fit", "--config", str(tmp_path / "r/sweep_config.yaml"), "--run_dir",
                        str(tmp_path / "r"), "--ckpt_path", "last"]
    assert "--ckpt_path" not in L.fit_command(tmp_path / "r", resume=False)


# --------------------------------------------------------------------------------------- running sweeps


SHOT_GRID = [
    {"method": ["configs/method/shot.yaml"], "data": ["configs/base.yaml", "configs/data/u_m.yaml"],
     "model.init_from": [{"from_run": {"method": "configs/method/erm.yaml"}}]},  # listed first: still runs after erm
    {"method": ["configs/method/erm.yaml", "configs/method/dann.yaml"],
     "data": ["configs/base.yaml", "configs/data/u_m.yaml"]},
]


def test_a_run_can_start_from_another_run_of_the_sweep(project):
    write(project / "configs/method/shot.yaml", {"model": {"method_name": "shot"}})
    runs = S.expand(sweep_spec(grid=SHOT_GRID, seeds=[0, 1]))
    erm = {(r.seed, r.config["data"]["target"]): r for r in runs if r.params["method"].endswith("erm.yaml")}
    shot = [r for r in runs if r.params["method"].endswith("shot.yaml")]
    assert len(runs) == 12 and len(shot) == 4
    for r in shot:  # each task and seed adapts its own source model; the hash covers the other run's hash
        source = erm[(r.seed, r.config["data"]["target"])]
        assert r.needs == (source.hash,)
        assert r.config["model"]["init_from"] == f"@run:{source.hash}/checkpoints/last.ckpt"
        assert r.hash == C.config_hash(r.config)
    assert R.resolve_references(shot[0].config, "out/abl")["model"]["init_from"] == str(
        (project / "out/abl" / shot[0].needs[0] / "checkpoints/last.ckpt").resolve())
    # --only may leave out the referenced runs: the reference still resolves over the whole sweep
    only = S.expand(sweep_spec(grid=SHOT_GRID, seeds=[0, 1]), only={"method": "configs/method/shot.yaml", "seed": 1})
    assert [r.hash for r in only] == [r.hash for r in shot if r.seed == 1]
    # a reference must name exactly one run
    nothing = [{**SHOT_GRID[0], "model.init_from": [{"from_run": {"method": "configs/method/mdd.yaml"}}]}, SHOT_GRID[1]]
    with pytest.raises(ValueError, match="matches no run of the sweep"):
        S.expand(sweep_spec(grid=nothing))
    two = [SHOT_GRID[0], {**SHOT_GRID[1], "model.lr": [0.1, 0.2]}]
    with pytest.raises(ValueError, match="matches 2 runs .*add parameters to from_run"):
        S.expand(sweep_spec(grid=two))
    S.expand(sweep_spec(grid=[{**SHOT_GRID[0], "model.init_from": [
        {"from_run": {"method": "configs/method/erm.yaml", "model.lr": 0.2}}]}, two[1]]))  # now it names one
    with pytest.raises(ValueError, match="unknown key of the run reference|'fiel'"):
        S.expand(sweep_spec(grid=[{**SHOT_GRID[0], "model.init_from": [{"from_run": {"method": "x"}, "fiel": "a"}]}]))
    with pytest.raises(ValueError, match="a W&B agent runs points in any order"):
        W.wandb_sweep_config(S.parse_sweep({"name": "a", "grid": {"method": ["configs/method/erm.yaml"]},
                                            "overrides": {"model.init_from": {"from_run": {"method": "x"}}}}))
    with pytest.raises(ValueError, match="inside the referenced run's folder"):
        S.parse_sweep({"name": "a", "grid": {"model.init_from": [{"from_run": {"m": 1}, "file": "../x.ckpt"}]}})


def test_referencing_runs_wait_for_and_then_start_from_their_run(project, capsys):
    write(project / "configs/method/shot.yaml", {"model": {"method_name": "shot"}})
    build = fake_builder(project)
    spec = sweep_spec(grid=SHOT_GRID, seeds=[0])
    # only the adaptation runs: their source runs have not run, so they wait (and say so) instead of failing
    first = P.run_sweep(spec, out="out", command_builder=build, only={"method": "configs/method/shot.yaml"})
    assert (first.launched, first.finished, len(first.waiting)) == (0, 0, 2) and not calls(project)
    assert "2 waiting for the runs they start from" in first.format()
    assert "waiting for " in capsys.readouterr().err
    # the whole sweep: the source runs go first (though listed after), each adaptation run gets its own checkpoint
    summary = P.run_sweep(spec, out="out", command_builder=build)
    assert (summary.finished, summary.waiting) == (6, [])
    done = calls(project)
    methods = [yaml.safe_load(open(f"out/abl/{c['run']}/sweep_config.yaml"))["model"].get("method_name", "erm")
               for c in done]
    adapted = [c for c, m in zip(done, methods) if m == "shot"]
    info = [json.load(open(f"out/abl/{c['run']}/sweep.json")) for c in adapted]
    order = [c["run"] for c in done]
    assert all(order.index(i["needs"][0]) < order.index(c["run"]) for c, i in zip(adapted, info))
    assert {methods[order.index(i["needs"][0])] for i in info} == {"erm"}
    assert all(c["init_exists"] for c in adapted)
    assert sorted(c["init_from"] for c in adapted) == sorted(
        str((project / "out/abl" / i["needs"][0] / "checkpoints/last.ckpt").resolve()) for i in info)
    table = make_table(load_records("out/abl"), digits=2)  # the adaptation runs are a method column of their own
    assert table.startswith("| Task | erm | dann | shot |") and "| m->u | 55.00 | **65.00** | 55.00 |" in table
    listing = P.format_plan(P.plan(S.expand(spec), "out/abl"))
    assert "model.init_from=<run method=configs/method/erm.yaml>/checkpoints/last.ckpt  [after " in listing


def test_a_waiting_run_waits_for_its_run_while_another_process_trains_it(project, monkeypatch):
    """Two sweeps on one folder: the one that reaches an adaptation run while the other still trains its source run
    waits for it (polling), then starts from its checkpoint; it gives up only on a source run no process holds."""
    write(project / "configs/method/shot.yaml", {"model": {"method_name": "shot"}})
    spec = sweep_spec(grid=SHOT_GRID, seeds=[0])
    runs = S.expand(spec)
    shot = next(r for r in runs if r.params["method"].endswith("shot.yaml"))
    source = Path("out/abl") / shot.needs[0]
    source.mkdir(parents=True)
    # "another sweep": holds the source run's lock, writes its checkpoint and finished record after 1.5 s, exits
    other = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, json, os, time
        fd = os.open({str(source / '.lock')!r}, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True); time.sleep(1.5)
        os.makedirs({str(source / 'checkpoints')!r}, exist_ok=True)
        open({str(source / 'checkpoints/last.ckpt')!r}, "w").write("ckpt")
        json.dump({{"status": "finished", "metrics": {{}}}}, open({str(source / 'result.json')!r}, "w"))
        """)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "locked"
    monkeypatch.setattr(L.LocalLauncher, "poll_s", 0.2)
    only = {"method": "configs/method/shot.yaml", "data": "configs/base.yaml"}
    summary = P.run_sweep(spec, out="out", command_builder=fake_builder(project), only=only)
    other.wait(10)
    assert (summary.finished, summary.waiting) == (1, [])
    (call,) = calls(project)
    assert call["run"] == shot.hash and call["init_exists"]
    # nothing holds the other task's source run and it never ran: that one waits, and the sweep says so at once
    t0 = time.time()
    rest = P.run_sweep(spec, out="out", command_builder=fake_builder(project),
                       only={"method": "configs/method/shot.yaml"})
    assert (rest.finished, len(rest.waiting)) == (0, 1) and time.time() - t0 < 5


def test_sweep_runs_skips_and_records_failures(project, capsys):
    spec = sweep_spec(grid={"method": ["configs/method/erm.yaml", "configs/method/dann.yaml"], "fail": [False, True]},
                      seeds=[0])
    build = fake_builder(project)
    summary = P.run_sweep(spec, out="out", command_builder=build)
    assert (summary.total, summary.launched, summary.finished, len(summary.failed)) == (4, 4, 2, 2)
    assert all(err == "RuntimeError: boom" for _, err in summary.failed)
    progress = capsys.readouterr().err
    assert "[abl] 0/4 done, 0 running, 0 failed, 4 left" in progress
    assert "[abl] 2/4 done, 0 running, 2 failed, 0 left" in progress
    records = load_records("out/abl")
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2
    assert all("exited with status 3" in r["error"] and "RuntimeError: boom" in r["error"] for r in failed)
    assert all(r["sweep"]["name"] == "abl" and r["sweep"]["params"]["fail"] is True for r in failed)
    finished = [r for r in records if r["status"] == "finished"]
    assert sorted(r["sweep"]["params"]["method"] for r in finished) == ["configs/method/dann.yaml", "configs/method/erm.yaml"]
    # each run dir holds the resolved config it was launched with, and is named by its hash
    for r in records:
        cfg = C.load_yaml(Path(r["run_dir"]) / "sweep_config.yaml")
        assert C.config_hash(cfg) == Path(r["run_dir"]).name
    # the failed runs are excluded from the table and counted in its caption
    table = make_table(records, digits=2)
    assert "Excluded: 2 failed runs." in table
    assert "| m->u | 55.00 | **65.00** |" in table  # erm 0.5 + 0.05; dann weight 1.0 adds 0.1
    # re-running: nothing to do; failed runs are skipped unless --retry-failed
    n = len(calls(project))
    again = P.run_sweep(spec, out="out", command_builder=build)
    assert (again.launched, again.already_finished, again.skipped_failed) == (0, 2, 2)
    assert len(calls(project)) == n
    retried = P.run_sweep(spec, out="out", command_builder=build, retry_failed=True)
    assert retried.launched == 2 and len(calls(project)) == n + 2
    assert all(not c["resume"] for c in calls(project)[n:])  # a retry starts fresh


def test_failed_record_written_by_the_run_is_kept(project):
    script = project / "own_fail.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        run_dir = sys.argv[sys.argv.index("--run_dir") + 1]
        json.dump({"schema": 1, "status": "failed", "task": "m->u", "method": "erm", "seed": 0,
                   "metrics": {}, "error": "Traceback\\nValueError: bad lr"}, open(run_dir + "/result.json", "w"))
        sys.exit(1)
    """))
    spec = sweep_spec(grid={"method": ["configs/method/erm.yaml"]}, seeds=[0])
    summary = P.run_sweep(spec, out="out", command_builder=lambda d, r: [sys.executable, str(script), "--run_dir", str(d)])
    assert summary.failed == [(S.expand(spec)[0].hash, "ValueError: bad lr")]
    (record,) = load_records("out")
    assert record["error"] == "Traceback\nValueError: bad lr"
    assert record["sweep"]["name"] == "abl"


def test_dry_run_lists_runs_without_launching(project):
    spec = sweep_spec()
    import io

    buf = io.StringIO()
    summary = P.run_sweep(spec, out="out", command_builder=fake_builder(project), dry_run=True, log=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["hash", "action", "status", "seed", "task", "method", "params"]
    assert len(lines) == 1 + 8 + 1 and lines[-1] == "8 runs: 8 run"
    assert "m->u" in lines[1] and "erm" in lines[1] and "u->m" in buf.getvalue() and "dann" in buf.getvalue()
    assert summary.launched == 0 and not calls(project) and not (project / "out").exists()


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_sweep import fake_builder, sweep_spec
    from pathlib import Path
    from da.runs.sweep.plan import run_sweep
    run_sweep(sweep_spec(), out=sys.argv[1], command_builder=fake_builder(Path.cwd()))
    """
)


def test_killed_sweep_resumes_only_what_is_missing_and_gives_the_same_table(project, monkeypatch):
    """A sweep killed (SIGKILL, with its running child) after k finished runs; the re-run launches only
    the other runs, resumes the interrupted one from last.ckpt, and the table equals an uninterrupted
    sweep's."""
    (project / "driver.py").write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "FAKE_SLEEP": "0.4", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "driver.py", "killed"], cwd=project, env=env,
                            start_new_session=True, stderr=subprocess.DEVNULL)
    sweep_dir = project / "killed/abl"

    def finished() -> set[str]:
        done = set()
        for p in sweep_dir.glob("*/result.json"):
            try:
                if json.loads(p.read_text()).get("status") == "finished":
                    done.add(p.parent.name)
            except ValueError:  # caught while being written
                pass
        return done

    deadline = time.time() + 60
    while len(finished()) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.1)  # let the next run start and write its checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = finished()
    interrupted = {p.parent.parent.name for p in sweep_dir.glob("*/checkpoints/last.ckpt")} - finished_before
    assert 3 <= len(finished_before) < 8
    n_calls = len(calls(project))

    summary = P.run_sweep(sweep_spec(), out="killed", command_builder=fake_builder(project))
    rerun = calls(project)[n_calls:]
    assert summary.already_finished == len(finished_before)
    assert {c["run"] for c in rerun} == {r.hash for r in S.expand(sweep_spec())} - finished_before
    assert len(rerun) == 8 - len(finished_before)
    assert {c["run"] for c in rerun if c["resume"]} == interrupted

    P.run_sweep(sweep_spec(), out="clean", command_builder=fake_builder(project))
    assert make_table(load_records("killed")) == make_table(load_records("clean"))
    assert len(load_records("killed")) == 8


# ------------------------------------------------------------------------------------------- launchers


def test_local_gpus_launcher_gives_each_run_one_gpu(project):
    spec = sweep_spec()
    summary = P.run_sweep(spec, out="out", command_builder=fake_builder(project),
                          launcher=L.LocalGPUsLauncher(gpus=[3, 5]))
    assert summary.finished == 8
    assert sorted({c["gpu"] for c in calls(project)}) == ["3", "5"]


def test_thread_env_gives_each_run_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(local_launcher, "usable_cores", lambda: 8)
    assert L.thread_env(1) == {}  # one run at a time: torch's own default
    assert L.thread_env(2) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert L.thread_env(3)["OMP_NUM_THREADS"] == "2" and L.thread_env(16)["OMP_NUM_THREADS"] == "1"
    assert L.thread_env(2, threads=3)["MKL_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice is kept
    assert L.thread_env(4) == {}
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1"):
        L.LocalLauncher(jobs=0)


def test_local_jobs_runs_n_at_once_each_with_its_threads(project, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(local_launcher, "usable_cores", lambda: 4)
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    summary = P.run_sweep(sweep_spec(seeds=[0]), out="out", command_builder=fake_builder(project),
                          launcher=L.make_launcher("local", jobs=2))
    assert summary.finished == 4 and not summary.failed
    runs = sorted(calls(project), key=lambda c: c["t"])
    assert [c["threads"] for c in runs] == ["2"] * 4
    assert len({c["run"] for c in runs}) == 4  # each run once
    assert runs[1]["t"] - runs[0]["t"] < 1.0  # the second started while the first slept: two at once


def test_merge_outcomes_of_the_workers_reports():
    assert L.merge_outcomes(["busy", "finished"]) == "finished"  # the worker that ran it, and one that found it held
    assert L.merge_outcomes(["skipped", "failed"]) == "failed"
    assert L.merge_outcomes(["busy", "skipped"]) == "skipped"  # finished by one worker before the other reached it
    assert L.merge_outcomes(["busy", "busy"]) == "busy"  # every worker found it held: another sweep has it
    with pytest.raises(ValueError):
        L.merge_outcomes([])


def test_inprocess_jobs_needs_jobs_that_pickle(project):
    """The workers get the jobs by pickle: a closure as command builder is refused up front, with the fix."""
    with pytest.raises(TypeError, match="module-level command_builder, or jobs=1"):
        P.run_sweep(sweep_spec(seeds=[0]), out="out", command_builder=fake_builder(project),
                    launcher=L.make_launcher("inprocess", jobs=2))
    assert calls(project) == []


def test_jobs_is_refused_where_the_launcher_has_its_own_parallelism(project):
    from da.runs.sweep.command import sweep_main

    (project / "s.yaml").write_text("name: s\nbase: [configs/base.yaml]\ngrid: {model.lr: [0.1]}\nseeds: [0]\n")
    with pytest.raises(SystemExit, match="--jobs is for the local and inprocess launchers.*--gpus"):
        sweep_main(["s.yaml", "--launcher", "local-gpus", "--jobs", "2"])
    with pytest.raises(SystemExit, match="--jobs must be >= 1"):
        sweep_main(["s.yaml", "--jobs", "0"])


def test_unknown_launcher_and_missing_submitit():
    with pytest.raises(ValueError, match="unknown launcher 'slurn'; did you mean 'slurm'"):
        L.make_launcher("slurn")
    try:
        import submitit  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'da\[slurm\]'"):
            L.make_launcher("slurm")
    assert isinstance(L.make_launcher("ddp"), L.LocalLauncher)


# ------------------------------------------------------------------------------------------------- W&B


def test_wandb_env_groups_tags_and_names(project, monkeypatch):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    env = W.wandb_env("abl", "0123456789ab", "m->u", "dann", 2)
    assert env == {"WANDB_RUN_GROUP": "abl", "WANDB_TAGS": "task:m->u,method:dann,seed:2",
                   "WANDB_NAME": "0123456789ab", "WANDB_RUN_ID": "abl-0123456789ab", "WANDB_RESUME": "allow"}
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    assert set(W.wandb_env("abl", "0123456789ab", "m->u", "dann", 2)) == {"WANDB_RUN_GROUP", "WANDB_TAGS"}
    monkeypatch.delenv("WANDB_SWEEP_ID")
    P.run_sweep(sweep_spec(seeds=[0]), out="out", command_builder=fake_builder(project), wandb=True)
    assert {c["group"] for c in calls(project)} == {"abl"}


def test_wandb_sweep_export_structure(project):
    spec = sweep_spec(grid={"method": ["configs/method/erm.yaml"], "model.lr": [0.1, 0.01]}, seeds=[0, 1])
    cfg = W.wandb_sweep_config(spec, "experiments/abl.yaml")
    assert cfg == {
        "name": "abl", "method": "grid", "metric": {"name": "val/source_acc", "goal": "maximize"},
        "parameters": {"method": {"values": ["configs/method/erm.yaml"]}, "model.lr": {"values": [0.1, 0.01]},
                       "seed": {"values": [0, 1]}},
        "command": ["${env}", "da", "sweep", "experiments/abl.yaml", "--only", "${args_no_hyphens}"],
    }
    rnd = sweep_spec(grid={"method": ["configs/method/erm.yaml"]}, seeds=[0],
                     random={"n": 3, "space": {"model.lr": {"log_uniform": [1e-4, 0.1]},
                                               "data.batch_size": {"int_uniform": [8, 64]}}})
    cfg = W.wandb_sweep_config(rnd, "x.yaml")
    assert cfg["method"] == "random"
    assert cfg["parameters"]["model.lr"] == {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}
    assert cfg["parameters"]["data.batch_size"] == {"distribution": "int_uniform", "min": 8, "max": 64}
    # a point as a W&B agent passes it (${args_no_hyphens}) selects exactly one run of the sweep
    from da.runs.sweep.command import _key_values

    point = _key_values(["method=configs/method/erm.yaml", "model.lr=0.01", "seed=1"], "--only")
    (run,) = S.expand(spec, only=point)
    assert run.config["model"]["lr"] == 0.01 and run.seed == 1


def _tiny_blobs_config(folder: Path) -> Path:
    """A 10-step `da fit` config on blobs, for sweeps of real in-process runs."""
    base = folder / "blobs.yaml"
    base.write_text(
        "trainer: {max_steps: 10, val_check_interval: 10, enable_progress_bar: false, enable_model_summary: false,"
        " accelerator: cpu}\n"
        "model: {backbone: mlp, backbone_args: {hidden: [8]}}\n"
        "data: {sources: [blobs/0], target: blobs/1, batch_size: 16}\n")
    return base


def test_inprocess_launcher_runs_real_fits_and_records_failures(tmp_path):
    """Two real (tiny) `da fit` runs inside the sweep's process: one finishes, one fails and is recorded as failed."""
    import json as _json

    from da.runs.sweep import load_sweep, run_sweep

    base = _tiny_blobs_config(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: tiny\nbase: [{base}]\ngrid:\n  model.lr: [0.01, -1.0]\nseeds: [0]\n")
    import io

    summary = run_sweep(load_sweep(sweep), out=tmp_path / "out", launcher="inprocess", log=io.StringIO())
    records = {r["config"]["model"]["lr"]: r for r in
               (_json.loads(p.read_text()) for p in (tmp_path / "out" / "tiny").glob("*/result.json"))}
    assert records[0.01]["status"] == "finished" and records[0.01]["sweep"]["params"] == {"model.lr": 0.01, "seed": 0}
    assert records[-1.0]["status"] == "failed" and "learning rate" in records[-1.0]["error"]
    assert (summary.launched, summary.finished, len(summary.failed)) == (2, 1, 1)


def test_inprocess_runs_are_freed_and_keep_lightnings_log_lines(tmp_path, monkeypatch):
    """Three in-process runs: each run's module is gone once the next has run (a finished run sits in reference
    cycles that Python's generational collector seldom reaches: an Amazon sweep kept ~500 MB a run until the OOM
    killer stopped it), and every run's sweep.log has Lightning's own lines (its console handler used to stay bound
    to the first run's closed log file)."""
    import gc
    import io
    import weakref

    from da.module import TransferModule
    from da.runs.sweep import load_sweep, run_sweep

    alive = []
    real_start = TransferModule.on_fit_start

    def tracking_start(self):
        alive.append(weakref.ref(self))
        return real_start(self)

    monkeypatch.setattr(TransferModule, "on_fit_start", tracking_start)
    base = _tiny_blobs_config(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: free\nbase: [{base}]\ngrid:\n  model.lr: [0.01, 0.02, 0.03]\nseeds: [0]\n")
    gc.disable()  # only the launcher's own collection may free the runs
    try:
        summary = run_sweep(load_sweep(sweep), out=tmp_path / "out", launcher="inprocess", log=io.StringIO())
        assert summary.finished == 3 and len(alive) >= 3
        # every run before the last is freed (the last one's objects may live until the next run: bounded)
        assert [r() is not None for r in alive[:-1]] == [False] * (len(alive) - 1)
    finally:
        gc.enable()
    # Lightning's console handler exists only when the root logger has none (not under pytest): a real `da sweep`
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "da.cli", "sweep", str(sweep), "--launcher", "inprocess", "--out",
                           str(tmp_path / "cli")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = [p.read_text() for p in sorted((tmp_path / "cli" / "free").glob("*/sweep.log"))]
    assert len(logs) == 3
    for text in logs:
        assert "Logging error" not in text
        assert "`Trainer.fit` stopped: `max_steps=10` reached." in text
