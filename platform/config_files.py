"""Experiment files on disk: read YAML safely, compose `base:` files, and remember which file set each key.

`base: other.yaml` (relative to the file that names it) is read first, recursively; the file's own keys are
merged over it: mappings deeply, anything else (lists included) replaced. A file may not be its own base,
directly or through others. The origins map lets a validation error name the file a bad key came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from plexlab.errors import ConfigError

BASE_KEY = "base"

Origins = dict[str, str]  # dotted key of every leaf -> the file that set it


def read_yaml(path: Path) -> dict[str, Any]:
    """safe_load a YAML mapping; a missing file or bad YAML is a ConfigError naming the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read experiment file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(path, "", f"{where}not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "", "an experiment file must be a YAML mapping")
    return raw


def read_composed(path: Path) -> tuple[dict[str, Any], Origins]:
    """The file merged over its bases (without the `base` key), and where each leaf key came from."""
    return _compose(read_yaml(path), str(path), path.parent, ())


def compose(raw: dict[str, Any], source: str, directory: Path) -> tuple[dict[str, Any], Origins]:
    """A mapping that may name a `base` (a dict given to `load`): its base is relative to `directory`."""
    return _compose(raw, source, directory, ())


def _compose(
    raw: dict[str, Any], source: str, directory: Path, seen: tuple[Path, ...]
) -> tuple[dict[str, Any], Origins]:
    own = dict(raw)
    base = own.pop(BASE_KEY, None)
    merged: dict[str, Any] = {}
    origins: Origins = {}
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(source, BASE_KEY, "must be the path of another experiment file")
        path = (directory / base).resolve()
        chain = (*seen, Path(source).resolve())
        if path in chain:
            names = " -> ".join(p.name for p in (*chain, path))
            raise ConfigError(source, BASE_KEY, f"base files form a cycle: {names}")
        if not path.is_file():
            raise ConfigError(source, BASE_KEY, f"no such file: {base}")
        merged, origins = _compose(read_yaml(path), str(path), path.parent, chain)
    _merge_into(merged, own, origins, source, "")
    return merged, origins


def _merge_into(target: dict, own: dict, origins: Origins, source: str, prefix: str) -> None:
    """Merge `own` over `target` in place, recording the origin of every leaf (an empty mapping is a leaf)."""
    for key, value in own.items():
        dotted = f"{prefix}{key}"
        if not (isinstance(value, dict) and isinstance(target.get(key), dict)):
            for stale in [k for k in origins if k == dotted or k.startswith(dotted + ".")]:
                del origins[stale]
            target[key] = {} if isinstance(value, dict) else value
        if isinstance(value, dict) and value:
            _merge_into(target[key], value, origins, source, dotted + ".")
        elif dotted not in origins or not isinstance(value, dict):
            origins[dotted] = source


def origin_of(key: str, origins: Origins, default: str) -> str:
    """The file that set `key`: its own entry, the section above it, or the one file everything below it
    came from; `default` (the file that was loaded) when that is not one file."""
    if not key:
        return default
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found is not None:
            return found
    below = {f for k, f in origins.items() if k.startswith(key + ".")}
    return below.pop() if len(below) == 1 else default


def renamed(exc: ConfigError, origins: Origins) -> ConfigError:
    """The same error naming the file its key came from (a base file rather than the one loaded)."""
    origin = origin_of(exc.key, origins, exc.source)
    if origin == exc.source:
        return exc
    where = f"{exc.source}: {exc.key}: " if exc.key else f"{exc.source}: "
    problem = str(exc).removeprefix(where)
    return ConfigError(origin, exc.key, problem)
