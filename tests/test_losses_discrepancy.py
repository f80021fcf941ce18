"""MK-MMD, JMMD and CORAL: naive float64 references, no bias, hand values, gradcheck, bf16, 2-process gather."""

import itertools
import math
import os
import socket

import pytest
import torch

from da.losses import CORAL, JMMD, MKMMD, MMD, StepContext
from da.losses.discrepancy import gather_features, pairwise_sq_dists

MULTS = (0.125, 0.25, 0.5, 1.0, 2.0)


def ctx(f_s, f_t, logits_s=None, logits_t=None):
    return StepContext(f_s=f_s, f_t=f_t, logits_s=logits_s if logits_s is not None else f_s,
                       logits_t=logits_t if logits_t is not None else f_t,
                       y_s=torch.zeros(f_s.shape[0], dtype=torch.long))


# --- naive references: python loops over pairs, float64 -------------------------------------------------
def sqd(a, b):
    return float(((a - b) ** 2).sum())


def naive_base(points, stat="mean"):
    vals = [sqd(points[i], points[j]) for i in range(len(points)) for j in range(len(points)) if i != j]
    return sum(vals) / len(vals) if stat == "mean" else float(torch.tensor(vals, dtype=torch.float64).median())


def naive_kernel(base, mults, combination="mean"):
    def k(a, b):
        vals = [math.exp(-sqd(a, b) / (2 * m * base)) for m in mults]
        return sum(vals) / len(vals) if combination == "mean" else sum(vals)
    return k


def naive_unbiased(s, t, k):
    n, m = len(s), len(t)
    ss = sum(k(s[i], s[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    tt = sum(k(t[i], t[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    st = sum(k(s[i], t[j]) for i in range(n) for j in range(m)) / (n * m)
    return ss + tt - 2 * st


def naive_linear(s, t, k):
    pairs = min(len(s), len(t)) // 2
    return sum(k(s[2 * i], s[2 * i + 1]) + k(t[2 * i], t[2 * i + 1]) - k(s[2 * i], t[2 * i + 1])
               - k(s[2 * i + 1], t[2 * i]) for i in range(pairs)) / pairs


# --- MK-MMD ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m", [(5, 7), (6, 6), (2, 9)])
@pytest.mark.parametrize("stat", ["mean", "median"])
def test_mkmmd_unbiased_matches_naive_reference(n, m, stat):
    g = torch.Generator().manual_seed(n * 10 + m)
    s = torch.randn(n, 3, generator=g, dtype=torch.float64)
    t = torch.randn(m, 3, generator=g, dtype=torch.float64) + 0.5
    value = MKMMD(bandwidth=stat)(ctx(s, t))
    base = naive_base(list(torch.cat([s, t])), stat)
    ref = naive_unbiased(list(s), list(t), naive_kernel(base, MULTS))
    assert value.item() == pytest.approx(ref, abs=1e-10)
    # float32 inputs agree with the float64 reference to 1e-6
    assert MKMMD(bandwidth=stat)(ctx(s.float(), t.float())).item() == pytest.approx(ref, abs=1e-6)


def test_mkmmd_linear_matches_naive_reference():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(9, 4, generator=g, dtype=torch.float64)
    t = torch.randn(6, 4, generator=g, dtype=torch.float64) * 2
    value = MKMMD(estimator="linear")(ctx(s, t))
    pairs = [(s[0::2][:3], s[1::2][:3]), (t[0::2][:3], t[1::2][:3]), (s[0::2][:3], t[1::2][:3]),
             (s[1::2][:3], t[0::2][:3])]
    vals = [sqd(a[i], b[i]) for a, b in pairs for i in range(3)]
    base = sum(vals) / len(vals)
    assert value.item() == pytest.approx(naive_linear(list(s), list(t), naive_kernel(base, MULTS)), abs=1e-10)


def test_sum_combination_is_u_times_mean_and_single_kernel_mmd():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    assert MKMMD(kernel_combination="sum")(ctx(s, t)).item() == pytest.approx(
        5 * MKMMD()(ctx(s, t)).item(), rel=1e-12)
    base = naive_base(list(torch.cat([s, t])))
    assert MMD()(ctx(s, t)).item() == pytest.approx(naive_unbiased(list(s), list(t), naive_kernel(base, (1.0,))),
                                                    abs=1e-12)
    assert MKMMD(bandwidth=0.7)(ctx(s, t)).item() == pytest.approx(
        naive_unbiased(list(s), list(t), naive_kernel(0.7, MULTS)), abs=1e-12)


@pytest.mark.parametrize("estimator", ["unbiased", "linear"])
def test_mmd_is_centred_on_zero_for_same_distribution(estimator):
    """Mean over 2000 draws of two batches from N(0, I): within 3 standard errors of 0. The biased V-statistic
    (diagonal included) on the same draws is clearly positive, so this test can tell the two apart."""
    g = torch.Generator().manual_seed(0)
    loss = MKMMD(estimator=estimator)
    vals, biased = [], []
    for _ in range(2000):
        s, t = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
        vals.append(loss(ctx(s, t)).item())
        if estimator == "unbiased":
            z = torch.cat([s, t])
            d2 = pairwise_sq_dists(z)
            off = d2[~torch.eye(16, dtype=torch.bool)].mean()
            k = torch.stack([torch.exp(-d2 / (2 * mu * off)) for mu in MULTS]).mean(0)
            biased.append((k[:8, :8].mean() + k[8:, 8:].mean() - 2 * k[:8, 8:].mean()).item())
    v = torch.tensor(vals)
    se = v.std() / math.sqrt(len(vals))
    assert abs(v.mean().item()) < 3 * se.item()
    if biased:
        b = torch.tensor(biased)
        assert b.mean().item() > 10 * (b.std() / math.sqrt(len(biased))).item()


def test_mmd_detects_a_shift():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(32, 2, generator=g)
    t = torch.randn(32, 2, generator=g) + 2.0
    assert MKMMD()(ctx(s, t)).item() > 0.1


@pytest.mark.parametrize("estimator", ["unbiased", "linear"])
def test_mkmmd_gradcheck_fixed_bandwidth(estimator):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loss = MKMMD(bandwidth=1.5, estimator=estimator)
    assert torch.autograd.gradcheck(lambda a, b: loss(ctx(a, b)), (s, t))


def test_bandwidth_is_detached():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 2, generator=g, dtype=torch.float64)
    MKMMD()(ctx(s, t)).backward()
    base = naive_base(list(torch.cat([s, t]).detach()))
    s2 = s.detach().clone().requires_grad_(True)
    MKMMD(bandwidth=base)(ctx(s2, t)).backward()
    torch.testing.assert_close(s.grad, s2.grad)


def test_bf16_features_computed_in_float32():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(16, 8, generator=g).bfloat16()
    t = (torch.randn(16, 8, generator=g) + 0.3).bfloat16()
    value = MKMMD()(ctx(s, t))
    assert value.dtype == torch.float32
    ref = MKMMD()(ctx(s.double(), t.double()))
    assert value.item() == pytest.approx(ref.item(), abs=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert MKMMD()(ctx(s.float(), t.float())).dtype == torch.float32


def test_too_few_samples_and_bad_options():
    with pytest.raises(ValueError, match="at least 2"):
        MKMMD()(ctx(torch.zeros(1, 2), torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="did you mean 'median'"):
        MKMMD(bandwidth="medain")
    with pytest.raises(ValueError, match="did you mean 'linear'"):
        MKMMD(estimator="liner")
    with pytest.raises(ValueError, match="target batch"):
        MKMMD()(StepContext(f_s=torch.zeros(2, 2), f_t=None, logits_s=torch.zeros(2, 2), logits_t=None,
                            y_s=torch.zeros(2, dtype=torch.long)))


# --- JMMD ------------------------------------------------------------------------------------------------
def test_jmmd_matches_naive_product_kernel():
    g = torch.Generator().manual_seed(7)
    f_s, f_t = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    l_s, l_t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    value = JMMD()(ctx(f_s, f_t, l_s, l_t))
    p_s, p_t = l_s.softmax(1), l_t.softmax(1)
    base = naive_base(list(torch.cat([f_s, f_t])))
    kf = naive_kernel(base, MULTS)

    def k(a, b):  # a, b: (feature, probability)
        return kf(a[0], b[0]) * math.exp(-sqd(a[1], b[1]) / (2 * 0.92 ** 2))

    ref = naive_unbiased(list(zip(f_s, p_s)), list(zip(f_t, p_t)), k)
    assert value.item() == pytest.approx(ref, abs=1e-10)


def test_jmmd_gradcheck_reaches_features_and_logits():
    g = torch.Generator().manual_seed(8)
    args = [torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
            for n, d in [(4, 3), (4, 3), (4, 2), (4, 2)]]
    for estimator in ("unbiased", "linear"):
        loss = JMMD(bandwidth=2.0, estimator=estimator)
        assert torch.autograd.gradcheck(lambda a, b, c, d: loss(ctx(a, b, c, d)), tuple(args), fast_mode=True)


# --- CORAL -----------------------------------------------------------------------------------------------
def test_coral_hand_value():
    f_s = torch.tensor([[0.0, 0.0], [2.0, 0.0]])   # C_s = diag(2, 0)
    f_t = torch.tensor([[0.0, 0.0], [0.0, 2.0]])   # C_t = diag(0, 2)
    assert CORAL()(ctx(f_s, f_t)).item() == pytest.approx(8 / 16)   # ||diag(2, -2)||_F^2 / (4 * 2^2)
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    c = lambda x: sum(torch.outer(r - x.mean(0), r - x.mean(0)) for r in x) / (len(x) - 1)  # noqa: E731
    assert CORAL()(ctx(s, t)).item() == pytest.approx(((c(s) - c(t)) ** 2).sum().item() / 36, abs=1e-12)


def test_coral_gradcheck():
    g = torch.Generator().manual_seed(10)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: CORAL()(ctx(a, b)), (s, t))


# --- DDP gather --------------------------------------------------------------------------------------------
def test_gather_is_identity_when_not_distributed():
    x = torch.randn(3, 2)
    assert gather_features(x) is x


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, s, t, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half_s, half_t = s.shape[0] // world, t.shape[0] // world
        loc_s = s[rank * half_s:(rank + 1) * half_s].clone().requires_grad_(True)
        loc_t = t[rank * half_t:(rank + 1) * half_t].clone().requires_grad_(True)
        value = MKMMD(gather=True)(ctx(loc_s, loc_t))
        value.backward()
        torch.save({"value": value.detach(), "gs": loc_s.grad, "gt": loc_t.grad}, os.path.join(out, f"{rank}.pt"))
        dist.barrier()  # neither rank tears the group down while the other is still in a collective (gloo aborts)
    finally:
        dist.destroy_process_group()


def test_gather_two_process_gloo_matches_global_batch(tmp_path):
    import torch.multiprocessing as mp
    g = torch.Generator().manual_seed(11)
    s = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.randn(8, 3, generator=g, dtype=torch.float64) + 0.5
    mp.spawn(_worker, args=(2, _free_port(), s, t, str(tmp_path)), nprocs=2, join=True)
    s_ref, t_ref = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    ref = MKMMD()(ctx(s_ref, t_ref))
    ref.backward()
    for rank in range(2):
        res = torch.load(tmp_path / f"{rank}.pt")
        assert res["value"].item() == pytest.approx(ref.item(), abs=1e-12)
        # every rank holds the global loss; the gather's backward sums the world's copies (2x), DDP's gradient
        # average then divides by 2: the global-batch gradient
        torch.testing.assert_close(res["gs"], 2 * s_ref.grad[rank * 4:(rank + 1) * 4])
        torch.testing.assert_close(res["gt"], 2 * t_ref.grad[rank * 4:(rank + 1) * 4])
