"""Package doors that import on first use.

Each package's ``__init__`` lists its public names and the module that defines each, so a reader sees the whole
API in one place, while ``import pipelines`` (or ``omnilv --help``) does not pay for Ray, torch or diffusers until
a name is used.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def door(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(``__all__``, module ``__getattr__``) for ``package``, whose public ``name`` lives in ``exports[name]``
    (a module path relative to the package, e.g. ``".storage"``)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name], package), name)

    return sorted(exports), __getattr__
