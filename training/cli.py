"""Training commands, registered on the root app.

``train`` and ``quickstart`` live in :mod:`training.cli_train`; ``restore`` and
``eval`` in :mod:`training.cli_model`; ``cache-latents`` in :mod:`training.cli_latents`.
All import heavy libraries only inside commands.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``train``, ``quickstart``, ``cache-latents``, ``restore`` and ``eval`` to the root ``omnilv`` app."""
    from training import cli_latents, cli_model, cli_train

    cli_train.register(app)
    cli_latents.register(app)
    cli_model.register(app)
