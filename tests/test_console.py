"""The ``da`` console script as a user runs it: from a folder of their own, with the README's plug-in example."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FEW_STEPS = ["--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "3",
             "--trainer.accelerator", "cpu", "--data.batch_size", "16"]


def da_command():
    """The installed console script when there is one (what the README runs), else ``python -m da.cli``."""
    exe = shutil.which("da")
    return [exe] if exe else [sys.executable, "-m", "da.cli"]


def console_env(**extra):
    """This checkout's ``da`` first on the path (the editable install may point at another checkout); the working
    directory is *not* added: the console script must do that itself."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", **extra}
    return env


def _readme_file(name: str) -> str:
    """The body of the README code block whose first line is ``# <name> ...``."""
    for body in re.findall(r"^```\w*\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        if re.match(rf"#\s*{re.escape(name)}\b", body):
            return body
    raise AssertionError(f"README.md has no code block starting with '# {name}'")


def test_readme_plugin_example_runs_with_the_console_script(tmp_path):
    entropy = _readme_file("my_project/entropy.py")
    method = _readme_file("my_method.yaml")
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "entropy.py").write_text(entropy)  # as written: no __init__.py (a namespace package)
    (tmp_path / "my_method.yaml").write_text(method)
    # the command the README gives on the yaml block's first line, run as written plus a few-step budget
    command = re.search(r"—\s*(da fit .*)$", method.splitlines()[0]).group(1)
    argv = shlex.split(command)[1:] + FEW_STEPS + ["--run_dir", "run"]
    proc = subprocess.run(da_command() + argv, cwd=tmp_path, env=console_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "result.json").read_text())
    assert rec["status"] == "finished" and rec["method"] == "ent"
    assert 0.0 <= rec["metrics"]["train/ent"] <= 2.3025851  # an entropy over 10 classes: between 0 and log 10
    assert rec["config"]["trainer"]["max_steps"] == 6
    assert "No module named" not in proc.stderr
