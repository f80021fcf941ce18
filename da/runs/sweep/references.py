"""Run references in sweep files: a run that starts from another run of the same sweep (``from_run``).

A grid or override value ``{from_run: {key: value, ...}, file: checkpoints/last.ckpt}`` names the one run of the
sweep with the same seed, the ``from_run`` parameters, and the same value on every other parameter both runs have
(see :mod:`da.runs.sweep.spec`, whose :func:`~da.runs.sweep.spec.expand` resolves them). The reference is hashed as
``@run:<hash>/<file>`` and turned into an absolute path only when the run's directory is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from da.errors import unknown_name
from da.runs.config import values_match

RUN_REFERENCE_KEYS = ("from_run", "file")
RUN_REFERENCE_PREFIX = "@run:"
DEFAULT_REFERENCE_FILE = "checkpoints/last.ckpt"


def is_run_reference(value: Any) -> bool:
    """A grid or override value ``{from_run: {key: value, ...}, file: ...}`` naming another run of the sweep."""
    return isinstance(value, Mapping) and "from_run" in value


def check_reference(key: str, value: Mapping, where: str) -> None:
    for k in value:
        if k not in RUN_REFERENCE_KEYS:
            raise unknown_name(f"key of the run reference in '{key}'{where}", k, RUN_REFERENCE_KEYS)
    wanted = value["from_run"]
    if not isinstance(wanted, Mapping) or not wanted or "seed" in wanted:
        raise ValueError(f"'{key}'{where}: from_run must map sweep parameters to values, e.g. "
                         f"{{from_run: {{method: configs/method/erm.yaml}}}} (the seed is always the run's own), "
                         f"got {wanted!r}")
    file = value.get("file", DEFAULT_REFERENCE_FILE)
    if not isinstance(file, str) or not file or Path(file).is_absolute() or ".." in Path(file).parts:
        raise ValueError(f"'{key}'{where}: file must be a path inside the referenced run's folder, e.g. "
                         f"{DEFAULT_REFERENCE_FILE}, got {file!r}")


def reference_text(value: Mapping) -> str:
    """How a run reference reads in listings: ``<run method=configs/method/erm.yaml>/checkpoints/last.ckpt``."""
    wanted = " ".join(f"{k}={v}" for k, v in value["from_run"].items())
    return f"<run {wanted}>/{value.get('file', DEFAULT_REFERENCE_FILE)}"


def resolve_references(config: Any, sweep_dir: str | Path) -> Any:
    """``config`` with every ``@run:<hash>/<file>`` string replaced by the absolute path ``<sweep_dir>/<hash>/<file>``."""
    if isinstance(config, str) and config.startswith(RUN_REFERENCE_PREFIX):
        return str((Path(sweep_dir) / config[len(RUN_REFERENCE_PREFIX):]).resolve())
    if isinstance(config, Mapping):
        return {k: resolve_references(v, sweep_dir) for k, v in config.items()}
    if isinstance(config, list):
        return [resolve_references(v, sweep_dir) for v in config]
    return config


def referenced_run(drafts: Sequence[tuple], i: int, key: str, ref: Mapping, sweep_name: str) -> int:
    """The index of the one draft run that ``ref`` (held by draft ``i`` under ``key``) names: the same seed, the
    ``from_run`` parameters, and the same value on every other parameter both runs have."""
    params = drafts[i][3]
    wanted = ref["from_run"]
    found = []
    for j, (_, _, seed, other) in enumerate(drafts):
        if j == i or seed != drafts[i][2]:
            continue
        if not all(k in other and values_match(other[k], v) for k, v in wanted.items()):
            continue
        shared = (set(other) & set(params)) - set(wanted) - {key, "seed"}
        if all(values_match(other[k], params[k]) for k in shared):
            found.append(j)
    described = {k: v for k, v in params.items() if k != key}
    if not found:
        raise ValueError(f"sweep '{sweep_name}': {key}: {reference_text(ref)} matches no run of the sweep for the run "
                         f"{described}; the referenced run must be in the grid (same seed, same other parameters)")
    if len(found) > 1:
        options = "; ".join(str({k: v for k, v in drafts[j][3].items() if k not in params or k in wanted})
                            for j in found[:4])
        raise ValueError(f"sweep '{sweep_name}': {key}: {reference_text(ref)} matches {len(found)} runs for the run "
                         f"{described} ({options}); add parameters to from_run so it names one")
    return found[0]
