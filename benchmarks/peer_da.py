"""``da``'s side of ``benchmarks/peers.py``: one run = one ``da fit`` through the public CLI (``da.cli.run_cli``).

The run is what a user gets from ``da fit --config configs/data/amazon_dann.yaml --config configs/method/<m>.yaml``,
with the shared protocol (backbone, optimiser, lr, batch, steps, seed, all of the source for training) given as
command-line overrides after the two configs. Target accuracy is ``test/target_acc`` of the run's ``result.json``;
the step clock is a Lightning callback around each training batch (forward, losses, backward, optimiser step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytorch_lightning as pl

from peer_nets import StepClock

#: the configs that hold each method's terms (picked up by name: a method whose file is absent is reported as such)
METHOD_CONFIGS = {"erm": "erm", "dann": "dann", "dan": "mmd", "coral": "coral", "mcc": "mcc", "mdd": "mdd"}


class StepClockCallback(pl.Callback):
    """:class:`peer_nets.StepClock` around every training batch (after the batch is fetched, to after the step)."""

    def __init__(self, warmup: int = 10):
        self.clock = StepClock(warmup)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.stop()


def fit_args(job: Dict[str, Any], method_config: Path) -> List[str]:
    """The ``da fit`` arguments of one job: the data and method configs, then the shared protocol as overrides."""
    source, target = job["task"].split("->")
    steps = int(job["steps"])
    return ["fit", "--config", str(Path(job["configs"]) / "data" / job["data_config"]), "--config", str(method_config),
            "--seed_everything", str(job["seed"]),
            "--data.sources", f"[{source}]", "--data.target", target, "--data.root", job["root"],
            "--data.val_fraction", "0", "--data.batch_size", str(job["batch_size"]),
            "--model.backbone", "peer_nets.FeatureMLP", "--model.backbone_args", json.dumps({"hidden": job["hidden"]}),
            "--model.bottleneck_dim", "null",
            "--model.optimizer", "adam", "--model.lr", str(job["lr"]), "--model.weight_decay", "0",
            "--model.scheduler", "none",
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.callbacks", json.dumps([{"class_path": "peer_da.StepClockCallback",
                                                "init_args": {"warmup": job["warmup"]}}]),
            "--run_dir", job["run_dir"]]


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    name = METHOD_CONFIGS.get(job["method"], job["method"])
    cfg = Path(job["configs"]) / "method" / f"{name}.yaml"
    if not cfg.is_file():
        return {"error": f"no configs/method/{name}.yaml in this da checkout"}
    from da.cli import run_cli

    cli = run_cli(fit_args(job, cfg))
    clock = next(cb.clock for cb in cli.trainer.callbacks if isinstance(cb, StepClockCallback))
    record = json.loads((Path(job["run_dir"]) / "result.json").read_text())
    if record.get("status") != "finished":
        return {"error": f"da run {record.get('status')}: {str(record.get('error'))[-300:]}"}
    return {"acc": 100.0 * float(record["metrics"]["test/target_acc"]), **clock.summary(),
            "note": f"{cli.model.method_name} (configs/method/{name}.yaml)"}
