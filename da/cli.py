"""The ``da`` command.

* ``da fit | validate | test``: LightningCLI over :class:`~da.module.TransferModule` and
  :class:`~da.data.datamodule.DomainDataModule`. ``--config`` files compose left to right; every key can be overridden
  (``--model.lr 0.01``). ``da fit`` trains, then tests on the source and target test splits, and writes
  ``<run_dir>/result.json``.
* ``da sweep | table | plot | detect``: experiments, tables, pictures and negative-transfer diagnostics.

Each run owns a directory (``--run_dir``; default ``runs/<task>/<method>/<time>``) holding ``config.yaml``,
``metrics.csv``, ``checkpoints/{last,best}.ckpt``, ``predictions.pt`` and ``result.json``.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

EXTRA_COMMANDS = {
    "sweep": ("da.experiments.commands", "sweep_main", "run a grid of experiments (skips finished, resumes killed runs)"),
    "table": ("da.experiments.commands", "table_main", "turn result.json records into a markdown/LaTeX/CSV table"),
    "plot": ("da.experiments.commands", "plot_main", "learning curves and t-SNE pictures"),
    "detect": ("da.diagnostics.detect", "detect_main", "negative-transfer verdicts and source rankings"),
    "multisource": ("da.multisource_workflow", "multisource_main",
                    "train one model per source, then fine-tune on the target toward all of them"),
}

TOP_HELP = """usage: da <command> [options]

Domain adaptation and transfer learning on PyTorch Lightning.

training (LightningCLI; `da fit --help` lists every option):
  fit        train a model (then test it on source and target) and write <run_dir>/result.json
  validate   evaluate on the validation splits
  test       evaluate a checkpoint on the source and target test splits (direct transfer: --ckpt_path)

experiments:
{extra}

examples:
  da fit --config configs/quickstart.yaml
  da fit --config configs/quickstart.yaml --config configs/method/dann.yaml --seed_everything 1
  da fit --config configs/data/jda_mnist_usps.yaml --config configs/method/mmd.yaml --data.root ../shared/data
  da sweep experiments/digits_ablation.yaml && da table runs/sweeps/digits_ablation
"""


def _wandb_offline_unless_logged_in() -> None:
    """W&B never prompts: without an API key (env or ~/.netrc) runs are logged offline."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


def _safe(name: str) -> str:
    return name.replace("->", "_to_").replace("/", "-").replace("+", "_")


def _build_cli_class():
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.loggers import CSVLogger, Logger

    from da.data.datamodule import DomainDataModule
    from da.module import TransferModule
    from da.preflight import check_ckpt_path, check_trainer_args
    from da.run_record import SCHEMA, config_hash, git_commit, now, read_record, versions, write_record

    class DACLI(LightningCLI):
        """LightningCLI with run directories, CSV logging, checkpoints and ``result.json`` records."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run_dir", type=Optional[str], default=None,
                                help="directory of this run (default runs/<task>/<method>/<time>)")
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
            parser.link_arguments("data.num_sources", "model.num_sources", apply_on="instantiate")
            parser.link_arguments("seed_everything", "data.seed", apply_on="parse")
            parser.set_defaults({"seed_everything": 0, "trainer.max_steps": 2000, "trainer.max_epochs": -1,
                                 "trainer.log_every_n_steps": 25, "trainer.check_val_every_n_epoch": None,
                                 "trainer.val_check_interval": 500, "trainer.num_sanity_val_steps": 0})

        def before_instantiate_classes(self) -> None:
            self._t0 = time.time()
            self._started = now()

        def _run_dir(self) -> Path:
            cfg = self.config[self.subcommand]
            if cfg.get("run_dir"):
                return Path(cfg["run_dir"]).resolve()
            inherited = os.environ.get("DA_DDP_RUN_DIR")
            if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
                return Path(inherited)  # a DDP child re-launched by Lightning: the run directory of its rank 0
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = (Path("runs") / _safe(self.datamodule.task) / _safe(self.model.method_name) / stamp).resolve()
            # Lightning's DDP launcher re-runs this command in child processes that inherit the environment and would
            # otherwise make their own, later time stamp (an empty second run directory)
            os.environ["DA_DDP_RUN_DIR"] = str(path)
            return path

        def _parse_ckpt_path(self) -> None:
            check_ckpt_path(self.config)  # a missing, truncated or foreign --ckpt_path is one line, before any work
            super()._parse_ckpt_path()

        def _instantiate_trainer(self, config: Dict[str, Any], callbacks: List[Callback]):
            check_trainer_args(config, self.subcommand)  # max_steps <= 0, val_check_interval longer than the run
            self.run_dir = self._run_dir()
            self.run_dir.mkdir(parents=True, exist_ok=True)
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
            user_cbs = list(config.get("callbacks") or [])
            if not any(isinstance(c, ModelCheckpoint) for c in user_cbs + callbacks):
                callbacks.append(ModelCheckpoint(dirpath=str(self.run_dir / "checkpoints"), filename="best",
                                                 monitor="val/source_acc", mode="max", save_last=True,
                                                 enable_version_counter=False))
            return super()._instantiate_trainer(config, callbacks)

        def _adopt_existing_metrics(self, csv_logger) -> None:
            """A run directory that already holds ``metrics.csv``: a resumed run keeps appending to it (with its columns,
            which Lightning's CSV writer would otherwise not know and fail on); a fresh run moves it to
            ``metrics.prev.csv`` and starts a new file."""
            path = self.run_dir / "metrics.csv"
            if not path.exists() or not self.trainer_is_rank_zero():
                return
            if self.config[self.subcommand].get("ckpt_path"):
                with path.open() as f:
                    header = [k for k in f.readline().strip().split(",") if k]
                csv_logger.experiment.metrics_keys = sorted(header)
            else:
                path.replace(self.run_dir / "metrics.prev.csv")

        @staticmethod
        def trainer_is_rank_zero() -> bool:
            return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"

        # ------------------------------------------------------------- records
        def _plain_config(self) -> Dict[str, Any]:
            return _namespace_to_dict(self.config[self.subcommand])

        def _scalar_metrics(self) -> Dict[str, float]:
            return {k: float(v) for k, v in self.trainer.callback_metrics.items()
                    if getattr(v, "numel", lambda: 1)() == 1}

        def _record(self, status: str, error: Optional[str] = None) -> Dict[str, Any]:
            cfg = self._plain_config()
            metrics = {**getattr(self, "_fit_metrics", {}), **self._scalar_metrics()}
            rec = read_record(self.run_dir) or {}
            rec.update({
                "schema": SCHEMA, "status": status, "task": self.datamodule.task, "method": self.model.method_name,
                "seed": cfg.get("seed_everything"), "config_hash": config_hash(cfg), "config": cfg,
                "metrics": {**rec.get("metrics", {}), **metrics}, "history": list(self.model.history),
                "split_info": self.datamodule.split_info, "wall_time_s": round(time.time() - self._t0, 3),
                "git_commit": git_commit(), "versions": versions(), "run_dir": str(self.run_dir),
                "started_at": self._started, "finished_at": now() if status != "running" else None, "error": error,
                "subcommand": self.subcommand,
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
                    try:
                        self._write("failed", tb[-8000:])
                    except Exception:  # the original error matters more than the record
                        pass
                raise

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


def _namespace_to_dict(ns: Any) -> Any:
    from jsonargparse import Namespace

    if isinstance(ns, Namespace):
        return {k: _namespace_to_dict(v) for k, v in vars(ns).items() if k != "__path__"}
    if isinstance(ns, dict):
        return {str(k): _namespace_to_dict(v) for k, v in ns.items()}
    if isinstance(ns, (list, tuple)):
        return [_namespace_to_dict(v) for v in ns]
    if isinstance(ns, (str, int, float, bool)) or ns is None:
        return ns
    return str(ns)


def run_cli(args: Optional[List[str]] = None):
    """Run the LightningCLI part of ``da`` in-process (tests, notebooks) and return the CLI object."""
    _wandb_offline_unless_logged_in()
    cls = _build_cli_class()
    from da.data.datamodule import DomainDataModule
    from da.module import TransferModule

    return cls(TransferModule, DomainDataModule, args=args, save_config_kwargs={"overwrite": True},
               auto_configure_optimizers=False)


def main(argv: Optional[List[str]] = None) -> None:
    """The ``da`` command; an error is one line ``da: error: ...`` (exit 2 for bad input), see ``docs/errors.md``."""
    from da.errors import run_main

    run_main(_main, argv)


def _main(argv: Optional[List[str]] = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        extra = "\n".join(f"  {name:<12} {desc}" for name, (_, _, desc) in EXTRA_COMMANDS.items())
        print(TOP_HELP.format(extra=extra))
        return
    if argv[0] in EXTRA_COMMANDS:
        import importlib

        module, fn, _ = EXTRA_COMMANDS[argv[0]]
        rc = getattr(importlib.import_module(module), fn)(argv[1:])
        sys.exit(rc or 0)
    from da.preflight import check_config_files

    check_config_files(argv)
    run_cli(None if from_command_line else argv)


if __name__ == "__main__":  # pragma: no cover
    main()
