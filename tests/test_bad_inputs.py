"""Every bad input gets one clear line (issue 14, item 5; the cases are listed in docs/errors.md).

For each case of :data:`CASES` the real ``da`` command runs (in process through ``da.cli.main``, and a few in a
subprocess, ``python -m da.cli``) and the test asserts: the exit status (2 for bad input), no Python traceback in the
output, the bad thing (file, value) named, and no ``finished`` record. Two inputs are not errors but used to end in a
silent half-result; they must now succeed with a warning: a ``val_check_interval`` longer than the run, and a
truncated image under ``on_bad_image: skip``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da.cli import main
from da.errors import UserError, run_main
from tests.conftest import REPO
from tests.helpers import fit_args


def _jpeg(path: Path, seed: int, size: int = 20, cut: float = 1.0) -> None:
    buf = io.BytesIO()
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(buf, "JPEG")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * cut)])


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """The bad files: configs, feature files, an image tree with a truncated JPEG, checkpoints, records, a sweep."""
    t = tmp_path_factory.mktemp("bad")
    (t / "latin1.yaml").write_bytes("model:\n  lr: 0.01  # caf\xe9\n".encode("latin-1"))
    (t / "broken.yaml").write_text("model:\n  lr: [0.01\ntrainer: {\n")
    (t / "list.yaml").write_text("- model\n- trainer\n")
    (t / "unknown_key.yaml").write_text("model:\n  not_a_key: 1\n")
    g = np.random.default_rng(0)
    feats = t / "feats"
    feats.mkdir()
    np.savez(feats / "d16.npz", x=g.normal(size=(60, 16)).astype("float32"), y=np.arange(60) % 3)
    np.savez(feats / "d17.npz", x=g.normal(size=(60, 17)).astype("float32"), y=np.arange(60) % 3)
    np.savez(feats / "four.npz", x=g.normal(size=(60, 16)).astype("float32"), y=np.arange(60) % 4)
    (feats / "garbage.npz").write_bytes(b"this is not an npz archive")
    for dom in ("a", "b"):
        for c, cls in enumerate(("cat", "dog")):
            for k in range(4):
                _jpeg(t / "imgs" / dom / cls / f"{k}.jpg", seed=10 * c + k + (100 if dom == "b" else 0))
    _jpeg(t / "imgs" / "a" / "cat" / "zz_trunc.jpg", seed=7, size=64, cut=1 / 3)  # the header parses, pixels cut off
    (t / "empty" / "dom" / "cls").mkdir(parents=True)
    lightning_like = {"state_dict": {"backbone.w": torch.randn(64, 64)}, "pytorch-lightning_version": "2.6.0",
                      "global_step": 1, "epoch": 0}
    torch.save(lightning_like, t / "good.ckpt")
    data = (t / "good.ckpt").read_bytes()
    (t / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"a": 1, "b": [1, 2]}, t / "foreign.ckpt")
    (t / "records" / "r1").mkdir(parents=True)
    (t / "records" / "r1" / "result.json").write_text('{"status": "fini')
    (t / "empty_sweep").mkdir()
    (t / "sweep.yaml").write_text("name: s\nbase: [configs/quickstart.yaml]\ngrid: {model.lr: [0.1]}\nsedes: [0]\n")
    (t / "sweep_broken.yaml").write_text("name: s\ngrid: {model.lr: [0.1\n")
    return t


IMAGES = ["--data.sources", "[imagefolder/a]", "--data.target", "imagefolder/b", "--data.batch_size", "4",
          "--data.eval_batch_size", "8", "--model.backbone", "lenet_bn", "--model.backbone_args",
          "{width: 4, out_features: 16}", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
          "--data.num_workers", "1"]


def _features(source: str, target: str) -> list:
    return ["--data.sources", f"[features/{source}]", "--data.target", f"features/{target}", "--data.root", "{t}/feats"]


# id -> (command line, with {t} the fixture folder; exit status; what the output must name).
# A command line with --run_dir {run} is a run whose record is checked.
CASES = {
    # configs
    "config_missing": (["--config", "{t}/nope.yaml"], 2, ["nope.yaml", "not found"]),
    "config_not_utf8": (["--config", "{t}/latin1.yaml"], 2, ["latin1.yaml", "line 2", "UTF-8"]),
    "config_not_yaml": (["--config", "{t}/broken.yaml"], 2, ["broken.yaml", "line 3", "not valid YAML"]),
    "config_list_not_mapping": (["--config", "{t}/list.yaml"], 2, ["list.yaml", "list, not a mapping"]),
    "config_unknown_key": (["--config", "{t}/unknown_key.yaml"], 2, ["not_a_key"]),
    "flag_unknown_key": (["--model.not_a_flag", "1"], 2, ["not_a_flag"]),
    "unknown_dataset": (["--data.target", "blob/1"], 2, ["unknown dataset 'blob'", "did you mean 'blobs'"]),
    "unknown_domain": (["--data.target", "blobs/7"], 2, ["'7'", "known: 0, 1, 2, 3, 4"]),
    "unknown_backbone": (["--model.backbone", "resnet1800"], 2, ["resnet1800", "did you mean 'resnet18'"]),
    "unknown_loss_class_path": (["--model.losses+=da.losses.Nope"], 2, ["da.losses.Nope"]),
    "class_path_not_a_loss": (["--model.losses", "[{class_path: torch.nn.ReLU}]"], 2, ["torch.nn.ReLU"]),
    "unknown_supervision": (["--data.supervision", "targt"], 2, ["targt", "did you mean 'target'"]),
    # data
    "feature_dim_mismatch": (_features("d16", "d17"), 2, ["features/d16", "16-d", "features/d17", "17-d"]),
    "class_sets_differ": (_features("d16", "four"), 2, ["features/d16", "features/four", "different class sets"]),
    "unreadable_feature_file": (_features("garbage", "d16"), 2, ["garbage.npz", "not a readable .npz feature file"]),
    "missing_data_root": (["--data.sources", "[office31/amazon]", "--data.target", "office31/dslr",
                           "--data.root", "{t}/nowhere"], 2, ["office31", "nowhere", "--data.root"]),
    "empty_image_folder": (["--data.sources", "[imagefolder/dom]", "--data.target", "imagefolder/dom",
                            "--data.root", "{t}/empty"], 2, ["no images found", "empty/dom"]),
    "truncated_image_error": (IMAGES + ["--data.root", "{t}/imgs", "--data.options",
                                        "{image_size: 16, on_bad_image: error}"], 2, ["zz_trunc.jpg", "cannot decode"]),
    "truncated_image_skip": (IMAGES + ["--data.root", "{t}/imgs", "--data.options",
                                       "{image_size: 16, on_bad_image: skip}"], 0, []),
    # trainer
    "max_steps_zero": (["--trainer.max_steps", "0"], 2, ["trainer.max_steps=0", "trains nothing"]),
    "never_ends": (["--trainer.max_steps", "-1", "--trainer.max_epochs", "-1"], 2, ["never end"]),
    "val_check_interval_longer_than_run": (["--trainer.max_steps", "10", "--trainer.val_check_interval", "500"], 0, []),
    # checkpoints
    "ckpt_path_truncated": (["--ckpt_path", "{t}/truncated.ckpt"], 2,
                            ["--ckpt_path", "truncated.ckpt", "cannot be read", "truncated"]),
    "ckpt_path_foreign": (["--ckpt_path", "{t}/foreign.ckpt"], 2, ["foreign.ckpt", "not a Lightning checkpoint"]),
    "ckpt_path_missing": (["--ckpt_path", "{t}/nope.ckpt"], 2, ["--ckpt_path", "nope.ckpt", "does not exist"]),
    "ckpt_path_plain_state_dict": (["--ckpt_path", "{t}/good.ckpt.sd"], 2, ["good.ckpt.sd", "--model.init_from"]),
    "init_from_truncated": (["--model.init_from", "{t}/truncated.ckpt"], 2,
                            ["truncated.ckpt", "cannot be read", "truncated"]),
    "init_from_foreign": (["--model.init_from", "{t}/foreign.ckpt"], 2, ["foreign.ckpt", "no weights for"]),
    "init_from_missing": (["--model.init_from", "{t}/nope.ckpt"], 2, ["nope.ckpt", "does not exist"]),
    "init_from_other_backbone": (["--model.init_from", "{t}/good.ckpt"], 2, ["good.ckpt", "no weights for"]),
    "test_ckpt_path_truncated": (["test", "--ckpt_path", "{t}/truncated.ckpt"], 2, ["truncated.ckpt"]),
    # records and sweeps
    "table_corrupt_record": (["table", "{t}/records"], 2, ["r1/result.json", "not valid JSON"]),
    "table_empty_dir": (["table", "{t}/empty_sweep"], 2, ["no result.json", "empty_sweep"]),
    "table_missing_dir": (["table", "{t}/nowhere"], 2, ["nowhere"]),
    "sweep_unknown_key": (["sweep", "{t}/sweep.yaml", "--dry-run"], 2, ["sedes", "did you mean 'seeds'"]),
    "sweep_not_yaml": (["sweep", "{t}/sweep_broken.yaml", "--dry-run"], 2, ["sweep_broken.yaml", "not valid YAML"]),
}
#: run for real in a subprocess (the honest check: the interpreter's own exit status and output)
SUBPROCESS = ("config_not_utf8", "ckpt_path_truncated", "truncated_image_error")


def _argv(case: str, fx: Path, run: Path) -> list:
    args = [a.replace("{t}", str(fx)) for a in CASES[case][0]]
    if args[0] in ("table", "sweep"):
        return args
    command = "test" if args[0] == "test" else "fit"
    return fit_args(run, args[1:] if command == "test" else args, command=command)


def _check(case: str, code: int, out: str, run: Path) -> None:
    want_code, named = CASES[case][1], CASES[case][2]
    assert code == want_code, f"{case}: exit {code}, expected {want_code}\n{out[-3000:]}"
    assert "Traceback" not in out, f"{case}: a traceback was printed\n{out[-3000:]}"
    record = run / "result.json"
    status = json.loads(record.read_text())["status"] if record.exists() else None
    if want_code:
        assert status != "finished", f"{case}: a failed run wrote a finished record"
        lines = [line for line in out.splitlines() if line.startswith("da: error:")]
        from_parser = not lines and "error:" in out  # jsonargparse: usage block + "error: ..." (exit 2)
        assert len(lines) == 1 or from_parser, f"{case}: expected one 'da: error:' line\n{out[-3000:]}"
        text = lines[0] if lines else out
        for thing in named:
            assert thing in text, f"{case}: '{thing}' not named in: {text[-1500:]}"
    else:
        assert status == "finished", f"{case}: record status {status}"


@pytest.fixture(scope="module", autouse=True)
def _plain_state_dict(fx):
    torch.save({"backbone.w": torch.zeros(2)}, fx / "good.ckpt.sd")


@pytest.mark.parametrize("case", [c for c in CASES if c not in SUBPROCESS])
def test_bad_input_in_process(case, fx, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(REPO)  # the sweep file names configs/quickstart.yaml
    run = tmp_path / "run"
    code = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            main(_argv(case, fx, run))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    out = "".join(capfd.readouterr())
    _check(case, code, out, run)
    messages = [str(w.message) for w in caught]
    if case == "val_check_interval_longer_than_run":
        assert any("val_check_interval=500 is longer than the run" in m for m in messages)
        rec = json.loads((run / "result.json").read_text())
        assert [h["step"] for h in rec["history"]] == [10]  # validated once, at the end
        assert 0 <= rec["metrics"]["val/source_acc"] <= 1 and (run / "checkpoints" / "best.ckpt").exists()
    if case == "truncated_image_skip":
        assert any("skipped 1 undecodable image" in m and "zz_trunc.jpg" in m for m in messages)
        rec = json.loads((run / "result.json").read_text())
        assert rec["split_info"]["undecodable_images"] == {"count": 1, "files": [str(fx / "imgs/a/cat/zz_trunc.jpg")]}


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_in_a_subprocess(case, fx, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("DA_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "da.cli", *_argv(case, fx, run)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    _check(case, proc.returncode, proc.stdout + proc.stderr, run)
    if case == "truncated_image_error":  # failed inside a DataLoader worker: recorded as failed, with the file
        rec = json.loads((run / "result.json").read_text())
        assert rec["status"] == "failed" and "zz_trunc.jpg" in rec["error"] and "DataLoader worker" in rec["error"]


def test_debug_flag_and_env_show_the_traceback(fx, tmp_path, capfd, monkeypatch):
    argv = _argv("config_not_utf8", fx, tmp_path / "run")
    for extra, env in ((["--debug"], None), ([], "1")):
        if env:
            monkeypatch.setenv("DA_DEBUG", env)
        else:
            monkeypatch.delenv("DA_DEBUG", raising=False)
        with pytest.raises(SystemExit) as exit_:
            main(argv + extra)
        err = capfd.readouterr().err
        assert exit_.value.code == 2 and "Traceback" in err and "UserError" in err
        assert err.strip().splitlines()[-1].startswith("da: error: config file") and "latin1.yaml" in err


def test_unexpected_error_is_one_line_with_exit_1(capfd, monkeypatch):
    monkeypatch.delenv("DA_DEBUG", raising=False)

    def boom(argv):
        raise RuntimeError("something inside da broke\nsecond line")

    with pytest.raises(SystemExit) as exit_:
        run_main(boom, ["fit"])
    err = capfd.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.strip() == ("da: error: RuntimeError: something inside da broke second line "
                           "(run with --debug for the traceback)")

    def user(argv):
        assert argv == ["fit", "--x"]  # --debug is removed before the command sees its arguments
        raise UserError("bad value 'x'; use 'y'")

    with pytest.raises(SystemExit) as exit_:
        run_main(user, ["fit", "--debug", "--x"])
    assert exit_.value.code == 2 and capfd.readouterr().err.strip().splitlines()[-1] == "da: error: bad value 'x'; use 'y'"
    monkeypatch.delenv("DA_DEBUG", raising=False)  # run_main exported it for child processes


def test_worker_wrapped_message_is_reduced_to_the_original_line():
    from da.data.readers.folders import UnreadableImageError
    from da.errors import one_line

    wrapped = UnreadableImageError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\n    raise err\n'
                        "da.data.readers.folders.UnreadableImageError: cannot decode image 'a/b.jpg' (OSError)\n")
    assert one_line(wrapped) == "cannot decode image 'a/b.jpg' (OSError)"
    assert one_line(KeyError("missing 'x'")) == "missing 'x'"


def test_trainer_checks_allow_every_bounded_run():
    from da.runs.preflight import check_trainer_args

    for ok in ({"max_steps": 5}, {"max_steps": -1, "max_epochs": 3}, {"max_steps": -1, "max_epochs": None},
               {"max_steps": -1, "max_epochs": -1, "max_time": "00:01:00:00"}):
        check_trainer_args(dict(ok), "fit")
    for bad, says in (({"max_steps": -5}, "max_steps=-5 trains nothing"),
                      ({"max_steps": -1, "max_epochs": 0}, "max_epochs=0"),
                      ({"max_steps": -1, "max_epochs": -1}, "never end")):
        with pytest.raises(UserError, match=says):
            check_trainer_args(dict(bad), "fit")
    check_trainer_args({"max_steps": 0}, "test")  # only `da fit` trains
    cfg = {"max_steps": 30, "val_check_interval": 500, "check_val_every_n_epoch": None}
    with pytest.warns(UserWarning, match="validating once, at the end"):
        check_trainer_args(cfg, "fit")
    assert cfg["val_check_interval"] == 30
    for keep in ({"max_steps": 30, "val_check_interval": 0.5, "check_val_every_n_epoch": None},  # a fraction of an epoch
                 {"max_steps": 30, "val_check_interval": 500, "check_val_every_n_epoch": 1},  # counts within an epoch
                 {"max_steps": 30, "val_check_interval": 30, "check_val_every_n_epoch": None}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_trainer_args(cfg := dict(keep), "fit")
        assert cfg == keep


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    from da.runs import preflight

    cfg = {"max_steps": 30, "precision": "bf16-mixed", "accelerator": "cpu"}
    monkeypatch.setattr(preflight, "cpu_bf16_flags", lambda: "")
    with pytest.warns(UserWarning, match="without bfloat16 instructions.*32-true"):
        preflight.check_trainer_args(dict(cfg), "fit")
    for flags, other in (("avx512_bf16", {}), ("", {"precision": "32-true"}), ("", {"accelerator": "gpu"}),
                         (None, {})):  # None: no /proc/cpuinfo to tell
        monkeypatch.setattr(preflight, "cpu_bf16_flags", lambda flags=flags: flags)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            preflight.check_trainer_args({**cfg, **other}, "fit")


def test_config_paths_and_inline_yaml(fx):
    from da.runs.preflight import check_config_files, config_paths

    assert config_paths(["fit", "--config", "a.yaml", "-c", "b.yaml", "--config=c.yaml", "--x", "1"]) == \
        ["a.yaml", "b.yaml", "c.yaml"]
    check_config_files(["fit", "--config", "{trainer: {max_steps: 5}}"])  # YAML text itself: left to the parser
    with pytest.raises(UserError, match=r"list\.yaml' holds a YAML list"):
        check_config_files(["fit", "--config", str(fx / "list.yaml")])


def test_read_checkpoint_refuses_pickled_objects_and_reads_checkpoints(fx, tmp_path):
    from da.runs.preflight import read_checkpoint

    torch.save({"state_dict": {}, "where": Path("/etc")}, tmp_path / "objects.ckpt")  # a class reference, not data
    with pytest.raises(UserError, match=r"--ckpt_path: checkpoint '.*objects\.ckpt' holds more than tensors"):
        read_checkpoint(tmp_path / "objects.ckpt", "--ckpt_path", lightning=True)
    ckpt = read_checkpoint(fx / "good.ckpt", "--ckpt_path", lightning=True)
    assert ckpt["global_step"] == 1 and ckpt["state_dict"]["backbone.w"].shape == (64, 64)
    assert set(read_checkpoint(fx / "good.ckpt.sd", "--model.init_from")) == {"backbone.w"}  # a plain state dict
