"""Short help, ``da list`` and "did you mean" for mistyped flags."""

import pytest

from da.cli import main
from da.errors import UserError
from da.help import list_main, short_error, short_help, suggest
from da.resources import folder


def test_fit_help_is_short_and_names_da_list(capsys):
    main(["fit", "--help"])
    out = capsys.readouterr().out
    assert out == short_help("fit")
    lines = out.splitlines()
    assert 40 < len(lines) < 120
    for needle in ("da list datasets", "--help-all", "--config quickstart", "--data.sources", "--data.target",
                   "--model.losses", "--model.backbone", "--run_dir", "--trainer.max_steps"):
        assert needle in out, needle
    assert "--trainer.gradient_clip_val" not in out  # the long Trainer list is behind --help-all
    assert all(len(line) <= 118 for line in lines)


def test_help_all_is_lightnings_complete_list(capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--help-all"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.gradient_clip_val" in out and len(out.splitlines()) > 300


def test_mistyped_flag_gets_a_suggestion_not_a_usage_block(capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", "quickstart", "--trainer.max_stesp", "5"])
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == ("da fit: error: unrecognized arguments: --trainer.max_stesp 5; "
                                            "did you mean --trainer.max_steps?")
    assert len(captured.err.splitlines()) == 2 and "usage:" not in captured.err


def test_suggestions():
    opts = ["--data.batch_size", "--data.sources", "--trainer.max_steps", "--model.lr"]
    assert suggest("--data.batchsize=3", opts) == "--data.batch_size"
    assert suggest("--completely_else", opts) is None
    text = short_error("unrecognized arguments: --data.batchsize 3 --modl.lr 1", opts, "da fit")
    assert "did you mean --data.batch_size (for --data.batchsize), --model.lr (for --modl.lr)?" in text


def test_da_list_prints_one_line_per_item(capsys):
    assert list_main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    methods = sorted(p.stem for p in (folder("configs") / "method").glob("*.yaml"))
    assert [line.split()[0] for line in out] == [f"method/{m}" for m in methods]
    assert any(line.startswith("  method/dann ") and "Ganin" in line for line in out)
    list_main(["datasets"])
    out = capsys.readouterr().out
    for name in ("builtin", "office31", "officehome", "pacs", "visda", "domainnet"):
        assert f"\n  {name} " in "\n" + out, name
    list_main(["backbones"])
    assert "lenet" in capsys.readouterr().out
    with pytest.raises(UserError, match="did you mean 'methods'"):
        list_main(["mehtods"])
