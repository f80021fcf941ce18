"""Controlled negative-transfer benchmark: the settings grid and the statistics that judge the detectors.

The benchmark (``experiments/negative_transfer/``) trains, for every setting and seed, the transfer recipe
(source(s) + ``k`` labelled target samples per class) with :class:`NegativeTransferMonitor`, the target-only
baseline (the same ``k`` samples, no source) and a source-only model whose target features / predictions feed the
transferability scores. This module holds the pure logic, so that it is unit-tested apart from training:

- :func:`expand_settings`: a grid spec (YAML mapping) -> one :class:`Setting` per named setting, each with its
  sources, per-source label noise and which sources are *built* to be harmful.
- :func:`auroc`: area under the ROC curve of a score that should be higher for harmful sources,
  ``AUROC = P(s_harmful > s_helpful) + 0.5 P(s_harmful = s_helpful)`` (Mann-Whitney U / (n_pos n_neg);
  Hanley & McNeil, Radiology 1982).
- :func:`time_to_alarm`: the first step at which the monitor's rule fires (EMA cosine below ``threshold`` for
  ``patience`` consecutive checks after ``warmup``) replayed from a run's per-check history, so that one set of
  runs can be judged under several thresholds.
- :func:`monitor_scores`: harmfulness scores of one source from one run's monitor history: ``-final EMA cosine``,
  ``-mean cosine`` over checks, ``-min EMA cosine``, and the alarm score ``1 - t_alarm / T`` (0 without alarm).
- :func:`grouped_kendall_tau`: Kendall's tau-b between a transferability score and the measured transfer gain
  within each group (seed), then mean and standard deviation over groups; and pooled over all points.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from da.diagnostics.transferability import kendall_tau


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: ``sources`` (domain specs) with ``noise[d]`` label noise on source ``d``;
    ``harmful[d]`` says whether source ``d`` was built to hurt (ground truth for multi-source AUROCs; single-source
    truth comes from the measured NTG); ``action`` is the monitor's action (``warn`` or ``downweight``)."""

    name: str
    group: str
    sources: tuple
    noise: tuple
    harmful: tuple
    action: str = "warn"
    #: ``erm`` (the plain transfer) or a loss-term method config name (``configs/method/<method>.yaml``) trained on
    #: top of it with the unlabelled target
    method: str = "erm"

    @property
    def num_sources(self) -> int:
        return len(self.sources)


def _as_list(v: Any, n: int, what: str, name: str) -> list:
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError(f"setting {name!r}: {what} has {len(v)} values for {n} sources; give one per source")
        return list(v)
    return [v] * n


def expand_settings(spec: Mapping[str, Any]) -> List[Setting]:
    """Expand a grid spec into settings.

    ``spec`` has ``groups``: a mapping group -> list of entries; each entry has ``sources`` (a spec or a list),
    ``noise`` (a float or one per source, default 0), optional ``harmful`` (bools per source; default: noise >
    ``harmful_noise`` of the spec, 0.5 unless given), optional ``name`` (default ``<group>/<noise%>``) and optional
    ``actions`` (list, default ``["warn"]``; each action makes its own setting, named ``<name>+<action>`` when it is
    not ``warn``) and optional ``methods`` (list of method config names, default ``["erm"]``; each makes its own
    setting with the method's loss terms added, named ``<name>+<method>`` when it is not ``erm``). Names must be unique.
    """
    groups = spec.get("groups")
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("the benchmark spec needs a non-empty 'groups' mapping: group name -> list of settings")
    cut = float(spec.get("harmful_noise", 0.5))
    out: List[Setting] = []
    for group, entries in groups.items():
        for e in entries:
            sources = [e["sources"]] if isinstance(e["sources"], str) else list(e["sources"])
            if not sources:
                raise ValueError(f"group {group!r}: a setting has no sources")
            base = e.get("name") or f"{group}/{'+'.join(f'{round(100 * float(p))}%' for p in _as_list(e.get('noise', 0.0), len(sources), 'noise', group))}"
            noise = [float(p) for p in _as_list(e.get("noise", 0.0), len(sources), "noise", base)]
            if any(not 0.0 <= p <= 1.0 for p in noise):
                raise ValueError(f"setting {base!r}: label noise must lie in [0, 1], got {noise}")
            harmful = [bool(h) for h in _as_list(e["harmful"], len(sources), "harmful", base)] \
                if "harmful" in e else [p > cut for p in noise]
            for action in e.get("actions", ["warn"]):
                if action not in ("warn", "downweight", "stop"):
                    raise ValueError(f"setting {base!r}: unknown monitor action {action!r}; use warn, downweight "
                                     f"or stop")
                name = base if action == "warn" else f"{base}+{action}"
                for method in e.get("methods", ["erm"]):
                    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", method):
                        raise ValueError(f"setting {base!r}: a method is the name of a config in configs/method/, "
                                         f"got {method!r}")
                    out.append(Setting(name if method == "erm" else f"{name}+{method}", str(group), tuple(sources),
                                       tuple(noise), tuple(harmful), action, method))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"setting names must be unique; repeated: {dup}. Give those entries a 'name'")
    return out


def auroc(scores: Sequence[float], labels: Sequence[Any]) -> float:
    """AUROC of ``scores`` (higher = more likely positive) against 0/1 ``labels`` (1 = harmful):
    ``(1 / (n_pos n_neg)) * sum_{i pos, j neg} [1(s_i > s_j) + 0.5 * 1(s_i = s_j)]``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; replace missing scores (e.g. no alarm) by a finite value first")
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs both classes; got {len(pos)} harmful and {len(neg)} helpful")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def time_to_alarm(history: Sequence[Mapping[str, Any]], source: int, threshold: float = 0.0, patience: int = 3,
                  warmup: int = 0, ema_decay: Optional[float] = None) -> Optional[int]:
    """First step at which source ``source`` would be flagged: the EMA cosine stays below ``threshold`` for
    ``patience`` consecutive checks with ``step >= warmup``. With ``ema_decay`` the EMA is recomputed from the raw
    ``cos_src{d}`` (``ema <- decay * ema + (1 - decay) * cos``, first value = first cosine); else the recorded
    ``ema_cos_src{d}`` is used. Returns None when the rule never fires."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    key_cos, key_ema = f"cos_src{source}", f"ema_cos_src{source}"
    ema: Optional[float] = None
    below = 0
    for row in history:
        if ema_decay is None:
            if key_ema not in row:
                continue
            ema = float(row[key_ema])
        else:
            if key_cos not in row or not math.isfinite(float(row[key_cos])):
                continue
            c = float(row[key_cos])
            ema = c if ema is None else ema_decay * ema + (1 - ema_decay) * c
        below = below + 1 if (int(row["step"]) >= warmup and ema < threshold) else 0
        if below >= patience:
            return int(row["step"])
    return None


def monitor_scores(history: Sequence[Mapping[str, Any]], source: int, total_steps: int,
                   alarm_step: Optional[int] = None) -> Dict[str, float]:
    """Harmfulness scores (higher = more harmful) of source ``source`` from one run's monitor history:
    ``neg_final_ema`` = -last EMA cosine, ``neg_mean_cos`` = -mean raw cosine, ``neg_min_ema`` = -min EMA cosine
    (the most negative excursion), ``alarm`` = ``1 - t_alarm / total_steps`` (earlier alarm = higher; 0 without
    alarm). ``alarm_step`` defaults to :func:`time_to_alarm` with the recorded EMA (threshold 0, patience 3)."""
    cos = [float(r[f"cos_src{source}"]) for r in history if f"cos_src{source}" in r]
    ema = [float(r[f"ema_cos_src{source}"]) for r in history if f"ema_cos_src{source}" in r]
    if not cos or not ema:
        raise ValueError(f"the history has no cos_src{source}/ema_cos_src{source}: was source {source} in the "
                         f"batches at the check steps?")
    if alarm_step is None:
        alarm_step = time_to_alarm(history, source)
    return {"neg_final_ema": -ema[-1], "neg_mean_cos": -float(np.mean(cos)), "neg_min_ema": -min(ema),
            "alarm": 0.0 if alarm_step is None else 1.0 - alarm_step / float(total_steps)}


@dataclass
class TauSummary:
    """Kendall tau of one score vs measured gain: per group (``per_group``), their mean and std, and pooled."""

    per_group: Dict[Any, float] = field(default_factory=dict)
    mean: float = float("nan")
    std: float = float("nan")
    pooled: float = float("nan")
    n_points: int = 0


def grouped_kendall_tau(scores: Sequence[float], gains: Sequence[float], groups: Sequence[Any]) -> TauSummary:
    """Kendall's tau-b of ``scores`` vs ``gains`` within each group (e.g. one seed across settings; groups with
    fewer than 2 points or a constant side are skipped), then mean / std over groups, plus the pooled tau."""
    s, g, grp = np.asarray(scores, float), np.asarray(gains, float), list(groups)
    if not (len(s) == len(g) == len(grp)):
        raise ValueError(f"scores, gains and groups differ in length: {len(s)}, {len(g)}, {len(grp)}")
    out = TauSummary(n_points=len(s))
    for key in dict.fromkeys(grp):
        idx = [i for i, k in enumerate(grp) if k == key]
        if len(idx) < 2 or np.ptp(s[idx]) == 0 or np.ptp(g[idx]) == 0:
            continue
        out.per_group[key] = kendall_tau(s[idx], g[idx])
    if out.per_group:
        vals = np.array(list(out.per_group.values()))
        out.mean, out.std = float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    if len(s) >= 2 and np.ptp(s) > 0 and np.ptp(g) > 0:
        out.pooled = kendall_tau(s, g)
    return out
