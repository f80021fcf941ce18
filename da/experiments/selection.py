"""Model selection over stored records (DomainBed-style, Gulrajani & Lopez-Paz, ICLR 2021).

Within a (task, method) group, runs may differ in hyperparameters (a sweep's ``params`` minus the seed).
For each seed, the run whose *validator* is best is chosen and that run's metric is reported; the table
then averages the chosen runs over seeds. With ``over="checkpoints"`` the candidates are the rows of
every run's ``history`` (one per validation), so the choice is also over training time.

Validators (key in the record, direction, whether it reads target labels):

- ``source-val``: max ``val/source_acc``; no target label (the default; a strong baseline).
- ``target-oracle``: max ``val/target_acc``; uses target labels, an upper bound, marked as ORACLE.
- ``entropy``: min ``val/target_entropy``, the mean prediction entropy on target data
  (``-1/n sum_i sum_c p_ic log p_ic``; Morerio et al., ICLR 2018, use it for selection).
- ``snd``: max ``val/target_snd``, soft neighbourhood density (Saito et al., ICCV 2021).
- ``bnm``: max ``val/target_bnm``, nuclear norm of the target prediction matrix (Cui et al., CVPR 2020).

Ties are broken by the candidates' order (run directory, then history step), so the result is a pure,
deterministic function of the records. A candidate without the validator ranks last; when several
candidates compete and none has it, :func:`select_runs` raises and names the missing key.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from da.errors import unknown_name


@dataclass(frozen=True)
class Validator:
    """A model-selection rule: maximise or minimise ``key``."""

    name: str
    key: str
    mode: str  # "max" | "min"
    uses_target_labels: bool
    description: str

    def better(self, a: float, b: float) -> bool:
        """Is validator value ``a`` strictly better than ``b`` (NaN is worse than anything)?"""
        if _nan(a):
            return False
        if _nan(b):
            return True
        return a > b if self.mode == "max" else a < b


VALIDATORS: dict[str, Validator] = {
    v.name: v
    for v in (
        Validator("source-val", "val/source_acc", "max", False, "source validation accuracy"),
        Validator("target-oracle", "val/target_acc", "max", True, "target accuracy (ORACLE: uses target labels)"),
        Validator("entropy", "val/target_entropy", "min", False, "target prediction entropy (lower is better)"),
        Validator("snd", "val/target_snd", "max", False, "soft neighbourhood density, Saito et al. 2021"),
        Validator("bnm", "val/target_bnm", "max", False, "batch nuclear norm of target predictions, Cui et al. 2020"),
    )
}
SELECT_OVER = ("runs", "checkpoints")


def get_validator(name: str) -> Validator:
    """The validator called ``name``; a clear error listing the known ones otherwise."""
    if name not in VALIDATORS:
        raise unknown_name("model-selection rule", name, VALIDATORS)
    return VALIDATORS[name]


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass
class Selected:
    """The chosen candidate of one (task, method, seed): its metric and validator values, the record,
    the history step (checkpoint selection) and how many candidates competed."""

    task: str
    method: str
    seed: Any
    value: float
    validator_value: float
    record: dict
    step: Optional[int] = None
    candidates: int = 1

    @property
    def params(self) -> dict:
        return {k: v for k, v in ((self.record.get("sweep") or {}).get("params") or {}).items() if k != "seed"}


@dataclass
class SelectionResult:
    """Chosen runs plus what was left out: ``n_failed`` failed runs and ``n_unfinished`` still running."""

    picks: list[Selected] = field(default_factory=list)
    n_failed: int = 0
    n_unfinished: int = 0

    @property
    def max_candidates(self) -> int:
        return max((p.candidates for p in self.picks), default=0)


def _candidates(records: Sequence[dict], metric: str, validator: Validator, over: str):
    """(validator value, metric value, step, record) for every candidate of one group, in a stable order."""
    out = []
    for r in sorted(records, key=lambda r: (str(r.get("run_dir")), str(r.get("config_hash")))):
        if over == "runs":
            m = r.get("metrics") or {}
            out.append((_num(m.get(validator.key)), _num(m.get(metric)), None, r))
            continue
        rows = r.get("history") or []
        if not rows:  # a run without history competes with its final metrics
            m = r.get("metrics") or {}
            out.append((_num(m.get(validator.key)), _num(m.get(metric)), None, r))
        for row in rows:
            out.append((_num(row.get(validator.key)), _num(row.get(metric)), row.get("step"), r))
    return out


def select_runs(
    records: Sequence[dict],
    validator: str = "source-val",
    metric: str = "test/target_acc",
    over: str = "runs",
) -> SelectionResult:
    """For every (task, method, seed), choose the candidate with the best validator and report its metric.

    Only ``"finished"`` records compete; failed and still-running ones are counted, not used. With
    ``over="checkpoints"`` the metric must be logged per validation (a ``history`` key such as
    ``val/target_acc``).
    """
    v = get_validator(validator)
    if over not in SELECT_OVER:
        raise unknown_name("selection granularity (--select-over)", over, SELECT_OVER)
    result = SelectionResult()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        status = r.get("status")
        if status == "failed":
            result.n_failed += 1
        elif status != "finished":
            result.n_unfinished += 1
        else:
            groups[(r["task"], r["method"], r.get("seed"))].append(r)
    if over == "checkpoints":
        logged = {k for rs in groups.values() for r in rs for row in (r.get("history") or []) for k in row}
        if logged and metric not in logged:
            raise ValueError(
                f"metric '{metric}' is not logged per validation, so it cannot be read at a selected "
                f"checkpoint; with --select-over checkpoints use one of: {', '.join(sorted(logged - {'step', 'epoch'}))}"
            )
    for (task, method, seed), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        cands = _candidates(rs, metric, v, over)
        if len(cands) > 1 and all(_nan(c[0]) for c in cands):
            raise ValueError(
                f"cannot choose among {len(cands)} candidates of task '{task}', method '{method}', seed {seed} "
                f"with rule '{v.name}': none has '{v.key}'; pick another rule (known: {', '.join(VALIDATORS)}) "
                f"or log that metric"
            )
        best = cands[0]
        for c in cands[1:]:
            if v.better(c[0], best[0]):
                best = c
        result.picks.append(
            Selected(task, method, seed, best[1], best[0], best[3], step=best[2], candidates=len(cands))
        )
    return result
