"""CPU smoke test of the Office-31 ResNet-50 recipe (TLlib's): a few steps with random weights, tiny images."""

import json
from pathlib import Path

from da.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_office31_resnet50_recipe_runs_a_few_steps(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run = tmp_path / "a2w"
    run_cli(["fit", "--config", "configs/data/office31.yaml", "--config", "configs/benchmark/office31_resnet50.yaml",
             "--config", "configs/method/dann.yaml", "--data.root", str(shared_data),
             "--model.backbone_args", "{pretrained: false}",  # no ImageNet weights here: a smoke test, not a number
             "--data.options", "{image_size: 32}", "--data.batch_size", "2", "--data.eval_batch_size", "4",
             "--data.num_workers", "0", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--run_dir", str(run)])
    rec = json.loads((run / "result.json").read_text())
    assert rec["status"] == "finished" and rec["recipe"] == "office31_resnet50" and rec["method"] == "dann"
    model = rec["config"]["model"]
    assert model["backbone"] == "resnet50" and model["scheduler"] == "inv" and model["backbone_lr_mult"] == 0.1
    # all of the source is trained on (val_fraction 0): amazon's 2,817 images
    assert rec["split_info"]["sources"]["office31/amazon"]["train"] == 2817
    assert rec["metrics"]["train/loss"] > 0 and 0 <= rec["metrics"]["test/target_acc"] <= 1
