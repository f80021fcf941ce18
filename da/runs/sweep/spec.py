"""Sweep files: a YAML grid (and seeded random search) expanded into runs named by the hash of their config.

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

**A run that starts from another run of the sweep** (two-stage methods: SHOT and ADDA adapt a source-only model)
names it with a reference instead of a path::

    grid:
      - {data: [a.yaml, b.yaml], method: [configs/method/erm.yaml]}
      - data: [a.yaml, b.yaml]
        method: [configs/method/shot.yaml]
        model.init_from: [{from_run: {method: configs/method/erm.yaml}}]   # file: checkpoints/last.ckpt (default)

The referenced run is the one run of the sweep with the same seed whose parameters are those in ``from_run`` and
agree with the referencing run's on every other key both have (here: the same ``data``), so each task and seed
adapts its own source model. The reference is hashed as the other run's hash (``@run:<hash>/<file>``), not as a
path, so the hash does not depend on where the sweep folder is; the run's ``sweep_config.yaml`` holds the resolved
absolute path. A run whose reference has not finished yet is not started (``waiting``; the sweep runs the
referenced runs first, and a later ``da sweep`` starts what still waits).

The config functions (YAML, merging, dotted keys, the hash) are :mod:`da.runs.config`; planning and launching are
:mod:`da.runs.sweep.plan`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import itertools
import math
import random as _random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from da.errors import unknown_name
from da.runs.config import config_hash, deep_merge, load_yaml, parse_dotted, set_dotted, values_match
from da.runs.sweep.references import (DEFAULT_REFERENCE_FILE, RUN_REFERENCE_PREFIX, check_reference, is_run_reference,
                                      referenced_run)

SWEEP_KEYS = ("name", "description", "base", "grid", "seeds", "random", "overrides")
RANDOM_KEYS = ("n", "seed", "space")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
CONFIG_SUFFIXES = (".yaml", ".yml")


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
    #: hashes of the runs of the same sweep this one starts from (``from_run`` references), in key order
    needs: tuple[str, ...] = ()


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
            for v in values:
                if is_run_reference(v):
                    check_reference(key, v, where)
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
    for key, value in overrides.items():
        parse_dotted(key)
        if is_run_reference(value):
            check_reference(key, value, where)
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


def expand(
    spec: SweepSpec,
    extra_overrides: Optional[Mapping[str, Any]] = None,
    only: Optional[Mapping[str, Any]] = None,
) -> list[RunSpec]:
    """All runs of a sweep, seeds outermost, then each sub-grid (cartesian, in file order), then random points.

    ``extra_overrides`` (from ``--set``) apply to every run after the sweep's own overrides. ``only``
    keeps the runs whose ``params`` match (``{"seed": 0}``, ``{"data": "configs/data/x.yaml"}``); a key of
    the random-search space in ``only`` replaces the random points by that value (how a W&B agent
    passes its sampled point). Two runs that resolve to the same config are kept once. Run references
    (``from_run``, see the module docstring) are resolved over the whole sweep, so ``only`` may leave out the runs
    that others start from.
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
    drafts: list[tuple[list[Path], dict[str, Any], int, dict[str, Any]]] = []  # (files, overrides, seed, params)
    for seed in spec.seeds:
        for grid in spec.grid:
            keys = list(grid)
            for combo in itertools.product(*(grid[k] for k in keys)):
                params = dict(zip(keys, combo))
                files = list(base_files)
                grid_overrides = {}
                for k, v in params.items():
                    if is_config_file(v):
                        files.append(resolve_config_path(v, spec.source))
                    elif v is not None or not any(is_config_file(x) for x in grid[k]):
                        grid_overrides[k] = v
                for point in random_points:
                    overrides = {**spec.overrides, **dict(extra_overrides or {}), **grid_overrides, **point}
                    drafts.append((files, overrides, seed, {**params, **point, "seed": seed}))
    resolved: dict[int, RunSpec] = {}

    def resolve(i: int, chain: tuple[int, ...] = ()) -> RunSpec:
        if i in resolved:
            return resolved[i]
        files, overrides, seed, params = drafts[i]
        if i in chain:
            raise ValueError(f"sweep '{spec.name}': the run references form a cycle (run {params})")
        needs, concrete = [], dict(overrides)
        for key, value in overrides.items():
            if is_run_reference(value):
                target = resolve(referenced_run(drafts, i, key, value, spec.name), chain + (i,))
                needs.append(target.hash)
                concrete[key] = f"{RUN_REFERENCE_PREFIX}{target.hash}/{value.get('file', DEFAULT_REFERENCE_FILE)}"
        config = resolve_run(files, concrete, seed)
        resolved[i] = RunSpec(files=tuple(str(f) for f in files), overrides=concrete, seed=seed, params=params,
                              config=config, hash=config_hash(config), needs=tuple(needs))
        return resolved[i]

    runs: list[RunSpec] = []
    seen: set[str] = set()
    for i in range(len(drafts)):
        params = drafts[i][3]
        if not all(k in params and values_match(params[k], v) for k, v in only.items()):
            continue
        run = resolve(i)
        if run.hash not in seen:
            seen.add(run.hash)
            runs.append(run)
    return runs


@functools.lru_cache(maxsize=None)
def loss_short_name(class_path: str) -> str:
    """A loss (or training method) class's ``name`` attribute (``da.losses.DomainAdversarialLoss`` -> ``dann``,
    ``da.methods.MCD`` -> ``mcd``), importing it;
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
    training_method = model.get("method")
    if not method and isinstance(training_method, Mapping) and training_method.get("class_path"):
        method = loss_short_name(str(training_method["class_path"]))  # a TrainingMethod's name, as the module's
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
