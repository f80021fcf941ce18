"""Negative-transfer gap: point value by hand, interval on synthetic data with a known gap, loaders."""

import json

import numpy as np
import pytest
import torch

from da.diagnostics.ntg import NTGResult, load_outcome, negative_transfer_gap, verdict_of


def _arm(rng, p, n_seeds, seed_sd=0.0):
    """Per-seed 0/1 correctness; ``p`` is a per-sample probability of being right, shifted per seed."""
    return [(rng.random(len(p)) < np.clip(p + rng.normal(0, seed_sd), 0, 1)).astype(float)
            for _ in range(n_seeds)]


def test_gap_is_error_difference_by_hand():
    transfer = [np.array([1, 0, 1, 1]), np.array([1, 1, 0, 1])]  # errors 1/4, 1/4
    baseline = [np.array([1, 1, 1, 1]), np.array([1, 1, 1, 0])]  # errors 0, 1/4
    r = negative_transfer_gap(transfer, baseline, n_boot=200)
    assert r.gap == pytest.approx(0.25 - 0.125)
    assert r.err_transfer == pytest.approx(0.25) and r.err_baseline == pytest.approx(0.125)
    assert r.n_seeds_each == (2, 2) and r.n_samples == (4, 4) and r.bootstrap == "paired"
    # every replicate is a mean of resampled 0/1 errors: the interval lies inside [-1, 1] and around the gap
    assert -1 <= r.ci_low <= r.gap <= r.ci_high <= 1


def test_known_gap_detected_and_covered():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.4, 0.98, size=3000)
    baseline = _arm(rng, p, 5)
    transfer = _arm(rng, p - 0.1, 5)
    r = negative_transfer_gap(transfer, baseline, n_boot=1000, seed=1)
    assert r.verdict == "negative transfer"
    assert r.ci_low > 0 and r.ci_low < 0.1 < r.ci_high
    assert r.gap == pytest.approx(0.1, abs=0.01)
    flipped = negative_transfer_gap(baseline, transfer, n_boot=1000, seed=1)
    assert flipped.verdict == "positive transfer"
    assert flipped.gap == pytest.approx(-r.gap)


def test_no_gap_is_inconclusive():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.4, 0.98, size=1000)
    r = negative_transfer_gap(_arm(rng, p, 4), _arm(rng, p, 4), n_boot=1000)
    assert r.verdict == "inconclusive" and r.ci_low < 0 < r.ci_high


def test_interval_coverage_near_nominal():
    """Over 80 synthetic experiments with true gap 0.05 (per-sample difficulty shared, seed noise), the 90%
    interval covers it at least ~90% of the time, and is at most ~1.6x wider than the ideal normal interval
    (the crossed seeds x samples bootstrap is conservative, see the module docstring)."""
    rng = np.random.default_rng(7)
    covered, widths = 0, []
    for _ in range(80):
        p = rng.uniform(0.3, 0.95, size=400)  # a fresh test set drawn from the population each time
        base = _arm(rng, p, 4, seed_sd=0.01)
        tran = _arm(rng, p - 0.05, 4, seed_sd=0.01)
        r = negative_transfer_gap(tran, base, n_boot=400, ci=0.9, seed=int(rng.integers(1 << 30)))
        covered += r.ci_low <= 0.05 <= r.ci_high
        widths.append(r.ci_high - r.ci_low)
    assert covered / 80 >= 0.85
    # ideal: each run's error has variance mean p(1-p)/n + seed_sd^2; 4 seeds per arm, two arms
    q = np.linspace(0.3, 0.95, 1001)
    var_run = np.mean(0.5 * (q * (1 - q) + (q - 0.05) * (1.05 - q))) / 400 + 0.01 ** 2
    ideal = 2 * 1.6449 * np.sqrt(2 * var_run / 4)
    assert ideal < np.mean(widths) < 1.6 * ideal


def test_paired_is_tighter_than_unpaired_on_a_shared_test_set():
    rng = np.random.default_rng(1)
    p = rng.choice([0.02, 0.98], size=2000)  # samples are either easy or hard for both models
    base, tran = _arm(rng, p, 3), _arm(rng, p - 0.01, 3)
    pr = negative_transfer_gap(tran, base, n_boot=1000)
    un = negative_transfer_gap(tran, base, n_boot=1000, paired=False)
    assert pr.bootstrap == "paired" and un.bootstrap == "unpaired"
    assert (pr.ci_high - pr.ci_low) < 0.7 * (un.ci_high - un.ci_low)
    assert pr.gap == un.gap


def test_accuracy_only_fallback_resamples_seeds():
    r = negative_transfer_gap([0.70, 0.72, 0.74], [0.80, 0.82, 0.84], n_boot=2000)
    assert r.bootstrap == "seeds only" and r.n_samples is None
    assert r.gap == pytest.approx(0.10)
    # extremes of any seed resample: (1-0.70)-(1-0.84) = 0.14 and (1-0.74)-(1-0.80) = 0.06
    assert 0.06 - 1e-12 <= r.ci_low < 0.10 < r.ci_high <= 0.14 + 1e-12
    assert r.verdict == "negative transfer"
    assert any("seeds only" in n for n in r.notes)
    one = negative_transfer_gap([0.5], [0.9])
    assert one.verdict == "inconclusive" and one.bootstrap == "none"


def test_mixed_inputs_fall_back_to_accuracies():
    r = negative_transfer_gap([np.array([1, 0, 0, 1]), np.array([1, 1, 0, 1])], [0.9, 0.8], n_boot=100)
    assert r.bootstrap == "seeds only"
    assert r.gap == pytest.approx((1 - 0.625) - (1 - 0.85))


def test_load_outcome_from_run_dirs(tmp_path):
    with_preds = tmp_path / "a"
    with_preds.mkdir()
    torch.save({"target_test": {"y": torch.tensor([0, 1, 2, 1]), "pred": torch.tensor([0, 1, 1, 1])}},
               with_preds / "predictions.pt")
    (with_preds / "result.json").write_text(json.dumps({"metrics": {"test/target_acc": 0.75}}))
    o = load_outcome(with_preds)
    np.testing.assert_array_equal(o.correct, [1, 1, 0, 1])
    np.testing.assert_array_equal(o.y, [0, 1, 2, 1])
    acc_only = tmp_path / "b"
    acc_only.mkdir()
    (acc_only / "result.json").write_text(json.dumps({"metrics": {"test/target_acc": 0.5}, "run_dir": "x"}))
    assert load_outcome(acc_only / "result.json").accuracy == 0.5
    empty = tmp_path / "c"
    empty.mkdir()
    (empty / "result.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ValueError, match="no predictions.pt"):
        load_outcome(empty)
    # records with different test labels are not paired
    other = tmp_path / "d"
    other.mkdir()
    torch.save({"target_test": {"y": torch.tensor([0, 1, 2, 0]), "pred": torch.tensor([0, 1, 2, 0])}},
               other / "predictions.pt")
    r = negative_transfer_gap([with_preds], [other], n_boot=50)
    assert r.bootstrap == "unpaired" and r.gap == pytest.approx(0.25)
    with pytest.raises(ValueError, match="paired=True"):
        negative_transfer_gap([with_preds], [other], paired=True)


def test_errors_and_json():
    with pytest.raises(ValueError, match="did you mean 'source-only'"):
        negative_transfer_gap([0.5], [0.5], comparison="source-onyl")
    with pytest.raises(ValueError, match="1-d 0/1"):
        negative_transfer_gap([np.array([0.5, 1.0])], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        negative_transfer_gap([75.0], [0.5])
    r = negative_transfer_gap([0.6, 0.7], [0.8, 0.9], comparison="source-only", task="jda/mnist->jda/usps")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["comparison"] == "source-only baseline" and d["n_seeds_each"] == [2, 2]
    assert "NTG = +20.00 pp" in r.summary() and r.summary().startswith("jda/mnist->jda/usps")
    assert verdict_of(0.01, 0.2) == "negative transfer" and verdict_of(-0.2, -0.01) == "positive transfer"
    assert verdict_of(-0.1, 0.1) == "inconclusive"
    assert isinstance(r, NTGResult)


def test_bootstrap_on_large_arms_matches_the_plain_gap():
    # 10 seeds x 10,000 samples per arm (vectorised: no per-replicate Python loop); timing is not asserted here
    rng = np.random.default_rng(0)
    arms = [[(rng.random(10000) < p).astype(float) for _ in range(10)] for p in (0.8, 0.75)]
    res = negative_transfer_gap(arms[0], arms[1], n_boot=2000)
    plain = (1 - np.mean(arms[0])) - (1 - np.mean(arms[1]))
    assert res.gap == pytest.approx(plain, abs=1e-12)
    assert res.ci_low < res.gap < res.ci_high and res.ci_high < 0  # 5 points better: positive transfer
    assert res.verdict == "positive transfer"
