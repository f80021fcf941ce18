"""TransferModule: parameter transfer, freezing, optimiser groups, schedules, the training step."""

import types

import pytest
import torch

from da.losses.base import AdaptationLoss
from da.module import TransferModule


def _module(**kw):
    args = dict(num_classes=3, input_shape=(8,), backbone="mlp", backbone_args={"hidden": [16, 12]})
    args.update(kw)
    return TransferModule(**args)


def _save(module, path):
    torch.save({"state_dict": module.state_dict()}, path)
    return str(path)


def test_init_from_loads_backbone_and_head_when_labels_match(tmp_path):
    torch.manual_seed(0)
    src = _module()
    ckpt = _save(src, tmp_path / "src.ckpt")
    torch.manual_seed(1)
    m = _module(init_from=ckpt)
    for name, p in src.state_dict().items():
        if name.startswith(("backbone.", "classifier.")):
            assert torch.equal(p, m.state_dict()[name]), name
    assert m.init_info["head_transferred"] is True
    assert "classifier.weight" in m.pretrained_parameter_names()
    assert "backbone.layers.0.0.weight" in m.pretrained_parameter_names()


def test_init_from_new_label_set_gets_a_new_head(tmp_path):
    torch.manual_seed(0)
    ckpt = _save(_module(num_classes=10), tmp_path / "src.ckpt")
    m = _module(num_classes=3, init_from=ckpt)
    assert m.init_info["head_transferred"] is False
    assert m.classifier.weight.shape == (3, 12)
    assert not any(n.startswith("classifier.") for n in m.pretrained_parameter_names())


def test_init_from_other_backbone_is_a_clear_error(tmp_path):
    ckpt = _save(_module(backbone_args={"hidden": [32]}), tmp_path / "src.ckpt")
    with pytest.raises(ValueError, match="has shape"):
        _module(init_from=ckpt)


def test_freezing_and_optimizer_groups():
    m = _module(freeze_blocks=1, backbone_lr_mult=0.1, lr=0.01, weight_decay=5e-4, optimizer="sgd")
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.layers.0.0.weight", "backbone.layers.0.0.bias"]
    opt = m.configure_optimizers()
    groups = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    # backbone layer 2 (12x16 weight, 12 bias) at lr 0.001; classifier (3x12 + 3) at lr 0.01; no decay on biases
    assert groups == {(0.001, 5e-4): 192, (0.001, 0.0): 12, (0.01, 5e-4): 36, (0.01, 0.0): 3}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_fused_optimizer_is_the_same_update_and_can_be_turned_off(optimizer):
    torch.manual_seed(0)
    fused, plain = _module(optimizer=optimizer, weight_decay=1e-3), _module(optimizer=optimizer, weight_decay=1e-3,
                                                                            fused=False)
    plain.load_state_dict(fused.state_dict())
    opts = [m.configure_optimizers() for m in (fused, plain)]
    assert opts[0].defaults["fused"] is True and not opts[1].defaults["fused"]
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(20):
        for m, opt in zip((fused, plain), opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused.classifier.weight, _module(optimizer=optimizer).classifier.weight)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_momentum_is_adams_beta1(optimizer):
    """``momentum`` is SGD's momentum or Adam's first-moment decay beta1 (ADDA's paper: Adam with beta1 0.5)."""
    assert _module(optimizer=optimizer).configure_optimizers().defaults["betas"] == (0.9, 0.999)  # torch's default
    torch.manual_seed(0)
    m = _module(optimizer=optimizer, momentum=0.5, lr=0.1, fused=False)
    opt = m.configure_optimizers()
    assert opt.defaults["betas"] == (0.5, 0.999)
    w0 = m.classifier.bias.detach().clone()
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 1.0, 2.0])
    for g in (g1, g2):  # two steps with given gradients on the (undecayed) bias: Adam's update by hand
        opt.zero_grad()
        m.classifier.bias.grad = g.clone()
        opt.step()
    m1, v1 = 0.5 * 0.5 * g1 + 0.5 * g2, 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    expected = w0 - 0.1 * g1.sign() - 0.1 * (m1 / (1 - 0.5 ** 2)) / ((v1 / (1 - 0.999 ** 2)).sqrt() + 1e-8)
    torch.testing.assert_close(m.classifier.bias.detach(), expected)
    sgd = _module(optimizer="sgd", momentum=0.5).configure_optimizers().defaults
    assert sgd["momentum"] == 0.5 and sgd["nesterov"] and "betas" not in sgd


def test_fp16_precision_keeps_the_per_tensor_optimizer():
    m = _module(optimizer="adam")
    m._trainer = types.SimpleNamespace(precision="16-mixed")
    assert not m.configure_optimizers().defaults["fused"]


def test_freeze_backbone_keeps_it_in_eval_mode():
    m = _module(freeze_backbone=True, backbone_args={"hidden": [16], "batch_norm": True})
    m.train()
    assert not m.backbone.training and m.classifier.training
    assert all(not p.requires_grad for p in m.backbone.parameters())


def test_frozen_blocks_keep_batchnorm_statistics():
    m = _module(freeze_blocks=1, backbone_args={"hidden": [16, 12], "batch_norm": True})
    m.train()
    blocks = m.backbone.blocks()
    assert not blocks[0].training and blocks[1].training
    before = blocks[0][1].running_mean.clone()
    m(torch.randn(8, 8) * 5)
    assert torch.equal(blocks[0][1].running_mean, before)
    assert not torch.equal(blocks[1][1].running_mean, torch.zeros(12))


def test_dann_lr_schedule_values():
    m = _module(optimizer="sgd", lr=0.01, scheduler="dann")

    class _T:  # the bits of a Trainer configure_optimizers reads
        estimated_stepping_batches = 100

    m._trainer = _T()
    cfg = m.configure_optimizers()
    sched = cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for step in range(101):
        lrs.append(sched.get_last_lr()[0])
        cfg["optimizer"].step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx(0.01 / (1 + 10 * 0.5) ** 0.75)
    assert lrs[100] == pytest.approx(0.01 / 11 ** 0.75)


class _Const(AdaptationLoss):
    name = "const"

    def forward(self, ctx):
        return ctx.f_s.sum() * 0 + 2.0


def test_training_step_adds_weighted_terms_and_weights_sources(monkeypatch):
    torch.manual_seed(0)
    m = _module(losses=[_Const(weight=0.5)], num_sources=2)
    monkeypatch.setattr(TransferModule, "progress", property(lambda self: 0.0))
    logged = {}
    monkeypatch.setattr(m, "log_dict", lambda d, **k: logged.update(d))
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    monkeypatch.setattr(m, "_train_logs_due", lambda: True)
    x = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    d = torch.tensor([0, 0, 0, 1, 1, 1])
    batch = {"source": (x, y, d), "target": (torch.randn(6, 8), y, d)}
    m.eval()  # no dropout / BN noise: compare with a hand computation
    loss = m.training_step(batch, 0)
    ce = torch.nn.functional.cross_entropy(m(x), y, reduction="none")
    assert loss.item() == pytest.approx(ce.mean().item() + 1.0, rel=1e-5)
    assert logged == {}  # the step's values are logged in on_train_batch_end, on the steps the logger writes
    m.on_train_batch_end(loss, batch, 0)
    assert logged["train/const_weight"].item() == 0.5 and logged["train/const"].item() == 2.0
    assert logged["train/loss"].item() == pytest.approx(loss.item())
    m.source_weights[1] = 0.0  # the monitor's down-weighting of a harmful source
    loss = m.training_step(batch, 0)
    assert loss.item() == pytest.approx(ce[:3].mean().item() + 1.0, rel=1e-5)


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'sdg'; did you mean 'sgd'"):
        _module(optimizer="sdg")
    with pytest.raises(ValueError, match="unknown backbone 'lenett'; did you mean 'lenet'"):
        _module(backbone="lenett")
    with pytest.raises(ValueError, match="freeze_blocks=5 but the backbone has 2 blocks"):
        _module(freeze_blocks=5)
