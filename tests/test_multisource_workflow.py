"""The multi-source workflow on blobs: sources blobs/0, blobs/2, blobs/4 -> target blobs/1, a few steps each.

Checks the structure and the numbers that tie the runs together: the source models feed the target runs (the anchors
run starts from their mean, its penalty equals sum_d alpha_d/2 ||w - w_d||^2 from the logged per-source distances;
the branches are loaded from the source checkpoints and the mixture weights are logged), every record is written, and
re-running reuses finished runs.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from da.losses.l2sp import escape_name
from da.multisource_workflow import DEFAULT_METHOD_CONFIGS, METHODS, average_checkpoints, format_summary, multisource_main, run_multisource

SOURCES = ["blobs/0", "blobs/2", "blobs/4"]
BASE = """\
seed_everything: 0
trainer:
  max_steps: 10
  val_check_interval: 5
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  accelerator: cpu
model:
  backbone: mlp
  backbone_args: {hidden: [16]}
  optimizer: sgd
  lr: 0.05
data:
  batch_size: 32
"""


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("multisource")
    base = root / "base.yaml"
    base.write_text(BASE)
    # the shipped anchors config, logging the per-source distances every step (default: every 25) for this short run
    anchors = yaml.safe_load(DEFAULT_METHOD_CONFIGS["anchors"].read_text())
    anchors["model"]["losses"][0]["init_args"]["log_every"] = 1
    (root / "anchors.yaml").write_text(yaml.safe_dump(anchors))
    summary = run_multisource([str(base)], SOURCES, "blobs/1", methods=METHODS, out=str(root / "out"), seed=0,
                              shots=5, launcher="inprocess", method_configs={"anchors": str(root / "anchors.yaml")})
    return root, base, summary


def _record(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def _state(run_dir, which="last"):
    return torch.load(run_dir / "checkpoints" / f"{which}.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_every_run_writes_a_finished_record(workflow):
    root, _, summary = workflow
    out = root / "out"
    runs = [out / "sources" / s for s in ("blobs-0", "blobs-2", "blobs-4", "pooled")] + \
           [out / "target" / m for m in ("anchors", "branches", "pooled")] + \
           [out / "target" / "single" / s for s in ("blobs-0", "blobs-2", "blobs-4")]
    for run in runs:
        rec = _record(run)
        assert rec["status"] == "finished", run
        assert 0.0 <= rec["metrics"]["test/target_acc"] <= 1.0
    assert _record(out / "sources" / "blobs-2")["task"] == "blobs/2->blobs/1"
    assert _record(out / "sources" / "pooled")["task"] == "blobs/0+blobs/2+blobs/4->blobs/1"
    # target runs train on 5 labelled target samples per class (3 classes), and only on them
    tgt = _record(out / "target" / "anchors")
    assert tgt["split_info"]["target"]["labeled"] == 15 and tgt["config"]["data"]["supervision"] == "target"
    assert {r["method"] for r in (tgt, _record(out / "target" / "branches"), _record(out / "target" / "pooled"),
                                  _record(out / "target" / "single" / "blobs-4"))} == \
        {"anchors", "branches", "pooled+l2sp", "single+l2sp"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and saved["reused"] == []
    single = summary["methods"]["single"]
    accs = {s: single["per_source"][s]["target_acc"] for s in SOURCES}
    assert single["target_acc"] == max(accs.values()) and accs[single["best_source"]] == max(accs.values())
    assert summary["methods"]["pooled"]["target_acc"] == _record(out / "target" / "pooled")["metrics"]["test/target_acc"]
    for s in SOURCES:  # direct transfer of each source model, before any target label
        assert summary["sources"][s]["target_acc"] == _record(out / "sources" / s.replace("/", "-"))["metrics"][
            "test/target_acc"]
    text = format_summary(summary)
    assert "| anchors |" in text and f"single (best: {single['best_source']})" in text


def test_anchors_start_from_the_mean_and_log_each_source_distance(workflow):
    root, _, _ = workflow
    out = root / "out"
    ckpts = [out / "sources" / s / "checkpoints" / "last.ckpt" for s in ("blobs-0", "blobs-2", "blobs-4")]
    states = [_state(out / "sources" / s) for s in ("blobs-0", "blobs-2", "blobs-4")]
    w_bar = torch.load(out / "target" / "anchors" / "w_bar.ckpt", weights_only=True)["state_dict"]
    assert set(w_bar) == {k for k in states[0] if k.startswith(("backbone.", "classifier."))}
    for k, v in w_bar.items():
        torch.testing.assert_close(v, (states[0][k] + states[1][k] + states[2][k]) / 3, rtol=0, atol=1e-6)
    assert average_checkpoints([str(c) for c in ckpts], [1, 0, 0])["classifier.bias"].equal(states[0]["classifier.bias"])
    method = (out / "target" / "anchors" / "method.yaml").read_text()
    assert all(str(c) in method for c in ckpts)
    final = _state(out / "target" / "anchors")
    # the anchors are stored as buffers: exactly the source models' backbones
    for d, st in enumerate(states):
        for k in ("backbone.layers.0.0.weight", "backbone.layers.0.0.bias"):
            assert final[f"losses.0.anchors.{d}.{escape_name(k)}"].equal(st[k])
    m = _record(out / "target" / "anchors")["metrics"]
    dists = [m[f"train/anchors_dist{d}"] for d in range(3)]
    assert all(v > 0 for v in dists) and len(set(dists)) == 3
    # the logged penalty is the direct sum over sources: sum_d alpha_d/2 ||w - w_d||^2 with alpha_d = 0.01/3
    assert m["train/anchors"] == pytest.approx(sum(0.5 * 0.01 / 3 * v ** 2 for v in dists), rel=1e-4)
    # the identity behind the one-pass penalty: mean_d ||w - w_d||^2 = ||w - w_bar||^2 + mean_d ||w_d - w_bar||^2
    spread = sum(sum((st[k] - w_bar[k]).pow(2).sum().item() for k in w_bar if k.startswith("backbone."))
                 for st in states) / 3
    assert sum(v ** 2 for v in dists) / 3 == pytest.approx(m["train/anchors_dist_bar"] ** 2 + spread, rel=1e-4)


def test_branches_load_the_source_models_and_log_the_mixture(workflow):
    root, _, summary = workflow
    out = root / "out"
    final = _state(out / "target" / "branches")
    for d, s in enumerate(("blobs-0", "blobs-2", "blobs-4")):
        src = _state(out / "sources" / s)
        for k in ("layers.0.0.weight", "layers.0.0.bias"):  # BranchL2SP's w0 of branch d = source d's backbone
            assert final[f"losses.0.w0.{escape_name(f'backbone.branches.{d}.{k}')}"].equal(src[f"backbone.{k}"])
    m = _record(out / "target" / "branches")["metrics"]
    mix = [m[f"train/branch_l2sp_mix{d}"] for d in range(3)]
    assert sum(mix) == pytest.approx(1.0, abs=1e-6)
    assert max(abs(w - 1 / 3) for w in mix) > 1e-6  # learned: the target moved it away from uniform
    weights = torch.softmax(final["backbone.mixture_logits"], 0)
    assert summary["methods"]["branches"]["mixture"] == {f"train/branch_l2sp_mix{d}": m[f"train/branch_l2sp_mix{d}"]
                                                         for d in range(3)}
    assert weights.sum().item() == pytest.approx(1.0)
    assert all(m[f"train/branch_l2sp_dist_branch{d}"] > 0 for d in range(3))


def test_rerun_reuses_finished_runs_and_refuses_other_arguments(workflow, capsys):
    root, base, first = workflow
    out = root / "out"
    rc = multisource_main(["--config", str(base), "--sources", *SOURCES, "--target", "blobs/1", "--out", str(out),
                           "--shots", "5", "--launcher", "inprocess", "--method", "anchors", "single",
                           "--anchors-config", str(root / "anchors.yaml")])
    assert rc == 0
    again = json.loads((out / "summary.json").read_text())
    assert len(again["reused"]) == 3 + 1 + 3  # three sources, the anchors run, three single-source runs
    assert again["methods"]["anchors"]["target_acc"] == first["methods"]["anchors"]["target_acc"]
    assert "| anchors |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="made with other arguments or configs"):
        run_multisource([str(base)], SOURCES, "blobs/1", methods=["single"], out=str(out), seed=1, shots=5,
                        launcher="inprocess")
    with pytest.raises(ValueError, match="made with other arguments or configs"):  # the shipped log_every: 25
        run_multisource([str(base)], SOURCES, "blobs/1", methods=["anchors"], out=str(out), seed=0, shots=5,
                        launcher="inprocess")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown multi-source method 'anchor'; did you mean 'anchors'"):
        run_multisource([], SOURCES, "blobs/1", methods=["anchor"], out=str(tmp_path))
    with pytest.raises(ValueError, match="at least two distinct source domains"):
        run_multisource([], ["blobs/0"], "blobs/1", out=str(tmp_path))
    with pytest.raises(ValueError, match="the target blobs/1 is also a source"):
        run_multisource([], ["blobs/0", "blobs/1"], "blobs/1", out=str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint 1 does not have the architecture"):
        average_checkpoints([{"classifier.weight": torch.zeros(2, 3)}, {"classifier.weight": torch.zeros(3, 3)}])


def test_branches_backbone_from_checkpoints_counts_as_pretrained():
    from da.models.backbones import MLP
    from da.module import TransferModule

    torch.manual_seed(0)
    srcs = [MLP(8, hidden=(4,)).state_dict() for _ in range(2)]
    model = TransferModule(num_classes=3, input_shape=(8,), backbone="branches",
                           backbone_args={"base": "mlp", "base_args": {"hidden": [4]}, "checkpoints": srcs,
                                          "mixture": "learned"})
    assert model.pretrained_parameter_names() == {f"backbone.branches.{d}.layers.0.0.{p}" for d in range(2)
                                                  for p in ("weight", "bias")}
    assert model.backbone.branches[1].layers[0][0].weight.equal(srcs[1]["layers.0.0.weight"])
    x = torch.randn(5, 8)  # uniform start: the mean of the two source backbones' features
    feats = (model.backbone.branches[0](x) + model.backbone.branches[1](x)) / 2
    torch.testing.assert_close(model.backbone(x), feats)
    with pytest.raises(ValueError, match="backbone 'branches' needs backbone_args.checkpoints"):
        TransferModule(num_classes=3, input_shape=(8,), backbone="branches", backbone_args={"base": "mlp"})
    with pytest.raises(ValueError, match="needs backbone_args.base"):
        TransferModule(num_classes=3, input_shape=(8,), backbone="branches", backbone_args={"checkpoints": srcs})


def test_summarize_workflows_mean_and_std_over_seeds(tmp_path, capsys):
    from da.multisource_workflow import multisource_main, summarize_workflows

    for seed, (a, b) in enumerate(((0.80, 0.90), (0.84, 0.94))):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({
            "task": "x/a+x/b->x/c", "seed": seed, "shots": 10,
            "sources": {"x/a": {"target_acc": a}},
            "methods": {"anchors": {"target_acc": b}, "single": {"target_acc": a, "best_source": "x/a"}}}))
    text = summarize_workflows([tmp_path / "s0", tmp_path / "s1"])
    assert "| source only: x/a (direct transfer) | 82.0 ± 2.8 | 2 |" in text  # stdev of (80, 84) = 2.83
    assert "| anchors | 92.0 ± 2.8 | 2 |" in text
    assert "| single (best single source, oracle pick) | 82.0 ± 2.8 | 2 |" in text
    assert multisource_main(["summarize", str(tmp_path / "s0")]) == 0
    assert "| anchors | 90.0 | 1 |" in capsys.readouterr().out
