"""The training dict is logged only on the steps the logger writes: same metrics.csv, far fewer log calls."""

import csv
import json

import pytest

from da.cli import run_cli
from da.module import TransferModule
from tests.helpers import fit_args

DANN = ["--model.losses", '[{class_path: da.losses.DomainAdversarialLoss, init_args: {hidden: 16}}]',
        "--trainer.max_steps", "23", "--trainer.log_every_n_steps", "5", "--trainer.val_check_interval", "10"]


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _train_metrics(run_dir):
    rec = json.loads((run_dir / "result.json").read_text())
    return {k: v for k, v in rec["metrics"].items() if k.startswith("train/")}


def _count_train_log_calls(monkeypatch) -> list:
    """The global steps at which ``TransferModule.log_dict`` is called with ``train/*`` keys (a list it fills)."""
    calls = []
    real = TransferModule.log_dict

    def counting(self, d, *a, **k):
        if any(key.startswith("train/") for key in d):
            calls.append(self.global_step)
        return real(self, d, *a, **k)

    monkeypatch.setattr(TransferModule, "log_dict", counting)
    return calls


def test_cadence_logging_writes_the_same_metrics_csv(tmp_path, monkeypatch):
    calls = _count_train_log_calls(monkeypatch)
    run_cli(fit_args(tmp_path / "cadence", DANN))
    cadence_calls = list(calls)
    calls.clear()
    with monkeypatch.context() as m:  # the behaviour before: the training dict logged on every step
        m.setattr(TransferModule, "_train_logs_due", lambda self: True)
        run_cli(fit_args(tmp_path / "every", DANN))
    assert len(calls) == 23
    # logged after the optimiser step (global_step already advanced): steps 5, 10, 15, 20 and the last one, 23
    assert cadence_calls == [5, 10, 15, 20, 23]
    a, b = _rows(tmp_path / "cadence"), _rows(tmp_path / "every")
    assert list(a[0]) == list(b[0]) and len(a) == len(b) > 4
    assert a == b  # same steps, same columns, same values (the CSV text of every cell)
    train_steps = [r["step"] for r in a if r["train/loss"]]
    assert train_steps == ["4", "9", "14", "19"]
    assert "train/dann_disc_acc" in a[0] and "train/dann_weight" in a[0]
    final_a, final_b = _train_metrics(tmp_path / "cadence"), _train_metrics(tmp_path / "every")
    assert final_a == pytest.approx(final_b) and "train/dann" in final_a  # the record's final train/* values


def test_manual_methods_log_on_the_same_cadence(tmp_path, monkeypatch):
    """A method with its own update rule (MCD here) logs its dict on the logger's steps only, as a loss term does."""
    mcd = ["--model.method", "{class_path: da.methods.MCD, init_args: {num_generator_steps: 2}}",
           "--trainer.max_steps", "23", "--trainer.log_every_n_steps", "5", "--trainer.val_check_interval", "10"]
    calls = _count_train_log_calls(monkeypatch)
    run_cli(fit_args(tmp_path / "cadence", mcd))
    cadence_calls = list(calls)
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(TransferModule, "_train_logs_due", lambda self: True)
        run_cli(fit_args(tmp_path / "every", mcd))
    assert len(calls) == 23 and cadence_calls == [5, 10, 15, 20, 23]
    a, b = _rows(tmp_path / "cadence"), _rows(tmp_path / "every")
    assert a == b and [r["step"] for r in a if r["train/loss"]] == ["4", "9", "14", "19"]
    assert _train_metrics(tmp_path / "cadence") == pytest.approx(_train_metrics(tmp_path / "every"))
