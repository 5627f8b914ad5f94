"""Shared fixtures of the model tests."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest


class _Boom:
    """Unpickling this writes ``path``: proof that a reader ran a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "unpickled!"))


@pytest.fixture
def hostile_pickle(tmp_path) -> tuple[Callable[[Path, str], None], Path]:
    """(write(file, key): a pickled {key: object} whose unpickling creates the canary, canary path)."""
    canary = tmp_path / "canary.txt"

    def write(file: Path, key: str) -> None:
        file.write_bytes(pickle.dumps({key: _Boom(canary)}))

    return write, canary
