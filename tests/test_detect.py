"""`da detect`: NTG verdicts from run directories, launching missing baselines, ranking, JSON and plots."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from da.diagnostics.detect import (detect_main, detect_negative_transfer, infer_comparison,
                                   run_missing_baselines)
from da.diagnostics.ntg import negative_transfer_gap
from da.diagnostics.plots import plot_ntg

N_TEST = 600
Y = torch.from_numpy(np.random.default_rng(0).integers(0, 10, N_TEST))


def make_run(run_dir, task, method, seed, p_correct, supervision="source", status="finished", preds=True):
    """A run directory as the CLI leaves it: result.json (schema 1) and predictions.pt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1000 + seed + int(1000 * p_correct))
    right = torch.from_numpy(rng.random(N_TEST) < p_correct)
    pred = torch.where(right, Y, (Y + 1) % 10)
    if preds:
        torch.save({"target_test": {"y": Y.clone(), "pred": pred}}, run_dir / "predictions.pt")
    rec = {"schema": 1, "status": status, "task": task, "method": method, "seed": seed,
           "config": {"data": {"class_path": "da.data.datamodule.DomainDataModule",
                               "init_args": {"supervision": supervision}}},
           "metrics": {"test/target_acc": float(right.float().mean())}, "run_dir": str(run_dir),
           "error": "Traceback ...: RuntimeError" if status == "failed" else None}
    (run_dir / "result.json").write_text(json.dumps(rec))
    return run_dir, right.numpy().astype(float)


@pytest.fixture
def runs(tmp_path):
    task = "jda/mnist->jda/usps"
    out = {"transfer": [], "baseline": [], "t_correct": [], "b_correct": []}
    for s in range(3):
        d, c = make_run(tmp_path / "dann" / f"s{s}", task, "dann", s, 0.70)
        out["transfer"].append(d), out["t_correct"].append(c)
        d, c = make_run(tmp_path / "base" / f"s{s}", task, "oracle", s, 0.85, supervision="target")
        out["baseline"].append(d), out["b_correct"].append(c)
    make_run(tmp_path / "dann" / "crashed", task, "dann", 9, 0.1, status="failed")
    out["root"] = tmp_path
    return out


def test_cli_verdict_text_and_json(runs, capsys, tmp_path):
    root = runs["root"]
    assert detect_main(["--transfer", str(root / "dann"), "--baseline", str(root / "base"), "--n-boot", "500"]) == 0
    text = capsys.readouterr().out
    assert "verdict: NEGATIVE TRANSFER  (vs target-only baseline)" in text
    assert "(3 seeds)" in text and "bootstrap: paired" in text and "status 'failed'" in text
    rc = detect_main(["--transfer", str(root / "dann"), "--baseline", str(root / "base"), "--n-boot", "500",
                      "--json", "--out", str(tmp_path / "ntg.json"), "--fail-on-negative"])
    assert rc == 3
    payload = json.loads(capsys.readouterr().out)
    assert payload == json.loads((tmp_path / "ntg.json").read_text())
    (r,) = payload["results"]
    expected = np.mean(1 - np.stack(runs["t_correct"])) - np.mean(1 - np.stack(runs["b_correct"]))
    assert r["gap"] == pytest.approx(expected)
    assert r["ci_low"] > 0 and r["n_seeds_each"] == [3, 3] and r["n_samples"] == [N_TEST, N_TEST]
    # the CLI adds nothing to the statistics: same numbers as the Python API on the raw arrays
    direct = negative_transfer_gap(runs["t_correct"], runs["b_correct"], n_boot=500)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((direct.ci_low, direct.ci_high))


def test_groups_by_target_and_infers_comparison(tmp_path):
    for s in range(2):
        make_run(tmp_path / "t" / f"a{s}", "jda/mnist->jda/usps", "erm", s, 0.90)
        make_run(tmp_path / "t" / f"b{s}", "jda/usps->jda/mnist", "erm", s, 0.50)
        make_run(tmp_path / "b" / f"a{s}", "jda/mnist->jda/usps", "srconly", s, 0.60)
        make_run(tmp_path / "b" / f"b{s}", "jda/usps->jda/mnist", "srconly", s, 0.50)
    res = detect_negative_transfer([tmp_path / "t"], [tmp_path / "b"], n_boot=300)
    assert [r.task for r in res] == ["jda/usps->jda/mnist", "jda/mnist->jda/usps"]  # sorted by target
    assert all(r.comparison == "source-only baseline" for r in res)
    assert res[1].verdict == "positive transfer" and res[0].verdict == "inconclusive"
    make_run(tmp_path / "t2" / "x", "jda/mnist->office31/amazon", "erm", 0, 0.5)
    with pytest.raises(ValueError, match="no baseline runs for target 'office31/amazon'"):
        detect_negative_transfer([tmp_path / "t2"], [tmp_path / "b"])
    with pytest.raises(ValueError, match="mix target-only"):
        infer_comparison([{"method": "oracle"}, {"method": "erm"}])


def test_accuracy_only_runs_are_reported_as_such(tmp_path, capsys):
    for s in range(3):
        make_run(tmp_path / "t" / f"{s}", "a->b", "erm", s, 0.6 + 0.01 * s, preds=False)
        make_run(tmp_path / "b" / f"{s}", "a->b", "oracle", s, 0.8 + 0.01 * s, supervision="target", preds=False)
    detect_main(["--transfer", str(tmp_path / "t"), "--baseline", str(tmp_path / "b"), "--json"])
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["bootstrap"] == "seeds only" and any("predictions.pt" in n for n in r["notes"])


def test_task_mode_launches_only_missing_baselines(runs, capsys):
    root = runs["root"]
    calls = []

    def fake_launcher(argv):
        calls.append(argv)
        seed = int(argv[argv.index("--seed_everything") + 1])
        make_run(argv[argv.index("--run_dir") + 1], "jda/mnist->jda/usps", "oracle", seed, 0.85,
                 supervision="target")
        return 0

    done = root / "baselines" / "jda-mnist_to_jda-usps" / "seed0"
    make_run(done, "jda/mnist->jda/usps", "oracle", 0, 0.85, supervision="target")
    rc = detect_main(["--task", "jda/mnist->jda/usps", "--method", "dann", "--runs-root", str(root),
                      "--transfer", str(root / "dann"), "--baseline-config", "data.yaml", "target_only.yaml",
                      "--n-boot", "300", "--json"], launcher=fake_launcher)
    assert rc == 0
    assert [a[a.index("--seed_everything") + 1] for a in calls] == ["1", "2"]
    assert calls[0][:5] == ["fit", "--config", "data.yaml", "--config", "target_only.yaml"]
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["verdict"] == "negative transfer" and r["n_seeds_each"] == [3, 3]

    with pytest.raises(RuntimeError, match="seed 5 did not finish"):
        run_missing_baselines("a->b", ["x.yaml"], [5], root, launcher=lambda argv: 1)
    with pytest.raises(ValueError, match="--baseline-config is required"):
        run_missing_baselines("a->b", [], [5], root)


def test_rank_mode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    good = rng.normal(size=(300, 5)) + 3 * np.eye(3, 5)[y]
    np.savez(tmp_path / "good.npz", features=good, labels=y)
    np.savez(tmp_path / "noise.npz", features=rng.normal(size=(300, 5)), labels=y)
    torch.save({"probs": torch.full((300, 4), 0.25), "labels": torch.from_numpy(y)}, tmp_path / "uniform.pt")
    (tmp_path / "accs.json").write_text(json.dumps({"good": 0.9, "noise": 0.4}))
    assert detect_main(["--rank", "--features-dir", str(tmp_path), "--accuracies", str(tmp_path / "accs.json")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[2].startswith("| 1 | good |") and "Kendall tau (logme vs accuracy): +1.000" in text
    detect_main(["--rank", "--features-dir", str(tmp_path), "--scores", "leep", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["primary"] == "leep" and payload["rows"][0]["leep"] == pytest.approx(np.log(1 / 3))
    with pytest.raises(ValueError, match="no .npz or .pt"):
        detect_main(["--rank", "--features-dir", str(tmp_path / "nothing")])


def test_usage_errors():
    with pytest.raises(SystemExit):
        detect_main(["--transfer", "x"])
    with pytest.raises(SystemExit):
        detect_main(["--rank"])


def test_ntg_plot_file(runs, tmp_path):
    png = tmp_path / "ntg.png"
    detect_main(["--transfer", str(runs["root"] / "dann"), "--baseline", str(runs["root"] / "base"),
                 "--n-boot", "200", "--plot", str(png), "--json"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least one"):
        plot_ntg([], tmp_path / "empty.png")
