"""Reading checkpoints: the one place that opens a ``.ckpt`` / ``.pt`` file, tensors and plain data only.

A checkpoint is untrusted input (it may come from a colleague, a download or a shared folder), so it is read with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts are unpickled, never code. Nothing
read from a checkpoint names code to import: ``da fit/test --ckpt_path`` takes the run's configuration from the
command line and config files only (see :mod:`da.runs.cli_fit`), and uses the checkpoint's ``hyper_parameters``
only to say which keys differ.

Plain PyTorch (no Lightning), so that losses, models, the module and the run layer can all use it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch

from da.errors import MissingFileError, UserError

StateSource = Union[str, Path, Mapping[str, torch.Tensor]]


def load_checkpoint(path: Union[str, Path]) -> Any:
    """The object saved at ``path``, loaded on the CPU with ``weights_only=True``.

    Raises :class:`~da.errors.MissingFileError` (a ``FileNotFoundError``) for a missing file and
    :class:`~da.errors.UserError` naming the file for one that is truncated, not a PyTorch file, or holds pickled
    code (a class or a function instead of tensors).
    """
    path = Path(path)
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise MissingFileError(f"checkpoint '{path}' {where}; pass the path of a .ckpt/.pt file saved by "
                               "`da fit` (<run_dir>/checkpoints/last.ckpt) or torch.save(model.state_dict())")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint '{path}' holds more than tensors and plain data ({first[:200]}); da reads "
                        "checkpoints with weights_only=True and never runs code from them: re-save it as "
                        "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"checkpoint '{path}' cannot be read ({type(err).__name__}: {str(err)[:200]}); it is "
                        "truncated or not a PyTorch file: re-create it (e.g. rerun the `da fit` that wrote it)") from None


def read_state_dict(source: StateSource) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file or an in-memory state dict.

    Accepts a Lightning checkpoint (``{"state_dict": {...}, ...}``, e.g. a ``TransferModule``'s ``last.ckpt``), a
    plain ``state_dict`` saved with ``torch.save`` or a mapping of tensors; non-tensor entries are dropped.
    """
    if isinstance(source, (str, Path)):
        path, source = source, load_checkpoint(source)
        if not isinstance(source, Mapping):
            raise UserError(f"checkpoint '{path}' holds a {type(source).__name__}, not a state dict (a mapping of "
                            "tensors); save it with torch.save(model.state_dict(), path) or use a .ckpt of `da fit`")
    if not isinstance(source, Mapping):
        raise TypeError(f"expected a state dict (a mapping of tensors), got {type(source).__name__}")
    if "state_dict" in source and isinstance(source["state_dict"], Mapping):
        source = source["state_dict"]
    return {k: v for k, v in source.items() if isinstance(v, torch.Tensor)}


def checkpoint_hparams(path: Union[str, Path]) -> Dict[str, Any]:
    """The ``hyper_parameters`` a Lightning checkpoint recorded (``{}`` when it has none), as plain data."""
    ckpt = load_checkpoint(path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    return dict(hp) if isinstance(hp, Mapping) else {}
