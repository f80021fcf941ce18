"""BSP and AFN (stepwise and hard): hand values, gradients, gradcheck."""

import pytest
import torch

from da.losses import LOSSES, AdaptiveFeatureNorm, BatchSpectralPenalty, StepContext, build_loss
from da.losses.spectral import top_singular_values


def ctx(f_s, f_t):
    n = f_s.shape[0]
    logits = torch.zeros(n, 2, dtype=f_s.dtype)
    return StepContext(f_s=f_s, f_t=f_t, logits_s=logits, logits_t=torch.zeros(f_t.shape[0], 2, dtype=f_t.dtype),
                       y_s=torch.zeros(n, dtype=torch.long))


def test_short_names_and_defaults():
    assert LOSSES["bsp"] is BatchSpectralPenalty and LOSSES["afn"] is LOSSES["safn"] is AdaptiveFeatureNorm
    assert BatchSpectralPenalty().weight == 1e-4 and BatchSpectralPenalty().k == 1
    afn = build_loss("afn")
    assert (afn.weight, afn.mode, afn.delta_r) == (0.05, "stepwise", 1.0)


def test_bsp_hand_values():
    f_s = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # singular values 3, 1
    f_t = torch.tensor([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # 2, 0
    loss = BatchSpectralPenalty()
    assert float(loss(ctx(f_s, f_t))) == pytest.approx(9.0 + 4.0, abs=1e-12)
    assert float(loss.last_logs["sigma_s"]) == pytest.approx(3.0) and float(loss.last_logs["sigma_t"]) == 2.0
    assert float(BatchSpectralPenalty(k=2)(ctx(f_s, f_t))) == pytest.approx(9.0 + 1.0 + 4.0, abs=1e-12)
    # k larger than min(n, d): all singular values
    assert float(BatchSpectralPenalty(k=5)(ctx(f_s, f_t))) == pytest.approx(14.0, abs=1e-12)
    with pytest.raises(ValueError, match="k >= 1"):
        BatchSpectralPenalty(k=0)


def test_bsp_matches_naive_svd_and_gradcheck():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    s_s = torch.linalg.svd(f_s).S
    s_t = torch.linalg.svd(f_t).S
    expected = (s_s[:2] ** 2).sum() + (s_t[:2] ** 2).sum()
    assert float(BatchSpectralPenalty(k=2)(ctx(f_s, f_t))) == pytest.approx(float(expected), rel=1e-12)
    # sigma_1^2 is the largest eigenvalue of F^T F
    assert float(top_singular_values(f_s, 1)[0] ** 2) == pytest.approx(float(torch.linalg.eigvalsh(f_s.T @ f_s)[-1]))
    a, b = f_s.clone().requires_grad_(True), f_t.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: BatchSpectralPenalty(k=2)(ctx(x, y)), (a, b))


def test_safn_value_and_gradient_by_hand():
    f_s = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)  # norms 5, 2
    f_t = torch.tensor([[6.0, 8.0]], dtype=torch.float64, requires_grad=True)  # norm 10
    loss = AdaptiveFeatureNorm(delta_r=0.5)
    value = loss(ctx(f_s, f_t))
    assert float(value.detach()) == pytest.approx(2 * 0.5 ** 2, abs=1e-12)  # each domain's value is delta_r^2
    assert float(loss.last_logs["norm_s"]) == pytest.approx(3.5) and float(loss.last_logs["norm_t"]) == 10.0
    value.backward()
    # d/df mean_i (||f_i|| - sg(||f_i||) - dr)^2 = -2 dr f_i / ||f_i|| / n
    torch.testing.assert_close(f_s.grad, -2 * 0.5 * torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64) / 2)
    torch.testing.assert_close(f_t.grad, -2 * 0.5 * torch.tensor([[0.6, 0.8]], dtype=torch.float64))


def test_safn_step_grows_every_norm_by_the_step():
    torch.manual_seed(1)
    f = torch.randn(4, 3, dtype=torch.float64)
    x = f.clone().requires_grad_(True)
    AdaptiveFeatureNorm(delta_r=1.0)(ctx(x, f[:1].clone())).backward()
    # one gradient step with lr = n / (2 dr) moves each source feature radially outwards by dr = 1
    new = f - (4 / 2) * x.grad
    torch.testing.assert_close(new.norm(dim=1), f.norm(dim=1) + 1.0)


def test_hafn_hand_value_and_gradcheck():
    f_s = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)  # mean norm 3
    f_t = torch.tensor([[6.0, 8.0]], dtype=torch.float64)  # mean norm 10
    loss = AdaptiveFeatureNorm(mode="hard", radius=5.0)
    assert float(loss(ctx(f_s, f_t))) == pytest.approx((3 - 5) ** 2 + (10 - 5) ** 2, abs=1e-12)
    a, b = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, y: AdaptiveFeatureNorm(mode="hard", radius=2.0)(ctx(x, y)), (a, b))


def test_afn_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="stepwise"):
        AdaptiveFeatureNorm(mode="stepwize")
    with pytest.raises(ValueError, match="delta_r"):
        AdaptiveFeatureNorm(delta_r=0)
    with pytest.raises(ValueError, match="radius"):
        AdaptiveFeatureNorm(mode="hard", radius=-1)
    zeros = torch.zeros(2, 3)
    no_target = StepContext(f_s=zeros, f_t=None, logits_s=zeros, logits_t=None, y_s=torch.zeros(2, dtype=torch.long))
    for term in (AdaptiveFeatureNorm(), BatchSpectralPenalty()):
        with pytest.raises(ValueError, match="target batch"):
            term(no_target)
