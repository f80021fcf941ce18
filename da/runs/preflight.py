"""Up-front checks of what a ``da fit | validate | test`` command is given, before any work starts.

Each check raises :class:`~da.errors.UserError` naming the bad file or value and the fix (``docs/errors.md``):

* :func:`check_config_files`: every ``--config`` file exists, is UTF-8, is YAML and holds a mapping (the message gives
  the file and the line);
* :func:`check_trainer_args`: ``trainer.max_steps`` is positive, or the run is bounded some other way; a
  ``val_check_interval`` longer than the run becomes "validate once, at the end" (with one warning), so that every
  finished run has ``val/*`` metrics and ``best.ckpt``;
* :func:`read_checkpoint` / :func:`check_ckpt_path`: a checkpoint file loads through :mod:`da.checkpoints` (exists,
  not truncated, ``weights_only=True``) and has the shape of a Lightning checkpoint (``--ckpt_path``).

Data checks (feature dimensions and image shapes of the domains) live with the data, in
:mod:`da.data.datamodule`; unreadable images in :mod:`da.data.readers.folders`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from da.errors import MissingFileError, UserError

CONFIG_FLAGS = ("--config", "-c")
#: ``--ckpt_path`` values that Lightning resolves itself (not files)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


# --------------------------------------------------------------------------- config files

def config_paths(argv: List[str]) -> List[str]:
    """The values of ``--config X`` / ``--config=X`` / ``-c X`` in ``argv``, in order."""
    out = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
    return out


def check_config_file(path: str | Path) -> Dict[str, Any]:
    """Read one YAML config file and return its mapping, or raise a one-line :class:`UserError` saying what is wrong."""
    import yaml

    path = Path(path)
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "not found"
        raise MissingFileError(f"config file '{path}' {where} (relative paths start at {Path.cwd()}); "
                               f"give the path of a .yaml file, e.g. --config configs/quickstart.yaml")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"config file '{path}', line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                        f"{err.start}); save the file as UTF-8") from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file '{path}'{where}: not valid YAML ({problem}); fix the syntax there "
                        f"(a mapping is 'key: value', a list '[a, b]')") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise UserError(f"config file '{path}' holds a YAML {type(cfg).__name__}, not a mapping; a config maps "
                        f"sections to values, e.g. 'model: {{lr: 0.01}}' (sections: seed_everything, trainer, model, "
                        f"data, run_dir, ckpt_path)")
    return cfg


def check_config_files(argv: List[str]) -> None:
    """:func:`check_config_file` for every ``--config`` in ``argv`` (inline YAML strings are left to the parser).

    A value that is not a path is a packaged config name (``--config quickstart``, ``configs/method/dann.yaml`` from
    any folder), looked up by :func:`da.resources.resolve`, which names the closest packaged configs when none fits.
    """
    from da.resources import resolve

    for value in config_paths(argv):
        if "\n" in value or (":" in value and not Path(value).exists()):
            continue  # jsonargparse also accepts the YAML text itself: --config "{trainer: {max_steps: 5}}"
        check_config_file(value if Path(value).exists() else resolve(value))


# --------------------------------------------------------------------------- trainer arguments

def check_trainer_args(trainer: Dict[str, Any], subcommand: Optional[str]) -> None:
    """Check the ``Trainer`` arguments of ``da fit`` (edited in place: see ``val_check_interval`` below).

    * ``max_steps == 0`` or ``< -1``, or ``max_epochs == 0`` with ``max_steps == -1``: nothing would be trained;
    * ``max_steps == -1`` and ``max_epochs == -1`` without ``max_time``: the run would never end;
    * an integer ``val_check_interval`` larger than ``max_steps`` (with ``check_val_every_n_epoch=None``, so it counts
      steps): there would be no validation, no ``val/*`` metric and no ``best.ckpt``; it is set to ``max_steps``
      (validate once, at the end) with a warning;
    * bf16 precision on a CPU without bfloat16 instructions (:func:`cpu_bf16_flags`): a warning, since oneDNN then
      emulates them and the run is slower than ``32-true`` (on a CPU that has them it is faster: benchmarks/README.md).
    """
    if subcommand != "fit":
        return
    _warn_emulated_bf16(trainer)
    steps, epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    steps = -1 if steps is None else steps
    if steps == 0 or steps < -1:
        raise UserError(f"trainer.max_steps={steps} trains nothing; give a positive number of optimisation steps, "
                        f"e.g. --trainer.max_steps 2000 (-1 means: until trainer.max_epochs)")
    if steps == -1:
        if epochs == 0:
            raise UserError("trainer.max_epochs=0 with trainer.max_steps=-1 trains nothing; give --trainer.max_steps N "
                            "or --trainer.max_epochs N with N > 0")
        if epochs == -1 and not trainer.get("max_time"):  # max_epochs=None means 1000 epochs in Lightning
            raise UserError(f"trainer.max_steps=-1 and trainer.max_epochs={epochs}: the run would never end; give "
                            f"--trainer.max_steps N (or --trainer.max_epochs N, or --trainer.max_time)")
    interval = trainer.get("val_check_interval")
    by_steps = trainer.get("check_val_every_n_epoch") is None
    if (steps > 0 and by_steps and isinstance(interval, int) and not isinstance(interval, bool)
            and interval > steps):
        warnings.warn(f"trainer.val_check_interval={interval} is longer than the run (trainer.max_steps={steps}): "
                      f"validating once, at the end, instead (so the run has val/* metrics and best.ckpt)",
                      UserWarning, stacklevel=2)
        trainer["val_check_interval"] = steps


def cpu_bf16_flags() -> Optional[str]:
    """The CPU's bfloat16 instruction flags from Linux ``/proc/cpuinfo`` (``"avx512_bf16 amx_bf16"``; ``""``: none),
    or ``None`` where that file is not there to tell."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return " ".join(f for f in flags if "bf16" in f)


def _warn_emulated_bf16(trainer: Dict[str, Any]) -> None:
    precision = str(trainer.get("precision") or "")
    accelerator = str(trainer.get("accelerator") or "auto")
    if not precision.startswith("bf16") or accelerator not in ("cpu", "auto"):
        return
    if accelerator == "auto":
        import torch

        if torch.cuda.is_available():
            return
    if cpu_bf16_flags() == "":
        warnings.warn(f"trainer.precision={precision} on a CPU without bfloat16 instructions (no avx512_bf16 / "
                      "amx_bf16 in /proc/cpuinfo): they are emulated, so this run is slower than with "
                      "--trainer.precision 32-true", UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- checkpoints

def read_checkpoint(path: str | Path, flag: str, lightning: bool = False) -> Dict[str, Any]:
    """:func:`da.checkpoints.load_checkpoint` (the one loader: CPU, ``weights_only=True``), then a shape check.

    ``flag`` names the option the file came from (``--ckpt_path``, ``--model.init_from``) and starts the message of
    any error. The result must be a dict: a Lightning checkpoint (``state_dict`` and ``pytorch-lightning_version``;
    required when ``lightning``) or else a plain state dict (every value a tensor).
    """
    from da.checkpoints import load_checkpoint

    path = Path(path)
    try:
        ckpt = load_checkpoint(path)
    except UserError as err:  # missing, truncated, not a PyTorch file, pickled code: say which option gave it
        raise type(err)(f"{flag}: {err}") from None
    _check_checkpoint_shape(ckpt, path, flag, lightning)
    return ckpt


def _check_checkpoint_shape(ckpt: Any, path: Path, flag: str, lightning: bool) -> None:
    import torch

    if not isinstance(ckpt, Mapping):
        raise UserError(f"{flag} '{path}' holds a {type(ckpt).__name__}, not a checkpoint (a dict with 'state_dict'); "
                        f"give a .ckpt written by da fit")
    keys = ", ".join(sorted(map(str, ckpt))[:6]) or "none"
    if isinstance(ckpt.get("state_dict"), Mapping):
        if lightning and "pytorch-lightning_version" not in ckpt:
            raise UserError(f"{flag} '{path}' has a state_dict but is not a Lightning checkpoint (no "
                            f"'pytorch-lightning_version'; keys: {keys}); to start from its weights use "
                            f"--model.init_from {path} instead")
        return
    tensors_only = bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())
    if lightning:
        what = "a plain state dict" if tensors_only else f"not a Lightning checkpoint (no 'state_dict'; keys: {keys})"
        raise UserError(f"{flag} '{path}' is {what}; give a .ckpt written by da fit (<run_dir>/checkpoints/last.ckpt)"
                        + (f", or start from its weights with --model.init_from {path}" if tensors_only else ""))
    if not tensors_only:
        raise UserError(f"{flag} '{path}' is neither a checkpoint (no 'state_dict') nor a state dict of tensors "
                        f"(keys: {keys}); give a .ckpt written by da fit or a torch.save(model.state_dict())")


def check_ckpt_path(config: Any) -> None:
    """:func:`read_checkpoint` on ``--ckpt_path`` of a parsed LightningCLI config (``last``/``best`` are not files)."""
    sub = config.get("subcommand") if hasattr(config, "get") else None
    if not sub:
        return
    path = config[sub].get("ckpt_path")
    if path and str(path) not in SPECIAL_CKPT_PATHS:
        read_checkpoint(path, "--ckpt_path", lightning=True)
