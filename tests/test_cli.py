"""End to end through the `da` command (in-process): records, determinism, resume, failures, errors."""

import json

import pytest
import torch

from da.cli import main, run_cli
from tests.helpers import fit_args


def _record(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def test_fit_writes_a_complete_record(tmp_path):
    run_cli(fit_args(tmp_path / "r"))
    rec = _record(tmp_path / "r")
    assert rec["status"] == "finished" and rec["schema"] == 1
    assert rec["task"] == "blobs/0->blobs/1" and rec["method"] == "erm" and rec["seed"] == 0
    for key in ("val/source_acc", "test/target_acc", "test/target_acc_macro", "test/source_acc", "train/loss",
                "train/cls", "val/target_entropy", "val/target_snd", "val/target_bnm"):
        assert key in rec["metrics"], key
    # blobs 0 -> 1 is an easy shift: a source-only MLP transfers well above chance (1/3)
    assert rec["metrics"]["test/target_acc"] > 0.6
    assert rec["metrics"]["val/source_acc"] > 0.8
    assert [h["step"] for h in rec["history"]] == [20, 40]
    assert rec["config"]["model"]["backbone"] == "mlp" and len(rec["config_hash"]) == 12
    assert rec["versions"]["torch"] and rec["wall_time_s"] > 0
    run = tmp_path / "r"
    assert (run / "config.yaml").exists() and (run / "metrics.csv").exists()
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "checkpoints" / "best.ckpt").exists()
    preds = torch.load(run / "predictions.pt", weights_only=True)["target_test"]
    assert len(preds["y"]) == 300
    acc = (preds["y"] == preds["pred"]).float().mean().item()
    assert acc == pytest.approx(rec["metrics"]["test/target_acc"], abs=1e-6)


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_cli(fit_args(tmp_path / name, ["--seed_everything", str(seed)]))
        runs.append(_record(tmp_path / name))
    a, b, c = (r["metrics"] for r in runs)
    assert a["train/loss"] == b["train/loss"] and a["test/target_acc"] == b["test/target_acc"]
    assert a["train/loss"] != c["train/loss"]
    assert runs[0]["config_hash"] == runs[1]["config_hash"] != runs[2]["config_hash"]


def test_resume_from_last_checkpoint(tmp_path):
    run = tmp_path / "r"
    run_cli(fit_args(run, ["--trainer.max_steps", "20"]))
    run_cli(fit_args(run, ["--ckpt_path", "last"]))
    rec = _record(run)
    assert rec["status"] == "finished"
    # the validation at step 20 comes from the checkpoint (history is saved in it), step 40 from the resumed run
    assert [h["step"] for h in rec["history"]] == [20, 40]


def test_resumed_run_is_identical_to_an_uninterrupted_one(tmp_path):
    extra = ["--model.backbone_args", "{hidden: [16], dropout: 0.3}"]  # dropout: the RNG state must be restored too
    run_cli(fit_args(tmp_path / "full", extra))
    run_cli(fit_args(tmp_path / "cut", extra + ["--trainer.max_steps", "20"]))  # "killed" after step 20 (mid-epoch)
    run_cli(fit_args(tmp_path / "cut", extra + ["--ckpt_path", "last"]))
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    assert _record(tmp_path / "full")["metrics"]["test/target_acc"] == _record(tmp_path / "cut")["metrics"]["test/target_acc"]


def test_resumed_manual_method_run_is_identical_to_an_uninterrupted_one(tmp_path):
    # MCD: two optimisers (their momentum states), six optimiser steps per iteration, dropout. (No lr schedule: the
    # "kill" is simulated with a shorter max_steps, which would change a schedule's length.)
    extra = ["--model.backbone_args", "{hidden: [16], dropout: 0.3}", "--model.optimizer", "sgd",
             "--model.lr", "0.05", "--model.method", "da.methods.MCD",
             "--model.method.num_generator_steps", "4"]
    # the final in-memory states are compared (Lightning 2.6 rewrites last.ckpt only when best.ckpt improves)
    full = run_cli(fit_args(tmp_path / "full", extra))
    run_cli(fit_args(tmp_path / "cut", extra + ["--trainer.max_steps", "20"]))
    cut = run_cli(fit_args(tmp_path / "cut", extra + ["--ckpt_path", "last"]))
    assert full.trainer.global_step == cut.trainer.global_step == 40  # iterations, not optimiser steps
    state_full, state_cut = full.model.state_dict(), cut.model.state_dict()
    assert "method.classifier2.weight" in state_full
    for k in state_full:
        assert torch.equal(state_full[k], state_cut[k]), k
    for a, b in zip(full.trainer.optimizers, cut.trainer.optimizers):
        a, b = a.state_dict()["state"], b.state_dict()["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in a)
    assert [h["step"] for h in _record(tmp_path / "cut")["history"]] == [20, 40]
    assert _record(tmp_path / "full")["metrics"]["test/target_acc"] == _record(tmp_path / "cut")["metrics"]["test/target_acc"]


def test_rerun_and_resume_into_a_directory_with_metrics(tmp_path):
    run = tmp_path / "r"
    run_cli(fit_args(run, ["--trainer.max_steps", "30"]))  # metrics.csv now has train/, val/ and test/ columns
    run_cli(fit_args(run, ["--trainer.max_steps", "30"]))  # a fresh run into the same directory
    assert (run / "metrics.prev.csv").exists() and _record(run)["status"] == "finished"
    run_cli(fit_args(run, ["--trainer.max_steps", "60", "--ckpt_path", "last"]))  # resume: append to the same file
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/source_acc" in header and "train/loss" in header
    assert _record(run)["status"] == "finished" and _record(run)["history"][-1]["step"] == 60


def test_failed_run_is_recorded_as_failed(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(Exception):
        # a negative learning rate passes the parser but makes the optimizer raise inside fit
        run_cli(fit_args(run, ["--model.lr", "-1"]))
    rec = _record(run)
    assert rec["status"] == "failed" and "learning rate" in rec["error"]


def test_unknown_dataset_suggests_the_nearest(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'blob'; did you mean 'blobs'\?"):
        run_cli(fit_args(tmp_path / "r", ["--data.target", "blob/1"]))


def test_unknown_domain_lists_known(tmp_path):
    with pytest.raises(ValueError, match=r"unknown domain of dataset 'blobs' '7'.*known: 0, 1, 2, 3, 4"):
        run_cli(fit_args(tmp_path / "r", ["--data.target", "blobs/7"]))


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(fit_args(tmp_path / "r", ["--model.not_a_key", "1"]))
    assert "not_a_key" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_gpu_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="(?i)gpu|cuda"):
        run_cli(fit_args(tmp_path / "r", ["--trainer.accelerator", "gpu"]))


def test_top_level_help_lists_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("fit", "test", "sweep", "table", "detect"):
        assert cmd in out


def test_last_checkpoint_is_the_last_step_even_when_best_stops_improving(tmp_path):
    # lr 0: the monitored val/source_acc never improves after the first validation; Lightning's own save_last would
    # then leave last.ckpt at step 10 of 40
    run_cli(fit_args(tmp_path / "r", ["--model.lr", "0.0"]))
    last = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(tmp_path / "r" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 40
    assert best["global_step"] == 20


def test_direct_transfer_with_da_test(tmp_path):
    run_cli(fit_args(tmp_path / "src"))
    ckpt = tmp_path / "src" / "checkpoints" / "last.ckpt"
    run_cli(fit_args(tmp_path / "t", ["--ckpt_path", str(ckpt)], command="test"))
    fit_rec, test_rec = _record(tmp_path / "src"), _record(tmp_path / "t")
    assert test_rec["subcommand"] == "test"
    assert test_rec["metrics"]["test/target_acc"] == pytest.approx(fit_rec["metrics"]["test/target_acc"])


def test_wandb_logger_runs_offline_next_to_csv(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    run = tmp_path / "r"
    cli = run_cli(fit_args(run, ["--trainer.logger", "WandbLogger", "--trainer.logger.project", "da-test"]))
    names = [type(lg).__name__ for lg in cli.trainer.loggers]
    assert names == ["CSVLogger", "WandbLogger"]  # CSV always, first (it holds config.yaml and metrics.csv)
    assert (run / "metrics.csv").exists() and _record(run)["status"] == "finished"
    assert (run / "wandb").is_dir()  # W&B's files live in the run directory
    import wandb

    wandb.finish()
