"""The installable package: ``python -m build`` makes a wheel and an sdist that ``twine check`` accepts; the wheel
carries every config and experiment grid; installed into a fresh environment it runs the quickstart from an empty
folder, with configs and grids found by name."""

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from da import resources

REPO = Path(__file__).resolve().parents[1]


def _tracked_yaml(folder):
    return sorted(str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*.yaml"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel, = out.glob("*.whl")
    sdist, = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_and_sdist_pass_twine_and_carry_every_config(dist):
    pytest.importorskip("twine")
    wheel, sdist = dist
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.count("PASSED") == 2, proc.stdout + proc.stderr
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"da/_data/{f}" for f in _tracked_yaml("configs") + _tracked_yaml("experiments")}
    assert len(want) >= 30 and not want - names, sorted(want - names)[:5]
    assert "da/cli.py" in names and "da/resources.py" in names
    assert not any(n.startswith(("tests/", "runs/")) for n in names)


def test_packaged_names_resolve_in_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: nothing resolves relative to it
    assert resources.resolve("quickstart") == REPO / "configs/quickstart.yaml"
    assert resources.resolve("method/dann") == REPO / "configs/method/dann.yaml"
    assert resources.resolve("configs/method/dann.yaml") == REPO / "configs/method/dann.yaml"
    assert resources.resolve("dann") == REPO / "configs/method/dann.yaml"
    assert resources.resolve("digits_ablation", "experiments") == REPO / "experiments/digits_ablation.yaml"
    (tmp_path / "mine.yaml").write_text("seed_everything: 3\n")
    assert resources.resolve("mine.yaml") == Path("mine.yaml")  # a real file wins
    from da.errors import UserError

    with pytest.raises(UserError, match=r"config 'method/dan' not found.*did you mean method/dann"):
        resources.resolve("method/dan")
    argv = resources.resolve_config_args(["fit", "--config", "quickstart", "--config={trainer: {max_steps: 3}}",
                                          "--config=method/mmd"])
    assert argv == ["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--config={trainer: {max_steps: 3}}",
                    "--config=" + str(REPO / "configs/method/mmd.yaml")]


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_the_quickstart_from_an_empty_folder(dist, tmp_path):
    wheel, _ = dist
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)  # torch etc. from the system
    py = env_dir / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PATH=f"{env_dir / 'bin'}:{env['PATH']}")
    where = subprocess.run([str(py), "-c", "import da, da.resources as r; print(da.__file__); print(r.data_root())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert str(env_dir) in where.stdout.splitlines()[0], where.stdout + where.stderr  # the wheel, not this clone
    assert where.stdout.splitlines()[1].endswith("da/_data")
    da_exe = env_dir / "bin" / "da"
    run = subprocess.run([str(da_exe), "fit", "--config", "quickstart", "--trainer.max_steps", "6",
                          "--trainer.val_check_interval", "3", "--trainer.accelerator", "cpu", "--run_dir", "run"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "run" / "result.json").is_file()
    dry = subprocess.run([str(da_exe), "sweep", "digits_ablation", "--dry-run"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "54" in dry.stdout + dry.stderr, dry.stdout[-2000:] + dry.stderr[-2000:]
