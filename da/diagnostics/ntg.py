"""Negative-transfer gap with a bootstrap confidence interval.

Wang, Dai, Póczos & Carbonell, "Characterizing and Avoiding Negative Transfer", CVPR 2019, define

    NTG = err_T(A(S, T)) - err_T(A(∅, T))

the target error of an algorithm trained with the source minus the target error of the *same* algorithm
trained without it (on whatever labelled target data the task has). ``NTG > 0`` is negative transfer. When a
task has no labelled target data there is no target-only baseline and the question can only be asked against
the source-only model; :class:`NTGResult` records which comparison was made.

Inputs are runs, one per seed, for each arm: per-sample correctness on the target test set (a 0/1 array),
a run directory / ``result.json`` record (read through :func:`load_outcome`), or a bare accuracy (float).

Bootstrap (two levels, vectorised). Each replicate ``b``:

1. resamples the seeds of each arm with replacement (seeds are independent training runs: this carries the
   training randomness, often the larger part of the variance);
2. resamples the test samples with replacement. When both arms were evaluated on the *same* test set (same
   length and, when known, the same labels) the **same** resampled index set is used for every run of both
   arms (a paired bootstrap): a hard test sample is hard for both models, so pairing cancels the
   between-sample difficulty that does not bear on the gap and gives a tighter, still valid interval.
   When the test sets differ, each arm gets its own sample resampling (unpaired).

The replicate's gap is ``mean_seeds(err*_transfer) - mean_seeds(err*_baseline)`` and the interval is the
percentile interval of the replicates. Seeds and test samples form a *crossed* design (every seed is scored on
every sample), for which resampling both factors independently is Owen's "pigeonhole" bootstrap (Owen, Ann.
Appl. Stat. 2007; McCullagh, Bernoulli 2000): no exact bootstrap exists for crossed designs and this one is
conservative (the seed-by-sample noise is counted by both levels), so the interval's coverage is at least
nominal and its width at most about sqrt(2) times the ideal one; a reported "negative transfer" is safe. With accuracies only (no ``predictions.pt``), only seeds are resampled
and the result says so in ``notes``; with a single seed per arm and no per-sample data there is no
variance estimate at all and the verdict is "inconclusive".

Verdict: ``"negative transfer"`` when ``ci_low > 0``, ``"positive transfer"`` when ``ci_high < 0``,
else ``"inconclusive"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from da.errors import unknown_name

COMPARISONS = {
    "target-only": "target-only baseline",
    "target-only baseline": "target-only baseline",
    "source-only": "source-only baseline",
    "source-only baseline": "source-only baseline",
}
ACC_KEY = "test/target_acc"


@dataclass
class RunOutcome:
    """What NTG needs from one run: per-sample correctness (preferred) or the accuracy alone."""

    correct: Optional[np.ndarray] = None  # (n,) float 0/1
    accuracy: Optional[float] = None
    y: Optional[np.ndarray] = None  # target test labels, to check that two runs share a test set
    source: str = ""  # where it came from (run dir), for messages
    record: Dict[str, Any] = field(default_factory=dict)

    @property
    def acc(self) -> float:
        return float(self.correct.mean()) if self.correct is not None else float(self.accuracy)


@dataclass
class NTGResult:
    """The negative-transfer gap of one task, with its bootstrap interval and verdict.

    ``gap``, ``ci_low``, ``ci_high``, ``err_transfer`` and ``err_baseline`` are error rates in [0, 1]
    (``gap`` in [-1, 1]); ``n_seeds_each`` is ``(n_transfer_seeds, n_baseline_seeds)``.
    """

    gap: float
    ci_low: float
    ci_high: float
    n_seeds_each: Tuple[int, int]
    verdict: str
    comparison: str
    err_transfer: float
    err_baseline: float
    ci: float = 0.95
    n_boot: int = 2000
    bootstrap: str = "paired"  # "paired" | "unpaired" | "seeds only" | "none"
    n_samples: Optional[Tuple[int, int]] = None
    task: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["n_seeds_each"] = list(self.n_seeds_each)
        d["n_samples"] = list(self.n_samples) if self.n_samples is not None else None
        return d

    def summary(self) -> str:
        """One human line: verdict, NTG and interval in percentage points."""
        head = f"{self.task}: " if self.task else ""
        return (f"{head}{self.verdict}: NTG = {100 * self.gap:+.2f} pp "
                f"[{100 * self.ci_low:+.2f}, {100 * self.ci_high:+.2f}] ({100 * self.ci:.0f}% CI), "
                f"err transfer {100 * self.err_transfer:.2f}% vs baseline {100 * self.err_baseline:.2f}%, "
                f"seeds {self.n_seeds_each[0]}/{self.n_seeds_each[1]}, vs {self.comparison}, "
                f"bootstrap: {self.bootstrap}")


def verdict_of(ci_low: float, ci_high: float) -> str:
    """``"negative transfer"`` if the interval lies above 0, ``"positive transfer"`` if below, else inconclusive."""
    if ci_low > 0:
        return "negative transfer"
    if ci_high < 0:
        return "positive transfer"
    return "inconclusive"


def load_outcome(run: Union[str, Path, Dict[str, Any]]) -> RunOutcome:
    """Read one run: ``<run_dir>/predictions.pt`` (``{"target_test": {"y", "pred"}}``) when present, else the
    record's ``metrics["test/target_acc"]``. ``run`` is a run directory, a ``result.json`` path or a loaded record
    (whose ``run_dir`` is then searched for ``predictions.pt``)."""
    record: Dict[str, Any] = {}
    run_dir: Optional[Path] = None
    if isinstance(run, dict):
        record = run
        run_dir = Path(record["run_dir"]) if record.get("run_dir") else None
    else:
        p = Path(run)
        if p.is_file():
            run_dir, rec_path = p.parent, p
        else:
            run_dir, rec_path = p, p / "result.json"
        if rec_path.is_file():
            from da.runs.record import raw_record

            if rec_path.name == "result.json":
                record = raw_record(rec_path.parent) or {}
            else:
                record = json.loads(rec_path.read_text())
    preds = run_dir / "predictions.pt" if run_dir is not None else None
    if preds is not None and preds.is_file():
        import torch

        data = torch.load(preds, map_location="cpu", weights_only=True)["target_test"]
        y = np.asarray(data["y"]).astype(np.int64)
        pred = np.asarray(data["pred"]).astype(np.int64)
        if y.shape != pred.shape:
            raise ValueError(f"{preds}: y has shape {y.shape} but pred has {pred.shape}; re-run the test stage")
        return RunOutcome(correct=(y == pred).astype(np.float64), y=y, source=str(run_dir), record=record)
    acc = record.get("metrics", {}).get(ACC_KEY)
    if acc is None:
        where = run_dir if run_dir is not None else "the given record"
        raise ValueError(f"{where}: no predictions.pt and no metrics['{ACC_KEY}'] in result.json; "
                         f"run the test stage (da fit runs it at the end) before computing NTG")
    return RunOutcome(accuracy=float(acc), source=str(run_dir or ""), record=record)


def _as_outcome(run: Any) -> RunOutcome:
    if isinstance(run, RunOutcome):
        return run
    if isinstance(run, (str, Path, dict)):
        return load_outcome(run)
    if isinstance(run, (float, int, np.floating)) and not isinstance(run, bool):
        if not 0.0 <= float(run) <= 1.0:
            raise ValueError(f"an accuracy must lie in [0, 1], got {run}; pass accuracies as fractions")
        return RunOutcome(accuracy=float(run))
    arr = np.asarray(run.detach().cpu() if hasattr(run, "detach") else run, dtype=np.float64)
    if arr.ndim == 0:
        return _as_outcome(float(arr))
    if arr.ndim != 1 or not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"per-sample correctness must be a 1-d 0/1 array, got shape {arr.shape} "
                         f"with values {np.unique(arr)[:5]}")
    return RunOutcome(correct=arr)


def _resampled_errors(err: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-seed error under each sample resampling: ``err`` (S, n), ``counts`` (B, n) -> (B, S)."""
    return counts @ err.T / err.shape[1]


def _sample_counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """``b`` rows of multinomial(n, 1/n) counts: how often each test sample is drawn in a resample."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def negative_transfer_gap(transfer_runs: Sequence[Any], baseline_runs: Sequence[Any], n_boot: int = 2000,
                          ci: float = 0.95, seed: int = 0, comparison: str = "target-only baseline",
                          paired: Optional[bool] = None, task: Optional[str] = None,
                          chunk: int = 256) -> NTGResult:
    """NTG = err_T(transfer) - err_T(baseline) (Wang et al., CVPR 2019) with a two-level bootstrap interval.

    Args:
        transfer_runs, baseline_runs: one entry per seed: a 0/1 per-sample correctness array on the target test
            set, a run directory / record (see :func:`load_outcome`), a :class:`RunOutcome`, or an accuracy.
        n_boot: bootstrap replicates. ci: interval mass (0.95 -> 2.5 and 97.5 percentiles). seed: bootstrap RNG.
        comparison: ``"target-only baseline"`` (the same recipe without the source) or ``"source-only baseline"``
            (when the task has no labelled target data); the caller knows which one the baseline runs are.
        paired: share the sample resampling between arms; default: when all runs have per-sample correctness
            of the same length (and the same labels where known).
        task: a label carried into the result.
        chunk: replicates computed per vectorised block (bounds memory at ``chunk * n`` floats).
    """
    if comparison not in COMPARISONS:
        raise unknown_name("comparison", comparison, COMPARISONS)
    comparison = COMPARISONS[comparison]
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}; e.g. ci=0.95")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    tr = [_as_outcome(r) for r in transfer_runs]
    bl = [_as_outcome(r) for r in baseline_runs]
    if not tr or not bl:
        raise ValueError(f"need at least one run in each arm, got {len(tr)} transfer and {len(bl)} baseline runs")
    notes: List[str] = []
    per_sample = all(o.correct is not None for o in tr + bl)
    if not per_sample and any(o.correct is not None for o in tr + bl):
        notes.append("some runs lack predictions.pt: fell back to per-run accuracies for all runs")
    if per_sample:
        n_t = {o.correct.shape[0] for o in tr}
        n_b = {o.correct.shape[0] for o in bl}
        if len(n_t) > 1 or len(n_b) > 1:
            raise ValueError(f"runs of one arm were tested on different test sets (sizes {sorted(n_t)} and "
                             f"{sorted(n_b)}); compare runs of the same task and split")
        same = n_t == n_b
        ys = [o.y for o in tr + bl if o.y is not None]
        if same and ys:
            same = all(np.array_equal(ys[0], y) for y in ys)
        if paired is None:
            paired = same
        elif paired and not same:
            raise ValueError("paired=True but the two arms were tested on different test sets "
                             f"(sizes {sorted(n_t)} vs {sorted(n_b)} or different labels); use paired=False")

    rng = np.random.default_rng(seed)
    if per_sample:
        err_t = 1.0 - np.stack([o.correct for o in tr])  # (S_t, n_t)
        err_b = 1.0 - np.stack([o.correct for o in bl])
        gap = float(err_t.mean() - err_b.mean())
        reps = []
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            c_t = _sample_counts(rng, err_t.shape[1], b)
            c_b = c_t if paired else _sample_counts(rng, err_b.shape[1], b)
            e_t = _resampled_errors(err_t, c_t)  # (b, S_t)
            e_b = _resampled_errors(err_b, c_b)
            s_t = rng.integers(0, e_t.shape[1], size=e_t.shape)
            s_b = rng.integers(0, e_b.shape[1], size=e_b.shape)
            reps.append(np.take_along_axis(e_t, s_t, 1).mean(1) - np.take_along_axis(e_b, s_b, 1).mean(1))
        reps = np.concatenate(reps)
        mode = "paired" if paired else "unpaired"
        n_samples = (err_t.shape[1], err_b.shape[1])
    else:
        acc_t = np.array([o.acc for o in tr])
        acc_b = np.array([o.acc for o in bl])
        gap = float(acc_b.mean() - acc_t.mean())
        reps = (acc_b[rng.integers(0, len(acc_b), size=(n_boot, len(acc_b)))].mean(1)
                - acc_t[rng.integers(0, len(acc_t), size=(n_boot, len(acc_t)))].mean(1))
        mode = "seeds only"
        n_samples = None
        notes.append("no per-sample predictions (predictions.pt): the interval resamples seeds only and "
                     "ignores test-set sampling noise")
    alpha = (1.0 - ci) / 2.0
    lo, hi = (float(v) for v in np.quantile(reps, [alpha, 1.0 - alpha]))
    verdict = verdict_of(lo, hi)
    if mode == "seeds only" and (len(tr) < 2 or len(bl) < 2):
        verdict, mode = "inconclusive", "none"
        notes.append(f"only {len(tr)} transfer / {len(bl)} baseline seed(s) and no per-sample predictions: "
                     "no variance estimate, so no verdict; add seeds or save predictions.pt")
    err_tr = 1.0 - float(np.mean([o.acc for o in tr]))
    err_bl = 1.0 - float(np.mean([o.acc for o in bl]))
    return NTGResult(gap=gap, ci_low=lo, ci_high=hi, n_seeds_each=(len(tr), len(bl)), verdict=verdict,
                     comparison=comparison, err_transfer=err_tr, err_baseline=err_bl, ci=ci, n_boot=n_boot,
                     bootstrap=mode, n_samples=n_samples, task=task, notes=notes)
