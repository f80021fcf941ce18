"""Small builders shared by the tests."""

from __future__ import annotations

from typing import List, Optional

BLOBS_ARGS = ["--data.sources", "[blobs/0]", "--data.target", "blobs/1", "--model.backbone", "mlp",
              "--model.backbone_args", "{hidden: [16]}", "--data.batch_size", "32", "--trainer.max_steps", "40",
              "--trainer.val_check_interval", "20", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu"]


def fit_args(run_dir, extra: Optional[List[str]] = None, command: str = "fit") -> List[str]:
    return [command, *BLOBS_ARGS, "--run_dir", str(run_dir), *(extra or [])]
