"""`TrainingMethod`: a method that owns extra modules, optimisers and its update rule (ADDA, MCD, FixMatch, SHOT).

A plain :class:`~da.losses.base.AdaptationLoss` is one more term added to the cross-entropy and needs none of this.
A *training method* is for what a sum of terms cannot express: alternating updates of different parameter sets
(MCD's three steps, ADDA's discriminator / target-encoder game), a second optimiser, or a step that never sees a
labelled batch (source-free SHOT). With ``model.method`` set, ``TransferModule``:

* builds the method once its own weights (``init_from``, pretrained backbones) are loaded: ``method.setup(module)``;
* switches to Lightning manual optimisation and builds **one optimiser per parameter set** the method names
  (:meth:`TrainingMethod.parameter_sets`), each with the recipe's optimiser, learning rate, momentum, weight decay,
  backbone learning-rate multiplier and lr scheduler: a method never picks its own optimiser, so ``recipe + method``
  stays a clean ablation;
* calls ``method.training_step(module, batch, optimizers)`` for each batch; the method calls
  :meth:`TrainingMethod.update` (``zero_grad`` -> ``module.manual_backward`` -> ``step``, DDP- and AMP-safe)
  as many times as its algorithm needs;
* counts **one global step per iteration** (Lightning's manual mode would count every optimiser step, so MCD with
  n = 4 would stop after a seventh of ``max_steps``, and the progress ``p`` of schedules and the in-memory loaders'
  exact-resume position would be wrong), steps every ``interval: step`` lr scheduler once per iteration, as in
  automatic mode, and logs the method's scalars under ``train/<name>``;
* evaluates with :meth:`TrainingMethod.eval_logits` (ADDA: the target encoder on the target, MCD: both heads).

The method is an ``nn.Module`` child of the model (``model.method.*`` in the state dict), so its modules (a second
head, a discriminator, a frozen source encoder, cluster centroids as buffers) are saved in checkpoints and restored
on resume; the optimisers' states, the lr schedulers and the iteration counter are saved by Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from da.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from da.module import TransferModule

NamedParameters = List[Tuple[str, nn.Parameter]]


def trainable(named: Iterable[Tuple[str, nn.Parameter]], prefixes: Optional[Tuple[str, ...]] = None) -> NamedParameters:
    """The ``(name, parameter)`` pairs that require gradients (and whose name starts with one of ``prefixes``)."""
    return [(n, p) for n, p in named if p.requires_grad and (prefixes is None or n.startswith(prefixes))]


def freeze(module: nn.Module) -> None:
    """No gradients for ``module``'s parameters (they stay out of every optimiser)."""
    for p in module.parameters():
        p.requires_grad_(False)


class TrainingMethod(nn.Module):
    """Base class of a method with its own optimisation (see the module docstring for the contract).

    Subclasses set ``name`` (the method's name in records and tables) and implement :meth:`training_step`; they may
    override :meth:`setup`, :meth:`parameter_sets` and :meth:`eval_logits`. Class attributes:

    * ``needs_source`` (default True): the step reads the labelled source batch. A source-free method (SHOT) sets
      False and then requires ``data.supervision: target_unlabeled``, in which the data module never reads a source.
    * ``needs_init_from`` (default False): the method adapts a trained source model and refuses to start from
      random weights (ADDA, SHOT: ``--model.init_from <source checkpoint>``).
    """

    name: str = "method"
    needs_source: bool = True
    needs_init_from: bool = False

    def setup(self, module: "TransferModule") -> None:
        """Build the method's own modules; called once the model's starting weights are loaded."""

    def parameter_sets(self, module: "TransferModule") -> Dict[str, NamedParameters]:
        """``{optimiser name: [(parameter name, parameter), ...]}``, one optimiser each, in this order.

        The names are those of ``module.named_parameters()`` (the method's own are ``method.*``), so the recipe's
        backbone learning-rate multiplier and no-decay rules apply. Default: one optimiser over everything trainable.
        """
        return {"model": trainable(module.named_parameters())}

    def training_step(self, module: "TransferModule", batch: Dict[str, Any],
                      optimizers: Dict[str, Any]) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """One iteration: forward passes and :meth:`update` calls; returns the scalars to log (``loss`` first)."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step(module, batch, optimizers)")

    def eval_logits(self, module: "TransferModule", x: Any, domain: str) -> torch.Tensor:
        """The logits used to evaluate on ``domain`` (``"source"`` or ``"target"``); default: ``module(x)``."""
        return module(x)

    @staticmethod
    def update(module: "TransferModule", optimizer: Any, loss: torch.Tensor) -> None:
        """``zero_grad`` -> ``module.manual_backward(loss)`` -> ``optimizer.step()``.

        ``zero_grad`` sets gradients to None, and SGD / Adam / AdamW skip parameters without a gradient, so a step
        changes only the parameters of its optimiser that ``loss`` depends on.
        """
        optimizer.zero_grad(set_to_none=True)
        module.manual_backward(loss)
        optimizer.step()

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# --------------------------------------------------------------------------- glue used by TransferModule


def attach_method(module: "TransferModule", method: Optional[TrainingMethod]) -> Optional[TrainingMethod]:
    """Check ``method`` against the model's configuration, switch to manual optimisation and set it up."""
    if method is None:
        return None
    if not isinstance(method, TrainingMethod):
        raise UserError(f"model.method must be a da.methods.TrainingMethod (e.g. class_path: da.methods.MCD), "
                        f"got {type(method).__name__}")
    if len(module.losses):
        raise UserError(f"model.method {method.name} runs its own update rule and does not use model.losses "
                        f"{[l.name for l in module.losses]}: remove model.losses (or the method)")
    if method.needs_init_from and not module.hparams.init_from:
        raise UserError(f"{type(method).__name__} adapts a trained source model: give --model.init_from "
                        f"<checkpoint of a source-only run, e.g. runs/.../checkpoints/last.ckpt>")
    module.automatic_optimization = False
    module.method = method  # registered as a child before setup, so its modules land on the model's device
    method.setup(module)
    return method


def configure_method_optimizers(module: "TransferModule") -> List[Dict[str, Any]]:
    """One recipe optimiser (and lr scheduler) per parameter set of the method, in the method's order."""
    sets = module.method.parameter_sets(module)
    if not sets:
        raise ValueError(f"{type(module.method).__name__}.parameter_sets returned no parameter set")
    empty = [k for k, v in sets.items() if not v]
    if empty:
        raise ValueError(f"{type(module.method).__name__}: parameter set(s) {empty} have no trainable parameter; "
                         "is everything frozen (freeze_backbone, freeze_blocks)?")
    module.method.optimizer_names = list(sets)
    configs = [module.optimizer_and_scheduler(named) for named in sets.values()]
    return [c if isinstance(c, dict) else {"optimizer": c} for c in configs]


def _no_op() -> None:
    return None


def method_training_step(module: "TransferModule", batch: Dict[str, Any]) -> torch.Tensor:
    """One manual-optimisation iteration: the method's step, then one global step and the lr schedulers' step."""
    opts = module.optimizers()
    opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
    names = getattr(module.method, "optimizer_names", None) or [f"opt{i}" for i in range(len(opts))]
    # Lightning counts every optimiser step as a global step in manual mode (LightningOptimizer._on_before_step /
    # _on_after_step, set by the manual loop for each batch). The method's steps go through Lightning (precision
    # plugin, strategy) uncounted; the iteration is counted once below, so max_steps and progress mean iterations.
    hooks = [(o._on_before_step, o._on_after_step) for o in opts]
    for o in opts:
        o._on_before_step = o._on_after_step = _no_op
    try:
        logs = module.method.training_step(module, batch, dict(zip(names, opts)))
    finally:
        for o, (before, after) in zip(opts, hooks):
            o._on_before_step, o._on_after_step = before, after
    hooks[0][0]()
    hooks[0][1]()
    for config in module.trainer.lr_scheduler_configs:
        if config.interval == "step":
            config.scheduler.step()
    loss = logs.get("loss")
    loss = torch.as_tensor(loss).detach().float() if loss is not None else None
    if not module._train_logs_due():  # as the loss-term path: log only on the steps the logger writes
        return loss
    n = _batch_size(batch)
    distributed = module.trainer.world_size > 1
    out = {f"train/{k}": torch.as_tensor(v).detach().float() for k, v in logs.items()}
    module.log_dict(out, on_step=True, on_epoch=False, prog_bar=False, batch_size=n, sync_dist=distributed)
    if loss is not None:
        module.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=n)
    return loss


def _batch_size(batch: Dict[str, Any]) -> int:
    stream = batch["source"] if "source" in batch else batch["target"]
    return len(stream[1])


def check_fit(module: "TransferModule") -> None:
    """At fit start: source-free data needs a source-free method and vice versa; schedulers must step per step."""
    dm = getattr(module.trainer, "datamodule", None)
    source_free = getattr(dm, "supervision", None) == "target_unlabeled"
    method = module.method
    if source_free and (method is None or method.needs_source):
        what = "the standard step" if method is None else type(method).__name__
        raise UserError(f"data.supervision target_unlabeled (source-free) gives no labelled batch, but {what} needs "
                        "one: use a source-free method (configs/method/shot.yaml) or data.supervision source")
    if method is not None and not method.needs_source and dm is not None and not source_free:
        raise UserError(f"{type(method).__name__} is source-free: set data.supervision: target_unlabeled so that the "
                        f"source data ({getattr(dm, 'sources', '?')}) is never read")
    if method is not None:
        epochwise = [type(c.scheduler).__name__ for c in module.trainer.lr_scheduler_configs if c.interval != "step"]
        if epochwise:
            raise UserError(f"model.method steps lr schedulers per iteration; {epochwise} use interval "
                            "'epoch': give them interval 'step'")


def eval_domain(module: "TransferModule", dataloader_idx: int) -> str:
    """The domain of an evaluation loader: the data module's ``eval_domains`` (source-free: only the target)."""
    trainer = module._trainer
    domains = getattr(getattr(trainer, "datamodule", None), "eval_domains", ("source", "target"))
    return domains[dataloader_idx]
