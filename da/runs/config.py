"""A run's configuration: YAML files composed in order, dotted overrides, and the ONE config hash.

``config_hash(cfg)`` names a run: ``sha1(json.dumps(canonical(cfg without VOLATILE_KEYS), sort_keys=True))``, first
12 hex digits. ``canonical`` makes ``1.0 == 1`` and tuples lists, so equal configs hash equally in any key order;
:data:`VOLATILE_KEYS` (where a run writes, how it logs, where it resumes from) are left out. ``da fit`` hashes its
full config into ``result.json``'s ``config_hash``; ``da sweep`` hashes a run's resolved sweep config to name its
directory. It is the same function with the same canonicalisation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from da.errors import MissingFileError, UserError

HASH_LENGTH = 12
#: dotted config keys that do not change what a run computes (where it writes, how it logs, where it resumes from)
VOLATILE_KEYS = ("run_dir", "ckpt_path", "config", "trainer.logger", "trainer.callbacks", "trainer.default_root_dir",
                 "trainer.enable_progress_bar", "trainer.enable_model_summary", "data.num_workers")


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


def values_match(actual: Any, wanted: Any) -> bool:
    """Whether a parameter value matches a wanted one: equal, equal as text (``--only seed=1``), or equal once
    canonical (``1.0`` and ``1``)."""
    if actual == wanted:
        return True
    return str(actual) == str(wanted) or canonical(actual) == canonical(wanted)


def canonical_config(config: Mapping) -> dict:
    """A canonical copy of ``config`` (:func:`canonical`) without :data:`VOLATILE_KEYS`: what the hash covers."""
    body = canonical(json.loads(json.dumps(dict(config), default=str)))
    for key in VOLATILE_KEYS:
        *parents, last = key.split(".")
        node = get_dotted(body, ".".join(parents)) if parents else body
        if isinstance(node, dict):
            node.pop(last, None)
    return body


def config_hash(config: Mapping, length: int = HASH_LENGTH) -> str:
    """``sha1(json.dumps(canonical_config(config), sort_keys=True))``, first ``length`` (12) hex digits."""
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]
