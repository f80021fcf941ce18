"""GRL, DANN (binary and multi-source) and CDAN: hand values, gradient sign/scale, schedule, gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from da.losses import CDAN, DomainAdversarialLoss, DomainDiscriminator, GradientReversal, StepContext, grad_reverse
from da.losses.schedules import Constant


def softplus(x):
    return math.log1p(math.exp(x))


def ctx(f_s, f_t, logits_s=None, logits_t=None, d_s=None, num_sources=1, progress=1.0):
    n_s = f_s.shape[0]
    logits_s = logits_s if logits_s is not None else torch.zeros(n_s, 2, dtype=f_s.dtype)
    logits_t = logits_t if logits_t is not None else torch.zeros(f_t.shape[0], 2, dtype=f_t.dtype)
    return StepContext(f_s=f_s, f_t=f_t, logits_s=logits_s, logits_t=logits_t,
                       y_s=torch.zeros(n_s, dtype=torch.long), d_s=d_s, num_sources=num_sources, progress=progress)


def identity_relu_discriminator(loss, dtype=torch.float64):
    """Discriminator logit = relu(f) for 1-d features (hidden 1, no BN, no dropout)."""
    with torch.no_grad():
        for m in loss.discriminator:
            if isinstance(m, nn.Linear):
                m.weight.fill_(1.0)
                m.bias.zero_()
    loss.discriminator.to(dtype)


def test_grl_forward_identity_backward_reversed_and_scaled():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    layer = GradientReversal(coeff=0.3)
    y = layer(x)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 4.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.3, -0.6, -1.2]))
    # coeff -1 cancels the reversal: a true gradient, so gradcheck applies
    z = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: grad_reverse(v, -1.0).pow(3).sum(), (z,))


@pytest.mark.parametrize("p, expected", [(0.0, 0.0), (0.5, 0.98661429815), (1.0, 0.99990920426)])
def test_dann_grl_schedule_values(p, expected):
    loss = DomainAdversarialLoss(in_features=1, hidden=1, batch_norm=False, dropout=0.0, num_layers=1)
    assert loss.grl_schedule(p) == pytest.approx(expected, abs=1e-10)
    assert isinstance(loss.schedule, Constant) and loss.current_weight(p) == 1.0
    loss.weight = 2.0
    assert loss.current_weight(p) == 2.0  # the outer multiplier never includes lambda_p


def test_dann_hand_computed_value_and_accuracy():
    loss = DomainAdversarialLoss(in_features=1, hidden=1, batch_norm=False, dropout=0.0, num_layers=1)
    identity_relu_discriminator(loss)
    f_s = torch.tensor([[2.0], [0.0]], dtype=torch.float64)
    f_t = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    value = loss(ctx(f_s, f_t))
    expected = 0.5 * ((softplus(-2.0) + softplus(0.0)) / 2 + (softplus(1.0) + softplus(3.0)) / 2)
    assert value.item() == pytest.approx(expected, abs=1e-12)
    # source: logits 2 (right), 0 (wrong: not > 0); target: 1, 3 (both called source: wrong)
    assert loss.last_logs["disc_acc"].item() == pytest.approx(0.25)


def test_unequal_batch_sizes_average_each_domain():
    loss = DomainAdversarialLoss(in_features=1, hidden=1, batch_norm=False, dropout=0.0, num_layers=1)
    identity_relu_discriminator(loss)
    f_s = torch.tensor([[1.0]], dtype=torch.float64)
    f_t = torch.tensor([[0.0], [0.0], [2.0]], dtype=torch.float64)
    value = loss(ctx(f_s, f_t))
    expected = 0.5 * (softplus(-1.0) + (2 * softplus(0.0) + softplus(2.0)) / 3)
    assert value.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_feature_gradient_is_minus_lambda_discriminator_full_strength(p):
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(in_features=4, hidden=8, batch_norm=True, dropout=0.0).double()
    f_s = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss(ctx(f_s, f_t, progress=p)).backward()
    g_s, g_t = f_s.grad.clone(), f_t.grad.clone()
    g_disc = [q.grad.clone() for q in loss.discriminator.parameters()]
    # reference: the same loss with the reversal removed by hand
    loss.zero_grad()
    f_s.grad = f_t.grad = None
    logits = loss.discriminator(torch.cat([f_s, f_t])).squeeze(-1)
    ref = 0.5 * (F.softplus(-logits[:5]).mean() + F.softplus(logits[5:]).mean())
    ref.backward()
    lam = 2.0 / (1.0 + math.exp(-10 * p)) - 1.0
    torch.testing.assert_close(g_s, -lam * f_s.grad)
    torch.testing.assert_close(g_t, -lam * f_t.grad)
    for a, q in zip(g_disc, loss.discriminator.parameters()):
        torch.testing.assert_close(a, q.grad)


def test_dann_gradcheck_float64():
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(in_features=3, hidden=4, batch_norm=False, dropout=0.0, schedule=Constant()).double()
    loss.grl_schedule = type("Neg", (), {"__call__": lambda self, p: -1.0})()  # un-reversed: a true gradient
    f_s = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: loss(ctx(a, b)), (f_s, f_t))


def test_multi_source_discriminator_cross_entropy():
    torch.manual_seed(0)
    loss = DomainAdversarialLoss(in_features=2, hidden=4, batch_norm=False, dropout=0.0, multi_source=True)
    model = nn.Module()
    model.classifier = nn.Linear(2, 5)
    model.num_sources = 2
    loss.setup(model)
    assert loss.discriminator.num_domains == 3 and loss.discriminator[-1].out_features == 3
    f_s, f_t = torch.randn(4, 2), torch.randn(3, 2)
    d_s = torch.tensor([0, 1, 1, 0])
    value = loss(ctx(f_s, f_t, d_s=d_s, num_sources=2))
    logits = loss.discriminator(torch.cat([f_s, f_t]))
    expected = 0.5 * (F.cross_entropy(logits[:4], d_s) + F.cross_entropy(logits[4:], torch.full((3,), 2)))
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    acc = 0.5 * ((logits[:4].argmax(-1) == d_s).float().mean() + (logits[4:].argmax(-1) == 2).float().mean())
    assert loss.last_logs["disc_acc"].item() == pytest.approx(acc.item())


def test_labelled_target_samples_count_as_target_domain():
    loss = DomainAdversarialLoss(in_features=1, hidden=1, batch_norm=False, dropout=0.0, num_layers=1)
    identity_relu_discriminator(loss)
    f_s = torch.tensor([[2.0], [2.0]], dtype=torch.float64)
    f_t = torch.tensor([[2.0], [2.0]], dtype=torch.float64)
    value = loss(ctx(f_s, f_t, d_s=torch.tensor([0, 1]), num_sources=1))  # second sample: labelled target
    expected = 0.5 * ((softplus(-2.0) + softplus(2.0)) / 2 + softplus(2.0))
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_setup_from_model_and_errors():
    model = nn.Module()
    model.classifier = nn.Linear(7, 3)
    loss = DomainAdversarialLoss(hidden=16)
    with pytest.raises(RuntimeError, match="setup"):
        loss(ctx(torch.zeros(2, 7), torch.zeros(2, 7)))
    loss.setup(model)
    assert loss.discriminator[0].in_features == 7 and loss.discriminator[-1].out_features == 1
    with pytest.raises(ValueError, match="target batch"):
        loss(StepContext(f_s=torch.zeros(2, 7), f_t=None, logits_s=torch.zeros(2, 3), logits_t=None,
                         y_s=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="num_domains"):
        DomainDiscriminator(4, num_domains=1)


def test_discriminator_shape_options():
    d = DomainDiscriminator(5, hidden=6, num_domains=4, batch_norm=False, dropout=0.0, num_layers=3)
    kinds = [type(m).__name__ for m in d]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert d(torch.zeros(2, 5)).shape == (2, 4)
    kinds = [type(m).__name__ for m in DomainDiscriminator(5, hidden=6)]  # the default: TLlib's, no dropout
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    kinds = [type(m).__name__ for m in DomainDiscriminator(5, hidden=6, dropout=0.5)]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]


def test_cdan_multilinear_map_by_hand():
    loss = CDAN(in_features=2, num_classes=2, hidden=4, batch_norm=False, dropout=0.0)
    f = torch.tensor([[1.0, 2.0]])
    g = torch.tensor([[0.25, 0.75]])
    torch.testing.assert_close(loss.multilinear(f, g), torch.tensor([[0.25, 0.5, 0.75, 1.5]]))
    big = CDAN(in_features=64, num_classes=128, random_dim=32, hidden=4)
    assert big.randomized and big.discriminator[0].in_features == 32
    f, g = torch.randn(3, 64), torch.randn(3, 128).softmax(-1)
    torch.testing.assert_close(big.multilinear(f, g), (f @ big.r_f) * (g @ big.r_g) / math.sqrt(32))
    assert "r_f" in big.state_dict()


def test_cdan_entropy_weighted_value_and_detached_predictions():
    torch.manual_seed(0)
    loss = CDAN(in_features=3, num_classes=2, hidden=5, batch_norm=False, dropout=0.0).double()
    f_s = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    l_s = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    l_t = torch.tensor([[0.5, 0.5], [4.0, -4.0]], dtype=torch.float64, requires_grad=True)
    value = loss(ctx(f_s, f_t, l_s, l_t))
    with torch.no_grad():
        g = torch.cat([l_s, l_t]).softmax(-1)
        h = torch.cat([f_s, f_t])
        z = loss.discriminator(torch.bmm(g.unsqueeze(2), h.unsqueeze(1)).flatten(1)).squeeze(-1)
        ent = -(g * g.log()).sum(-1)
        w = 1 + torch.exp(-ent)
        w_s, w_t = w[:3] / w[:3].sum(), w[3:] / w[3:].sum()
        expected = 0.5 * ((w_s * F.softplus(-z[:3])).sum() + (w_t * F.softplus(z[3:])).sum())
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    value.backward()
    assert l_s.grad is None and f_s.grad is not None


def test_cdan_setup_from_model():
    model = nn.Module()
    model.classifier = nn.Linear(10, 4)
    loss = CDAN(hidden=8)
    loss.setup(model)
    assert loss.discriminator[0].in_features == 40 and not loss.randomized


def test_linear_discriminator_with_zero_hidden_layers():
    d = DomainDiscriminator(3, num_domains=2, num_layers=0)
    assert len(d) == 1 and isinstance(d[0], torch.nn.Linear) and d[0].weight.shape == (1, 3)
    with torch.no_grad():
        d[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        d[0].bias.fill_(0.25)
    assert d(torch.tensor([[2.0, 1.0, 4.0]])).item() == pytest.approx(2.0 - 2.0 + 2.0 + 0.25)


def test_discriminator_dropout_default_follows_batch_norm():
    def n_dropout(module):
        return sum(isinstance(m, torch.nn.Dropout) for m in module.modules())

    assert n_dropout(DomainDiscriminator(8)) == 0  # BN, no dropout: TLlib's discriminator
    no_bn = DomainDiscriminator(8, batch_norm=False)
    assert n_dropout(no_bn) == 2 and all(m.p == 0.5 for m in no_bn.modules() if isinstance(m, torch.nn.Dropout))
    assert n_dropout(DomainDiscriminator(8, dropout=0.3)) == 2  # explicit: kept, with BN too
    assert n_dropout(DomainAdversarialLoss(in_features=8).discriminator) == 0
    assert n_dropout(DomainAdversarialLoss(in_features=8, batch_norm=False).discriminator) == 2
    assert n_dropout(CDAN(in_features=4, num_classes=3).discriminator) == 0
    assert n_dropout(CDAN(in_features=4, num_classes=3, dropout=0.5).discriminator) == 2
    with pytest.raises(ValueError, match="dropout must be in"):
        DomainDiscriminator(8, dropout=1.0)
