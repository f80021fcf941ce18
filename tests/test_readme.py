"""README.md says only what works: its config files exist, its set-up commands are the agreed two, and every
``da fit | validate | test`` example parses (through the real CLI parser, ``--print_config``, no training) with each
of its overrides landing in the resolved config."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from da import resources
from da.cli import main, run_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SETUP_COMMANDS = ['pip install -e . && da fit --config configs/quickstart.yaml', 'pip install -e ".[dev]" && pytest']
PLACEHOLDER = re.compile(r"runs/\.\.\./\S*\.ckpt")


def _code_blocks(text, lang=None):
    """``(language, body)`` of every fenced code block."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [(lg, body) for lg, body in blocks if lang is None or lg == lang]


def _commands(text):
    """Every ``da fit|validate|test ...`` command in the README's bash blocks (split at ``;`` and ``&&``, comments cut)."""
    out = []
    for _, body in _code_blocks(text, "bash"):
        for line in body.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#"):
                continue
            for part in re.split(r";|&&", line):
                part = part.strip()
                if re.match(r"da (fit|validate|test)\b", part):
                    out.append(part)
    return out


def _self_defined_files(text):
    """Files whose content the README itself gives: a code block whose first line is ``# <path> ...``."""
    names = set()
    for _, body in _code_blocks(text):
        m = re.match(r"#\s*(\S+\.(?:ya?ml|py))\b", body)
        if m:
            names.add(m.group(1))
    return names


def _lookup(cfg, dotted):
    """The value at ``a.b.c``; a list in the way stands for its last item, as jsonargparse applies ``--losses.x``."""
    node = cfg
    for key in dotted.split("."):
        if isinstance(node, list):
            node = node[-1]
        if key not in node and "init_args" in node and key in node["init_args"]:
            node = node["init_args"]
        node = node[key]
    return node


def test_parsers_of_this_file_on_a_known_text():
    text = ("x\n```bash\npip install -e . && da fit --config a.yaml\n# c\nda test --ckpt_path x  # note\n"
            "da --help; da fit --help\nda sweep e.yaml\n```\n```yaml\n# my.yaml — use it\nm: 1\n```\n")
    assert _commands(text) == ["da fit --config a.yaml", "da test --ckpt_path x", "da fit --help"]
    assert _self_defined_files(text) == {"my.yaml"}
    cfg = {"model": {"losses": [{"init_args": {"weight": 1}}, {"init_args": {"weight": 2}}]}, "seed": 3}
    assert _lookup(cfg, "model.losses.init_args.weight") == 2 and _lookup(cfg, "model.losses.weight") == 2
    assert _lookup(cfg, "seed") == 3


def test_every_config_file_mentioned_exists():
    text = README.read_text()
    mentioned = {m.rstrip("`.,;:)") for m in re.findall(r"--config[ =](\S+)", text)}  # inline code ends with `
    assert "configs/quickstart.yaml" in mentioned and len(mentioned) >= 5
    own = _self_defined_files(text)
    packaged = {m for m in mentioned if not m.endswith((".yaml", ".yml"))}
    for name in packaged:  # a packaged config by name (`--config quickstart`, `--config method/dann`)
        assert resources.resolve(name).is_file(), name
    missing = sorted(m for m in mentioned if m not in own and m not in packaged and not (REPO / m).is_file())
    assert not missing, f"README.md mentions config files that do not exist: {missing}"


def test_the_two_setup_commands_are_exact():
    text = README.read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    bash = [body.strip() for _, body in _code_blocks(section, "bash")]
    assert bash[:2] == SETUP_COMMANDS
    # no other install command competes with them anywhere in the README
    installs = [line for _, body in _code_blocks(text, "bash") for line in body.splitlines() if "pip install" in line]
    assert installs == SETUP_COMMANDS


def test_help_lists_the_main_options(capsys):
    with pytest.raises(SystemExit) as err:
        run_cli(["fit", "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model.losses", "--data.sources", "--run_dir", "--model.init_from", "--trainer.max_steps"):
        assert opt in out, opt
    main(["--help"])
    top = capsys.readouterr().out
    assert all(cmd in top for cmd in ("fit", "validate", "test", "sweep", "table"))


def _print_config(argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as err:
        run_cli(argv + ["--print_config"])
    assert err.value.code in (0, None), f"{' '.join(argv)} did not parse (exit {err.value.code})"
    return yaml.safe_load(buf.getvalue())


def test_every_da_example_parses_and_applies_its_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    commands = _commands(README.read_text())
    assert any("--model.losses.init_args.weight" in c for c in commands)
    # checkpoint placeholders (runs/.../last.ckpt) are replaced by a real checkpoint file; parsing does not load it
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    own = _self_defined_files(README.read_text())
    checked = 0
    for cmd in commands:
        argv = shlex.split(PLACEHOLDER.sub(str(ckpt), cmd))[1:]
        if any(a.startswith("--help") for a in argv) or any(a in own for a in argv):
            continue  # --help is tested above; a config the README defines inline is tested by test_plugin.py
        cfg = _print_config(argv)
        i = 1
        while i < len(argv):
            key, value = argv[i], argv[i + 1] if i + 1 < len(argv) else None
            if key.startswith("--") and key != "--config":
                want = yaml.safe_load(value)
                assert _lookup(cfg, key[2:]) == want, f"{cmd}: {key} {value} not in the resolved config"
            i += 2
        checked += 1
    assert checked >= 6
    capsys.readouterr()


def test_losses_override_applies_to_the_last_term_only(monkeypatch):
    """The syntax docs/cli.md gives for loss weights: ``--model.losses.init_args.X`` edits the last term of the list,
    ``--model.losses+=Class`` appends a term, and a later ``--config`` replaces the whole list."""
    monkeypatch.chdir(REPO)
    base = ["fit", "--config", "configs/quickstart.yaml", "--config", "configs/method/dann.yaml"]
    cfg = _print_config(base + ["--model.losses+=da.losses.MKMMD", "--model.losses.init_args.weight", "0.3"])
    terms = [(t["class_path"], t["init_args"]["weight"]) for t in cfg["model"]["losses"]]
    assert terms == [("da.losses.DomainAdversarialLoss", 1.0), ("da.losses.MKMMD", 0.3)]
    cfg = _print_config(base + ["--config", "configs/method/mmd.yaml"])
    assert [t["class_path"] for t in cfg["model"]["losses"]] == ["da.losses.MKMMD"]
