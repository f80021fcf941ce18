"""Training methods with their own optimisation (da.methods): the mechanism, ADDA, MCD, FixMatch, SHOT."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import da.data.datamodule as dm_mod
from da.data.datamodule import DomainDataModule
from da.errors import UserError
from da.losses import DomainAdversarialLoss
from da.methods import (ADDA, MCD, SHOT, FixMatch, TrainingMethod, classifier_discrepancy, cluster_centroids,
                        fixmatch_loss, nearest_centroid)
from da.methods.augment import strong_features, strong_image, weak_features, weak_image
from da.module import TransferModule


def _module(**kw):
    args = dict(num_classes=3, input_shape=(8,), backbone="mlp", backbone_args={"hidden": [16]})
    args.update(kw)
    return TransferModule(**args)


def _data(**kw):
    args = dict(sources=["blobs/0"], target="blobs/1", batch_size=32, seed=0)
    args.update(kw)
    return DomainDataModule(**args)


def _fit(module, data, max_steps=6):
    pl.seed_everything(0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return trainer


def _source_checkpoint(tmp_path, **kw):
    torch.manual_seed(0)
    src = _module(**kw)
    _fit(src, _data(), max_steps=10)
    path = tmp_path / "src.ckpt"
    torch.save({"state_dict": src.state_dict()}, path)
    return src, str(path)


def _params(module, prefix):
    return {n: p.detach().clone() for n, p in module.named_parameters() if n.startswith(prefix)}


def _changed(before, module):
    now = dict(module.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, now[n].detach())}


# ----------------------------------------------------------------------------- the mechanism

class _ThreeSteps(TrainingMethod):
    """Three optimiser steps per iteration over two parameter sets; records what the step sees."""

    name = "three_steps"

    def __init__(self):
        super().__init__()
        self.seen = []

    def parameter_sets(self, module):
        named = list(module.named_parameters())
        return {"body": [(n, p) for n, p in named if n.startswith("backbone.")],
                "head": [(n, p) for n, p in named if n.startswith("classifier.")]}

    def training_step(self, module, batch, optimizers):
        self.seen.append((module.global_step, module.progress))
        x, y, d = batch["source"]
        for name in ("body", "head", "head"):
            self.update(module, optimizers[name], module.supervised_loss(module(x), y, d))
        return {"loss": torch.tensor(1.0), "extra": torch.tensor(2.0)}


def test_global_step_progress_and_schedulers_count_iterations_not_optimizer_steps():
    method = _ThreeSteps()
    m = _module(method=method, optimizer="sgd", lr=0.1, scheduler="dann")
    assert m.automatic_optimization is False and m.method_name == "three_steps"
    trainer = _fit(m, _data(), max_steps=10)
    assert trainer.global_step == 10
    assert [s for s, _ in method.seen] == list(range(10))
    assert [p for _, p in method.seen] == pytest.approx([k / 10 for k in range(10)])
    assert len(trainer.optimizers) == 2
    for config in trainer.lr_scheduler_configs:  # stepped once per iteration, as in automatic mode
        assert config.scheduler.last_epoch == 10
        assert config.scheduler.get_last_lr()[0] == pytest.approx(0.1 * 11 ** -0.75)
    assert float(trainer.callback_metrics["train/extra"]) == 2.0


def test_method_and_loss_terms_do_not_mix():
    with pytest.raises(UserError, match="does not use model.losses"):
        _module(method=MCD(), losses=[DomainAdversarialLoss()])


def test_methods_that_adapt_a_source_model_need_init_from():
    for method in (ADDA(), SHOT()):
        with pytest.raises(UserError, match="--model.init_from"):
            _module(method=method)


def test_optimisers_use_the_recipe_and_its_groups():
    m = _module(method=MCD(), optimizer="sgd", lr=0.01, momentum=0.5, backbone_lr_mult=0.1, weight_decay=1e-3)
    configs = m.configure_optimizers()
    assert m.method.optimizer_names == ["generator", "classifiers"]
    gen, clf = (c["optimizer"] for c in configs)
    assert all(isinstance(o, torch.optim.SGD) and o.defaults["momentum"] == 0.5 for o in (gen, clf))
    assert [g["lr"] for g in gen.param_groups] == pytest.approx([0.001, 0.001])  # weights (decay) and biases
    assert [g["lr"] for g in clf.param_groups] == pytest.approx([0.01, 0.01])
    n_clf = sum(p.numel() for g in clf.param_groups for p in g["params"])
    assert n_clf == 2 * (16 * 3 + 3)  # the model's head and MCD's second head


# ----------------------------------------------------------------------------- ADDA

def test_adda_trains_the_target_encoder_only_with_inverted_labels(tmp_path):
    src, ckpt = _source_checkpoint(tmp_path)
    m = _module(method=ADDA(hidden=32), init_from=ckpt, optimizer="adam", lr=1e-3)
    enc, head = _params(m, "backbone."), _params(m, "classifier.")
    frozen = _params(m, "method.source_encoder.")
    disc = _params(m, "method.discriminator.")
    for n, p in src.named_parameters():  # the source encoder and the target encoder both start as the source model
        if n.startswith("backbone."):
            assert torch.equal(frozen["method.source_encoder.0." + n[len("backbone."):]], p.detach())
    _fit(m, _data(), max_steps=5)
    assert _changed(enc, m) == set(enc)  # target encoder trained
    assert not _changed(frozen, m) and not _changed(head, m)  # source encoder and classifier fixed
    assert _changed(disc, m) == set(disc)
    # the source encoder's BatchNorm-free copy and the target encoder now differ: evaluation picks per domain
    x = torch.randn(5, 8)
    assert torch.allclose(m.method.eval_logits(m, x, "target"), m(x))
    assert torch.allclose(m.method.eval_logits(m, x, "source"), src(x), atol=1e-6)
    # losses: D sees source = 1, target = 0; the target encoder's loss uses the inverted label 1
    f_s, f_t = torch.randn(4, 16), torch.randn(6, 16)
    ds, dt = m.method.discriminator(f_s).squeeze(-1), m.method.discriminator(f_t).squeeze(-1)
    d_loss, _ = m.method.discriminator_loss(f_s, f_t)
    assert d_loss.item() == pytest.approx((F.binary_cross_entropy_with_logits(ds, torch.ones(4)) +
                                           F.binary_cross_entropy_with_logits(dt, torch.zeros(6))).item(), rel=1e-6)
    g = m.method.generator_loss(f_t).item()
    assert g == pytest.approx(-F.logsigmoid(dt).mean().item(), rel=1e-6)
    assert g != pytest.approx(-F.logsigmoid(-dt).mean().item(), rel=1e-3)


# ----------------------------------------------------------------------------- MCD

def test_classifier_discrepancy_value():
    a = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]))
    b = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    assert classifier_discrepancy(a, b).item() == pytest.approx((0.6 + 0 + 0.6) / 6, rel=1e-6)


class _Spy:
    """An optimiser wrapper recording which parameters each step changed."""

    def __init__(self, name, opt, module, log):
        self.name, self.opt, self.module, self.log = name, opt, module, log

    def zero_grad(self, set_to_none=True):
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self):
        before = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        self.opt.step()
        changed = _changed(before, self.module)
        self.log.append((self.name, sorted({n.split(".")[0] if not n.startswith("method.") else "classifier2"
                                            for n in changed})))


def test_mcd_three_steps_update_the_right_parameters():
    torch.manual_seed(0)
    m = _module(method=MCD(num_generator_steps=3), optimizer="sgd", lr=0.1)
    m.manual_backward = lambda loss: loss.backward()
    log = []
    opts = {name: _Spy(name, c["optimizer"], m, log)
            for name, c in zip(["generator", "classifiers"], m.configure_optimizers())}
    x_s, x_t = torch.randn(8, 8), torch.randn(8, 8) + 1
    batch = {"source": (x_s, torch.arange(8) % 3, torch.zeros(8, dtype=torch.long)), "target": (x_t, None, None)}
    f_t = m.bottleneck(m.backbone(x_t))
    disc_before = classifier_discrepancy(m.classifier(f_t), m.method.classifier2(f_t)).item()
    logs = m.method.training_step(m, batch, opts)
    assert log == [("generator", ["backbone"]), ("classifiers", ["classifier", "classifier2"]),  # A
                   ("classifiers", ["classifier", "classifier2"]),  # B: generator fixed
                   ("generator", ["backbone"]), ("generator", ["backbone"]), ("generator", ["backbone"])]  # C x 3
    assert logs["discrepancy_b"].item() == pytest.approx(disc_before, rel=0.5)
    assert set(logs) == {"loss", "cls_a", "discrepancy_b", "discrepancy_c"}


def test_mcd_evaluates_with_the_two_heads_ensemble():
    m = _module(method=MCD())
    m.eval()
    x = torch.randn(4, 8)
    f = m.bottleneck(m.backbone(x))
    p = 0.5 * (m.classifier(f).softmax(-1) + m.method.classifier2(f).softmax(-1))
    assert torch.allclose(m.method.eval_logits(m, x, "target").softmax(-1), p, atol=1e-6)


# ----------------------------------------------------------------------------- FixMatch

def test_fixmatch_loss_masks_samples_below_the_threshold():
    weak = torch.log(torch.tensor([[0.97, 0.02, 0.01], [0.5, 0.3, 0.2], [0.01, 0.01, 0.98]]))
    strong = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.5, 0.2]], requires_grad=True)
    loss, mask, pseudo = fixmatch_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0] and pseudo.tolist() == [0, 0, 2]
    ce = [-torch.log_softmax(strong.detach()[i], -1)[k].item() for i, k in ((0, 0), (2, 2))]
    assert loss.item() == pytest.approx(sum(ce) / 3, rel=1e-6)  # mean over all mu B samples, masked ones add 0
    loss.backward()
    assert torch.equal(strong.grad[1], torch.zeros(3))  # and no gradient
    assert fixmatch_loss(weak, strong, threshold=0.999)[0].item() == 0.0


def test_image_views_shift_and_stay_in_range():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    w = weak_image(x)
    assert w.shape == x.shape and not torch.equal(w, x)
    # a whole-pixel shift with reflection padding only moves values: each output is a pixel of its input
    for i in range(4):
        assert torch.isin(w[i], x[i]).all()
    s = strong_image(x)
    assert s.shape == x.shape and s.min() >= x.min() - 1e-6 and s.max() <= x.max() + 1e-6
    torch.manual_seed(1)
    a = strong_image(x)
    torch.manual_seed(1)
    assert torch.equal(a, strong_image(x))  # seeded: exact resume replays the same views


def test_feature_views_noise_scale_and_masking():
    torch.manual_seed(0)
    x = torch.randn(4000, 6) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0, 1.0]) + 5
    d = weak_features(x, noise=0.1) - x
    assert (d.std(0) / x.std(0)).tolist() == pytest.approx([0.1] * 6, rel=0.05)  # relative to each feature's spread
    s = strong_features(x, noise=0.3, mask=0.3)
    masked = torch.isclose(s, x.mean(0, keepdim=True).expand_as(s))
    assert masked.float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_fixmatch_trains_on_features_with_the_unlabelled_ratio():
    m = _module(method=FixMatch(threshold=0.5), optimizer="adam", lr=1e-2)
    data = _data(unlabeled_ratio=2)
    trainer = _fit(m, data, max_steps=5)
    assert trainer.global_step == 5
    assert trainer.train_dataloader["target"].batch_size == 64  # mu B = 2 x 32
    metrics = trainer.callback_metrics
    assert 0 < float(metrics["train/mask_rate"]) <= 1 and float(metrics["train/unlabeled"]) > 0
    with pytest.raises(UserError, match="images .* or feature vectors"):
        FixMatch().weak(torch.ones(3, 5, dtype=torch.long))


# ----------------------------------------------------------------------------- SHOT

def test_shot_uses_the_im_terms_of_the_losses():
    from da.losses import InformationMaximization
    from da.losses.base import StepContext
    from da.losses.confusion import prediction_entropies
    uniform = torch.zeros(4, 3)
    for eps in (None, 0.0, 1e-5):
        ent, h_bar = prediction_entropies(uniform, eps=eps)
        assert ent.item() == pytest.approx(math.log(3), abs=1e-4) and h_bar.item() == pytest.approx(math.log(3), abs=1e-4)
    confident_same = torch.tensor([[20.0, 0, 0], [20.0, 0, 0]])
    ent, h_bar = prediction_entropies(confident_same, eps=0.0)
    assert ent.item() == pytest.approx(0.0, abs=1e-6) and h_bar.item() == pytest.approx(0.0, abs=1e-6)
    # SHOT's objective with beta = 0 (SHOT-IM) is the `im` loss with diversity 1, up to the authors' eps
    torch.manual_seed(0)
    z = torch.randn(16, 5)
    shot = SHOT(beta=0.0, eps=1e-5)
    shot.centroids = torch.randn(5, 5)
    loss_shot = shot.shot_loss(torch.randn(16, 5), z)[0]
    ctx = StepContext(f_s=z, f_t=z, logits_s=z, logits_t=z, y_s=torch.zeros(16, dtype=torch.long))
    loss_im = InformationMaximization(diversity=1.0)(ctx)
    assert loss_shot.item() == pytest.approx(loss_im.item(), abs=1e-4)


def test_cluster_centroids_recover_two_directions():
    torch.manual_seed(0)
    a = torch.tensor([1.0, 0.0]) + 0.1 * torch.randn(50, 2)
    b = torch.tensor([0.0, 1.0]) + 0.1 * torch.randn(50, 2)
    feats = torch.cat([a, b])
    probs = torch.tensor([[0.6, 0.4]] * 50 + [[0.45, 0.55]] * 50)  # a weak, but right, source hypothesis
    c = cluster_centroids(feats, probs)
    assert torch.equal(nearest_centroid(feats, c), torch.tensor([0] * 50 + [1] * 50))
    assert c[0, 0] > 0.99 and c[1, 1] > 0.99


def test_shot_is_source_free_and_trains_the_features_only(tmp_path, monkeypatch):
    _, ckpt = _source_checkpoint(tmp_path)
    read = []
    real = dm_mod.load_domain

    def spy(spec, **kw):
        read.append(spec)
        if spec.startswith("blobs/0"):
            raise AssertionError("the source was read")
        return real(spec, **kw)

    monkeypatch.setattr(dm_mod, "load_domain", spy)
    data = _data(supervision="target_unlabeled")
    m = _module(method=SHOT(refresh_every=3), init_from=ckpt, optimizer="sgd", lr=0.01)
    body, head = _params(m, "backbone."), _params(m, "classifier.")
    refreshes = []
    original = m.method.refresh
    monkeypatch.setattr(m.method, "refresh", lambda module: (refreshes.append(module.global_step), original(module)))
    trainer = _fit(m, data, max_steps=7)
    assert read == ["blobs/1"]
    assert data.eval_domains == ("target",) and data.split_info["source_free"] is True
    assert refreshes == [0, 3, 6] and int(m.method.refreshed_at) == 6
    assert _changed(body, m) == set(body) and not _changed(head, m)
    assert torch.allclose(m.method.centroids.norm(dim=1), torch.ones(3))
    assert 0 <= float(trainer.callback_metrics["train/pl_acc"]) <= 1
    assert set(trainer.train_dataloader) == {"target"}  # the training streams: no labelled (source) stream
    test = trainer.test(m, datamodule=data, verbose=False)[0]
    assert "test/target_acc" in test and "test/source_acc" not in test


def test_source_free_data_needs_a_source_free_method_and_back(tmp_path):
    with pytest.raises(UserError, match="gives no labelled batch"):
        _fit(_module(), _data(supervision="target_unlabeled"), max_steps=1)
    _, ckpt = _source_checkpoint(tmp_path)
    with pytest.raises(UserError, match="set data.supervision: target_unlabeled"):
        _fit(_module(method=SHOT(), init_from=ckpt), _data(), max_steps=1)


def test_da_fit_runs_shot_and_adda_from_a_source_checkpoint(tmp_path):
    """Through the `da` command: a source run, then SHOT (source-free) and ADDA from its checkpoint."""
    import json

    from da.cli import run_cli
    from tests.helpers import fit_args

    run_cli(fit_args(tmp_path / "src", ["--trainer.max_steps", "20"]))
    ckpt = str(tmp_path / "src" / "checkpoints" / "last.ckpt")
    short = ["--trainer.max_steps", "10", "--trainer.val_check_interval", "10", "--model.init_from", ckpt]
    run_cli(fit_args(tmp_path / "shot", short + ["--config", "configs/method/shot.yaml"]))
    rec = json.loads((tmp_path / "shot" / "result.json").read_text())
    assert rec["status"] == "finished" and rec["method"] == "shot" and rec["task"] == "blobs/0->blobs/1"
    assert rec["split_info"]["source_free"] is True and rec["split_info"]["sources"] == {}
    assert "test/target_acc" in rec["metrics"] and "val/source_acc" not in rec["metrics"]
    assert (tmp_path / "shot" / "checkpoints" / "last.ckpt").exists()  # best = latest: no labelled validation
    run_cli(fit_args(tmp_path / "adda", short + ["--config", "configs/method/adda.yaml"]))
    rec = json.loads((tmp_path / "adda" / "result.json").read_text())
    assert rec["status"] == "finished" and rec["method"] == "adda" and rec["history"][-1]["step"] == 10
