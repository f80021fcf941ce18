"""`TransferModule`: the one LightningModule of `da`.

ERM (source-only), target oracle, few-shot fine-tuning, L2-SP, multi-source anchors, DANN, MMD, CORAL and any
combination are configurations of this class: a backbone, an optional bottleneck, a linear classifier and a list of
:class:`~da.losses.base.AdaptationLoss` terms. One training step::

    f_s, f_t = bottleneck(backbone(x_s)), bottleneck(backbone(x_t))     # one forward on cat(x_s, x_t)
    loss = CE(classifier(f_s), y_s) + sum_i weight_i * schedule_i(p) * term_i(ctx),  p = step / total_steps
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Set

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from da.checkpoints import read_state_dict
from da.errors import UserError, unknown_name
from da.losses.base import AdaptationLoss, StepContext
from da.methods.base import (TrainingMethod, attach_method, check_fit, configure_method_optimizers, eval_domain,
                             method_training_step)
from da.models.backbones import Bottleneck, build_backbone

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("none", "cosine", "step", "dann", "inv")


def _inputs_channels_last(_module: nn.Module, args: tuple):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
    return None


def to_channels_last(backbone: nn.Module) -> nn.Module:
    """Weights and 4-D inputs of ``backbone`` in ``torch.channels_last`` (a forward pre-hook: copies keep it)."""
    backbone.to(memory_format=torch.channels_last)
    backbone.register_forward_pre_hook(_inputs_channels_last)
    return backbone


class TransferModule(pl.LightningModule):
    """Backbone + bottleneck + classifier, trained with cross-entropy plus a list of adaptation losses.

    Args:
        num_classes, input_shape, num_sources: filled in from the data module (linked by the CLI).
        backbone: ``lenet``, ``mlp``, ``linear``, ``hf``, a torchvision name (``resnet18``, ...) or ``pkg.module.Class``.
        backbone_args: keyword arguments of the backbone (e.g. ``{pretrained: true}``, ``{hidden: [256]}``).
        bottleneck_dim: width of a ``Linear-BN-ReLU-Dropout`` layer between backbone and classifier (None: none);
            ``bottleneck_bn`` and ``bottleneck_dropout`` (0: no dropout layer) shape it (TLlib: BN, no dropout).
        losses: adaptation terms, e.g. ``[{class_path: da.losses.DomainAdversarialLoss, init_args: {weight: 1.0}}]``.
        method_name: the name results are grouped under (default: the loss terms' names joined by ``+``, or ``erm``).
        init_from: a checkpoint whose backbone (and head, when the label sets match or ``init_head='always'``) is the
            starting point: parameter transfer from another task. Loaded with ``weights_only=True``.
        init_head: ``auto`` (load the head if its shape matches), ``always``, ``never``.
        freeze_backbone: train only the head (feature extraction).
        freeze_blocks: freeze the first k blocks of the backbone (``backbone.blocks()``).
        optimizer: ``sgd`` (Nesterov when momentum > 0), ``adam`` or ``adamw``; ``lr``, ``weight_decay``, ``momentum``:
            SGD's momentum, or Adam's beta1 (the first-moment decay; 0.9 is both defaults, ADDA's paper uses 0.5).
        fused: torch's fused optimiser kernel (one call for all parameters; the same update to float rounding;
            1.05-1.1x on the CPU digits step) where every parameter is on the CPU or CUDA and the precision is not
            fp16 (GradScaler); False: torch's per-tensor loop.
        backbone_lr_mult: learning-rate multiplier of the backbone (e.g. 0.1 when fine-tuning).
        no_decay_norm_bias: no weight decay on biases and normalisation weights.
        scheduler: ``none``, ``cosine``, ``step`` (x``gamma`` every ``step_size`` fraction of training) or ``dann``
            (``lr / (1 + 10 p)^0.75``, Ganin & Lempitsky 2015, p = progress), or ``inv``, the inverse decay of Caffe
            and TLlib ``lr (1 + inv_gamma i)^-inv_power`` of the optimiser step i, independent of ``max_steps``
            (TLlib: inv_gamma 0.001, inv_power 0.75).
        concat_forward: one backbone forward on ``cat(x_s, x_t)`` (BatchNorm sees both domains, as in TLlib's DANN);
            False runs two forwards.
        label_smoothing: of the cross-entropy.
        channels_last: run the backbone in ``torch.channels_last`` (its weights and every 4-D input): the same
            network, a faster memory layout for convolutions (1.6x on the CPU LeNet step at batch 256, see
            benchmarks/README.md; the usual choice on a GPU with bf16).
        method: a :class:`~da.methods.base.TrainingMethod` that owns its modules, optimisers and update rule (ADDA,
            MCD, FixMatch, SHOT); the module then runs Lightning manual optimisation (see docs/training_methods.md).
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 16, 16), num_sources: int = 1,
                 backbone: str = "lenet", backbone_args: Optional[Dict[str, Any]] = None,
                 bottleneck_dim: Optional[int] = None, bottleneck_dropout: float = 0.5, bottleneck_bn: bool = True,
                 losses: Optional[List[AdaptationLoss]] = None, method_name: Optional[str] = None,
                 init_from: Optional[str] = None, init_head: str = "auto", freeze_backbone: bool = False,
                 freeze_blocks: int = 0, optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, backbone_lr_mult: float = 1.0, no_decay_norm_bias: bool = True,
                 fused: bool = True, scheduler: str = "none", step_size: float = 0.5, gamma: float = 0.1,
                 inv_gamma: float = 0.001, inv_power: float = 0.75, concat_forward: bool = True,
                 label_smoothing: float = 0.0, channels_last: bool = False,
                 method: Optional[TrainingMethod] = None):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", optimizer, tuple(OPTIMIZERS))
        if scheduler not in SCHEDULERS:
            raise unknown_name("scheduler", scheduler, SCHEDULERS)
        if inv_gamma < 0 or inv_power < 0:
            raise ValueError(f"scheduler inv needs inv_gamma >= 0 and inv_power >= 0, got {inv_gamma} and {inv_power}")
        if init_head not in ("auto", "always", "never"):
            raise unknown_name("init_head mode", init_head, ("auto", "always", "never"))
        self.save_hyperparameters(ignore=["losses", "method"])
        self.num_classes = int(num_classes)
        self.num_sources = int(num_sources)
        self.backbone = build_backbone(backbone, input_shape, **(backbone_args or {}))
        if channels_last:
            to_channels_last(self.backbone)
        feat = self.backbone.out_features
        self.bottleneck = Bottleneck(feat, bottleneck_dim, bottleneck_dropout, bottleneck_bn) if bottleneck_dim else \
            nn.Identity()
        self.classifier = nn.Linear(bottleneck_dim or feat, self.num_classes)
        self.losses = nn.ModuleList(losses or [])
        names = [l.name for l in self.losses]
        if len(set(names)) != len(names):
            raise ValueError(f"two loss terms share a name {names}: give each a distinct `name`")
        self.method_name = method_name or (method.name if method is not None else "+".join(names) if names else "erm")
        # per-domain weight of the supervised loss (sources 0..D-1, labelled target D); the negative-transfer monitor
        # may down-weight a harmful source here
        self.register_buffer("source_weights", torch.ones(self.num_sources + 1), persistent=True)
        self._pretrained: Set[str] = set()
        if backbone_args and (backbone_args.get("pretrained") or backbone_args.get("weights_path")) or backbone == "hf":
            self._pretrained |= {f"backbone.{n}" for n, _ in self.backbone.named_parameters()}
        if backbone == "branches":  # each branch was loaded from a source checkpoint; the mixture logits are new
            self._pretrained |= {f"backbone.{n}" for n, _ in self.backbone.named_parameters()
                                 if n.startswith("branches.")}
        if init_from:
            self._load_init(init_from, init_head)
        self._freeze(freeze_backbone, freeze_blocks)
        for loss in self.losses:
            loss.setup(self)
        self.needs_target = any(getattr(l, "needs_target", True) for l in self.losses)
        self.method = attach_method(self, method)  # None, or the method (manual optimisation from here on)
        self.acc = nn.ModuleDict({
            f"{split}_{dom}_{avg}": MulticlassAccuracy(self.num_classes, average=avg)
            for split in ("val", "test") for dom in ("source", "target") for avg in ("micro", "macro")})
        self._val_target_probs: List[torch.Tensor] = []
        self._test_preds: List[torch.Tensor] = []
        self._test_targets: List[torch.Tensor] = []
        self.history: List[Dict[str, float]] = []
        self.predictions: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ model
    def pretrained_parameter_names(self) -> Set[str]:
        """Names of the parameters that come from a starting point (pretrained weights or ``init_from``)."""
        return set(self._pretrained)

    def features_and_logits(self, x: Any):
        f = self.bottleneck(self.backbone(x))
        return f, self.classifier(f)

    def forward(self, x: Any) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    def _load_init(self, path: str, init_head: str) -> None:
        state = read_state_dict(path)
        own = self.state_dict()
        keep_head = init_head != "never"
        skipped: List[str] = []
        new_state = {}
        for k, v in state.items():
            if not (k.startswith("backbone.") or k.startswith("bottleneck.") or k.startswith("classifier.")):
                continue
            is_head = not k.startswith("backbone.")
            if k not in own:
                skipped.append(k)
                continue
            if own[k].shape != v.shape:
                if is_head and init_head != "always":
                    skipped.append(k)
                    continue
                raise UserError(f"init_from {path}: parameter {k} has shape {tuple(v.shape)} in the checkpoint but "
                                f"{tuple(own[k].shape)} here; use the same backbone (and bottleneck_dim)")
            if is_head and not keep_head:
                continue
            new_state[k] = v
        head_ok = all(k in new_state for k in own if k.startswith("classifier."))
        if not head_ok:  # a new head for a new label set: keep all of the head random
            new_state = {k: v for k, v in new_state.items() if not k.startswith("classifier.")}
        missing = [k for k in own if k.startswith("backbone.") and k not in new_state]
        if missing:
            raise UserError(f"init_from {path}: the checkpoint has no weights for {missing[:5]} ...; "
                            f"is it a checkpoint of the same backbone?")
        self.load_state_dict(new_state, strict=False)
        params = {n for n, _ in self.named_parameters()}
        self._pretrained |= {k for k in new_state if k in params}
        self.init_info = {"path": str(path), "loaded": len(new_state), "head_transferred": head_ok, "skipped": skipped}

    def _freeze(self, freeze_backbone: bool, freeze_blocks: int) -> None:
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        if freeze_blocks:
            if not hasattr(self.backbone, "blocks"):
                raise ValueError(f"backbone {type(self.backbone).__name__} has no blocks(); cannot freeze_blocks")
            blocks = self.backbone.blocks()
            if freeze_blocks > len(blocks):
                raise ValueError(f"freeze_blocks={freeze_blocks} but the backbone has {len(blocks)} blocks")
            for b in blocks[:freeze_blocks]:
                for p in b.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.hparams.freeze_backbone:  # a frozen feature extractor keeps its BatchNorm statistics
            self.backbone.eval()
        elif mode and self.hparams.freeze_blocks:  # so do frozen blocks
            for block in self.backbone.blocks()[: self.hparams.freeze_blocks]:
                block.eval()
        return self

    # ------------------------------------------------------------------ training
    @property
    def progress(self) -> float:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        if not total or math.isinf(total):
            return 0.0
        return min(self.global_step / total, 1.0)

    def supervised_loss(self, logits_s: torch.Tensor, y_s: torch.Tensor, d_s: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the labelled batch, weighted per domain by ``source_weights[d_s]``."""
        ce = F.cross_entropy(logits_s, y_s, reduction="none", label_smoothing=self.hparams.label_smoothing)
        w = self.source_weights[d_s]
        return (ce * w).sum() / w.sum().clamp_min(1e-12)

    def on_fit_start(self) -> None:
        check_fit(self)

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.method is not None:
            return method_training_step(self, batch)
        x_s, y_s, d_s = batch["source"]
        x_t = batch["target"][0] if self.needs_target else None
        n_s = len(y_s)
        if x_t is not None and self.hparams.concat_forward and isinstance(x_s, torch.Tensor):
            f, logits = self.features_and_logits(torch.cat([x_s, x_t]))
            f_s, f_t, logits_s, logits_t = f[:n_s], f[n_s:], logits[:n_s], logits[n_s:]
        else:
            f_s, logits_s = self.features_and_logits(x_s)
            f_t, logits_t = self.features_and_logits(x_t) if x_t is not None else (None, None)
        cls = self.supervised_loss(logits_s, y_s, d_s)
        p = self.progress
        ctx = StepContext(f_s=f_s, f_t=f_t, logits_s=logits_s, logits_t=logits_t, y_s=y_s, d_s=d_s,
                          num_sources=self.num_sources, progress=p, module=self, step=self.global_step)
        total = cls
        terms = []
        for term in self.losses:
            coef = term.current_weight(p, self.global_step)
            value = term(ctx)
            total = total + coef * value
            terms.append((term.name, value.detach(), coef, term.last_logs))
        # the logged values are assembled and logged in on_train_batch_end, only on the steps the logger writes
        self._step_logs = (cls.detach(), terms, total.detach(), logits_s.detach(), y_s, n_s)
        return total

    def _train_logs_due(self) -> bool:
        """Whether this step's ``train/*`` values are logged: on the steps the logger writes (Lightning's own test,
        ``log_every_n_steps`` cadence or ``trainer.should_stop``) and on the run's last step (``max_steps``), so
        ``callback_metrics`` ends with the last step's values as when every step was logged."""
        trainer = self._trainer
        if trainer is None:
            return False
        due = getattr(trainer._logger_connector, "should_update_logs", True)
        return bool(due or trainer.fast_dev_run or 0 < trainer.max_steps <= trainer.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the step's ``train/*`` dict and the progress bar's ``loss``, on the steps :meth:`_train_logs_due`.

        Each ``self.log`` call walks Lightning's result collection (about 0.5 ms a key on a CPU), so logging ~6-10
        keys every step cost more than a small model's step, while the logger only writes every
        ``log_every_n_steps``: the values it writes are the same, the steps in between cost nothing. The progress
        bar's ``loss`` is the last logged step's. Callbacks see ``trainer.callback_metrics["train/..."]`` of the last
        logged step (their ``on_train_batch_end`` runs before this one).
        """
        pending, self._step_logs = getattr(self, "_step_logs", None), None
        if pending is None or not self._train_logs_due():
            return
        cls, terms, total, logits_s, y_s, n_s = pending
        logs = {"train/cls": cls}
        for name, value, coef, last_logs in terms:
            logs[f"train/{name}"] = value
            logs[f"train/{name}_weight"] = torch.tensor(coef)
            for k, v in last_logs.items():
                logs[f"train/{name}_{k}"] = torch.as_tensor(v).detach().float()
        logs["train/loss"] = total
        logs["train/source_acc"] = (logits_s.argmax(-1) == y_s).float().mean()
        distributed = self._trainer is not None and self.trainer.world_size > 1
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False, batch_size=n_s, sync_dist=distributed)
        self.log("loss", total, prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=n_s)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, split: str, batch, dataloader_idx: int) -> None:
        x, y, _ = batch
        dom = eval_domain(self, dataloader_idx)
        logits = self(x) if self.method is None else self.method.eval_logits(self, x, dom)
        for avg in ("micro", "macro"):
            self.acc[f"{split}_{dom}_{avg}"].update(logits, y)
        if dom == "target":
            if split == "val":
                self._val_target_probs.append(logits.float().softmax(-1).detach())
            else:
                self._test_preds.append(logits.argmax(-1).detach())
                self._test_targets.append(y.detach())

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _log_acc(self, split: str) -> Dict[str, float]:
        out = {}
        for dom in ("source", "target"):
            for avg, suffix in (("micro", ""), ("macro", "_macro")):
                m = self.acc[f"{split}_{dom}_{avg}"]
                if m.update_count == 0:
                    continue
                out[f"{split}/{dom}_acc{suffix}"] = m.compute()
                m.reset()
        self.log_dict(out, prog_bar=split == "val", sync_dist=False)
        return {k: float(v) for k, v in out.items()}

    def on_validation_epoch_end(self) -> None:
        logged = self._log_acc("val")
        if self._val_target_probs:
            from da.validators import unsupervised_scores

            probs = torch.cat(self._val_target_probs)
            if self.trainer.world_size > 1:  # gathered shards end with the sampler's wrap-around padding: trim it
                probs = self.all_gather(probs).flatten(0, 1)[: self._eval_size("target_val", len(probs))]
            scores = unsupervised_scores(probs)
            self.log_dict({f"val/target_{k}": v for k, v in scores.items()}, sync_dist=False)
            logged.update({f"val/target_{k}": float(v) for k, v in scores.items()})
            self._val_target_probs.clear()
        if not self.trainer.sanity_checking:
            self.history.append({"step": int(self.global_step), "epoch": int(self.current_epoch), **logged})

    def on_test_epoch_end(self) -> None:
        self._log_acc("test")
        if self._test_preds:
            pred, y = torch.cat(self._test_preds), torch.cat(self._test_targets)
            if self.trainer.world_size > 1:
                n = self._eval_size("target_test", len(pred))
                pred, y = self.all_gather(pred).flatten(0, 1)[:n], self.all_gather(y).flatten(0, 1)[:n]
            self.predictions = {"y": y.cpu(), "pred": pred.cpu()}
            self._test_preds.clear()
            self._test_targets.clear()

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Keep the validation history and the random-number state (dropout) so a resumed run continues exactly."""
        checkpoint["da_history"] = list(self.history)
        checkpoint["da_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["da_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.history = list(checkpoint.get("da_history", []))
        rng = checkpoint.get("da_rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _eval_size(self, split: str, default: int) -> int:
        """The true number of samples of a data module split (without DDP padding)."""
        dm = getattr(self.trainer, "datamodule", None)
        dom = getattr(dm, split, None)
        return len(dom) if dom is not None else default * self.trainer.world_size

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        if self.method is not None:  # one optimiser (and scheduler) per parameter set of the method, same recipe
            return configure_method_optimizers(self)
        return self.optimizer_and_scheduler(self.named_parameters())

    def optimizer_and_scheduler(self, named_parameters):
        """The recipe's optimiser (and lr scheduler, stepped per iteration) over ``(name, parameter)`` pairs."""
        hp = self.hparams
        groups: Dict[tuple, List[nn.Parameter]] = {}
        for name, p in named_parameters:
            if not p.requires_grad:
                continue
            lr = hp.lr * (hp.backbone_lr_mult if name.startswith("backbone.") else 1.0)
            decay = hp.weight_decay if not (hp.no_decay_norm_bias and p.ndim <= 1) else 0.0
            groups.setdefault((lr, decay), []).append(p)
        if not groups:
            raise ValueError("no trainable parameters: everything is frozen")
        params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        kw = dict(momentum=hp.momentum, nesterov=hp.momentum > 0) if hp.optimizer == "sgd" else \
            dict(betas=(hp.momentum, 0.999))
        opt = OPTIMIZERS[hp.optimizer](params, lr=hp.lr, fused=self._fused_ok(params) or None, **kw)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "inv":  # no dependence on the run's length
            sched = torch.optim.lr_scheduler.LambdaLR(opt, inverse_decay(hp.inv_gamma, hp.inv_power))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        elif hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(int(hp.step_size * total), 1), gamma=hp.gamma)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 + 10 * min(s / total, 1.0)) ** -0.75)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _fused_ok(self, groups) -> bool:
        """torch's fused kernel applies: asked for (``fused``; absent in checkpoints from before it existed), not fp16
        (GradScaler), every parameter a float on the CPU or CUDA."""
        precision = str(getattr(self._trainer, "precision", "") if self._trainer is not None else "")
        return bool(self.hparams.get("fused", True)) and not precision.startswith("16") and all(
            p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for g in groups for p in g["params"])


def inverse_decay(gamma: float, power: float):
    """The learning-rate factor ``(1 + gamma i)^-power`` of the optimiser step i (Caffe's ``inv`` policy; TLlib's
    ``LambdaLR(lambda i: (1 + 0.001 i) ** -0.75)``)."""
    def factor(i: int) -> float:
        return (1.0 + gamma * i) ** -power
    return factor
