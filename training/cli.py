"""Training commands (``train``, ``restore``, ``eval``, ``quickstart``), registered on the root app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to the root ``omnilv`` app."""
