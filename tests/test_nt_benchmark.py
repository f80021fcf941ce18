"""The negative-transfer benchmark's logic (settings grid, AUROC, time-to-alarm, scores, tau aggregation) against
hand-computed values, and one tiny end-to-end run of the benchmark's fit on blobs."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from da.diagnostics.benchmark import auroc, expand_settings, grouped_kendall_tau, monitor_scores, time_to_alarm

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments" / "negative_transfer"


def test_auroc_by_hand():
    # pairs (pos, neg): (0.9, 0.8) win, (0.9, 0.1) win, (0.3, 0.8) loss, (0.3, 0.1) win -> 3/4
    assert auroc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([1.0, 2.0, 3.0], [0, 1, 1]) == pytest.approx(1.0)
    assert auroc([3.0, 2.0, 1.0], [0, 1, 1]) == pytest.approx(0.0)


def test_auroc_matches_mann_whitney():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # rounded: ties included
    y = rng.integers(0, 2, size=60)
    u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auroc(s, y) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([float("nan"), 0.2], [1, 0])
    with pytest.raises(ValueError, match="length"):
        auroc([0.1, 0.2, 0.3], [1, 0])


HIST = [{"step": 10 * (i + 1), "ema_cos_src0": e, "cos_src0": c}
        for i, (e, c) in enumerate(zip([0.1, -0.1, -0.2, 0.05, -0.1, -0.1, -0.3],
                                       [0.1, -0.3, -0.3, 0.3, -0.25, -0.1, -0.5]))]


def test_time_to_alarm_recorded_ema():
    # below-threshold counter: 0, 1, 2, 0, 1, 2, 3 -> patience 3 fires at step 70, patience 2 at step 30
    assert time_to_alarm(HIST, 0, threshold=0.0, patience=3) == 70
    assert time_to_alarm(HIST, 0, threshold=0.0, patience=2) == 30
    # warm-up 40: steps 10-30 do not count -> patience 2 fires at step 60
    assert time_to_alarm(HIST, 0, threshold=0.0, patience=2, warmup=40) == 60
    assert time_to_alarm(HIST, 0, threshold=-0.5, patience=1) is None
    assert time_to_alarm(HIST, 1) is None  # no such source


def test_time_to_alarm_recomputed_ema():
    # decay 0.5 from the raw cosines: 0.1, -0.1, -0.2, 0.05, -0.1, -0.1, -0.3 (the recorded EMAs by construction)
    assert time_to_alarm(HIST, 0, patience=3, ema_decay=0.5) == 70
    # decay 0 = the raw cosine: 0.1, -0.3, -0.3, 0.3, ... -> patience 2 at step 30
    assert time_to_alarm(HIST, 0, patience=2, ema_decay=0.0) == 30
    with pytest.raises(ValueError, match="patience"):
        time_to_alarm(HIST, 0, patience=0)


def test_monitor_scores_by_hand():
    s = monitor_scores(HIST, 0, total_steps=100)
    assert s["neg_final_ema"] == pytest.approx(0.3)
    assert s["neg_mean_cos"] == pytest.approx(-np.mean([0.1, -0.3, -0.3, 0.3, -0.25, -0.1, -0.5]))
    assert s["neg_min_ema"] == pytest.approx(0.3)
    assert s["alarm"] == pytest.approx(1 - 70 / 100)  # patience-3 alarm at step 70
    assert monitor_scores(HIST, 0, 100, alarm_step=None)["alarm"] == pytest.approx(0.3)
    quiet = [{"step": 10, "cos_src0": 0.5, "ema_cos_src0": 0.5}]
    assert monitor_scores(quiet, 0, 100)["alarm"] == 0.0
    with pytest.raises(ValueError, match="cos_src3"):
        monitor_scores(HIST, 3, 100)


def test_grouped_kendall_tau():
    scores = [1, 2, 3, 1, 2, 3, 5]
    gains = [0.1, 0.2, 0.3, 0.3, 0.2, 0.1, 0.0]
    groups = ["a", "a", "a", "b", "b", "b", "c"]  # group c has one point: skipped
    t = grouped_kendall_tau(scores, gains, groups)
    assert t.per_group == {"a": pytest.approx(1.0), "b": pytest.approx(-1.0)}
    assert t.mean == pytest.approx(0.0)
    assert t.std == pytest.approx(math.sqrt(2.0))
    assert t.pooled == pytest.approx(stats.kendalltau(scores, gains).statistic)
    assert t.n_points == 7
    with pytest.raises(ValueError, match="length"):
        grouped_kendall_tau([1, 2], [1, 2], ["a"])


def test_expand_settings_of_the_shipped_grid():
    cfg = yaml.safe_load((EXP / "blobs.yaml").read_text())
    settings = expand_settings(cfg)
    names = [s.name for s in settings]
    assert names[:6] == ["label_noise/0%", "label_noise/20%", "label_noise/40%", "label_noise/60%",
                         "label_noise/80%", "label_noise/100%"]
    assert "far_domain/blobs4" in names
    assert names[-4:] == ["multi/1harmful", "multi/1harmful+downweight", "multi/2harmful",
                          "multi/2harmful+downweight"]
    by = {s.name: s for s in settings}
    # built truth: noise > harmful_noise (0.67)
    assert [by[f"label_noise/{p}%"].harmful[0] for p in (0, 20, 40, 60, 80, 100)] == [False] * 4 + [True] * 2
    m = by["multi/2harmful+downweight"]
    assert m.sources == ("blobs/0", "blobs/2", "blobs/3") and m.noise == (0.0, 1.0, 1.0)
    assert m.harmful == (False, True, True) and m.action == "downweight" and m.num_sources == 3


def test_expand_settings_errors():
    with pytest.raises(ValueError, match="groups"):
        expand_settings({})
    with pytest.raises(ValueError, match="one per source"):
        expand_settings({"groups": {"g": [{"sources": ["a/0", "a/1"], "noise": [0.1]}]}})
    with pytest.raises(ValueError, match="unique"):
        expand_settings({"groups": {"g": [{"sources": "a/0"}, {"sources": "a/1"}]}})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expand_settings({"groups": {"g": [{"sources": "a/0", "noise": 1.5}]}})
    s = expand_settings({"groups": {"g": [{"sources": "a/0", "noise": 0.3, "harmful": True, "actions": ["stop"]}]}})
    assert s[0].name == "g/30%+stop" and s[0].harmful == (True,)


def _runner():
    spec = importlib.util.spec_from_file_location("nt_run_benchmark", EXP / "run_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_fit_end_to_end_on_blobs():
    """A tiny transfer run (clean source + 100% noisy source, monitor with down-weighting), a baseline and a
    source-only run; the record holds per-sample correctness, the monitor history and the transferability scores."""
    mod = _runner()
    mod._quiet()
    cfg = yaml.safe_load((EXP / "blobs.yaml").read_text())
    cfg.update(steps=40)
    by = {s.name: s for s in expand_settings(cfg)}
    t = mod.fit_one(cfg, "transfer", by["multi/1harmful+downweight"], seed=0)
    assert t["steps"] == 40 and len(t["correct"]) == 150  # held-out half of 3 x 100 target samples
    assert t["acc"] == pytest.approx(np.mean(t["correct"]))
    hist = t["monitor"]["history"]
    assert [r["step"] for r in hist] == list(range(5, 41, 5)) and t["monitor"]["objective"] == "labelled"
    # the all-wrong source conflicts with the labelled target objective; the clean one agrees
    assert np.mean([r["cos_src1"] for r in hist]) < 0 < np.mean([r["cos_src0"] for r in hist])
    assert [a["source"] for a in t["monitor"]["alarms"]] == [1]
    assert t["source_weights"][:2] == [1.0, 0.0]  # the harmful source was removed (downweight_factor 0)
    b = mod.fit_one(cfg, "baseline", by["label_noise/0%"], seed=0)
    assert "monitor" not in b and len(b["correct"]) == 150
    s = mod.fit_one(cfg, "source_only", by["label_noise/100%"], seed=0)
    assert set(s["scores"]) == {"logme", "leep", "nce", "hscore"}
    assert s["acc"] < 1 / 3  # trained on all-wrong labels: below chance on the target
    assert all(np.isfinite(v) for v in s["scores"].values())


def test_methods_axis_adds_each_methods_loss_terms_to_the_transfer(monkeypatch):
    """``methods`` in a setting makes one transfer setting per method, whose run trains the method's loss terms on top
    (source-only runs stay one per base setting); the analysis puts them side by side."""
    from da.losses import DomainAdversarialLoss, MinimumClassConfusion

    mod = _runner()
    mod._quiet()
    cfg = yaml.safe_load((EXP / "blobs_methods.yaml").read_text())
    settings = expand_settings(cfg)
    names = [s.name for s in settings]
    assert names[:3] == ["label_noise/0%", "label_noise/0%+dann", "label_noise/0%+mmd"] and len(settings) == 4 * 12
    assert {s.method for s in settings} == {"erm", "dann", "mmd", "coral", "mcc", "ent", "im", "bnm", "cdan", "bsp",
                                            "afn", "mdd"}
    cfg.update(seeds=1, steps=20)
    jobs = mod.plan(cfg, settings)
    assert sum(k == "transfer" for k, _, _ in jobs) == 48 and sum(k == "source_only" for k, _, _ in jobs) == 4
    assert mod.method_losses("erm") == []
    (dann,) = mod.method_losses("dann")
    assert isinstance(dann, DomainAdversarialLoss)
    with pytest.raises(SystemExit, match="training method"):
        mod.method_losses("fixmatch")
    with pytest.raises(ValueError, match="name of a config"):
        expand_settings({"groups": {"g": [{"sources": "a/0", "methods": ["../x"]}]}})
    by = {s.name: s for s in settings}
    seen = []
    import da.module

    class Spy(da.module.TransferModule):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen.append([type(t) for t in self.losses])

    monkeypatch.setattr(da.module, "TransferModule", Spy)
    r = mod.fit_one(cfg, "transfer", by["far_domain/blobs4+mcc"], seed=0)
    assert seen == [[MinimumClassConfusion]] and r["steps"] == 20 and len(r["correct"]) == 150
    fake = {n: {"acc": 0.9, "ntg": {"gap": -0.01, "verdict": "inconclusive"}} for n in ("a", "a+dann")}
    fake["a+mcc"] = {"acc": 0.5, "ntg": {"gap": 0.4, "verdict": "negative transfer"}}
    from da.diagnostics.benchmark import Setting

    lines = mod.methods_table({n: Setting(n, "g", ("x",), (0.0,), (False,), "warn", n.partition("+")[2] or "erm")
                               for n in fake}, {"settings": fake})
    assert lines[3] == "| setting | transfer | +dann | +mcc |"
    assert lines[5] == "| a | 90.0% (-1.0 ~) | 90.0% (-1.0 ~) | 50.0% (+40.0 +) |"


def test_monitor_labelled_pool_matches_naive_cosine():
    """With a labelled pool (few-shot target set) the target objective is the pool's CE even when the batch holds no
    labelled target sample; the cosine equals a naive autograd reference on the backbone's parameters."""
    import torch
    import torch.nn.functional as F

    from da.diagnostics import NegativeTransferMonitor
    from da.module import TransferModule

    torch.manual_seed(0)
    model = TransferModule(num_classes=3, input_shape=[8], num_sources=1, backbone="mlp")
    x_s, y_s = torch.randn(16, 8), torch.randint(0, 3, (16,))
    x_p, y_p = torch.randn(9, 8), torch.tensor([0, 1, 2] * 3)
    batch = {"source": (x_s, y_s, torch.zeros(16, dtype=torch.long)), "target": (torch.randn(16, 8), None)}
    mon = NegativeTransferMonitor(probe=False)
    mon._pool = (x_p, y_p)
    got = mon.compute_signals(model, batch)["cos_src0"]
    assert mon.objective_used == "labelled"
    params = [p for p in model.backbone.parameters()]
    g_s = torch.autograd.grad(F.cross_entropy(model(x_s), y_s), params)
    g_t = torch.autograd.grad(F.cross_entropy(model(x_p), y_p), params)
    flat_s, flat_t = torch.cat([g.flatten() for g in g_s]), torch.cat([g.flatten() for g in g_t])
    assert got == pytest.approx(float(F.cosine_similarity(flat_s, flat_t, dim=0)), abs=1e-5)
    # without the pool and without labelled target samples in the batch, auto falls back to the entropy proxy
    mon2 = NegativeTransferMonitor(probe=False)
    mon2.compute_signals(model, batch)
    assert mon2.objective_used == "entropy"
