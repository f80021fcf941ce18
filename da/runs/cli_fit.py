"""``da fit | validate | test``: LightningCLI over :class:`~da.module.TransferModule` and
:class:`~da.data.datamodule.DomainDataModule`, with run directories, locks, CSV logging, checkpoints and records.

Each run owns a directory (``--run_dir``; default ``runs/<task>/<method>/<time>``) holding ``config.yaml``,
``metrics.csv``, ``checkpoints/{last,best}.ckpt``, ``predictions.pt`` and ``result.json``. While it runs it holds the
directory's lock (:mod:`da.runs.locks`): a second ``da fit`` into the same directory is refused.

The config comes only from the command line and ``--config`` files: a ``--ckpt_path`` checkpoint gives tensors and
the training state it saved, never settings (LightningCLI would merge its ``hyper_parameters`` over the command line;
keys that differ are reported in one line instead). A resumed run keeps the ``metrics.csv`` rows and the start time
of its earlier segments (:mod:`da.runs.metrics_csv`; the record's ``segments``, ``started_at`` of the first and
``wall_time_s`` summed).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

from da.runs import locks
from da.runs.config import config_hash
from da.runs.lifecycle import LAST_CKPT, interrupt_in_chain, safe_name
from da.runs.metrics_csv import METRICS_FILE, rows_before, write_rows
from da.runs.record import SCHEMA_VERSION, RecordError, git_commit, now, read_record, versions, write_record


def wandb_offline_unless_logged_in() -> None:
    """W&B never prompts: without an API key (env or ~/.netrc) runs are logged offline."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


def namespace_to_dict(ns: Any) -> Any:
    """A jsonargparse ``Namespace`` (or nested dicts/lists of them) as plain JSON-ready data."""
    from jsonargparse import Namespace

    if isinstance(ns, Namespace):
        return {k: namespace_to_dict(v) for k, v in vars(ns).items() if k != "__path__"}
    if isinstance(ns, dict):
        return {str(k): namespace_to_dict(v) for k, v in ns.items()}
    if isinstance(ns, (list, tuple)):
        return [namespace_to_dict(v) for v in ns]
    if isinstance(ns, (str, int, float, bool)) or ns is None:
        return ns
    return str(ns)


#: model arguments set from the data when the classes are instantiated (their config value is only a default)
_LINKED = ("num_classes", "input_shape", "num_sources")


def _rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _build_cli_class():
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.loggers import CSVLogger, Logger

    from da.progress_bar import add_progress_bar
    from da.runs.preflight import check_ckpt_path, check_trainer_args

    class _BestAndLast(ModelCheckpoint):
        """``best.ckpt`` by the selection metric and a ``last.ckpt`` rewritten at *every* validation. Lightning 2.6's
        ``save_last=True`` rewrites ``last.ckpt`` only when ``best.ckpt`` improved, so a run whose metric plateaus
        (``val/source_acc`` = 1.0 early) kept an early state there, and ``--ckpt_path last`` resumed, and
        ``--model.init_from .../last.ckpt`` started, from that early step."""

        def on_validation_end(self, trainer, pl_module) -> None:
            super().on_validation_end(trainer, pl_module)
            if self.save_last and not trainer.sanity_checking and not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    class _Heartbeat(Callback):
        """After each validation of ``fit``: flush the loggers and rewrite the ``running`` record (wall time so far),
        so a run killed later keeps its rows and the length of this segment. Runs before the checkpoint is saved."""

        def __init__(self, cli: "DACLI"):
            self.cli = cli

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or trainer.state.fn != "fit":
                return
            for lg in trainer.loggers:
                lg.save()
            self.cli._write("running")

    class DACLI(LightningCLI):
        """LightningCLI with run directories, locks, CSV logging, checkpoints and ``result.json`` records."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run_dir", type=Optional[str], default=None,
                                help="directory of this run (default runs/<task>/<method>/<time>)")
            parser.add_argument("--recipe", type=Optional[str], default=None,
                                help="name of the benchmark recipe (configs/benchmark/<name>.yaml sets it); recorded "
                                     "in result.json and named in `da table` captions")
            for key in _LINKED:
                parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
            parser.link_arguments("seed_everything", "data.seed", apply_on="parse")
            parser.set_defaults({"seed_everything": 0, "trainer.max_steps": 2000, "trainer.max_epochs": -1,
                                 "trainer.log_every_n_steps": 25, "trainer.check_val_every_n_epoch": None,
                                 "trainer.val_check_interval": 500, "trainer.num_sanity_val_steps": 0})

        def _parse_ckpt_path(self) -> None:
            """LightningCLI merges a checkpoint's ``hyper_parameters`` over the command line here, so a checkpoint
            could name code (``backbone: os.system``) and silently replace ``--model.lr``. The run's config comes
            only from the command line and config files; a difference from the checkpoint is reported, not applied."""
            check_ckpt_path(self.config)  # a missing, truncated or foreign --ckpt_path is one line, before any work
            sub = self.config.get("subcommand")
            ckpt_path = self.config[sub].get("ckpt_path") if sub else None
            if not ckpt_path or not Path(ckpt_path).is_file():
                return
            from da.checkpoints import checkpoint_hparams

            hparams = checkpoint_hparams(ckpt_path)
            model = namespace_to_dict(self.config[sub].get("model") or {})
            model = model.get("init_args", model) if isinstance(model, dict) else {}
            differ = sorted(k for k, v in hparams.items() if not k.startswith("_") and k in model
                            and k not in _LINKED and namespace_to_dict(v) != model[k])
            if differ:
                print(f"[da] {ckpt_path} was trained with other model settings ({', '.join(differ)}); using the "
                      "command line and config files, not the checkpoint's", file=sys.stderr)

        def _prepare_subcommand_kwargs(self, subcommand: str) -> Dict[str, Any]:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if "ckpt_path" in kwargs:
                kwargs["weights_only"] = True  # a checkpoint holds tensors and plain data, never code
            return kwargs

        def before_instantiate_classes(self) -> None:
            self._t0 = time.time()
            self._started = now()
            self._earlier: List[Dict[str, Any]] = []
            self._owns_lock = False

        def _run_dir(self) -> Path:
            cfg = self.config[self.subcommand]
            if cfg.get("run_dir"):
                return Path(cfg["run_dir"]).resolve()
            inherited = os.environ.get("DA_DDP_RUN_DIR")
            if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
                return Path(inherited)  # a DDP child re-launched by Lightning: the run directory of its rank 0
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = (Path("runs") / safe_name(self.datamodule.task) / safe_name(self.model.method_name) / stamp).resolve()
            # Lightning's DDP launcher re-runs this command in child processes that inherit the environment and would
            # otherwise make their own, later time stamp (an empty second run directory)
            os.environ["DA_DDP_RUN_DIR"] = str(path)
            return path

        def _instantiate_trainer(self, config: Dict[str, Any], callbacks: List[Callback]):
            check_trainer_args(config, self.subcommand)  # max_steps <= 0, val_check_interval longer than the run
            self.run_dir = self._run_dir()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if _rank_zero():
                self._owns_lock = locks.lock_for_run(self.run_dir)
            try:
                if _rank_zero():
                    self._earlier = self._earlier_segments()
                self._setup_logging(config, callbacks)
                return super()._instantiate_trainer(config, callbacks)
            except BaseException:  # a run that never started must not keep its directory locked
                self._release()
                raise

        def _setup_logging(self, config: Dict[str, Any], callbacks: List[Callback]) -> None:
            loggers = config.get("logger")
            if loggers in (None, True, False):
                loggers = []
            elif isinstance(loggers, Logger):
                loggers = [loggers]
            csv_logger = CSVLogger(str(self.run_dir), name="", version="")
            self._adopt_existing_metrics(csv_logger)
            loggers = [csv_logger] + [lg for lg in loggers if not isinstance(lg, CSVLogger)]
            for lg in loggers:  # W&B files go into the run directory unless the user chose a place
                init = getattr(lg, "_wandb_init", None)
                if isinstance(init, dict) and init.get("dir") in (None, ".", "./"):
                    init["dir"] = str(self.run_dir)
                    lg._save_dir = str(self.run_dir)
            config["logger"] = loggers
            config["default_root_dir"] = str(self.run_dir)
            user_cbs = config.get("callbacks") or []
            user_cbs = [user_cbs] if isinstance(user_cbs, Callback) else list(user_cbs)  # one callback or a list
            if not any(isinstance(c, ModelCheckpoint) for c in user_cbs + callbacks):
                callbacks.append(_BestAndLast(dirpath=str(self.run_dir / "checkpoints"), filename="best",
                                                 monitor=getattr(self.datamodule, "selection_metric", "val/source_acc"),
                                                 mode="max", save_last=True,
                                                 enable_version_counter=False))
            callbacks.append(_Heartbeat(self))
            add_progress_bar(config, callbacks)  # one bar: global step / total, ETA, key metrics

        def _release(self) -> None:
            if getattr(self, "_owns_lock", False):
                locks.release(self.run_dir)
                self._owns_lock = False

        def _resume_path(self) -> Optional[Path]:
            ckpt = self.config[self.subcommand].get("ckpt_path")
            if not ckpt:
                return None
            path = self.run_dir / LAST_CKPT if ckpt == "last" else Path(ckpt)
            return path if path.is_file() else None

        def _earlier_segments(self) -> List[Dict[str, Any]]:
            """The segments of this run before this process (a resumed ``fit`` of the run its record describes)."""
            if self.subcommand != "fit" or self._resume_path() is None:
                return []
            try:
                prev = read_record(self.run_dir, missing_ok=True) or {}
            except RecordError:
                return []
            if not prev.get("started_at"):
                return []
            return list(prev.get("segments") or [{"started_at": prev["started_at"],
                                                  "wall_time_s": prev.get("wall_time_s") or 0.0}])

        def _adopt_existing_metrics(self, csv_logger) -> None:
            """A run directory that already holds ``metrics.csv``: a resumed ``fit`` keeps the rows logged before its
            checkpoint (see :mod:`da.runs.metrics_csv`), ``validate``/``test`` keep them all; a fresh run moves the
            file to ``metrics.prev.csv`` and starts a new one."""
            path = self.run_dir / METRICS_FILE
            if not path.exists() or not _rank_zero():
                return
            if not self.config[self.subcommand].get("ckpt_path"):
                path.replace(self.run_dir / "metrics.prev.csv")
                return
            resume = self._resume_path()
            step = float("inf")
            if self.subcommand == "fit" and resume is not None:
                from da.checkpoints import load_checkpoint

                step = int(load_checkpoint(resume).get("global_step", 0))
            header, rows = rows_before(path, step)
            writer = csv_logger.experiment  # (Lightning deletes the old file here)
            if rows:
                write_rows(path, header, rows)
                writer.metrics_keys = list(header)

        # ------------------------------------------------------------- records
        def _plain_config(self) -> Dict[str, Any]:
            return namespace_to_dict(self.config[self.subcommand])

        def _scalar_metrics(self) -> Dict[str, float]:
            return {k: float(v) for k, v in self.trainer.callback_metrics.items()
                    if getattr(v, "numel", lambda: 1)() == 1}

        def _record(self, status: str, error: Optional[str] = None) -> Dict[str, Any]:
            cfg = self._plain_config()
            metrics = {**getattr(self, "_fit_metrics", {}), **self._scalar_metrics()}
            try:
                rec = read_record(self.run_dir, missing_ok=True) or {}
            except RecordError:  # a broken record from an earlier run: replaced
                rec = {}
            segments = [*self._earlier, {"started_at": self._started, "wall_time_s": round(time.time() - self._t0, 3)}]
            rec.update({
                "schema": SCHEMA_VERSION, "status": status, "task": self.datamodule.task,
                "method": self.model.method_name, "seed": cfg.get("seed_everything"), "config_hash": config_hash(cfg),
                "config": cfg, "metrics": {**rec.get("metrics", {}), **metrics}, "history": list(self.model.history),
                "split_info": self.datamodule.split_info,
                "wall_time_s": round(sum(float(s.get("wall_time_s") or 0.0) for s in segments), 3),
                "segments": segments, "git_commit": git_commit(), "versions": versions(), "run_dir": str(self.run_dir),
                "started_at": segments[0]["started_at"], "finished_at": now() if status != "running" else None,
                "error": error, "subcommand": self.subcommand, "recipe": cfg.get("recipe"),
            })
            if getattr(self.model, "init_info", None):
                rec["init_from"] = self.model.init_info
            diag = {}
            for cb in self.trainer.callbacks:
                if getattr(cb, "summary", None):
                    diag[type(cb).__name__] = cb.summary
            if diag:
                rec["diagnostics"] = diag
            return rec

        def _write(self, status: str, error: Optional[str] = None) -> None:
            if self.trainer.is_global_zero:
                write_record(self.run_dir, self._record(status, error))

        def _after_eval(self) -> None:
            if self.trainer.is_global_zero and self.model.predictions:
                import torch

                torch.save({"target_test": self.model.predictions}, self.run_dir / "predictions.pt")
            self._write("finished")
            if self.trainer.is_global_zero:
                m = self.trainer.callback_metrics
                parts = [f"{k}={float(m[k]):.4f}" for k in ("val/source_acc", "test/source_acc", "test/target_acc",
                                                             "test/target_acc_macro") if k in m]
                print(f"[da] {self.datamodule.task} {self.model.method_name}: " + "  ".join(parts))
                print(f"[da] record: {self.run_dir / 'result.json'}")

        def _run_subcommand(self, subcommand: str) -> None:
            try:
                super()._run_subcommand(subcommand)
            except BaseException as err:  # a failed run is recorded as failed, with its error, never as a result
                if not (isinstance(err, SystemExit) and not err.code):
                    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
                    if interrupt_in_chain(err):  # Ctrl-C / SIGTERM that Lightning re-raised as sys.exit(1)
                        tb = tb + "\ninterrupted (KeyboardInterrupt inside fit)"
                    try:
                        self._write("failed", tb[-8000:])
                    except Exception:  # the original error matters more than the record
                        pass
                raise
            finally:
                self._release()

        def before_fit(self) -> None:
            self._write("running")

        def after_fit(self) -> None:
            if self.trainer.interrupted:
                self._write("failed", "interrupted")
                return
            self._fit_metrics = self._scalar_metrics()  # final train/* and val/* values, before test replaces them
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
            self._after_eval()

        def after_test(self) -> None:
            self._after_eval()

        def after_validate(self) -> None:
            self._write("finished")

    return DACLI


def run_cli(args: Optional[List[str]] = None):
    """Run ``da fit | validate | test`` in-process (tests, notebooks, the ``inprocess`` launcher); return the CLI
    object. ``args`` as on the command line (``["fit", "--config", ...]``); ``None`` reads ``sys.argv``."""
    wandb_offline_unless_logged_in()
    cls = _build_cli_class()
    from da.data.datamodule import DomainDataModule
    from da.help import parser_class
    from da.module import TransferModule
    from da.quiet import quiet_known_noise
    from da.resources import resolve_config_args

    quiet_known_noise()
    args = resolve_config_args(args)  # --config quickstart: a packaged config
    return cls(TransferModule, DomainDataModule, args=args, save_config_kwargs={"overwrite": True},
               auto_configure_optimizers=False, parser_class=parser_class())  # one-line errors, "did you mean"


def run_and_release(args: List[str]) -> None:
    """:func:`run_cli`, then free the run: for callers that run many fits in one process (the ``inprocess`` sweep
    launcher, ``da detect`` / ``da multisource`` baselines). A finished run's trainer, module and data module sit in
    reference cycles; Python's generational collector seldom reaches them in a process holding torch's and
    Lightning's millions of long-lived objects, so without a full collection each run kept its data (about 500 MB
    for an Amazon-features run: an in-process sweep was killed by the OOM killer at 15 GB after 75 runs).
    """
    import gc

    try:
        run_cli(args)
    finally:
        gc.collect()

