"""W&B for sweeps: the environment that groups, tags and names each run, and the export of a sweep as a W&B sweep
config (``wandb sweep <file>``) whose agent runs this sweep's own runs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

from da.runs.sweep.references import is_run_reference
from da.runs.sweep.spec import SweepSpec


def wandb_env(sweep_name: str, run_hash: str, task: str, method: str, seed: Any) -> dict[str, str]:
    """Environment variables W&B reads at ``wandb.init``: the run joins group ``sweep_name``, is tagged
    ``task:...``, ``method:...``, ``seed:...`` and named by its hash; ``WANDB_RUN_ID`` (sweep + hash) with
    ``WANDB_RESUME=allow`` makes a resumed run continue the same W&B run. Under a W&B agent
    (``WANDB_SWEEP_ID`` set) the agent's run id and name are kept."""
    tags = [f"task:{task}", f"method:{method}", f"seed:{seed}"]
    env = {
        "WANDB_RUN_GROUP": sweep_name,
        "WANDB_TAGS": ",".join(t.replace(",", ";")[:64] for t in tags),
    }
    if "WANDB_SWEEP_ID" not in os.environ:
        env["WANDB_NAME"] = run_hash
        env["WANDB_RUN_ID"] = re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep_name}-{run_hash}")[:64]
        env["WANDB_RESUME"] = "allow"
    return env


_WANDB_DIST = {"uniform": "uniform", "log_uniform": "log_uniform_values", "int_uniform": "int_uniform"}


def wandb_sweep_config(spec: SweepSpec, sweep_file: Optional[str | Path] = None, metric: str = "val/source_acc") -> dict:
    """The sweep as a W&B sweep config (``wandb sweep <file>``), for users who drive runs from W&B.

    ``method`` is ``grid`` (or ``random`` when the sweep has a random space); grid keys and ``seed`` become
    ``parameters: {key: {values: [...]}}``, random keys W&B distributions (``log_uniform_values``,
    ``uniform``, ``int_uniform``, ``values``). The agent's command is
    ``da sweep <sweep file> --only ${args_no_hyphens}``: each W&B point runs the matching run of this
    sweep (same run directory, record and resume logic), so W&B and ``da table`` see the same runs.
    The metric W&B optimises is the source validation accuracy (no target label).
    """
    if len(spec.grid) > 1:
        raise ValueError(
            f"sweep '{spec.name}' has {len(spec.grid)} sub-grids; a W&B sweep has one parameter grid, so split "
            f"it into one sweep file per sub-grid to export it"
        )
    if any(is_run_reference(v) for v in spec.overrides.values()) or any(
            is_run_reference(v) for values in spec.grid[0].values() for v in values):
        raise ValueError(f"sweep '{spec.name}' has runs that start from other runs (from_run); a W&B agent runs points "
                         f"in any order, so run it with da sweep instead")
    params: dict[str, dict] = {}
    for key, values in spec.grid[0].items():
        params[key] = {"values": list(values)}
    params["seed"] = {"values": list(spec.seeds)}
    for key, dist in ((spec.random or {}).get("space") or {}).items():
        (kind, args), = dist.items()
        if kind == "choice":
            params[key] = {"values": list(args)}
        else:
            params[key] = {"distribution": _WANDB_DIST[kind], "min": args[0], "max": args[1]}
    sweep_file = str(sweep_file or spec.source or f"{spec.name}.yaml")
    return {
        "name": spec.name,
        "method": "random" if spec.random else "grid",
        "metric": {"name": metric, "goal": "maximize"},
        "parameters": params,
        "command": ["${env}", "da", "sweep", sweep_file, "--only", "${args_no_hyphens}"],
    }
