"""`NegativeTransferMonitor`: a Lightning callback that watches, every k steps, whether each source still helps.

Signals (logged under ``monitor/`` and kept in ``history``), all computed on the current training batch
``{"source": (x_s, y_s, d_s), "target": (x_t, _)}`` with one fresh forward of ``features_and_logits``:

- ``cos_src{d}``: cosine between the gradient of source ``d``'s cross-entropy (samples with ``d_s == d``) and
  the gradient of the *target objective*, on the shared parameters (the backbone's trainable parameters; the
  head's when the backbone is frozen). Descent on a source whose gradient has a negative cosine with the target
  objective's increases the target objective to first order (gradient similarity as a helpfulness signal: Du et
  al., arXiv 1812.02224; conflict when cos < 0: PCGrad, Yu et al., NeurIPS 2020). The target objective is

  * ``"labelled"``: cross-entropy of the labelled target samples in the batch (``d_s == num_sources``;
    semi-supervised / few-shot tasks). This is the reliable signal.
  * ``"entropy"``: mean prediction entropy ``H(p_t) = -sum_c p_tc log p_tc`` of the unlabelled target batch
    (Grandvalet & Bengio, NeurIPS 2004), an unsupervised proxy: a source agrees with it when its gradient also
    sharpens the model's current target predictions. It can only tell a harmful source from a helpful one when
    the model's target predictions are already driven mostly by the helpful data (e.g. one good source plus a
    minority of harmful ones, or a pretrained start); with two equally weighted sources that disagree on the
    same inputs no unsupervised signal can say which one is right.
  * ``"pseudo_label"``: cross-entropy of target logits against their own arg-max (Lee, ICML-W 2013); same
    caveat, less smooth than entropy.
  * ``"auto"`` (default): ``"labelled"`` when the batch has labelled target samples, else ``"entropy"``.

  ``ema_cos_src{d}`` is its exponential moving average, ``ema <- decay * ema + (1 - decay) * cos``.
- ``target_entropy`` (nats) and ``target_collapse``: the fraction of the target batch predicted as its most
  frequent class (1.0 = collapsed onto one class; about 1/C for balanced predictions).
- ``a_distance``: proxy A-distance ``2 (1 - 2 err)`` (Ben-David et al., NeurIPS 2007), ``err`` the held-out error
  of a logistic source-vs-target probe on detached features from a rolling buffer (fitted on one half, scored on
  the other; clipped to [0, 2]); and ``disc_acc`` when a loss reports a discriminator accuracy.
- any ``last_logs`` entry of a loss term whose key contains ``dist`` or ``mix`` (per-source penalty distances,
  mixture weights), as ``monitor/<loss name>_<key>``.

A source is judged harmful when its EMA cosine stays below ``threshold`` for ``patience`` consecutive checks
after ``warmup_steps`` (default "auto": none with a labelled target objective; 20% of the run with an
unsupervised proxy, whose gradient means little while the target predictions are still near chance -- on the
built-in task a source-only run's entropy cosines hover around 0 in the first 100 steps).
Then the monitor warns (rank zero), records the step of the first alarm, and by ``action``: ``"warn"`` only,
``"stop"`` sets ``trainer.should_stop``, ``"downweight"`` multiplies ``pl_module.source_weights[d]`` (the per-
source CE weight buffer of `TransferModule`) by ``downweight_factor``.

Cost: nothing on other steps; on a check step one forward/backward of the batch per source plus one for the
target objective, and the probe fit. The extra forward does not disturb training: BatchNorm buffers are restored
and the RNG is forked, so a run with ``action="warn"`` follows the same trajectory as a run without the monitor.
Under DDP the cosines and health signals are averaged over ranks before any decision, so all ranks agree.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from da.diagnostics.signals import _batch_len, _cat_inputs, _dot, _entropy, _to_device, proxy_a_distance
from da.errors import unknown_name

ACTIONS = ("warn", "stop", "downweight")
OBJECTIVES = ("auto", "labelled", "entropy", "pseudo_label")


class NegativeTransferMonitor(pl.Callback):
    """Online negative-transfer detection; see the module docstring for the signals and formulas.

    Args:
        every_n_steps: check every k optimizer steps (``trainer.global_step % k == 0``).
        threshold: a source is suspicious while its EMA cosine is below this (0: gradients conflict).
        patience: consecutive suspicious checks before the alarm.
        ema_decay: decay of the cosine's moving average, in [0, 1).
        action: ``"warn"``, ``"stop"`` or ``"downweight"``.
        downweight_factor: multiplier applied to ``pl_module.source_weights[d]`` on alarm (0 removes the source).
        target_objective: ``"auto"``, ``"labelled"``, ``"entropy"`` or ``"pseudo_label"``.
        probe: fit the proxy-A-distance probe. probe_buffer: features kept per domain (rolling).
        probe_min_samples: samples per domain before the first probe fit.
        source_names: names of the sources for messages (default ``src0``, ``src1``, ...).
        run_dir: where ``result.json`` lives (default ``trainer.default_root_dir``).
        labelled_pool: for the ``labelled`` objective, use the whole labelled target set of the datamodule
            (``trainer.datamodule.target_labeled``, in-memory, at most ``labelled_pool_max`` samples, fixed
            seeded subset) instead of the few labelled samples that happen to be in the batch. Few-shot tasks mix
            k labels per class into a stream dominated by source samples, so a batch holds about one labelled target
            sample or none (then ``auto`` fell back to the entropy proxy): the cosine was noise. Measured on the
            blobs benchmark (docs/negative_transfer_benchmark.md). Falls back to the batch when unavailable.
        warmup_steps: checks before this step are logged and feed the EMA but raise no alarm; ``None``: 0 with a
            labelled target objective, else 20% of ``trainer.estimated_stepping_batches``.

    Logged every check under ``monitor/``; pick ``every_n_steps`` as a multiple of ``trainer.log_every_n_steps``
    so that each check reaches the logger on time (the full per-check history is in ``summary["history"]``).
    """

    def __init__(self, every_n_steps: int = 50, threshold: float = 0.0, patience: int = 3,
                 ema_decay: float = 0.8, action: str = "warn", downweight_factor: float = 0.0,
                 target_objective: str = "auto", probe: bool = True, probe_buffer: int = 1024,
                 probe_min_samples: int = 64, source_names: Optional[List[str]] = None,
                 run_dir: Optional[str] = None, warmup_steps: Optional[int] = None,
                 labelled_pool: bool = True, labelled_pool_max: int = 512):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if action not in ACTIONS:
            raise unknown_name("monitor action", action, ACTIONS)
        if target_objective not in OBJECTIVES:
            raise unknown_name("target objective", target_objective, OBJECTIVES)
        if not 0.0 <= downweight_factor <= 1.0:
            raise ValueError(f"downweight_factor must be in [0, 1], got {downweight_factor}")
        self.every_n_steps = int(every_n_steps)
        self.threshold = float(threshold)
        self.patience = int(patience)
        self.ema_decay = float(ema_decay)
        self.action = action
        self.downweight_factor = float(downweight_factor)
        self.target_objective = target_objective
        self.probe = probe
        self.probe_buffer = int(probe_buffer)
        self.probe_min_samples = int(probe_min_samples)
        self.source_names = list(source_names) if source_names else None
        self.run_dir = run_dir
        self.warmup_steps = warmup_steps
        self.labelled_pool = bool(labelled_pool)
        self.labelled_pool_max = int(labelled_pool_max)
        self._pool: Optional[tuple] = None
        self.ema: Dict[int, float] = {}
        self.below: Dict[int, int] = {}
        self.alarms: List[Dict[str, Any]] = []
        self.history: List[Dict[str, Any]] = []
        self.summary: Dict[str, Any] = {}
        self.n_checks = 0
        self._last_step = -1
        self._buf_s: Optional[torch.Tensor] = None
        self._buf_t: Optional[torch.Tensor] = None
        self._notes: List[str] = []
        self.objective_used: Optional[str] = None

    # ------------------------------------------------------------------ signals
    def _name(self, d: int) -> str:
        if self.source_names and d < len(self.source_names):
            return self.source_names[d]
        return f"src{d}"

    def _shared_params(self, module: torch.nn.Module) -> List[torch.nn.Parameter]:
        params = [p for p in module.backbone.parameters() if p.requires_grad]
        if params:
            return params
        self._note("backbone has no trainable parameters: gradient cosines use the bottleneck and classifier")
        head = list(getattr(module, "bottleneck", torch.nn.Identity()).parameters())
        return [p for p in head + list(module.classifier.parameters()) if p.requires_grad]

    def _note(self, msg: str) -> None:
        if msg not in self._notes:
            self._notes.append(msg)
            rank_zero_warn(f"NegativeTransferMonitor: {msg}")

    @torch.no_grad()
    def _snapshot_buffers(self, module: torch.nn.Module) -> List[tuple]:
        mods = [getattr(module, n, None) for n in ("backbone", "bottleneck", "classifier")]
        return [(b, b.detach().clone()) for m in mods if m is not None for b in m.buffers()]

    def compute_signals(self, pl_module: torch.nn.Module, batch: Dict[str, Any],
                        step: int = 0) -> Dict[str, float]:
        """All signals for one batch (no state update, no logging): cosines per source present in the batch,
        target entropy and collapse, loss-reported distances / mixture weights / discriminator accuracy; also
        feeds the probe buffer."""
        src = batch["source"]
        x_s, y_s = src[0], src[1]
        n_src = int(getattr(pl_module, "num_sources", 1))
        d_s = src[2] if len(src) > 2 and src[2] is not None else torch.zeros_like(y_s)
        x_t = batch["target"][0]
        n_s = _batch_len(x_s)
        params = self._shared_params(pl_module)
        device = y_s.device
        saved = self._snapshot_buffers(pl_module)
        devices = [device] if device.type == "cuda" else []
        out: Dict[str, float] = {}
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                f, logits = pl_module.features_and_logits(_cat_inputs(x_s, x_t))
                logits_s, logits_t = logits[:n_s].float(), logits[n_s:].float()
                labelled = d_s == n_src
                pool = self._pool if self.target_objective in ("auto", "labelled") else None
                objective = self.target_objective
                if objective == "auto":
                    objective = "labelled" if (pool is not None or bool(labelled.any())) else "entropy"
                if objective == "labelled" and pool is not None:
                    logits_p = pl_module.features_and_logits(pool[0])[1].float()
                    target_loss = F.cross_entropy(logits_p, pool[1])
                elif objective == "labelled":
                    if not bool(labelled.any()):
                        raise ValueError("target_objective='labelled' but the batch has no labelled target "
                                         f"samples (d_s == num_sources == {n_src}); use 'auto' or 'entropy'")
                    target_loss = F.cross_entropy(logits_s[labelled], y_s[labelled])
                elif objective == "entropy":
                    target_loss = _entropy(logits_t).mean()
                else:
                    target_loss = F.cross_entropy(logits_t, logits_t.argmax(-1).detach())
                self.objective_used = objective
                g_t = torch.autograd.grad(target_loss, params, retain_graph=True, allow_unused=True)
                g_t = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_t)]
                norm_t = _dot(g_t, g_t).sqrt()
                for d in range(n_src):
                    mask = d_s == d
                    if not bool(mask.any()):
                        continue
                    loss_d = F.cross_entropy(logits_s[mask], y_s[mask])
                    g_d = torch.autograd.grad(loss_d, params, retain_graph=True, allow_unused=True)
                    g_d = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_d)]
                    denom = _dot(g_d, g_d).sqrt() * norm_t
                    if float(denom) > 0:
                        out[f"cos_src{d}"] = float(_dot(g_d, g_t) / denom)
        finally:
            with torch.no_grad():
                for buf, val in saved:
                    buf.copy_(val)
        probs = logits_t.detach().softmax(-1)
        out["target_entropy"] = float(_entropy(logits_t.detach()).mean())
        counts = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1])
        out["target_collapse"] = float(counts.max()) / max(int(probs.shape[0]), 1)
        for loss in getattr(pl_module, "losses", []) or []:
            for key, val in getattr(loss, "last_logs", {}).items():
                v = float(val.detach()) if torch.is_tensor(val) else float(val)
                if "dist" in key or "mix" in key:
                    out[f"{getattr(loss, 'name', type(loss).__name__)}_{key}"] = v
                elif key == "disc_acc":
                    out["disc_acc"] = v
        if self.probe:
            fs = f[:n_s][d_s < n_src].detach().float().cpu()
            ft = f[n_s:].detach().float().cpu()
            self._buf_s = fs if self._buf_s is None else torch.cat([self._buf_s, fs])[-self.probe_buffer:]
            self._buf_t = ft if self._buf_t is None else torch.cat([self._buf_t, ft])[-self.probe_buffer:]
            if min(len(self._buf_s), len(self._buf_t)) >= self.probe_min_samples:
                out.update(proxy_a_distance(self._buf_s, self._buf_t, seed=step))
        return out

    # ------------------------------------------------------------------ decisions
    def update(self, signals: Dict[str, float], step: int, judge: bool = True) -> List[int]:
        """Fold one check's cosines into the EMAs and patience counters (only when ``judge``: after warm-up);
        returns the sources newly judged harmful at this step (and records their alarms)."""
        self.n_checks += 1
        new = []
        alarmed = {a["source"] for a in self.alarms}
        for key, cos in list(signals.items()):
            if not key.startswith("cos_src") or not np.isfinite(cos):
                continue
            d = int(key[len("cos_src"):])
            prev = self.ema.get(d)
            self.ema[d] = cos if prev is None else self.ema_decay * prev + (1 - self.ema_decay) * cos
            self.below[d] = self.below.get(d, 0) + 1 if (judge and self.ema[d] < self.threshold) else 0
            signals[f"ema_cos_src{d}"] = self.ema[d]
            if self.below[d] >= self.patience and d not in alarmed:
                self.alarms.append({"source": d, "name": self._name(d), "step": int(step),
                                    "ema_cos": float(self.ema[d])})
                new.append(d)
        row = {"step": int(step)}
        row.update(signals)
        self.history.append(row)
        return new

    def _act(self, trainer: "pl.Trainer", pl_module: torch.nn.Module, d: int, step: int) -> None:
        ema = self.ema[d]
        action = self.action
        weights = getattr(pl_module, "source_weights", None)
        if action == "downweight" and not torch.is_tensor(weights):
            self._note("action='downweight' needs a float tensor buffer pl_module.source_weights (one weight per "
                       "source); the module has none, so the monitor only warns")
            action = "warn"
        msg = (f"NegativeTransferMonitor: source {self._name(d)} (index {d}) looks harmful at step {step}: "
               f"EMA cosine between its gradient and the target objective ({self.objective_used}) is "
               f"{ema:.3f} < {self.threshold} for {self.patience} checks; action: {action}")
        if action == "downweight":
            with torch.no_grad():
                weights[d] = weights[d] * self.downweight_factor
            msg += f" (source_weights[{d}] *= {self.downweight_factor})"
        elif action == "stop":
            trainer.should_stop = True
            msg += " (training stops)"
        self.alarms[-1]["action"] = action
        rank_zero_warn(msg)

    # ------------------------------------------------------------------ Lightning hooks
    def _warmup(self, trainer: "pl.Trainer") -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        if self.objective_used == "labelled":
            return 0
        total = getattr(trainer, "estimated_stepping_batches", float("inf"))
        return int(0.2 * total) if np.isfinite(total) else 0

    def _find_pool(self, trainer: "pl.Trainer") -> Optional[tuple]:
        dm = getattr(trainer, "datamodule", None)
        lab = getattr(dm, "target_labeled", None) if dm is not None else None
        if not self.labelled_pool or lab is None or getattr(lab, "x", None) is None:
            return None
        if getattr(dm, "supervision", "source+target") == "source":
            return None  # labels exist for evaluation only; the recipe does not use them
        x, y = lab.x, lab.y
        if len(y) > self.labelled_pool_max:
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:self.labelled_pool_max]
            x, y = x[idx.to(y.device)], y[idx.to(y.device)]
        return x, y

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        pool = self._find_pool(trainer)
        self._pool = None if pool is None else (_to_device(pool[0], pl_module.device), pool[1].to(pl_module.device))
        every = getattr(trainer, "log_every_n_steps", 1) or 1
        if trainer.loggers and self.every_n_steps % every:
            self._note(f"every_n_steps={self.every_n_steps} is not a multiple of trainer.log_every_n_steps={every}: "
                       "some checks will not reach the logger on time (result.json keeps them all)")

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step % self.every_n_steps != 0 or step == self._last_step:
            return
        self._last_step = step
        signals = self.compute_signals(pl_module, batch, step)
        if trainer.world_size > 1:  # average over ranks so that every rank takes the same decision
            keys = sorted(signals)
            vec = torch.tensor([signals[k] for k in keys], device=pl_module.device, dtype=torch.float32)
            vec = trainer.strategy.reduce(vec, reduce_op="mean")
            signals = dict(zip(keys, vec.tolist()))
        for d in self.update(signals, step, judge=step >= self._warmup(trainer)):
            self._act(trainer, pl_module, d, step)
        # the check's own global step goes in too: Lightning logs step metrics under a step counter that can
        # differ by one, and re-logs a callback's last values on later steps until they are logged again
        logs = {f"monitor/{k}": float(v) for k, v in self.history[-1].items()}
        for d in range(int(getattr(pl_module, "num_sources", 1))):
            logs[f"monitor/alarm_src{d}"] = float(any(a["source"] == d for a in self.alarms))
        pl_module.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)

    def build_summary(self) -> Dict[str, Any]:
        """The evidence: final EMA cosines per source, alarms with steps, last health and separability values."""
        last: Dict[str, float] = {}
        for row in self.history:
            last.update({k: v for k, v in row.items() if k != "step"})
        return {
            "every_n_steps": self.every_n_steps, "threshold": self.threshold, "patience": self.patience,
            "ema_decay": self.ema_decay, "action": self.action,
            "target_objective": self.objective_used or self.target_objective,
            "n_checks": self.n_checks,
            "final_ema_cos": {self._name(d): v for d, v in sorted(self.ema.items())},
            "alarms": list(self.alarms),
            "first_alarm_step": {a["name"]: a["step"] for a in self.alarms},
            "harmful_sources": [a["name"] for a in self.alarms],
            "target_entropy": last.get("target_entropy"), "target_collapse": last.get("target_collapse"),
            "a_distance": last.get("a_distance"), "disc_acc": last.get("disc_acc"),
            "notes": list(self._notes),
            "history": list(self.history),
        }

    def merge_into_record(self, record: Dict[str, Any]) -> Dict[str, Any]:
        """Put the summary under ``record["diagnostics"]["NegativeTransferMonitor"]`` (the key the CLI's record
        writer uses for every callback with a ``summary``); returns the record."""
        record["diagnostics"] = dict(record.get("diagnostics") or {})
        record["diagnostics"][type(self).__name__] = self.summary or self.build_summary()
        return record

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.summary = self.build_summary()
        run_dir = self.run_dir or getattr(trainer, "default_root_dir", None)
        if not trainer.is_global_zero or not run_dir:
            return
        from da.runs.record import raw_record, write_record

        record = raw_record(run_dir)
        if record is not None:
            write_record(run_dir, self.merge_into_record(record))

    def state_dict(self) -> Dict[str, Any]:
        return {"ema": dict(self.ema), "below": dict(self.below), "alarms": list(self.alarms),
                "history": list(self.history), "n_checks": self.n_checks, "last_step": self._last_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.ema = {int(k): float(v) for k, v in state_dict["ema"].items()}
        self.below = {int(k): int(v) for k, v in state_dict["below"].items()}
        self.alarms = list(state_dict["alarms"])
        self.history = list(state_dict["history"])
        self.n_checks = int(state_dict["n_checks"])
        self._last_step = int(state_dict["last_step"])
