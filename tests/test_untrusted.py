"""Untrusted files cannot run code: a checkpoint's hyper-parameters never override the command line or name code."""

import json

import pytest
import torch

from da.checkpoints import load_checkpoint, read_state_dict
from da.errors import UserError
from da.models.backbones import build_backbone
from da.cli import run_cli
from tests.helpers import fit_args


def _evil_checkpoint(tmp_path):
    """A real checkpoint of a tiny run whose hyper-parameters ask for ``os.system("touch <tmp>/pwned")``."""
    run_cli(fit_args(tmp_path / "src", ["--trainer.max_steps", "20"]))
    ckpt = torch.load(tmp_path / "src" / "checkpoints" / "last.ckpt", weights_only=True)
    pwned = tmp_path / "pwned"
    ckpt["hyper_parameters"].update(backbone="os.system", backbone_args={"command": f"touch {pwned}"}, lr=0.123)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    return evil, pwned


def test_malicious_checkpoint_runs_nothing_under_test_and_fit(tmp_path, capsys):
    evil, pwned = _evil_checkpoint(tmp_path)
    run_cli(fit_args(tmp_path / "t", ["--ckpt_path", str(evil)], command="test"))
    assert not pwned.exists()
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "other model settings" in ln]  # one line naming the keys that differ
    assert "(backbone, backbone_args, lr)" in line
    rec = json.loads((tmp_path / "t" / "result.json").read_text())
    assert rec["status"] == "finished" and rec["config"]["model"]["backbone"] == "mlp"

    run_cli(fit_args(tmp_path / "f", ["--ckpt_path", str(evil), "--model.lr", "0.001"]))
    assert not pwned.exists()
    rec = json.loads((tmp_path / "f" / "result.json").read_text())
    assert rec["status"] == "finished"
    assert rec["config"]["model"]["lr"] == 0.001 and rec["config"]["model"]["backbone"] == "mlp"
    assert [h["step"] for h in rec["history"]] == [20, 40]  # resumed from the checkpoint's step 20


def test_dotted_backbone_must_be_a_module_class(tmp_path):
    pwned = tmp_path / "pwned"
    with pytest.raises(UserError, match=r"'os.system' is a builtin_function_or_method, not a torch.nn.Module"):
        build_backbone("os.system", (4,), command=f"touch {pwned}")
    with pytest.raises(UserError, match="cannot import backbone 'no_such_pkg.Net'"):
        build_backbone("no_such_pkg.Net", (4,))
    assert not pwned.exists()
    net = build_backbone("tests.test_untrusted.TinyNet", (4,))
    assert net.out_features == 3 and net.in_features == 4


class TinyNet(torch.nn.Module):
    def __init__(self, input_shape=(4,)):
        super().__init__()
        self.in_features, self.out_features = int(input_shape[0]), 3


def test_loss_class_path_must_be_an_adaptation_loss():
    from da.losses import build_loss

    with pytest.raises(TypeError, match="not an AdaptationLoss subclass"):
        build_loss({"class_path": "os.system", "init_args": {"command": "true"}})
    with pytest.raises(TypeError, match="not an AdaptationLoss subclass"):
        build_loss({"class_path": "torch.nn.Linear"})


def test_checkpoint_with_code_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    bad = tmp_path / "code.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(UserError, match=r"code.pt' (holds more than tensors|cannot be read)"):
        load_checkpoint(bad)
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(UserError, match=r"cut.pt' cannot be read"):
        read_state_dict(tmp_path / "cut.pt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "ok.ckpt")
    assert list(read_state_dict(tmp_path / "ok.ckpt")) == ["w"]


def test_no_weights_only_false_in_da():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "da"
    offenders = [str(p) for p in root.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []
