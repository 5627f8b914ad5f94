"""The ``omnilv`` command: mounts each package's commands, and is the one error boundary.

Each package's ``cli`` module imports only typer at module level and defers heavy imports (Ray, torch, diffusers)
to the command bodies, so ``omnilv --help`` is fast.

Library code raises :class:`~omnilv.errors.OmniLVError` for a problem the user can fix. :class:`Root` catches that
class, and only that class, around every command: it prints ``error: <message>`` on stderr and exits 2. Any other
exception keeps its traceback (typer's, without locals: they may hold credentials), so a bug is never disguised
as a user error.

Help texts are Markdown: the lines of a paragraph are joined and re-wrapped to the terminal, and an example block
is fenced with three backticks.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from omnilv import __version__
from omnilv.errors import OmniLVError

#: The exit status of a user error (click uses 2 for a usage error too); 1 is a bug or a failed check.
USER_ERROR = 2


class Root(TyperGroup):
    """The root ``omnilv`` group: runs every command inside the one error boundary."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OmniLVError as exc:
            typer.secho(f"error: {user_message(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(USER_ERROR) from None


def user_message(exc: OmniLVError) -> str:
    """The message of a project error.

    Ray re-raises a task's error as a class derived from both ``RayTaskError`` and the original class; its text is
    the remote traceback, and its ``cause`` the original error, whose message is the one written for the user.
    """
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, OmniLVError) else exc)


app = typer.Typer(
    name="omnilv",
    cls=Root,
    help="Build low-level-vision training corpora and train OmniLV (and Lumen) models on Ray.\n\n"
    "Every command runs on one CPU laptop by default (bundled sample images, local Ray, local disk, tiny model) "
    "and scales out by pointing it at a Ray cluster and an s3:// prefix.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omnilv {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """omnilv: corpora and training for low-level vision."""


def _mount() -> None:
    from cluster.cli import app as cluster_app
    from degradations.cli import app as degradations_app
    from pipelines.cli import app as corpus_app
    from training.cli import register as register_training

    app.add_typer(degradations_app, name="degradations")  # each package's app holds its own help
    app.add_typer(corpus_app, name="corpus")
    app.add_typer(cluster_app, name="cluster")
    register_training(app)


_mount()

if __name__ == "__main__":
    app()
