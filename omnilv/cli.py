"""The ``omnilv`` command: mounts each package's commands.

Each package's ``cli`` module imports only typer at module level and defers heavy
imports (Ray, torch, diffusers) to the command bodies, so ``omnilv --help`` is fast.
"""

from __future__ import annotations

import typer

from omnilv import __version__

app = typer.Typer(
    name="omnilv",
    help="Build low-level-vision training corpora and train OmniLV models on Ray.\n\n"
    "Every command runs on one CPU laptop by default (bundled sample images, local Ray, local disk,\n"
    "tiny model) and scales out by pointing it at a Ray cluster and an s3:// prefix.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omnilv {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """omnilv: corpora and training for low-level vision."""


def _mount() -> None:
    from cluster.cli import app as cluster_app
    from degradations.cli import app as degradations_app
    from pipelines.cli import app as corpus_app
    from training.cli import register as register_training

    app.add_typer(degradations_app, name="degradations", help="List, preview and check degradation plugins.")
    app.add_typer(corpus_app, name="corpus", help="Build, inspect, preview and regenerate WebDataset corpora.")
    app.add_typer(cluster_app, name="cluster", help="Submit jobs to Ray clusters, plan and render cluster configs.")
    register_training(app)


_mount()

if __name__ == "__main__":
    app()
