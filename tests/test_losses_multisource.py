"""Multi-source anchors: the identity against the direct sum (D = 1..5), gradients wrt w and alpha, logs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from da.losses import MultiSourceAnchors, StepContext


class Model(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
        self.backbone.out_features = 2
        self.bottleneck = nn.Identity()
        self.classifier = nn.Linear(2, 2).double()
        self.losses = nn.ModuleList()

    def pretrained_parameter_names(self):
        return {n for n, _ in self.named_parameters() if n.startswith("backbone.")}


def ctx_for(model, step=0):
    z = torch.zeros(2, 2, dtype=torch.float64)
    return StepContext(f_s=z, f_t=None, logits_s=z, logits_t=None, y_s=torch.zeros(2, dtype=torch.long),
                       module=model, step=step)


def random_anchors(model, num, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in model.state_dict().items()}
            for _ in range(num)]


def direct(model, anchors, alphas):
    """sum_d alpha_d / 2 ||w - w_d||^2 over the backbone, one term per anchor."""
    total = 0.0
    for a, state in zip(alphas, anchors):
        total = total + 0.5 * a * sum((p - state[n]).pow(2).sum() for n, p in model.named_parameters()
                                      if n.startswith("backbone."))
    return total


def grads(model):
    return [p.grad.clone() for p in model.backbone.parameters()]


@pytest.mark.parametrize("num", [1, 2, 3, 4, 5])
def test_identity_matches_direct_sum_fixed_alphas(num):
    model = Model()
    anchors = random_anchors(model, num, seed=num)
    alphas = [0.1 * (d + 1) for d in range(num)]
    loss = MultiSourceAnchors(anchors, alphas=alphas, log_every=1)
    loss.setup(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    value = loss(ctx_for(model))
    value.backward()
    g_fast = grads(model)
    model.zero_grad()
    ref = direct(model, anchors, alphas)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, b in zip(g_fast, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert model.classifier.weight.grad is None  # default include = backbone
    for d in range(num):  # per-source distances logged
        dist = sum((p - anchors[d][n]).pow(2).sum() for n, p in model.named_parameters() if n.startswith("backbone."))
        assert loss.last_logs[f"dist{d}"].item() == pytest.approx(dist.sqrt().item(), rel=1e-12)


@pytest.mark.parametrize("num", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("fixed_total", [True, False])
def test_learnable_alphas_value_and_gradients(num, fixed_total):
    model = Model()
    anchors = random_anchors(model, num, seed=10 + num)
    loss = MultiSourceAnchors(anchors, alphas=[0.2 + 0.1 * d for d in range(num)], learnable=True,
                              fixed_total=fixed_total).double()
    loss.setup(model)
    with torch.no_grad():
        loss.alpha_raw.add_(torch.linspace(-0.5, 0.5, num, dtype=torch.float64))
    value = loss(ctx_for(model))
    value.backward()
    g_w, g_a = grads(model), loss.alpha_raw.grad.clone()
    model.zero_grad()
    loss.alpha_raw.grad = None
    ref = direct(model, anchors, loss.alphas())  # same alphas, autograd through softplus (and the renormalisation)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, b in zip(g_w, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_a, loss.alpha_raw.grad, rtol=1e-10, atol=1e-12)
    if fixed_total:
        assert loss.alphas().sum().item() == pytest.approx(sum(0.2 + 0.1 * d for d in range(num)), rel=1e-12)


def test_cross_term_matters_for_alpha_gradient():
    """d/da_d of the identity's right side with w_bar held fixed misses <w - w_bar, w_bar - w_d>: check the
    correct gradient ||w - w_d||^2 / 2 against that naive one on a case where they differ."""
    model = Model()
    anchors = random_anchors(model, 2, seed=3)
    a = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    w = {n: p.detach() for n, p in model.named_parameters()}
    wbar = {n: (a[0] * anchors[0][n] + a[1] * anchors[1][n]).detach() / a.sum().detach() for n in names}
    naive = 0.5 * a.sum() * sum((w[n] - wbar[n]).pow(2).sum() for n in names) + 0.5 * sum(
        a[d] * sum((anchors[d][n] - wbar[n]).pow(2).sum() for n in names) for d in range(2))
    (g_naive,) = torch.autograd.grad(naive, a)
    exact = torch.stack([0.5 * sum((w[n] - anchors[d][n]).pow(2).sum() for n in names) for d in range(2)])
    assert not torch.allclose(g_naive, exact, atol=1e-3)
    loss = MultiSourceAnchors(anchors, alphas=[0.3, 0.7], learnable=True, fixed_total=False).double()
    loss.setup(model)
    loss(ctx_for(model)).backward()
    # d/d raw = d/d alpha * sigmoid(raw)
    torch.testing.assert_close(loss.alpha_raw.grad, exact * torch.sigmoid(loss.alpha_raw.detach()))


def test_hand_computed_two_anchors_and_constant():
    """w = 0 (one scalar), anchors 1 and 3, alphas 1 and 1: direct = (1 + 9)/2 = 5 = 2/2 * 2^2 + (1 + 1)/2."""
    model = nn.Module()
    model.backbone = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.backbone.weight.zero_()
    anchors = [{"backbone.weight": torch.tensor([[1.0]])}, {"weight": torch.tensor([[3.0]])}]  # 2nd: plain backbone
    loss = MultiSourceAnchors(anchors, alphas=[1.0, 1.0])
    loss.setup(model)
    assert loss.const.item() == pytest.approx(1.0)
    assert loss.wbar.tensors()[0].item() == pytest.approx(2.0)
    value = loss(ctx_for(model))
    assert value.item() == pytest.approx(5.0)
    value.backward()
    assert model.backbone.weight.grad.item() == pytest.approx(-4.0)  # sum a_d (w - w_d) = -1 - 3
    assert loss.last_logs["dist_bar"].item() == pytest.approx(2.0)


def test_anchor_files_buffers_and_partial_anchors(tmp_path):
    model = Model()
    anchors = random_anchors(model, 2, seed=5)
    del anchors[1]["backbone.1.bias"]  # present in one anchor only: not penalised
    paths = []
    for d, a in enumerate(anchors):
        paths.append(str(tmp_path / f"src{d}.ckpt"))
        torch.save({"state_dict": a}, paths[-1])
    loss = MultiSourceAnchors(paths, alphas=[0.5, 0.5], log_every=0)
    loss.setup(model)
    assert "backbone.1.bias" not in loss.anchors[0].names()
    keys = set(loss.state_dict())
    assert "const" in keys and "total" in keys and "alpha_fixed" in keys
    assert any(k.startswith("anchors.1.") for k in keys) and any(k.startswith("wbar.") for k in keys)
    value = loss(ctx_for(model))
    ref = 0.25 * sum(sum((p - a[n]).pow(2).sum() for n, p in model.named_parameters()
                         if n.startswith("backbone.") and n != "backbone.1.bias") for a in anchors)
    assert value.item() == pytest.approx(ref.item(), rel=1e-12)
    assert "dist0" not in loss.last_logs  # log_every=0
    # a fresh term restored from the state dict gives the same value
    again = MultiSourceAnchors(paths, alphas=[0.5, 0.5], log_every=0)
    again.setup(model)
    again.load_state_dict(loss.state_dict())
    assert again(ctx_for(model)).item() == pytest.approx(value.item(), rel=1e-12)


def test_per_source_distances_every_k_steps():
    model = Model()
    loss = MultiSourceAnchors(random_anchors(model, 3), log_every=5)
    loss.setup(model)
    loss(ctx_for(model, step=3))
    assert "dist0" not in loss.last_logs and "dist_bar" in loss.last_logs
    loss(ctx_for(model, step=9))  # Lightning logs after steps k*n - 1: the distances are fresh there
    assert {"dist0", "dist1", "dist2"} <= set(loss.last_logs)


def test_bf16_model_float32_anchors():
    model = Model().to(torch.bfloat16)
    anchors = [{k: v.float() + 0.01 * (d + 1) for k, v in model.state_dict().items()} for d in range(2)]
    loss = MultiSourceAnchors(anchors, alphas=[1.0, 3.0])
    loss.setup(model)
    value = loss(ctx_for(model))
    assert value.dtype == torch.float32
    n = sum(p.numel() for p in model.backbone.parameters())
    # every entry is 0.01 / 0.02 from the anchors: (1 * 1e-4 + 3 * 4e-4) / 2 per entry
    assert value.item() == pytest.approx(n * (1e-4 + 12e-4) / 2, rel=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="alphas"):
        MultiSourceAnchors([{}, {}], alphas=[1.0])
    with pytest.raises(ValueError, match="alphas"):
        MultiSourceAnchors([{}], alphas=[-1.0])
    with pytest.raises(ValueError, match="non-empty"):
        MultiSourceAnchors([])
    with pytest.raises(ValueError, match="present in all"):
        MultiSourceAnchors([{"x": torch.zeros(1)}]).setup(Model())
    with pytest.raises(RuntimeError, match="setup"):
        MultiSourceAnchors([{}])(ctx_for(Model()))
