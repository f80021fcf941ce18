"""Transferability scores against closed forms, hand-computed values and brute force."""

import math

import numpy as np
import pytest
from scipy import optimize, stats

from da.diagnostics.transferability import (h_score, kendall_tau, leep, logme, logme_evidence, nce,
                                            rank_sources)


def _problem(n, d, seed, signal=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    f = rng.normal(size=(n, d)) + signal * np.eye(3, d)[y] * 2
    return f, y


def test_logme_evidence_is_the_gaussian_marginal_likelihood():
    f, y = _problem(10, 4, 0)
    t = (y == 1).astype(float)
    alpha, beta = 0.7, 2.5
    cov = f @ f.T / alpha + np.eye(10) / beta
    ref = stats.multivariate_normal(mean=np.zeros(10), cov=cov).logpdf(t)
    assert logme_evidence(f, t, alpha, beta) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("n,d", [(12, 3), (8, 20)])
def test_logme_matches_brute_force_maximisation(n, d):
    """Fixed-point LogME equals the max over (alpha, beta) of the evidence, found by a grid + Nelder-Mead."""
    f, y = _problem(n, d, 1)
    score, per_class = logme(f, y, max_iter=1000, tol=1e-10, return_per_class=True)
    grid = np.linspace(-6, 6, 41)
    brute = []
    for k in range(3):
        t = (y == k).astype(float)
        ev = lambda p: -logme_evidence(f, t, math.exp(p[0]), math.exp(p[1]))  # noqa: E731
        best = min(((a, b) for a in grid for b in grid), key=ev)
        res = optimize.minimize(ev, best, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12})
        brute.append(-res.fun / n)
        # the fixed point is never beaten by any grid point
        assert per_class[k] >= -ev(best) / n - 1e-9
    np.testing.assert_allclose(per_class, brute, atol=1e-6)
    assert score == pytest.approx(np.mean(brute), abs=1e-6)


def test_logme_prefers_informative_features():
    good, y = _problem(300, 8, 2, signal=1.5)
    noise = np.random.default_rng(3).normal(size=(300, 8))
    assert logme(good, y) > logme(noise, y) + 0.05


def test_leep_closed_forms():
    y = np.array([0, 1, 2, 1])
    assert leep(np.eye(3)[y], y) == pytest.approx(0.0, abs=1e-12)
    # a permutation of the source classes does not matter: P(y|z) learns the mapping
    assert leep(np.eye(3)[(y + 1) % 3], y) == pytest.approx(0.0, abs=1e-12)
    # by hand: joint [[.4,.1],[.2,.3]], P(z) = [.6,.4], P(y|z) = [[2/3,1/4],[1/3,3/4]]; both EEPs are 7/12
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert leep(theta, [0, 1]) == pytest.approx(math.log(7 / 12))
    # uninformative source (uniform predictions) on balanced labels: log(1/C)
    assert leep(np.full((4, 5), 0.2), [0, 1, 0, 1]) == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError, match="softmax"):
        leep(np.array([[2.0, -1.0]]), [0])


def test_nce_closed_forms():
    y = np.array([0, 1, 2, 2, 1])
    assert nce(np.array([5, 3, 9, 9, 3]), y) == pytest.approx(0.0, abs=1e-12)  # bijective relabelling
    # z=0 -> y uniform on {0,1} (H = log 2), z=1 -> y=1: H(Y|Z) = 0.5 log 2
    assert nce([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(-0.5 * math.log(2))
    # constant predictions: -H(Y)
    assert nce([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(-math.log(4))


def test_h_score_hand_example():
    # class 0 at {0, 2} (mean 1), class 1 at {4, 6} (mean 5): var f = 5, var E[f|y] = 4, H = 4/5
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = [0, 0, 1, 1]
    assert h_score(f, y) == pytest.approx(0.8)
    assert h_score(f, y, shrinkage=0.0) == pytest.approx(0.8)
    # a duplicated column makes cov(f) singular; the pseudo-inverse gives the same information
    assert h_score(np.hstack([f, f]), y) == pytest.approx(0.8)
    # full shrinkage replaces cov(f) by (tr/d) I: H = tr cov(g) / (tr cov(f) / d)
    f2 = np.array([[0.0, 1.0], [2.0, 0.0], [4.0, 1.0], [6.0, 3.0]])
    cov_f = np.cov(f2.T, bias=True)
    g = np.array([[1.0, 0.5], [1.0, 0.5], [5.0, 2.0], [5.0, 2.0]])
    cov_g = np.cov(g.T, bias=True)
    assert h_score(f2, y, shrinkage=1.0) == pytest.approx(np.trace(cov_g) / (np.trace(cov_f) / 2))
    assert h_score(f2, y) == pytest.approx(np.trace(np.linalg.inv(cov_f) @ cov_g))
    assert 0 < h_score(f2, y, shrinkage="auto") < 2
    with pytest.raises(ValueError, match="shrinkage"):
        h_score(f2, y, shrinkage=2.0)


def test_kendall_tau_hand_values():
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)  # 5 concordant, 1 discordant pair
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # weighted: a swap among the best candidates costs more than one among the worst
    top_swap = kendall_tau([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], weighted=True)
    bottom_swap = kendall_tau([1, 2, 3, 4, 5], [2, 1, 3, 4, 5], weighted=True)
    assert top_swap < bottom_swap < 1.0
    assert kendall_tau([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) == pytest.approx(0.8)  # 9 of 10 pairs concordant
    with pytest.raises(ValueError, match="equal-length"):
        kendall_tau([1, 2], [1])


def test_rank_sources_orders_and_scores():
    good, y = _problem(200, 6, 4, signal=1.5)
    mid, _ = _problem(200, 6, 4, signal=0.5)
    noise = np.random.default_rng(5).normal(size=(200, 6))
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3  # a confident, correct source model
    r = rank_sources({"noise": (noise, y), "good": (good, y), "mid": (mid, y), "model": (probs, y)},
                     accuracies={"noise": 0.4, "good": 0.9, "mid": 0.7})
    assert r.primary == "logme"
    assert [row["name"] for row in r.rows[:3]] == ["good", "mid", "noise"]
    model_row = next(row for row in r.rows if row["name"] == "model")
    assert "logme" not in model_row and model_row["nce"] == pytest.approx(0.0, abs=1e-12)
    assert r.taus["logme"]["tau"] == pytest.approx(1.0) and r.taus["hscore"]["n"] == 3
    md = r.to_markdown()
    assert md.splitlines()[2].startswith("| 1 | good |") and "Kendall tau (logme" in md
    with pytest.raises(ValueError, match="did you mean 'leep'"):
        rank_sources({"a": (good, y)}, scores=["leap"])
    with pytest.raises(ValueError, match="none of the scores"):
        rank_sources({"a": (good, y)}, scores=["leep"])
