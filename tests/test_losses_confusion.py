"""Entropy, information maximisation, BNM and MCC: hand values, naive float64 references, gradcheck."""

import math

import pytest
import torch

from da.losses import (LOSSES, BatchNuclearNorm, EntropyMinimization, InformationMaximization, MinimumClassConfusion,
                       StepContext, build_loss)
from da.losses.confusion import batch_nuclear_norm, class_confusion, entropy_from_logits
from da.validators import batch_nuclear_norm as validator_bnm
from da.validators import unsupervised_scores

L3 = math.log(3.0)


def ctx_t(logits_t):
    n = logits_t.shape[0]
    zeros = torch.zeros(n, logits_t.shape[1], dtype=logits_t.dtype)
    return StepContext(f_s=zeros, f_t=zeros, logits_s=zeros, logits_t=logits_t, y_s=torch.zeros(n, dtype=torch.long))


def h(*p):
    return -sum(q * math.log(q) for q in p if q > 0)


def test_short_names():
    assert LOSSES["ent"] is LOSSES["entropy"] is EntropyMinimization
    assert LOSSES["im"] is InformationMaximization and LOSSES["bnm"] is BatchNuclearNorm
    assert LOSSES["mcc"] is MinimumClassConfusion
    assert build_loss({"name": "im", "diversity": 0.5}).diversity == 0.5


def test_entropy_hand_value():
    logits = torch.tensor([[0.0, 0.0], [L3, 0.0]], dtype=torch.float64)  # p = (1/2, 1/2), (3/4, 1/4)
    expected = 0.5 * (math.log(2) + h(0.75, 0.25))
    assert float(EntropyMinimization()(ctx_t(logits))) == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(entropy_from_logits(logits),
                               torch.tensor([math.log(2), h(0.75, 0.25)], dtype=torch.float64))


def test_information_maximization_hand_value_and_logs():
    logits = torch.tensor([[0.0, 0.0], [L3, 0.0]], dtype=torch.float64)
    loss = InformationMaximization(diversity=0.5)
    value = float(loss(ctx_t(logits)))
    ent, div = 0.5 * (math.log(2) + h(0.75, 0.25)), h(0.625, 0.375)  # p_bar = (5/8, 3/8)
    assert value == pytest.approx(ent - 0.5 * div, abs=1e-12)
    assert float(loss.last_logs["ent"]) == pytest.approx(ent) and float(loss.last_logs["div"]) == pytest.approx(div)
    # confident and balanced predictions reach the minimum -diversity * log C
    sharp = torch.tensor([[30.0, 0.0, 0.0], [0.0, 30.0, 0.0], [0.0, 0.0, 30.0]], dtype=torch.float64)
    assert float(InformationMaximization()(ctx_t(sharp))) == pytest.approx(-math.log(3), abs=1e-9)
    with pytest.raises(ValueError, match="diversity"):
        InformationMaximization(diversity=-1)


def test_entropy_and_im_gradcheck():
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: EntropyMinimization()(ctx_t(x)), (z,))
    assert torch.autograd.gradcheck(lambda x: InformationMaximization(diversity=0.7)(ctx_t(x)), (z,))


def test_bnm_hand_value_and_validator_shares_it():
    logits = torch.tensor([[L3, 0.0], [0.0, L3]], dtype=torch.float64)  # P = [[.75, .25], [.25, .75]]: sigma 1, 0.5
    assert float(BatchNuclearNorm()(ctx_t(logits))) == pytest.approx(-0.75, abs=1e-12)
    assert validator_bnm is batch_nuclear_norm  # one home for the computation
    probs = torch.randn(7, 3).softmax(-1)
    naive = torch.linalg.matrix_norm(probs.double(), ord="nuc") / 7
    assert float(unsupervised_scores(probs)["bnm"]) == pytest.approx(float(naive), rel=1e-5)
    assert batch_nuclear_norm(probs.double()).dtype == torch.float64


def test_bnm_gradcheck_and_direction():
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: BatchNuclearNorm()(ctx_t(x)), (z,))
    # one gradient step on the loss makes the predictions more confident and more diverse (larger nuclear norm)
    z0 = torch.randn(6, 4, dtype=torch.float64) * 0.1
    z1 = z0.clone().requires_grad_(True)
    BatchNuclearNorm()(ctx_t(z1)).backward()
    after = batch_nuclear_norm((z0 - 5.0 * z1.grad).softmax(-1))
    assert float(after) > float(batch_nuclear_norm(z0.softmax(-1)))


def naive_mcc(logits, temperature):
    """MCC written out entry by entry in float64 (Jin et al. 2020, Eq. 1-6)."""
    n, c = logits.shape
    p = [[0.0] * c for _ in range(n)]
    for i in range(n):
        e = [math.exp(float(logits[i, k]) / temperature) for k in range(c)]
        p[i] = [v / sum(e) for v in e]
    ent = [h(*p[i]) for i in range(n)]
    w = [1 + math.exp(-e) for e in ent]
    w = [n * v / sum(w) for v in w]
    corr = [[sum(p[i][j] * w[i] * p[i][k] for i in range(n)) for k in range(c)] for j in range(c)]
    norm = [[corr[j][k] / sum(corr[j]) for k in range(c)] for j in range(c)]
    return sum(norm[j][k] for j in range(c) for k in range(c) if j != k) / c


def test_mcc_matches_naive_float64():
    torch.manual_seed(0)
    logits = torch.randn(9, 4, dtype=torch.float64) * 3
    for temperature in (1.0, 2.5):
        value = MinimumClassConfusion(temperature=temperature)(ctx_t(logits))
        assert float(value) == pytest.approx(naive_mcc(logits, temperature), abs=1e-12)


def test_mcc_hand_values_and_weights():
    loss = MinimumClassConfusion()
    # uniform predictions: every row of C~ is uniform, confusion (C - 1) / C whatever the weights
    assert float(loss(ctx_t(torch.zeros(4, 5, dtype=torch.float64)))) == pytest.approx(0.8, abs=1e-12)
    # each sample confidently in its own class: no confusion
    sharp = torch.eye(3, dtype=torch.float64) * 200
    assert float(loss(ctx_t(sharp))) == pytest.approx(0.0, abs=1e-12)
    # weights sum to n, the confident sample weighs more
    probs = torch.tensor([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    w = loss.sample_weights(probs)
    assert float(w.sum()) == pytest.approx(2.0) and float(w[0]) > float(w[1])
    e = [1 + math.exp(-h(0.98, 0.01, 0.01)), 1 + math.exp(-math.log(3))]
    assert float(w[0]) == pytest.approx(2 * e[0] / sum(e), abs=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        MinimumClassConfusion(temperature=0)


def test_mcc_gradcheck_with_fixed_weights():
    # the sample weights are detached (as in the paper's code), so gradcheck holds them fixed
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss = MinimumClassConfusion(temperature=2.5)
    w = loss.sample_weights((z / 2.5).softmax(-1))
    assert torch.autograd.gradcheck(lambda x: class_confusion((x / 2.5).softmax(-1), w), (z,))
    # forward(ctx) is that function with those weights: same value and same gradient
    z2 = z.detach().clone().requires_grad_(True)
    loss(ctx_t(z2)).backward()
    z3 = z.detach().clone().requires_grad_(True)
    class_confusion((z3 / 2.5).softmax(-1), w).backward()
    torch.testing.assert_close(z2.grad, z3.grad)


@pytest.mark.parametrize("cls", [EntropyMinimization, InformationMaximization, BatchNuclearNorm,
                                 MinimumClassConfusion])
def test_target_terms_need_a_target_and_upcast_half(cls):
    zeros = torch.zeros(2, 3)
    no_target = StepContext(f_s=zeros, f_t=None, logits_s=zeros, logits_t=None, y_s=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="target batch"):
        cls()(no_target)
    half = torch.randn(4, 3).to(torch.bfloat16)
    out = cls()(ctx_t(half))
    assert out.dtype == torch.float32 and torch.isfinite(out)
