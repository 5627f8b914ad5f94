"""YAML -> validated pydantic config, with ``--set a.b=value`` overrides.

Errors name the file and the dotted field path, and say what was expected. YAML is
read with ``yaml.safe_load`` only: a config never constructs Python objects.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message names file and field."""


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], where: str) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to nested dicts/lists, in order.

    A numeric part indexes a list: ``sources.0.uri=s3://bucket/photos/`` sets the first source's uri.
    """
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"{where}: override {item!r} must look like field.path=value")
        keys = path.strip().split(".")
        node: Any = data
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"{where}: override {item!r}: {'.'.join(keys[:depth]) or '<top>'} "
                                      f"is a list of {len(node)}; use an index from 0 to {len(node) - 1}")
                k = int(k)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise ConfigError(f"{where}: override {item!r}: {'.'.join(keys[:depth])!r} is not a section")
            if last:
                node[k] = yaml.safe_load(raw) if raw.strip() else ""
            else:
                node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of fields, got {type(data).__name__}")
    return data


def load_config(model: type[M], source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> M:
    """Load and validate ``source`` (a YAML path or a dict) as ``model``."""
    where = "<dict>" if isinstance(source, dict) else str(source)
    data = dict(source) if isinstance(source, dict) else read_yaml(source)
    data = apply_overrides(data, list(overrides), where)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{where}: invalid config ({exc.error_count()} problem(s)):"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<top>"
            lines.append(f"  - {loc}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and
                                                        not isinstance(err["input"], dict) else ""))
        raise ConfigError("\n".join(lines)) from None


def config_digest(cfg: BaseModel, exclude: set[str] | None = None) -> str:
    """sha256 of the canonical JSON of a config (what a resume compares)."""
    body = cfg.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
