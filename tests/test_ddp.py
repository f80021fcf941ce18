"""Two-process CPU DDP (gloo) through the `da` command against one process on the same global batch.

What is compared (see docs/losses.md, "Distributed (DDP) semantics"):

* run A: ``da fit`` in this process, 1 process x batch 32;
* run B: the ``da`` console script as a subprocess with ``--trainer.devices 2 --trainer.strategy ddp`` (Lightning
  re-launches the command for rank 1), 2 processes x batch 16;

both on ``blobs/0 -> blobs/1`` with the same seed, an MLP without batch norm or dropout, SGD with momentum and
``MKMMD(gather=True)``, for 12 steps (more than one pass over the target, so the epoch's reshuffle is covered).
``TensorBatches`` gives rank r the samples ``r, r+2, ...`` of the same epoch permutation, so the two ranks' batches
together are run A's batch; the cross-entropy is a per-rank mean and DDP averages gradients (= the global mean); the
gathered MMD is the global-batch estimate on every rank. Hence the final weights (``last.ckpt``) must agree up to
float32 summation order (1e-5), the MMD value logged by rank 0 must equal run A's, and a 1-process run with batch 16
(run C) must *not* agree, which shows the comparison can fail. Run B is given no ``--run_dir``: exactly one run
directory with one ``result.json`` (written by rank 0) must appear, and its target predictions must be in dataset
order (sample by sample equal to run A's, as the paired negative-transfer bootstrap needs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from da.cli import run_cli
from da.data.loaders import TensorBatches

CONFIG = """\
seed_everything: 3
trainer:
  max_steps: 12
  val_check_interval: 6
  enable_progress_bar: false
  enable_model_summary: false
  accelerator: cpu
model:
  backbone: mlp
  backbone_args: {hidden: [16], dropout: 0.0, batch_norm: false}
  optimizer: sgd
  lr: 0.05
  momentum: 0.9
  losses:
    - class_path: da.losses.MKMMD
      init_args: {gather: true}
data:
  sources: [blobs/0]
  target: blobs/1
"""


def _da_command():
    exe = shutil.which("da")
    return [exe] if exe else [sys.executable, "-m", "da.cli"]


def ddp_fit(cfg: Path, cwd: Path, *args: str, devices: int = 2, strategy: str = "ddp") -> subprocess.CompletedProcess:
    """``da fit --config cfg`` as a subprocess on ``devices`` CPU processes (gloo); Lightning re-launches the same
    command for the other ranks, so this checkout's ``da`` is put first on their path. Asserts exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "DA_DDP_RUN_DIR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([*_da_command(), "fit", "--config", str(cfg), "--trainer.devices", str(devices),
                           "--trainer.strategy", strategy, *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    cfg = root / "config.yaml"
    cfg.write_text(CONFIG)
    ddp_cwd = root / "ddp"
    ddp_cwd.mkdir()
    proc = ddp_fit(cfg, ddp_cwd, "--data.batch_size", "16")
    run_cli(["fit", "--config", str(cfg), "--data.batch_size", "32", "--trainer.devices", "1",
             "--run_dir", str(root / "single32")])
    run_cli(["fit", "--config", str(cfg), "--data.batch_size", "16", "--trainer.devices", "1",
             "--run_dir", str(root / "single16")])
    return {"root": root, "ddp_cwd": ddp_cwd, "single32": root / "single32", "single16": root / "single16",
            "stdout": proc.stdout}


def _ddp_run_dirs(runs):
    return sorted(p for p in (runs["ddp_cwd"] / "runs").glob("*/*/*") if p.is_dir())


def _ckpt(run_dir: Path):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_ddp_weights_equal_single_process_on_the_same_global_batch(runs):
    (ddp_dir,) = _ddp_run_dirs(runs)
    a, b, c = _ckpt(runs["single32"]), _ckpt(ddp_dir), _ckpt(runs["single16"])
    assert a["global_step"] == b["global_step"] == 12
    assert set(a["state_dict"]) == set(b["state_dict"])
    for name, wa in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], wa, rtol=0, atol=1e-5, msg=name)
    # the comparison is not vacuous: one process with the per-rank batch (16) trains to other weights
    gap = max((c["state_dict"][k] - a["state_dict"][k]).abs().max().item()
              for k in a["state_dict"] if k.startswith(("backbone.", "classifier.")))
    assert gap > 1e-3


def test_ddp_writes_one_record_from_rank_zero(runs):
    dirs = _ddp_run_dirs(runs)
    assert len(dirs) == 1, f"DDP made {len(dirs)} run directories: {dirs}"
    records = list((runs["ddp_cwd"] / "runs").rglob("result.json"))
    assert records == [dirs[0] / "result.json"]
    assert runs["stdout"].count("[da] record:") == 1  # printed by rank 0 only
    rec = json.loads(records[0].read_text())
    ref = json.loads((runs["single32"] / "result.json").read_text())
    assert rec["status"] == "finished" and rec["method"] == "mmd" and rec["seed"] == 3
    assert str(rec["config"]["trainer"]["devices"]) == "2" and rec["config"]["data"]["batch_size"] == 16
    # gathered MMD: rank 0 logs the global-batch estimate, the same number as the single process
    assert rec["metrics"]["train/mmd"] == pytest.approx(ref["metrics"]["train/mmd"], abs=1e-6)
    # evaluation covers all 300 target samples on both ranks together; torchmetrics syncs the counts
    for key in ("test/target_acc", "test/source_acc", "val/source_acc", "val/target_acc"):
        assert rec["metrics"][key] == pytest.approx(ref["metrics"][key], abs=1e-6), key
    assert [h["step"] for h in rec["history"]] == [h["step"] for h in ref["history"]] == [6, 12]


def test_ddp_predictions_are_in_dataset_order(runs):
    (ddp_dir,) = _ddp_run_dirs(runs)
    p_ddp = torch.load(ddp_dir / "predictions.pt", weights_only=True)["target_test"]
    p_one = torch.load(runs["single32"] / "predictions.pt", weights_only=True)["target_test"]
    assert len(p_ddp["y"]) == len(p_one["y"]) == 300
    assert torch.equal(p_ddp["y"], p_one["y"]) and torch.equal(p_ddp["pred"], p_one["pred"])


def test_unshuffled_shards_are_contiguous_blocks_with_wrapped_padding():
    x = torch.arange(7)
    shards = [torch.cat([b[0] for b in TensorBatches((x,), 3, rank=r, world_size=2)]) for r in range(2)]
    assert shards[0].tolist() == [0, 1, 2, 3] and shards[1].tolist() == [4, 5, 6, 0]
    assert torch.cat(shards)[:7].tolist() == x.tolist()  # gathered in order, padding last


def test_shuffled_shards_interleave_the_global_batch():
    x = torch.arange(24)
    one = [b[0] for b in TensorBatches((x,), 8, shuffle=True, drop_last=True, seed=5)]
    ranks = [[b[0] for b in TensorBatches((x,), 4, shuffle=True, drop_last=True, seed=5, rank=r, world_size=2)]
             for r in range(2)]
    for i, batch in enumerate(one):
        assert torch.stack([ranks[0][i], ranks[1][i]], 1).flatten().tolist() == batch.tolist()


# ----------------------------------------------------------------------------- a method with its own update rule

# CONFIG with MCD's three-step update instead of the gathered MMD term, for 8 steps
MCD_CONFIG = (CONFIG.replace("max_steps: 12", "max_steps: 8").replace("val_check_interval: 6", "val_check_interval: 8")
              .replace("  losses:\n    - class_path: da.losses.MKMMD\n      init_args: {gather: true}\n",
                       "  method:\n    class_path: da.methods.MCD\n    init_args: {num_generator_steps: 2}\n"))



@pytest.mark.slow
def test_mcd_under_ddp_equals_one_process_on_the_same_global_batch(tmp_path):
    """MCD's three manual updates, 2 CPU processes x batch 16 vs 1 x 32: every manual backward is DDP-averaged, so
    the weights agree (the unused-parameter variant of DDP: each update touches only part of the model)."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(MCD_CONFIG)
    ddp_fit(cfg, tmp_path, "--data.batch_size", "16", "--run_dir", str(tmp_path / "ddp"),
            strategy="ddp_find_unused_parameters_true")
    run_cli(["fit", "--config", str(cfg), "--data.batch_size", "32", "--run_dir", str(tmp_path / "one")])
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for name, wa in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], wa, rtol=0, atol=1e-5, msg=name)
