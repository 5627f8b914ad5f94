"""The config kit: one base section, presets by name, YAML -> validated model, ``--set a.b=value`` overrides.

Both schemas (the corpus config, the training config) are built from :class:`Section`: unknown fields are errors,
and the docstring under a field is its description (torchtitan's convention). Errors name the file and the dotted
field path, and say what was expected. YAML is read with ``yaml.safe_load`` only: a config never constructs Python
objects.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from omnilv.errors import OmniLVError

M = TypeVar("M", bound=BaseModel)
#: The kinds of bundled presets: ``omnilv/presets/<kind>/*.yaml`` (a link to the repository's ``configs/``).
PRESET_KINDS = ("corpus", "train")


class ConfigError(OmniLVError, ValueError):
    """A config file is missing, unreadable or invalid; the message names file and field."""


class Section(BaseModel):
    """Base of every config section: unknown fields are errors; the docstring under a field is its description."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def preset_dir(kind: str) -> Path:
    """The folder of the bundled ``kind`` presets (package data, so found from any folder)."""
    if kind not in PRESET_KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; known: {', '.join(PRESET_KINDS)}")
    return Path(str(resources.files("omnilv") / "presets" / kind))


def preset_names(kind: str) -> list[str]:
    """Names (file stems) of the bundled ``kind`` presets, sorted."""
    folder = preset_dir(kind)
    return sorted(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml")) if folder.is_dir() else []


def find_config(kind: str, name_or_path: str | Path) -> Path:
    """The config file a user named: an existing path (relative to the current folder), else the bundled
    ``kind`` preset of that name (``tiny_stage1`` or ``tiny_stage1.yaml``), else a :class:`ConfigError` that
    lists the presets."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    names = preset_names(kind)
    if path.name == str(name_or_path):  # a bare name (no folder part) may name a preset
        for candidate in (path.name, f"{path.name}.yaml", f"{path.name}.yml"):
            if (preset_dir(kind) / candidate).is_file():
                return preset_dir(kind) / candidate
    if path.exists():
        raise ConfigError(f"{path}: is a folder, not a config file")
    msg = f"{path}: no such config file (relative paths are read from the current folder, {Path.cwd()})"
    if path.stem in names and str(name_or_path) != path.stem:
        msg += f"; the bundled preset of that name loads from any folder as just: {path.stem}"
    other = next((k for k in PRESET_KINDS if k != kind and path.stem in preset_names(k)), None)
    if other is not None and path.stem not in names:
        msg += f"; {path.stem!r} is a {other} preset, not a {kind} one"
    raise ConfigError(f"{msg}. {kind.capitalize()} presets: {', '.join(names) or '(none installed)'}")


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
                node[k] = _yaml_value(raw, item, where)
            else:
                node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    return data


def _yaml_value(raw: str, item: str, where: str) -> Any:
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: override {item!r}: the value is not valid YAML ({problem}); quote it "
                          "(field.path='value') or fix the brackets") from None


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
            msg = err["msg"].removeprefix("Value error, ")  # a validator's ValueError: its message is enough
            if err["type"] == "extra_forbidden":
                msg = f"unknown field{_suggest(model, err['loc'])}"
            shown = "input" in err and not isinstance(err["input"], dict)
            lines.append(f"  - {loc}: {msg}" + (f" (got {err['input']!r})" if shown else ""))
        raise ConfigError("\n".join(lines)) from None


def _suggest(model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    """'; did you mean …' (or the known fields) for the unknown field at ``loc``."""
    node: type[BaseModel] | None = model
    for part in loc[:-1]:
        if isinstance(part, int):  # a list item: the section type was already taken from the list's annotation
            continue
        field = node.model_fields.get(part) if node is not None else None
        node = _section_type(field.annotation) if field is not None else None
    if node is None:
        return ""
    known = list(node.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation (``X``, ``list[X]``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((t for t in map(_section_type, get_args(annotation)) if t is not None), None)


def config_digest(cfg: BaseModel, exclude: set[str] | dict | None = None) -> str:
    """sha256 of the canonical JSON of a config (what a resume compares)."""
    body = cfg.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
