"""The README's plug-in example, run from a module outside the `da` package."""

import json
import re
import sys
import textwrap
from pathlib import Path

from da.cli import run_cli
from tests.helpers import fit_args

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_block(lang: str, marker: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def test_readme_plugin_loss_runs_from_yaml(tmp_path, monkeypatch):
    pkg = tmp_path / "my_project"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "entropy.py").write_text(_readme_block("python", "class TargetEntropy"))
    (tmp_path / "my_method.yaml").write_text(_readme_block("yaml", "my_project.entropy.TargetEntropy"))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    run_cli(fit_args(run, ["--config", str(tmp_path / "my_method.yaml")]))
    rec = json.loads((run / "result.json").read_text())
    assert rec["method"] == "ent"
    ent = rec["metrics"]["train/ent"]
    assert 0.0 <= ent <= 1.0986123 + 1e-6  # an entropy over 3 classes: between 0 and log 3
    # the DANN schedule at the last step (progress 39/40): 2 / (1 + exp(-10 * 0.975)) - 1
    assert abs(rec["metrics"]["train/ent_weight"] - 0.1 * (2 / (1 + 2.718281828 ** (-9.75)) - 1)) < 1e-6
    sys.modules.pop("my_project.entropy", None)
    sys.modules.pop("my_project", None)
