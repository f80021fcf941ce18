"""Smoke test: every shipped ``configs/method/*.yaml`` trains a few steps on the built-in task through the real CLI.

Each run is ``da fit --config configs/quickstart.yaml --config configs/method/<it>.yaml`` with a tiny budget (3 steps,
batch 16, one validation and one test batch) and must end with a ``finished`` record whose logged training losses are
all finite, one ``train/<name>`` per loss term. A config whose header says it needs ``--model.init_from`` gets a
source checkpoint (ERM on the same task, made once per session); the multi-source configs get it as their one
anchor / branch (``da multisource`` fills those in real use). A new method config is picked up without editing this
file.
"""

import json
import math
from pathlib import Path

import pytest

from da.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
METHOD_CONFIGS = sorted((REPO / "configs" / "method").glob("*.yaml"))
TINY = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1", "--data.batch_size", "16",
        "--data.eval_batch_size", "64", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
# configs whose starting points `da multisource` fills in: where the one source checkpoint goes
STARTING_POINTS = {
    "anchors": lambda ckpt: ["--model.losses.init_args.anchors", f"[{ckpt}]"],
    "branches": lambda ckpt: ["--model.backbone_args.checkpoints", f"[{ckpt}]"],
}


def header(path: Path) -> str:
    """The leading comment block of a YAML file."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def needs_init_from(path: Path) -> bool:
    return "--model.init_from" in header(path)


def fit(run_dir: Path, config: Path, extra=()):
    return run_cli(["fit", "--config", str(QUICKSTART), "--config", str(config), *TINY, "--run_dir", str(run_dir),
                    *extra])


@pytest.fixture(scope="session")
def source_checkpoint(tmp_path_factory) -> Path:
    """A source-only LeNet on the built-in task (3 steps): the starting point of transfer configs."""
    run = tmp_path_factory.mktemp("source") / "erm"
    fit(run, REPO / "configs" / "method" / "erm.yaml")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def test_header_rule_and_config_list():
    names = {p.stem for p in METHOD_CONFIGS}
    assert {"erm", "dann", "mcc", "bnm", "ent", "im", "bsp", "afn", "mdd"} <= names
    assert needs_init_from(REPO / "configs" / "method" / "l2sp.yaml")
    assert not needs_init_from(REPO / "configs" / "method" / "mcc.yaml")
    assert set(STARTING_POINTS) <= names  # a renamed config must not silently lose its starting point


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_method_config_trains(config, tmp_path, request):
    extra = []
    if needs_init_from(config) or config.stem in STARTING_POINTS:
        ckpt = request.getfixturevalue("source_checkpoint")
        extra = ["--model.init_from", str(ckpt)] if needs_init_from(config) else []
        extra += STARTING_POINTS.get(config.stem, lambda c: [])(ckpt)
    cli = fit(tmp_path / config.stem, config, extra)
    rec = json.loads((tmp_path / config.stem / "result.json").read_text())
    assert rec["status"] == "finished", rec.get("error")
    train = {k: v for k, v in rec["metrics"].items() if k.startswith("train/")}
    assert train, f"{config.name}: no train/* metric in the record"
    bad = {k: v for k, v in train.items() if not math.isfinite(v)}
    assert not bad, f"{config.name}: non-finite training losses {bad}"
    for term in getattr(cli.model, "losses", []):
        assert f"train/{term.name}" in train, f"{config.name}: term {term.name} was not logged"
    assert math.isfinite(rec["metrics"]["test/target_acc"])
