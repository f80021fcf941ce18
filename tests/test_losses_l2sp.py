"""L2-SP and L2: hand-computed values, gradients alpha (w - w0) and beta w, buffers, checkpoints, bf16."""

import math
import pickle

import pytest
import torch
from torch import nn

from da.losses import L2, L2SP, StepContext
from da.losses.l2sp import escape_name, squared_norms, unescape_name


class Tiny(nn.Module):
    """Stand-in for TransferModule: backbone Linear(2, 1), classifier Linear(1, 1), a loss with a parameter."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.backbone = nn.Linear(2, 1).to(dtype)
        self.backbone.out_features = 1
        self.bottleneck = nn.Identity()
        self.classifier = nn.Linear(1, 1).to(dtype)
        self.losses = nn.ModuleList([nn.Linear(1, 1)])  # a loss term's own parameters: never penalised
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[1.0, 2.0]]))
            self.backbone.bias.copy_(torch.tensor([0.5]))
            self.classifier.weight.copy_(torch.tensor([[3.0]]))
            self.classifier.bias.copy_(torch.tensor([-1.0]))

    def pretrained_parameter_names(self):
        return {"backbone.weight", "backbone.bias"}


def ctx_for(model, step=0):
    z = torch.zeros(2, 1)
    return StepContext(f_s=z, f_t=None, logits_s=z, logits_t=None, y_s=torch.zeros(2, dtype=torch.long),
                       module=model, step=step)


def move(model):
    """Backbone to w = [[2, 0]], [1.5]: w - w0 = (1, -2, 1), ||.||^2 = 6."""
    with torch.no_grad():
        model.backbone.weight.copy_(torch.tensor([[2.0, 0.0]]))
        model.backbone.bias.copy_(torch.tensor([1.5]))


def test_zero_at_start_and_zero_gradient():
    model = Tiny()
    loss = L2SP(alpha=0.1, beta=0.0)
    loss.setup(model)
    value = loss(ctx_for(model))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(model.backbone.weight.grad, torch.zeros(1, 2, dtype=torch.float64))
    assert model.classifier.weight.grad is None


def test_hand_computed_value_and_logs():
    model = Tiny()
    loss = L2SP(alpha=0.1, beta=0.2)
    loss.setup(model)
    move(model)
    # alpha/2 * 6 + beta/2 * (3^2 + 1^2) = 0.3 + 1.0
    value = loss(ctx_for(model))
    assert value.item() == pytest.approx(1.3, abs=1e-12)
    assert loss.last_logs["dist"].item() == pytest.approx(6 ** 0.5, abs=1e-12)
    assert loss.last_logs["new_norm"].item() == pytest.approx(10 ** 0.5, abs=1e-12)


def test_gradient_is_alpha_w_minus_w0_and_beta_w():
    model = Tiny()
    loss = L2SP(alpha=0.1, beta=0.2)
    loss.setup(model)
    move(model)
    loss(ctx_for(model)).backward()
    torch.testing.assert_close(model.backbone.weight.grad, 0.1 * torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(model.backbone.bias.grad, 0.1 * torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(model.classifier.weight.grad, 0.2 * torch.tensor([[3.0]], dtype=torch.float64))
    torch.testing.assert_close(model.classifier.bias.grad, 0.2 * torch.tensor([-1.0], dtype=torch.float64))
    assert model.losses[0].weight.grad is None


def test_central_differences_match_autograd():
    torch.manual_seed(0)
    model = Tiny()
    loss = L2SP(alpha=0.7, beta=0.3)
    loss.setup(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    loss(ctx_for(model)).backward()
    eps = 1e-6
    for p in (model.backbone.weight, model.classifier.bias):
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + eps
                up = loss(ctx_for(model)).item()
                flat[i] = old - eps
                down = loss(ctx_for(model)).item()
                flat[i] = old
            assert (up - down) / (2 * eps) == pytest.approx(p.grad.view(-1)[i].item(), abs=1e-7)


def test_squared_norms_gradcheck_float64():
    torch.manual_seed(0)
    a = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    w0 = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x, y: squared_norms([x, y], w0), (a, b))
    expected = torch.stack([(a - w0[0]).pow(2).sum(), (b - w0[1]).pow(2).sum()])
    torch.testing.assert_close(squared_norms([a, b], w0), expected)


def test_frozen_parameters_are_skipped():
    model = Tiny()
    model.backbone.bias.requires_grad_(False)
    loss = L2SP(alpha=0.1, beta=0.0)
    loss.setup(model)
    move(model)
    # only the weight counts: (1^2 + 2^2) * 0.1 / 2
    assert loss(ctx_for(model)).item() == pytest.approx(0.25, abs=1e-12)
    assert [k for k in loss.state_dict()] == ["w0." + escape_name("backbone.weight")]


def test_w0_buffers_restore_on_resume():
    model = Tiny()
    loss = L2SP(alpha=0.1, beta=0.0)
    loss.setup(model)
    move(model)
    saved = loss.state_dict()
    assert all(k.startswith("w0.") for k in saved) and len(saved) == 2
    # "resume": a fresh term set up on the moved model would anchor at the moved weights ...
    fresh = L2SP(alpha=0.1, beta=0.0)
    fresh.setup(model)
    assert fresh(ctx_for(model)).item() == 0.0
    # ... until the checkpoint's buffers are loaded
    fresh.load_state_dict(saved)
    assert fresh(ctx_for(model)).item() == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("layout", ["lightning", "plain_module", "plain_backbone"])
def test_w0_from_checkpoint(tmp_path, layout):
    model = Tiny()
    if layout == "lightning":
        payload = {"state_dict": model.state_dict(), "epoch": 3}
    elif layout == "plain_module":
        payload = model.state_dict()
    else:
        payload = model.backbone.state_dict()
    path = tmp_path / "source.ckpt"
    torch.save(payload, path)
    move(model)
    loss = L2SP(alpha=0.1, beta=0.0, w0_from=str(path))
    loss.setup(model)
    assert loss(ctx_for(model)).item() == pytest.approx(0.3, abs=1e-12)


def test_w0_from_missing_and_wrong_shape(tmp_path):
    model = Tiny()
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "a.pt")
    with pytest.raises(KeyError, match="backbone.weight"):
        L2SP(w0_from=str(tmp_path / "a.pt")).setup(model)
    torch.save({"backbone.weight": torch.zeros(2, 2), "backbone.bias": torch.zeros(1)}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="shape"):
        L2SP(w0_from=str(tmp_path / "b.pt")).setup(model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        L2SP(w0_from=str(tmp_path / "nope.pt")).setup(model)


def test_model_without_pretrained_names_needs_prefixes():
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="source_prefixes"):
        L2SP().setup(plain)
    loss = L2SP(alpha=2.0, beta=0.0, source_prefixes=["0."])
    loss.setup(plain)
    with torch.no_grad():
        plain[0].weight.add_(1.0)
    assert loss(ctx_for(plain)).item() == pytest.approx(4.0, abs=1e-6)  # 2/2 * 4 entries * 1^2


def test_bf16_parameters_accumulate_in_float32():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Linear(256, 256).to(torch.bfloat16)
    model.classifier = nn.Linear(256, 10).to(torch.bfloat16)
    model.pretrained_parameter_names = lambda: {"backbone.weight", "backbone.bias"}
    loss = L2SP(alpha=0.5, beta=0.25)
    loss.setup(model)
    assert loss.w0.tensors()[0].dtype == torch.float32
    w0 = [p.detach().double() for p in model.backbone.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    value = loss(ctx_for(model))
    assert value.dtype == torch.float32
    ref = 0.5 * 0.5 * sum((p.detach().double() - a).pow(2).sum() for p, a in zip(model.backbone.parameters(), w0))
    ref = ref + 0.5 * 0.25 * sum(p.detach().double().pow(2).sum() for p in model.classifier.parameters())
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    value.backward()
    assert model.backbone.weight.grad.dtype == torch.bfloat16


def test_l2_value_gradient_and_skips_loss_parameters():
    model = Tiny()
    loss = L2(beta=0.5)
    loss.setup(model)
    value = loss(ctx_for(model))
    # 0.5/2 * (1 + 4 + 0.25 + 9 + 1)
    assert value.item() == pytest.approx(0.25 * 15.25, abs=1e-12)
    assert loss.last_logs["norm"].item() == pytest.approx(15.25 ** 0.5, abs=1e-12)
    value.backward()
    torch.testing.assert_close(model.backbone.weight.grad, 0.5 * model.backbone.weight.detach())
    assert model.losses[0].weight.grad is None
    assert L2.needs_target is False and L2SP.needs_target is False


def test_rebinds_to_a_copy_and_pickles():
    model = Tiny()
    loss = L2SP(alpha=0.1, beta=0.0)
    loss.setup(model)
    clone = pickle.loads(pickle.dumps(loss))
    move(model)
    assert clone(ctx_for(model)).item() == pytest.approx(0.3, abs=1e-12)


def test_name_escaping_roundtrip():
    for name in ["a.b.c", "x%2Ey.z", "plain", "a..b%"]:
        assert "." not in escape_name(name)
        assert unescape_name(escape_name(name)) == name


def test_setup_required():
    with pytest.raises(RuntimeError, match="setup"):
        L2SP()(ctx_for(Tiny()))
    with pytest.raises(ValueError, match="alpha"):
        L2SP(alpha=-1.0)


# --- the loss registry (da.losses.build_loss) --------------------------------------------------------------
def test_build_loss_from_names_dicts_instances_and_class_paths(tmp_path, monkeypatch):
    from da.losses import LOSSES, MKMMD, DomainAdversarialLoss, build_loss

    assert isinstance(build_loss("l2sp"), L2SP) and type(build_loss("mmd")) is MKMMD
    built = build_loss({"name": "l2sp", "alpha": 0.5, "weight": 2.0})
    assert (built.alpha, built.weight) == (0.5, 2.0)
    built = build_loss({"class_path": "da.losses.DomainAdversarialLoss", "init_args": {"hidden": 7}})
    assert isinstance(built, DomainAdversarialLoss) and built.hidden == 7
    same = L2(beta=0.1)
    assert build_loss(same) is same
    assert set(LOSSES) >= {"l2sp", "l2", "anchors", "dann", "cdan", "mmd", "mkmmd", "jmmd", "coral"}
    (tmp_path / "my_entropy.py").write_text(
        "from da.losses import AdaptationLoss\n"
        "class TargetEntropy(AdaptationLoss):\n"
        "    def forward(self, ctx):\n"
        "        p = ctx.logits_t.softmax(-1)\n"
        "        return -(p * p.clamp_min(1e-8).log()).sum(-1).mean()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = build_loss({"class_path": "my_entropy.TargetEntropy", "init_args": {"weight": 0.1}})
    logits = torch.zeros(3, 4)
    value = plugin(StepContext(f_s=logits, f_t=logits, logits_s=logits, logits_t=logits,
                               y_s=torch.zeros(3, dtype=torch.long)))
    assert plugin.weight == 0.1 and value.item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="did you mean 'l2sp'"):
        build_loss("l2pp")
    with pytest.raises(ValueError, match="cannot import"):
        build_loss("nowhere.Missing")
    with pytest.raises(TypeError, match="not an AdaptationLoss"):
        build_loss("torch.nn.Linear")


def test_warns_when_nothing_was_transferred():
    model = Tiny()
    model.pretrained_parameter_names = lambda: set()
    with pytest.warns(UserWarning, match="no transferred parameters"):
        L2SP(alpha=0.1, beta=0.2).setup(model)
