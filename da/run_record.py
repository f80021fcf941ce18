"""The ``result.json`` record every run writes: what ran, on what, with which code, and what it measured.

Schema 1 (keys): ``schema, status ("running" | "finished" | "failed"), task, method, seed, config_hash, config,
metrics, history, split_info, wall_time_s, git_commit, versions, run_dir, started_at, finished_at, error`` and, when
present, ``diagnostics`` (the negative-transfer monitor) and ``sweep`` (added by ``da sweep``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

SCHEMA = 1
#: config keys that do not change what a run computes (where it writes, how it logs, where it resumes from)
VOLATILE_KEYS = ("run_dir", "ckpt_path", "config", "trainer.logger", "trainer.callbacks", "trainer.default_root_dir",
                 "trainer.enable_progress_bar", "trainer.enable_model_summary", "data.num_workers")


def canonical_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``config`` without :data:`VOLATILE_KEYS` (dotted paths), for hashing."""
    out = json.loads(json.dumps(config, default=str))
    for key in VOLATILE_KEYS:
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def config_hash(config: Dict[str, Any], length: int = 12) -> str:
    """sha1 of the canonical config as sorted JSON: the same config gives the same hash, in any key order."""
    blob = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:length]


def git_commit(path: Optional[Path] = None) -> Optional[str]:
    """The commit of the `da` checkout (or ``path``), with ``-dirty`` when it has uncommitted changes; None outside git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> Dict[str, Optional[str]]:
    import importlib.metadata as md

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for pkg in ("da", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "numpy", "transformers", "wandb"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_record(run_dir: Path, record: Dict[str, Any]) -> Path:
    """Write ``result.json`` atomically (a reader never sees half a file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "result.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=_json_default))
    os.replace(tmp, path)
    return path


def read_record(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _json_default(obj: Any) -> Any:
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.item() if obj.numel() == 1 else obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
