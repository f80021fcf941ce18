"""Sweeps: a YAML grid (and seeded random search) expanded into runs named by the hash of their config.

Sweep file::

    name: digits_ablation
    base: [configs/quickstart.yaml]            # config files every run starts from
    grid:                                      # cartesian product, in the order written
      data: [configs/data/jda_mnist_usps.yaml, configs/data/jda_usps_mnist.yaml]  # .yaml value = config file
      model.losses[0].init_args.weight: [0.1, 0.3, 1.0]                           # dotted key = override
    seeds: [0, 1, 2]
    random: {n: 10, seed: 0, space: {model.optimizer.init_args.lr: {log_uniform: [1e-4, 1e-1]}}}
    overrides: {trainer.max_steps: 500}

A run is ``(config files, overrides, seed)``. It is resolved into one dict (the base files, then the grid's
config files in grid order, deep-merged; then ``overrides``, the grid's dotted keys and the random sample;
then ``seed_everything = seed``) and lives in ``<out>/<name>/<config_hash>/``. Re-running a sweep skips
finished runs, resumes interrupted ones from ``checkpoints/last.ckpt`` and retries failed ones only when
asked (``retry_failed``). A value that is a ``.yaml`` path is a whole config file merged at the root; the
grid key is then only its label in the run's ``params``. ``grid`` may also be a list of such mappings (as
scikit-learn's ``ParameterGrid``): the union of their cartesian products, e.g. a baseline once plus a
method over its weights.

Runs are ordered seeds first (every setting with seed 0, then seed 1, ...), so a sweep stopped halfway
already holds a complete first seed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import itertools
import json
import math
import os
import random as _random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TextIO

import yaml

from da.errors import unknown_name
from da.experiments import records as rec


# ----------------------------------------------------------------------------------------------------
# config trees: YAML loading, deep merge, dotted overrides, hashing
# ----------------------------------------------------------------------------------------------------

HASH_LENGTH = 12
# top-level keys that name where a run goes, not what it computes
UNHASHED_KEYS = ("run_dir",)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``; users write ``1e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> Any:
    """Load one YAML file (``1e-3`` is a float); an empty file is ``{}``."""
    path = Path(path)
    from da.errors import MissingFileError, UserError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {err.start}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    return {} if data is None else data


def parse_yaml_value(text: str) -> Any:
    """A command-line value as YAML would read it: ``0.3`` -> 0.3, ``true`` -> True, ``a`` -> 'a'."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def deep_merge(base: Any, update: Any) -> Any:
    """``update`` merged into a copy of ``base`` (mappings recursively, everything else replaced)."""
    if not isinstance(base, Mapping) or not isinstance(update, Mapping):
        return copy.deepcopy(update)
    if "class_path" in base and "class_path" in update and base["class_path"] != update["class_path"]:
        return copy.deepcopy(dict(update))
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if key in out else copy.deepcopy(value)
    return out


_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")
_KEY = re.compile(r"^[^.\[\]]+(\[-?\d+\])*(\.[^.\[\]]+(\[-?\d+\])*)*$")


def parse_dotted(key: str) -> list[str | int]:
    """``"model.losses[0].init_args.weight"`` -> ``["model", "losses", 0, "init_args", "weight"]``."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(
            f"bad override key {key!r}; write dotted keys with list indices, e.g. "
            f"'model.losses[0].init_args.weight'"
        )
    return [name if name else int(index) for name, index in _TOKEN.findall(key)]


def set_dotted(cfg: dict, key: str, value: Any) -> dict:
    """Set ``key`` (dotted, with list indices) to ``value`` in ``cfg`` in place; return ``cfg``."""
    parts = parse_dotted(key)
    node: Any = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(str(p) for p in parts[:depth]) or "<root>"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ValueError(f"override '{key}': {here} is {type(node).__name__}, not a list; drop the [{part}]")
            if not -len(node) <= part < len(node):
                raise ValueError(
                    f"override '{key}': index {part} is out of range, {here} has {len(node)} item(s); "
                    f"set the whole list in a config file first"
                )
        elif not isinstance(node, dict):
            raise ValueError(f"override '{key}': {here} is {type(node).__name__} {node!r}, not a mapping")
        if last:
            node[part] = copy.deepcopy(value)
        else:
            if isinstance(part, str) and (part not in node or node[part] is None):
                node[part] = {}
            node = node[part]
    return cfg


def get_dotted(cfg: Any, key: str, default: Any = None) -> Any:
    """The value at dotted ``key`` in ``cfg``, or ``default`` when any step is missing."""
    node = cfg
    for part in parse_dotted(key):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return default
    return node


def canonical(value: Any) -> Any:
    """A JSON-ready copy where ``1.0 == 1`` and tuples are lists, so equal configs hash equally."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def unhashed_keys() -> tuple[str, ...]:
    """Dotted keys left out of the hash: where a run writes and how it logs, not what it computes
    (the same list ``da fit`` uses for its record's ``config_hash``, ``da.run_record.VOLATILE_KEYS``)."""
    try:
        from da.run_record import VOLATILE_KEYS
    except ImportError:
        return UNHASHED_KEYS
    return tuple(dict.fromkeys((*UNHASHED_KEYS, *VOLATILE_KEYS)))


def config_hash(cfg: Mapping) -> str:
    """``sha1(json.dumps(canonical(cfg minus unhashed keys), sort_keys=True))``, first 12 hex digits."""
    body = copy.deepcopy(dict(cfg))
    for key in unhashed_keys():
        *parents, last = key.split(".")
        node = get_dotted(body, ".".join(parents)) if parents else body
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(canonical(body), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:HASH_LENGTH]


# ----------------------------------------------------------------------------------------------------
# sweep files
# ----------------------------------------------------------------------------------------------------

SWEEP_KEYS = ("name", "description", "base", "grid", "seeds", "random", "overrides")
RANDOM_KEYS = ("n", "seed", "space")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
CONFIG_SUFFIXES = (".yaml", ".yml")
SWEEP_CONFIG_FILE = "sweep_config.yaml"
LAST_CKPT = Path("checkpoints") / "last.ckpt"


@dataclass
class SweepSpec:
    """A parsed sweep file. ``source`` is the file it came from (config paths are found relative to it)."""

    name: str
    base: list[str] = field(default_factory=list)
    grid: list[dict[str, list]] = field(default_factory=lambda: [{}])
    seeds: list[int] = field(default_factory=lambda: [0])
    random: Optional[dict] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: Optional[Path] = None


@dataclass
class RunSpec:
    """One run of a sweep: what it is made of, its resolved config and the hash that names it."""

    files: tuple[str, ...]
    overrides: dict[str, Any]
    seed: int
    params: dict[str, Any]
    config: dict
    hash: str


def is_config_file(value: Any) -> bool:
    """A grid value that is a config file path (a string ending in ``.yaml`` or ``.yml``)."""
    return isinstance(value, str) and value.lower().endswith(CONFIG_SUFFIXES)


def parse_sweep(data: Any, source: Optional[Path] = None) -> SweepSpec:
    """Validate a loaded sweep mapping and return a :class:`SweepSpec` (errors name the key and the fix)."""
    where = f" in {source}" if source else ""
    if not isinstance(data, Mapping):
        raise ValueError(f"sweep file{where} must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise unknown_name(f"sweep key{where}", key, SWEEP_KEYS)
    name = data.get("name") or (source.stem if source else None)
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(name)):
        raise ValueError(f"sweep name {name!r}{where} must be letters, digits, '_', '-', '.' or '+' (it names a folder)")
    base = data.get("base") or []
    if isinstance(base, str):
        base = [base]
    if not isinstance(base, list) or not all(is_config_file(b) for b in base):
        raise ValueError(f"sweep 'base'{where} must be a list of .yaml config files, got {base!r}")
    grid = data.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    if not grids or not all(isinstance(g, Mapping) for g in grids):
        raise ValueError(
            f"sweep 'grid'{where} must map keys to lists of values (or be a list of such mappings, "
            f"one cartesian product each), got {grid!r}"
        )
    grids = [dict(g) for g in grids]
    for g in grids:
        for key, values in g.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"sweep grid key '{key}'{where} needs a non-empty list of values, got {values!r}")
            if not any(is_config_file(v) for v in values):
                parse_dotted(key)
            elif not all(is_config_file(v) or v is None for v in values):
                raise ValueError(
                    f"sweep grid key '{key}'{where} mixes config files and plain values {values!r}; "
                    f"use one key for files and another for overrides"
                )
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"sweep 'seeds'{where} must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep 'seeds'{where} repeats a seed: {seeds!r}")
    overrides = dict(data.get("overrides") or {})
    for key in overrides:
        parse_dotted(key)
    random = data.get("random")
    if random is not None:
        _check_random(random, where)
    return SweepSpec(
        name=str(name), base=list(base), grid=grids, seeds=list(seeds), random=random,
        overrides=overrides, description=str(data.get("description") or ""), source=source,
    )


def _check_random(random: Any, where: str) -> None:
    if not isinstance(random, Mapping):
        raise ValueError(f"sweep 'random'{where} must be a mapping {{n, seed, space}}, got {random!r}")
    for key in random:
        if key not in RANDOM_KEYS:
            raise unknown_name(f"random-search key{where}", key, RANDOM_KEYS)
    n = random.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"sweep random.n{where} must be a positive int, got {n!r}")
    space = random.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"sweep random.space{where} must map keys to distributions, e.g. {{lr: {{log_uniform: [1e-4, 1e-1]}}}}")
    for key, dist in space.items():
        parse_dotted(key)
        if not isinstance(dist, Mapping) or len(dist) != 1:
            raise ValueError(f"random.space['{key}']{where} must be one of {DISTRIBUTIONS} with its arguments, got {dist!r}")
        (kind, args), = dist.items()
        if kind not in DISTRIBUTIONS:
            raise unknown_name(f"distribution for '{key}'{where}", kind, DISTRIBUTIONS)
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ValueError(f"random.space['{key}'].choice{where} needs a non-empty list, got {args!r}")
        else:
            if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args) and args[0] < args[1]):
                raise ValueError(f"random.space['{key}'].{kind}{where} needs [low, high] with low < high, got {args!r}")
            if kind == "log_uniform" and args[0] <= 0:
                raise ValueError(f"random.space['{key}'].log_uniform{where} needs low > 0, got {args!r}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    path = Path(path)
    return parse_sweep(load_yaml(path), source=path.resolve())


def sample_random(random: Optional[Mapping]) -> list[dict[str, Any]]:
    """The ``n`` points of a random search, drawn with ``random.Random(seed)`` (default seed 0).

    ``uniform [a, b]``, ``log_uniform [a, b]`` (``exp U(log a, log b)``), ``int_uniform [a, b]``
    (inclusive), ``choice [...]``. Floats are rounded to 4 significant digits so that run parameters
    stay readable; the same file always gives the same points.
    """
    if not random:
        return [{}]
    rng = _random.Random(random.get("seed", 0))
    points = []
    for _ in range(random["n"]):
        point = {}
        for key, dist in random["space"].items():
            (kind, args), = dist.items()
            if kind == "uniform":
                value = float(f"{rng.uniform(args[0], args[1]):.4g}")
            elif kind == "log_uniform":
                value = float(f"{math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))):.4g}")
            elif kind == "int_uniform":
                value = rng.randint(int(args[0]), int(args[1]))
            else:
                value = copy.deepcopy(args[rng.randrange(len(args))])
            point[key] = value
        points.append(point)
    return points


def resolve_config_path(path: str, sweep_file: Optional[Path] = None) -> Path:
    """Find a config file: as given (absolute, or relative to the working directory), else relative to
    the sweep file's folder or one of its parents (so ``experiments/x.yaml`` can name ``configs/...``)."""
    p = Path(path)
    tried = [p]
    if p.is_file():
        return p
    if not p.is_absolute() and sweep_file is not None:
        for folder in Path(sweep_file).resolve().parents:
            candidate = folder / p
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"config file '{path}' not found (tried {', '.join(str(t) for t in tried[:4])}); "
        f"give a path relative to the working directory or to the sweep file"
    )


def resolve_run(files: Sequence[str | Path], overrides: Mapping[str, Any], seed: Optional[int]) -> dict:
    """The one config dict of a run: files deep-merged in order, then dotted overrides, then the seed."""
    cfg: dict = {}
    for f in files:
        data = load_yaml(f)
        if not isinstance(data, Mapping):
            raise ValueError(f"config file {f} must hold a mapping at the top level, got {type(data).__name__}")
        cfg = deep_merge(cfg, data)
    for key, value in overrides.items():
        set_dotted(cfg, key, value)
    if seed is not None:
        cfg["seed_everything"] = seed
    return cfg


def _matches(actual: Any, wanted: Any) -> bool:
    if actual == wanted:
        return True
    return str(actual) == str(wanted) or canonical(actual) == canonical(wanted)


def expand(
    spec: SweepSpec,
    extra_overrides: Optional[Mapping[str, Any]] = None,
    only: Optional[Mapping[str, Any]] = None,
) -> list[RunSpec]:
    """All runs of a sweep, seeds outermost, then each sub-grid (cartesian, in file order), then random points.

    ``extra_overrides`` (from ``--set``) apply to every run after the sweep's own overrides. ``only``
    keeps the runs whose ``params`` match (``{"seed": 0}``, ``{"data": "configs/data/x.yaml"}``); a key of
    the random-search space in ``only`` replaces the random points by that value (how a W&B agent
    passes its sampled point). Two runs that resolve to the same config are kept once.
    """
    only = dict(only or {})
    space = dict((spec.random or {}).get("space") or {})
    known = {k for g in spec.grid for k in g} | set(space) | {"seed"}
    for key in only:
        if key not in known:
            raise unknown_name(f"sweep parameter in --only for sweep '{spec.name}'", key, known)
    if space and any(k in only for k in space):
        missing = [k for k in space if k not in only]
        if missing:
            raise ValueError(f"--only sets some random-search keys but not {missing}; give all of {sorted(space)}")
        random_points = [{k: only[k] for k in space}]
    else:
        random_points = sample_random(spec.random)
    base_files = [resolve_config_path(b, spec.source) for b in spec.base]
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for seed in spec.seeds:
        if "seed" in only and not _matches(seed, only["seed"]):
            continue
        for grid in spec.grid:
            keys = list(grid)
            if any(k not in grid and k not in space and k != "seed" for k in only):
                continue
            for combo in itertools.product(*(grid[k] for k in keys)):
                params = dict(zip(keys, combo))
                if any(k in params and not _matches(params[k], v) for k, v in only.items()):
                    continue
                files = list(base_files)
                grid_overrides = {}
                for k, v in params.items():
                    if is_config_file(v):
                        files.append(resolve_config_path(v, spec.source))
                    elif v is not None or not any(is_config_file(x) for x in grid[k]):
                        grid_overrides[k] = v
                for point in random_points:
                    overrides = {**spec.overrides, **dict(extra_overrides or {}), **grid_overrides, **point}
                    config = resolve_run(files, overrides, seed)
                    h = config_hash(config)
                    if h in seen:
                        continue
                    seen.add(h)
                    runs.append(
                        RunSpec(
                            files=tuple(str(f) for f in files), overrides=overrides, seed=seed,
                            params={**params, **point, "seed": seed}, config=config, hash=h,
                        )
                    )
    return runs


@functools.lru_cache(maxsize=None)
def loss_short_name(class_path: str) -> str:
    """A loss class's ``name`` attribute (``da.losses.DomainAdversarialLoss`` -> ``dann``), importing it;
    the lower-cased class name when it cannot be imported."""
    module, _, cls = str(class_path).rpartition(".")
    try:
        name = getattr(importlib.import_module(module), cls).name
        if isinstance(name, str) and name:
            return name
    except Exception:  # any import problem: fall back to the class name
        pass
    return cls.lower()


def describe_run(config: Mapping) -> tuple[str, str]:
    """(task, method) as far as a config tells, for listings and W&B tags.

    The record written by the run is the authority; this reads ``data.[init_args.]sources/target`` and
    ``model.[init_args.]method_name`` or the loss terms' class names, and ``"?"`` when absent.
    """
    data = config.get("data") or {}
    data = data.get("init_args", data) if isinstance(data, Mapping) else {}
    sources = data.get("sources", data.get("source"))
    if isinstance(sources, str):
        sources = [sources]
    target = data.get("target")
    task = f"{'+'.join(map(str, sources))}->{target}" if sources and target else "?"
    model = config.get("model") or {}
    model = model.get("init_args", model) if isinstance(model, Mapping) else {}
    method = model.get("method_name")
    if not method:
        losses = model.get("losses") or []
        names = []
        for term in losses if isinstance(losses, list) else []:
            if isinstance(term, Mapping):
                args = term.get("init_args") or {}
                names.append(str(args.get("name") or loss_short_name(str(term.get("class_path", "?")))))
            else:
                names.append(str(term))
        method = "+".join(names) if names else "erm"
        if data.get("supervision") == "target" and data.get("target_labeled_per_class") is None:
            method = "oracle"  # trained on all target labels
    return task, str(method)


# ----------------------------------------------------------------------------------------------------
# planning: what to do with each run given its directory
# ----------------------------------------------------------------------------------------------------

ACTIONS = ("run", "resume", "retry", "skip", "skip-failed")
_INTERRUPT_MARKERS = ("KeyboardInterrupt", "SIGTERM", "SIGINT", "interrupted")


@dataclass
class PlannedRun:
    """A run and what the sweep will do with it: ``run`` (fresh), ``resume`` (from last.ckpt), ``retry``
    (a failed run, fresh, only with ``retry_failed``), ``skip`` (finished), ``skip-failed``."""

    run: RunSpec
    run_dir: Path
    status: str
    action: str

    @property
    def resume(self) -> bool:
        return self.action == "resume"


def _interrupted(run_dir: Path) -> bool:
    try:
        error = json.loads((run_dir / rec.RESULT_FILE).read_text()).get("error") or ""
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    head = str(error).strip().splitlines()[-1:] or [""]
    return any(m in head[0] or str(error).startswith(m) for m in _INTERRUPT_MARKERS)


def decide(run_dir: str | Path, retry_failed: bool = False) -> tuple[str, str]:
    """(status, action) for one run directory.

    finished -> skip; failed -> retry with ``retry_failed`` else skip-failed (a run that failed because
    it was interrupted, ``KeyboardInterrupt``/``SIGTERM``, is resumed like a running one); running,
    missing or corrupt record -> resume when ``checkpoints/last.ckpt`` exists, else run.
    """
    run_dir = Path(run_dir)
    status = rec.run_status(run_dir)
    if status == "finished":
        return status, "skip"
    if status == "failed" and not _interrupted(run_dir):
        return status, "retry" if retry_failed else "skip-failed"
    if status == "failed":
        status = "interrupted"
    return status, "resume" if (run_dir / LAST_CKPT).is_file() else "run"


def plan(runs: Sequence[RunSpec], sweep_dir: str | Path, retry_failed: bool = False) -> list[PlannedRun]:
    """Decide, for each run, from its directory ``<sweep_dir>/<hash>``."""
    sweep_dir = Path(sweep_dir)
    out = []
    for run in runs:
        run_dir = sweep_dir / run.hash
        status, action = decide(run_dir, retry_failed)
        out.append(PlannedRun(run, run_dir, status, action))
    return out


def format_plan(planned: Sequence[PlannedRun]) -> str:
    """The ``--dry-run`` listing: one line per run (hash, action, status, seed, task, method, params)."""
    rows = [("hash", "action", "status", "seed", "task", "method", "params")]
    for p in planned:
        task, method = describe_run(p.run.config)
        params = ", ".join(f"{k}={v}" for k, v in p.run.params.items() if k != "seed")
        rows.append((p.run.hash, p.action, p.status, str(p.run.seed), task, method, params))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    counts = {a: sum(p.action == a for p in planned) for a in ACTIONS}
    lines.append(
        f"{len(planned)} runs: " + ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What a sweep invocation did. ``failed`` lists (hash, first line of the error)."""

    name: str
    sweep_dir: Path
    total: int
    already_finished: int = 0
    launched: int = 0
    finished: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_failed: int = 0
    submitted: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_failed

    def format(self) -> str:
        lines = [
            f"sweep '{self.name}' in {self.sweep_dir}: {self.total} runs; {self.already_finished} already finished, "
            f"{self.launched} launched: {self.finished} finished, {len(self.failed)} failed"
            + (f", {self.submitted} submitted" if self.submitted else "")
            + (f"; {self.skipped_failed} failed before and skipped (--retry-failed reruns them)" if self.skipped_failed else "")
        ]
        for h, err in self.failed:
            lines.append(f"  FAILED {h}: {err}")
        return "\n".join(lines)


def write_run_dir(planned: PlannedRun, sweep_name: str) -> None:
    """Write ``sweep_config.yaml`` (the resolved config) and ``sweep.json`` (name, params, hash) into
    the run directory, before the run is launched."""
    run_dir = planned.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SWEEP_CONFIG_FILE).write_text(yaml.safe_dump(planned.run.config, sort_keys=False))
    info = {
        "sweep": {"name": sweep_name, "params": planned.run.params},
        "hash": planned.run.hash,
        "files": list(planned.run.files),
        "overrides": planned.run.overrides,
        "seed": planned.run.seed,
    }
    rec.write_json_atomic(run_dir / rec.SWEEP_INFO_FILE, info)


def run_sweep(
    spec: SweepSpec,
    out: str | Path = "runs/sweeps",
    launcher: Any = "local",
    retry_failed: bool = False,
    dry_run: bool = False,
    command_builder: Optional[Callable[[Path, bool], list[str]]] = None,
    wandb: bool = False,
    only: Optional[Mapping[str, Any]] = None,
    extra_overrides: Optional[Mapping[str, Any]] = None,
    log: Optional[TextIO] = None,
    cwd: Optional[str | Path] = None,
) -> SweepSummary:
    """Expand, plan and launch a sweep; return what it did.

    ``launcher`` is a name (``local``, ``local-gpus``, ``slurm``, ``ddp``) or a launcher object;
    ``command_builder(run_dir, resume) -> argv`` defaults to ``da fit --config <run_dir>/sweep_config.yaml
    --run_dir <run_dir> [--ckpt_path last]`` and is injectable for tests. With ``wandb`` each run gets
    ``WANDB_RUN_GROUP`` (the sweep name), ``WANDB_TAGS`` (task, method, seed) and ``WANDB_NAME`` (hash).
    """
    from da.experiments import launchers as L

    log = log if log is not None else sys.stderr
    runs = expand(spec, extra_overrides=extra_overrides, only=only)
    sweep_dir = Path(out) / spec.name
    planned = plan(runs, sweep_dir, retry_failed=retry_failed)
    summary = SweepSummary(spec.name, sweep_dir, total=len(planned))
    summary.already_finished = sum(p.action == "skip" for p in planned)
    summary.skipped_failed = sum(p.action == "skip-failed" for p in planned)
    if dry_run:
        print(format_plan(planned), file=log)
        return summary
    if isinstance(launcher, str):
        launcher = L.make_launcher(launcher)
    builder = command_builder or L.fit_command
    jobs = []
    for p in planned:
        if p.action in ("skip", "skip-failed"):
            continue
        write_run_dir(p, spec.name)
        task, method = describe_run(p.run.config)
        env = L.wandb_env(spec.name, p.run.hash, task, method, p.run.seed) if wandb else {}
        jobs.append(
            L.Job(
                run_dir=str(p.run_dir.resolve()),
                argv=[str(a) for a in builder(p.run_dir.resolve(), p.resume)],
                env=env,
                cwd=str(Path(cwd or os.getcwd()).resolve()),
                sweep={"name": spec.name, "params": p.run.params},
                info={"hash": p.run.hash, "seed": p.run.seed, "task": task, "method": method,
                      "config": p.run.config, "action": p.action},
            )
        )
    progress = L.Progress(
        total=len(planned), done=summary.already_finished, failed=summary.skipped_failed, stream=log, name=spec.name
    )
    progress.show()
    summary.launched = len(jobs)
    try:
        statuses = launcher.run(jobs, progress)
    finally:
        progress.close()
    for job, status in zip(jobs, statuses):
        if status == "finished":
            summary.finished += 1
        elif status == "failed":
            summary.failed.append((job.info["hash"], L.first_error_line(Path(job.run_dir))))
        else:
            summary.submitted += 1
    return summary


# ----------------------------------------------------------------------------------------------------
# W&B sweep export
# ----------------------------------------------------------------------------------------------------

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
