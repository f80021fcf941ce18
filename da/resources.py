"""Configs, recipes and experiment grids by name, from a clone or from an installed wheel.

The YAML files live in the repository's ``configs/`` and ``experiments/`` folders; a wheel carries the same trees
as ``da/_data/configs`` and ``da/_data/experiments`` (``setup.py`` maps them), so the ``configs/...`` paths that the
grids name resolve next to them exactly as they do in a clone. A name is looked up, in order:

1. as a path (absolute, or relative to the working directory): ``--config my.yaml``, ``--config configs/x.yaml``
   inside a clone;
2. in the packaged tree, with or without the leading ``configs/`` (``experiments/``) and the ``.yaml`` suffix:
   ``--config quickstart``, ``--config method/dann``, ``--config configs/method/dann.yaml`` from any folder;
3. for configs only, under ``benchmark/`` (recipes) and ``method/``: ``--config dann``.

An unknown name raises :class:`~da.errors.UserError` naming the closest packaged names.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import List, Optional, Sequence

from da.errors import UserError

_PKG = Path(__file__).resolve().parent
KINDS = ("configs", "experiments")


def data_root() -> Path:
    """The folder that holds ``configs/`` and ``experiments/``: ``da/_data`` in a wheel, the repository in a clone."""
    packaged = _PKG / "_data"
    if (packaged / "configs").is_dir():
        return packaged
    return _PKG.parent


def folder(kind: str = "configs") -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind '{kind}' must be one of {KINDS}")
    return data_root() / kind


def available(kind: str = "configs") -> List[str]:
    """Every packaged YAML file of ``kind`` as ``sub/name`` without ``.yaml`` (``method/dann``, ``quickstart``)."""
    base = folder(kind)
    if not base.is_dir():
        return []
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml") if p.is_file())


def _candidates(name: str, kind: str) -> List[Path]:
    base = folder(kind)
    stem = name
    if stem.startswith(f"{kind}/"):
        stem = stem[len(kind) + 1:]
    names = [stem] if stem.endswith((".yaml", ".yml")) else [stem + ".yaml", stem]
    subs = ("", "benchmark/", "method/") if kind == "configs" else ("",)
    return [base / f"{sub}{n}" for sub in subs for n in names]


def resolve(name: str, kind: str = "configs") -> Path:
    """The file ``name`` stands for (see the module docstring); a :class:`UserError` when there is none."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    for c in _candidates(str(name), kind):
        if c.is_file():
            return c
    known = available(kind)
    close = difflib.get_close_matches(str(name).removeprefix(f"{kind}/").removesuffix(".yaml"), known, n=3,
                                      cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    what = "config" if kind == "configs" else "experiment grid"
    raise UserError(f"{what} '{name}' not found: not a file relative to {Path.cwd()} and not a packaged {what}"
                    f"{hint} (list them with `da list {'recipes' if kind == 'configs' else 'grids'}`; "
                    f"packaged ones are in {folder(kind)})")


def resolve_config_args(argv: Optional[Sequence[str]]) -> Optional[List[str]]:
    """``argv`` with every ``--config X`` / ``--config=X`` replaced by the file ``X`` resolves to (a YAML string such
    as ``--config '{trainer: ...}'`` is left alone). ``None`` stands for the command line: ``sys.argv`` is rewritten in
    place (LightningCLI then reads it, as do the child processes Lightning's DDP launcher starts) and ``None`` returned.
    """
    if argv is None:
        import sys

        sys.argv[1:] = resolve_config_args(sys.argv[1:])
        return None
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out) and _looks_like_name(out[i + 1]):
            out[i + 1] = str(resolve(out[i + 1]))
        elif arg.startswith("--config=") and _looks_like_name(arg.split("=", 1)[1]):
            out[i] = "--config=" + str(resolve(arg.split("=", 1)[1]))
    return out


def _looks_like_name(value: str) -> bool:
    """A file name or packaged name, not inline YAML (``{...}``, ``key: value``) or a flag."""
    return bool(value) and not value.startswith(("-", "{", "[")) and ": " not in value and "\n" not in value
