"""MDD: hand value, exact log(1 - p), GRL sign and scale, gradcheck, head built from the model."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from da.losses import LOSSES, MarginDisparityDiscrepancy, StepContext
from da.losses.margin import auxiliary_head, log_one_minus_softmax, margin_disparity
from da.module import TransferModule

L3 = math.log(3.0)


def ctx(f_s, f_t, logits_s, logits_t, progress=1.0):
    return StepContext(f_s=f_s, f_t=f_t, logits_s=logits_s, logits_t=logits_t,
                       y_s=torch.zeros(f_s.shape[0], dtype=torch.long), progress=progress)


def identity_head(loss):
    """A linear head f'(z) = z (2 features -> 2 classes) in float64."""
    lin = loss.head[-1]
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    loss.head.double()


def test_short_name_and_defaults():
    assert LOSSES["mdd"] is MarginDisparityDiscrepancy
    loss = MarginDisparityDiscrepancy()
    assert (loss.margin, loss.grl_max, loss.weight, loss.current_weight(0.3)) == (4.0, 0.1, 1.0, 1.0)
    assert loss.grl_coeff(0.0) == 0.0 and loss.grl_coeff(1.0) == pytest.approx(0.1 * 0.99990920426)


def test_hand_value():
    loss = MarginDisparityDiscrepancy(margin=4.0, num_layers=0).build(2, 2)
    identity_head(loss)
    f_s = torch.tensor([[L3, 0.0]], dtype=torch.float64)  # f'(z_s) softmax = (3/4, 1/4)
    f_t = torch.tensor([[0.0, L3]], dtype=torch.float64)  # f'(z_t) softmax = (1/4, 3/4)
    logits_s = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # main head says class 0 on the source ...
    logits_t = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # ... and class 1 on the target
    value = loss(ctx(f_s, f_t, logits_s, logits_t))
    # gamma * CE(f'(z_s), 0) - log(1 - p'_t[1]) = 4 * -log(3/4) - log(1/4)
    assert float(value.detach()) == pytest.approx(4 * math.log(4 / 3) + math.log(4), abs=1e-12)
    assert float(loss.last_logs["agree_s"]) == 1.0 and float(loss.last_logs["agree_t"]) == 1.0
    # the head that agrees on the source and disagrees on the target has a lower loss (it wins the game)
    logits_t_other = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    lower = loss(ctx(f_s, f_t, logits_s, logits_t_other))
    assert float(lower.detach()) == pytest.approx(4 * math.log(4 / 3) - math.log(3 / 4), abs=1e-12) and lower < value
    assert float(loss.last_logs["agree_t"]) == 0.0


def test_log_one_minus_softmax_is_exact():
    torch.manual_seed(0)
    z = torch.randn(7, 5, dtype=torch.float64) * 4
    y = torch.randint(0, 5, (7,))
    naive = torch.log(1 - z.softmax(-1)[torch.arange(7), y])
    torch.testing.assert_close(log_one_minus_softmax(z, y), naive)
    # finite where the naive form is log(0) = -inf
    sure = torch.tensor([[60.0, 0.0]], dtype=torch.float64)
    assert float(log_one_minus_softmax(sure, torch.tensor([0]))) == pytest.approx(-60.0, abs=1e-9)


def test_gradcheck_in_the_adversarial_logits():
    torch.manual_seed(1)
    logits_s, logits_t = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    adv_s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    adv_t = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: margin_disparity(logits_s, a, logits_t, b, 4.0), (adv_s, adv_t))


def test_grl_sign_head_gets_the_gradient_features_the_reversed_scaled_one():
    torch.manual_seed(2)
    loss = MarginDisparityDiscrepancy(num_layers=1, hidden=8, dropout=0.0).build(3, 4)
    loss.head.double()
    f_s, f_t = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    logits_s = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    logits_t = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    p = 0.3
    a_s, a_t = f_s.clone().requires_grad_(True), f_t.clone().requires_grad_(True)
    loss(ctx(a_s, a_t, logits_s, logits_t, progress=p)).backward()
    head_grad = [q.grad.clone() for q in loss.head.parameters()]
    loss.head.zero_grad()
    # the same loss without the reversal layer
    b_s, b_t = f_s.clone().requires_grad_(True), f_t.clone().requires_grad_(True)
    adv = loss.head(torch.cat([b_s, b_t]))
    margin_disparity(logits_s, adv[:4], logits_t, adv[4:], 4.0).backward()
    coeff = loss.grl_coeff(p)
    assert 0 < coeff < 0.1
    torch.testing.assert_close(a_s.grad, -coeff * b_s.grad)
    torch.testing.assert_close(a_t.grad, -coeff * b_t.grad)
    for g, q in zip(head_grad, loss.head.parameters()):
        torch.testing.assert_close(g, q.grad)  # the head minimises the loss at full strength
    assert logits_s.grad is None or not logits_s.grad.any()  # pseudo-labels only: no gradient to the main head


def test_head_built_from_the_model_and_trained_by_its_optimizer():
    model = TransferModule(num_classes=3, input_shape=(5,), backbone="mlp", backbone_args={"hidden": [6]},
                           losses=[MarginDisparityDiscrepancy(hidden=16)])
    head = model.losses[0].head
    assert isinstance(head[0], nn.Linear) and head[0].in_features == model.classifier.in_features == 6
    assert head[-1].out_features == 3 and head[0].out_features == 16
    assert {id(q) for q in head.parameters()} <= {id(q) for q in model.parameters()}
    assert len(auxiliary_head(6, 3, num_layers=0)) == 1
    with pytest.raises(ValueError, match="num_classes >= 2"):
        auxiliary_head(6, 1)
    with pytest.raises(ValueError, match="margin"):
        MarginDisparityDiscrepancy(margin=0)
    with pytest.raises(RuntimeError, match="no head"):
        z = torch.zeros(2, 2)
        MarginDisparityDiscrepancy()(ctx(z, z, z, z))


def test_one_training_step_moves_the_head_toward_disagreement_on_target():
    torch.manual_seed(3)
    loss = MarginDisparityDiscrepancy(num_layers=0, margin=1.0).build(4, 3)
    opt = torch.optim.SGD(loss.head.parameters(), lr=0.5)
    f_s, f_t = torch.randn(16, 4), torch.randn(16, 4)
    logits_s, logits_t = torch.randn(16, 3), torch.randn(16, 3)
    values = []
    for _ in range(30):
        opt.zero_grad()
        v = loss(ctx(f_s, f_t, logits_s, logits_t))
        v.backward()
        opt.step()
        values.append(float(v.detach()))
    assert values[-1] < values[0]
    agree_t = (loss.head(f_t).argmax(-1) == logits_t.argmax(-1)).float().mean()
    agree_s = (loss.head(f_s).argmax(-1) == logits_s.argmax(-1)).float().mean()
    assert float(agree_s) > float(agree_t)
    assert F.cross_entropy(loss.head(f_s), logits_s.argmax(-1)) < math.log(3)
