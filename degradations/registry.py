"""Plugin registry, filled from the ``omnilv.degradations`` entry-point group.

Built-ins register exactly like third-party plugins (see ``pyproject.toml``), so a
plugin in another distribution is found after ``pip install`` with no change here.
Entries stay lazy ``"module:Class"`` strings until a plugin is first asked for.
Chain presets live in the ``omnilv.chains`` group the same way.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from degradations.base import DOMAINS, Degradation, PluginError

PLUGIN_GROUP = "omnilv.degradations"
CHAIN_GROUP = "omnilv.chains"


class UnknownPluginError(PluginError, KeyError):
    """No plugin or chain registered under a name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attr"
    source: str  # the distribution that declared it

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


@cache
def entries(group: str = PLUGIN_GROUP) -> dict[str, Entry]:
    """All entries of ``group`` by name; a name declared twice is an error naming both sources."""
    found: dict[str, Entry] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        entry = Entry(ep.name, ep.value, _source(ep))
        prior = found.get(ep.name)
        if prior is not None and prior.target != entry.target:
            raise PluginError(
                f"plugin name {ep.name!r} is registered twice in {group!r}: "
                f"{prior.target} (from {prior.source}) and {entry.target} (from {entry.source}); "
                "uninstall one of the packages or rename the entry point"
            )
        found[ep.name] = entry
    return found


def names(group: str = PLUGIN_GROUP) -> list[str]:
    return sorted(entries(group))


def _lookup(name: str, group: str) -> Entry:
    table = entries(group)
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        kind = "plugin" if group == PLUGIN_GROUP else "chain preset"
        raise UnknownPluginError(
            f"no {kind} named {name!r}{hint} ({len(table)} registered; "
            f"`omnilv degradations list` shows them; third-party plugins are found "
            f"once their package is installed and declares a {group!r} entry point)"
        )
    return table[name]


@cache
def get(name: str) -> type[Degradation]:
    """The plugin class registered as ``name``."""
    entry = _lookup(name, PLUGIN_GROUP)
    cls = entry.load()
    validate_class(cls, entry.name, origin=f"{entry.target} (from {entry.source})")
    if not cls.__dict__.get("name"):
        cls.name = entry.name  # the entry-point name is the registry name
    elif cls.name != entry.name:
        raise PluginError(f"{entry.target} says name={cls.name!r} but is registered as {entry.name!r}")
    return cls


def create(name: str, **ranges: Any) -> Degradation:
    """Instantiate plugin ``name`` with optional range overrides (validated)."""
    cls = get(name)
    try:
        return cls(**ranges)
    except TypeError as exc:
        raise PluginError(f"{name}: bad range override {sorted(ranges)}: {exc}") from exc


def get_chain(name: str) -> Any:
    """The chain preset factory registered as ``name`` (call it to build a ``Task``)."""
    return _lookup(name, CHAIN_GROUP).load()


def load_target(spec: str) -> type[Degradation]:
    """Load ``module:Class`` directly (for ``omnilv degradations check`` on unregistered code)."""
    if ":" not in spec:
        return get(spec)
    entry = Entry(spec.rpartition(":")[2], spec, "command line")
    try:
        cls = entry.load()
    except ModuleNotFoundError as exc:
        top = spec.partition(":")[0].split(".")[0]
        hint = (f" It is not installed: install your package (`pip install -e .` in its folder, which also "
                f"registers its entry points) or run `PYTHONPATH=. omnilv degradations check {spec}` from the folder "
                f"holding {top}/." if exc.name == top else "")
        raise PluginError(f"cannot import {spec!r}: {exc}.{hint}") from exc
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot import {spec!r}: {exc}") from exc
    validate_class(cls, cls.__name__, origin=spec)
    return cls


def validate_class(cls: Any, name: str, origin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Degradation)):
        raise PluginError(f"{name}: {origin} is not a subclass of degradations.base.Degradation")
    if cls.domain not in DOMAINS:
        raise PluginError(f"{name}: domain {cls.domain!r} of {origin} is not one of {DOMAINS}")


def _source(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
