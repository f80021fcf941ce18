"""NegativeTransferMonitor on a tiny stand-in module with a helpful source (target's labels) and a harmful one
(permuted labels)."""

import copy
import json
import math
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from da.diagnostics.monitor import NegativeTransferMonitor, proxy_a_distance

C, D_IN = 4, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is ~100x faster than two on a shared, busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
PERM = torch.tensor([1, 2, 3, 0])  # a derangement: source 1 never has the right label


class FakeMultiSourceLoss(nn.Module):
    """Stands in for a multi-source penalty: reports per-source distances, mixture weights, a disc accuracy."""

    name = "msrc"

    def __init__(self):
        super().__init__()
        self.last_logs = {"dist_src0": torch.tensor(0.5), "mix_src1": torch.tensor(0.25),
                          "disc_acc": torch.tensor(0.75), "unrelated": torch.tensor(9.0)}


class Tiny(pl.LightningModule):
    """The TransferModule surface the monitor relies on, and a CE weighted per source domain."""

    def __init__(self, num_sources=2, with_weights=True, bn=False, dropout=0.0, lr=0.2):
        super().__init__()
        layers = [nn.Linear(D_IN, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Dropout(dropout)]
        self.backbone = nn.Sequential(*layers)
        self.backbone.out_features = 16
        self.bottleneck = nn.Identity()
        self.classifier = nn.Linear(16, C)
        self.num_sources, self.num_classes, self.lr = num_sources, C, lr
        self.losses = nn.ModuleList([FakeMultiSourceLoss()])
        if with_weights:
            self.register_buffer("source_weights", torch.ones(num_sources))

    def features_and_logits(self, x):
        f = self.bottleneck(self.backbone(x))
        return f, self.classifier(f)

    def training_step(self, batch, batch_idx):
        x_s, y_s, d_s = batch["source"]
        f = self.bottleneck(self.backbone(torch.cat([x_s, batch["target"][0]])))
        logits = self.classifier(f)[: len(y_s)]
        ce = F.cross_entropy(logits, y_s, reduction="none")
        if hasattr(self, "source_weights"):
            w = torch.ones_like(ce)
            src = d_s < self.num_sources
            w[src] = self.source_weights[d_s[src]]
            ce = ce * w
        return ce.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


MEANS = torch.randn(C, D_IN, generator=torch.Generator().manual_seed(0)) * 2.0


def make_batch(g, n_per=(16, 16), n_lab_target=8, n_target=32, shift=0.0):
    """Source 0 with the target's labels, source 1 with permuted labels, optional labelled target samples."""
    xs, ys, ds = [], [], []
    for d, n in enumerate(n_per):
        y = torch.randint(0, C, (n,), generator=g)
        xs.append(MEANS[y] + torch.randn(n, D_IN, generator=g))
        ys.append(PERM[y] if d == 1 else y)
        ds.append(torch.full((n,), d))
    if n_lab_target:
        y = torch.randint(0, C, (n_lab_target,), generator=g)
        xs.append(MEANS[y] + shift + torch.randn(n_lab_target, D_IN, generator=g))
        ys.append(y)
        ds.append(torch.full((n_lab_target,), len(n_per)))
    yt = torch.randint(0, C, (n_target,), generator=g)
    xt = MEANS[yt] + shift + torch.randn(n_target, D_IN, generator=g)
    return {"source": (torch.cat(xs), torch.cat(ys), torch.cat(ds)), "target": (xt, yt)}


class Batches(Dataset):
    def __init__(self, n, **kw):
        g = torch.Generator().manual_seed(1)
        self.items = [make_batch(g, **kw) for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def fit(monitor, model=None, steps=60, seed=0, **kw):
    """Train ``model`` (a module, or a factory called after seeding) for ``steps`` steps on fixed batches."""
    pl.seed_everything(seed, verbose=False)
    model = model() if callable(model) and not isinstance(model, nn.Module) else (model or Tiny())
    trainer = pl.Trainer(max_steps=steps, callbacks=[monitor] if monitor else [], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=kw.pop("root", None))
    loader = DataLoader(Batches(steps, **kw), batch_size=None, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    return trainer, model, [str(w.message) for w in caught]


def test_helpful_source_aligns_and_only_the_harmful_one_alarms():
    mon = NegativeTransferMonitor(every_n_steps=5, patience=3, probe=False)
    trainer, _, msgs = fit(mon, steps=60)
    s = mon.summary
    assert s["n_checks"] == 12 and s["target_objective"] == "labelled"
    cos0 = [r["cos_src0"] for r in mon.history]
    cos1 = [r["cos_src1"] for r in mon.history]
    assert all(a > b for a, b in zip(cos0, cos1))
    assert s["final_ema_cos"]["src0"] > 0.3 > 0 > s["final_ema_cos"]["src1"]
    assert [a["source"] for a in mon.alarms] == [1]
    # EMA starts at the first cosine, so with cos < 0 from the start the alarm comes at the patience-th check
    assert s["first_alarm_step"] == {"src1": 15} and s["harmful_sources"] == ["src1"]
    assert any("source src1 (index 1) looks harmful at step 15" in m for m in msgs)
    assert not any("src0 (index 0) looks harmful" in m for m in msgs)
    # ema follows ema <- 0.8 ema + 0.2 cos
    ema = cos1[0]
    for c in cos1[1:]:
        ema = 0.8 * ema + 0.2 * c
    assert s["final_ema_cos"]["src1"] == pytest.approx(ema)
    assert trainer.global_step == 60


def test_entropy_proxy_flags_a_minority_harmful_source():
    """Without target labels the proxy works when the helpful data dominates the model's target predictions."""
    mon = NegativeTransferMonitor(every_n_steps=5, patience=3, target_objective="auto", probe=False)
    fit(mon, steps=60, n_per=(24, 8), n_lab_target=0)
    assert mon.summary["target_objective"] == "entropy"
    assert mon.summary["final_ema_cos"]["src0"] > mon.summary["final_ema_cos"]["src1"]
    assert [a["source"] for a in mon.alarms] == [1]


def test_cosine_matches_a_naive_backward_reference():
    torch.manual_seed(0)
    model = Tiny()
    batch = make_batch(torch.Generator().manual_seed(3))
    mon = NegativeTransferMonitor(probe=False)
    sig = mon.compute_signals(model, batch)
    x_s, y_s, d_s = batch["source"]

    def grad_of(loss_fn):
        m = copy.deepcopy(model)
        m.zero_grad()
        loss_fn(m).backward()
        return torch.cat([p.grad.flatten() for p in m.backbone.parameters()])

    logits = lambda m, x: m.classifier(m.backbone(x))  # noqa: E731
    # the module sees source and target in one forward; without BN that equals separate forwards
    g_t = grad_of(lambda m: F.cross_entropy(logits(m, x_s[d_s == 2]), y_s[d_s == 2]))
    for d in (0, 1):
        g_d = grad_of(lambda m: F.cross_entropy(logits(m, x_s[d_s == d]), y_s[d_s == d]))
        assert sig[f"cos_src{d}"] == pytest.approx(float(F.cosine_similarity(g_d, g_t, dim=0)), abs=1e-5)
    # fake loss logs: distances / mixture weights / disc accuracy are picked up, other keys are not
    assert sig["msrc_dist_src0"] == 0.5 and sig["msrc_mix_src1"] == 0.25 and sig["disc_acc"] == 0.75
    assert not any("unrelated" in k for k in sig)


def test_target_health_by_hand():
    model = Tiny()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    sig = NegativeTransferMonitor(probe=False).compute_signals(model, make_batch(torch.Generator().manual_seed(0)))
    p = torch.softmax(torch.tensor([5.0, 0.0, 0.0, 0.0]), 0)
    assert sig["target_collapse"] == 1.0
    assert sig["target_entropy"] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    with torch.no_grad():  # all logits equal: uniform predictions, entropy log C
        model.classifier.bias.zero_()
    sig = NegativeTransferMonitor(probe=False).compute_signals(model, make_batch(torch.Generator().manual_seed(0)))
    assert sig["target_entropy"] == pytest.approx(math.log(C), abs=1e-6)


def test_proxy_a_distance_extremes():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g)
    assert proxy_a_distance(a, a + 6.0)["a_distance"] == pytest.approx(2.0)
    same = proxy_a_distance(a[:200], a[200:])
    assert same["a_distance"] < 0.4 and 0.35 < same["probe_err"] < 0.65


def test_no_work_on_other_steps_and_checks_on_multiples():
    model = Tiny()
    calls = []
    orig = model.features_and_logits
    model.features_and_logits = lambda x: calls.append(1) or orig(x)  # only the monitor calls this method
    mon = NegativeTransferMonitor(every_n_steps=4, probe=False)
    fit(mon, model=model, steps=18)
    assert len(calls) == 4 and [r["step"] for r in mon.history] == [4, 8, 12, 16]


def test_monitor_does_not_change_the_training_trajectory():
    """BN running stats are restored and the RNG is forked: with action='warn' the weights are identical."""
    factory = lambda: Tiny(bn=True, dropout=0.3)  # noqa: E731
    _, with_mon, _ = fit(NegativeTransferMonitor(every_n_steps=3, probe_min_samples=8), model=factory, steps=15)
    _, without, _ = fit(None, model=factory, steps=15)
    assert torch.count_nonzero(with_mon.backbone[1].running_mean) > 0  # BN is in use
    for (k, a), (_, b) in zip(with_mon.state_dict().items(), without.state_dict().items()):
        assert torch.equal(a, b), k


def test_downweight_and_stop_actions():
    mon = NegativeTransferMonitor(every_n_steps=5, patience=2, action="downweight", downweight_factor=0.1,
                                  probe=False)
    _, model, _ = fit(mon, steps=30)
    np.testing.assert_allclose(model.source_weights.numpy(), [1.0, 0.1])
    assert mon.alarms[0]["action"] == "downweight"
    stop = NegativeTransferMonitor(every_n_steps=5, patience=2, action="stop", probe=False)
    trainer, _, msgs = fit(stop, steps=60)
    assert trainer.global_step == 10 and any("training stops" in m for m in msgs)
    missing = NegativeTransferMonitor(every_n_steps=5, patience=2, action="downweight", probe=False)
    _, _, msgs = fit(missing, model=Tiny(with_weights=False), steps=15)
    assert any("pl_module.source_weights" in m for m in msgs) and missing.alarms[0]["action"] == "warn"


def test_summary_written_into_result_json_and_state_round_trip(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"schema": 1, "status": "running", "diagnostics": {"x": 1}}))
    mon = NegativeTransferMonitor(every_n_steps=5, patience=3, probe_min_samples=32)
    fit(mon, steps=30, root=str(tmp_path))
    rec = json.loads((tmp_path / "result.json").read_text())
    diag = rec["diagnostics"]["NegativeTransferMonitor"]
    assert rec["diagnostics"]["x"] == 1 and rec["status"] == "running"
    assert diag["first_alarm_step"] == {"src1": 15} and 0 <= diag["a_distance"] <= 2
    assert diag == json.loads(json.dumps(mon.summary))
    from da.diagnostics.plots import plot_monitor

    png = plot_monitor(tmp_path, tmp_path / "from_record.png")  # reads the history kept in result.json
    assert png.stat().st_size > 20_000
    clone = NegativeTransferMonitor()
    clone.load_state_dict(json.loads(json.dumps(mon.state_dict())))
    assert clone.ema == mon.ema and clone.alarms == mon.alarms and clone.n_checks == 6


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="did you mean 'downweight'"):
        NegativeTransferMonitor(action="downweigh")
    with pytest.raises(ValueError, match="did you mean 'entropy'"):
        NegativeTransferMonitor(target_objective="entropi")
    with pytest.raises(ValueError, match="every_n_steps"):
        NegativeTransferMonitor(every_n_steps=0)
    batch = make_batch(torch.Generator().manual_seed(0), n_lab_target=0)
    with pytest.raises(ValueError, match="no labelled target"):
        NegativeTransferMonitor(target_objective="labelled").compute_signals(Tiny(), batch)


def test_logged_metrics_csv_round_trips_into_the_plot(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    from da.diagnostics.plots import history_from_metrics_csv, plot_monitor

    pl.seed_everything(0, verbose=False)
    mon = NegativeTransferMonitor(every_n_steps=5, patience=3, probe=False)
    trainer = pl.Trainer(max_steps=30, callbacks=[mon], logger=CSVLogger(tmp_path, name="", version=""),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Tiny(), DataLoader(Batches(30), batch_size=None))
    hist = history_from_metrics_csv(tmp_path / "metrics.csv")
    assert len(hist) == len(mon.history) == 6
    for row, ref in zip(hist, mon.history):
        assert row["cos_src1"] == pytest.approx(ref["cos_src1"], abs=1e-6)
        assert row["ema_cos_src0"] == pytest.approx(ref["ema_cos_src0"], abs=1e-6)
    assert [r["alarm_src1"] for r in hist] == [0, 0, 1, 1, 1, 1] and all(r["alarm_src0"] == 0 for r in hist)
    for src, name in ((tmp_path / "metrics.csv", "csv.png"), (mon, "mon.png"), (mon.history, "hist.png")):
        png = plot_monitor(src, tmp_path / name, source_names={0: "clean", 1: "permuted"})
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    with pytest.raises(ValueError, match="no monitor/ columns"):
        (tmp_path / "empty.csv").write_text("step,train/loss\n1,0.5\n")
        history_from_metrics_csv(tmp_path / "empty.csv")


def test_warmup_delays_judgement():
    mon = NegativeTransferMonitor(every_n_steps=5, patience=3, probe=False, warmup_steps=30)
    fit(mon, steps=60)
    assert mon.summary["first_alarm_step"] == {"src1": 40}  # checks at 30, 35, 40 are the first judged
    auto = NegativeTransferMonitor(every_n_steps=5, patience=3, probe=False, target_objective="entropy")
    fit(auto, steps=60, n_per=(24, 8), n_lab_target=0)
    # auto warm-up with an unsupervised objective: 20% of 60 steps = 12, so checks 15, 20, 25 are the first judged
    assert auto.summary["first_alarm_step"] == {"src1": 25}
    assert len(auto.summary["history"]) == 12 and auto.summary["history"][0]["step"] == 5
