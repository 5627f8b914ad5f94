"""Training commands, registered on the root app.

``train`` and ``quickstart`` live in :mod:`training.cli_train`; ``restore`` and
``eval`` in :mod:`training.cli_model`. Both import heavy libraries only inside commands.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``train``, ``quickstart``, ``restore`` and ``eval`` to the root ``omnilv`` app."""
    from training import cli_model, cli_train

    cli_train.register(app)
    cli_model.register(app)
