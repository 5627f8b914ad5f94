"""Commands of this package (mounted by ``omnilv.cli``); heavy imports stay inside commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
